#!/usr/bin/python3
"""Ranks of one node (docs/distributed.md), measured side by side with a single trainer.

    bash scripts/setup.sh                  # once: the build
    /usr/bin/python3 bench/ranks_bench.py  # about 3 minutes on 2 cores; --runs N (default 8)

1. Request to agreement and to commit: `lifeline run` over torchrun with 3 ranks of
   lifeline-train-example (--no_python), SIGUSR1 to the supervisor at a random step; the time
   from the signal to the supervisor's "ranks agreed" line and to its "checkpoint committed"
   line, as this script reads them from the pipe. Baseline: the same trainer alone under
   `lifeline run`, signal to "checkpoint committed".
2. Stall of a checkpoint: 3 ranks holding 32 MiB of state each (a sync save per rank, every
   20 steps; the collective stall of a step is its slowest rank's) against one trainer holding
   96 MiB (the same total), from the trainer's own --report lines.
Scratch folders go under build/ (the disk of the build) and are removed.
"""
import argparse
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
BUILD = os.path.join(ROOT, "build")
LIFELINE = os.path.join(BUILD, "src", "cli", "lifeline")
TRAINER = os.path.join(BUILD, "examples", "lifeline-train-example")
PYTHON = "/usr/bin/python3"
RANKS = 3


def policy(folder: str) -> str:
    path = os.path.join(folder, "policy.yaml")
    with open(path, "w") as f:
        f.write("version: 1\ncheckpoint:\n  every_steps: 20\n  every_seconds: 0\n"
                "restart:\n  backoff_seconds: 0\nretention:\n  keep_last: 2\n  keep_best: 0\n")
    return path


def torchrun(cmd, port):
    return [PYTHON, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(RANKS),
            "--master_addr", "127.0.0.1", "--master_port", str(port), "--redirects", "1", "--tee", "1",
            "--no_python", *cmd]


def request_to_commit(ranks: bool, scratch: str, port: int):
    """One stop: (signal -> agreement, signal -> commit) in ms; agreement None for one trainer."""
    d = tempfile.mkdtemp(dir=scratch)
    try:
        train = [TRAINER, "--steps", "100000", "--step-delay-ms", "10", "--log-every", "1"]
        cmd = [LIFELINE, "run", "--policy", policy(d), "--ckpt-dir", os.path.join(d, "ckpt"), "--",
               *(torchrun(train, port) if ranks else train)]
        at = random.randint(30, 60)
        marks = {}

        def on_line(line, t):
            if "sig" not in marks and re.search(r"\bstep %d loss" % at, line):
                marks["sig"] = t
                p.send_signal(signal.SIGUSR1)
            elif "sig" in marks and "ranks agreed" in line and "agreed" not in marks:
                marks["agreed"] = t
            elif "sig" in marks and "checkpoint committed" in line and "commit" not in marks:
                marks["commit"] = t
            return True

        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in p.stdout:
            on_line(line, time.monotonic())
        p.wait()
        ms = lambda k: (marks[k] - marks["sig"]) * 1e3 if k in marks else None  # noqa: E731
        return ms("agreed"), ms("commit")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def stalls(ranks: bool, scratch: str, port: int):
    """Per checkpointed step, the stall in s (for ranks: the slowest rank's)."""
    d = tempfile.mkdtemp(dir=scratch)
    try:
        train = [TRAINER, "--steps", "200", "--report", "--state-mib", "32" if ranks else "96"]
        cmd = [LIFELINE, "run", "--policy", policy(d), "--ckpt-dir", os.path.join(d, "ckpt"), "--",
               *(torchrun(train, port) if ranks else train)]
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
        by_step = {}
        for m in re.finditer(r"checkpoint of step (\d+): stall ([0-9.]+) s", out):
            step = int(m.group(1))
            if step < 200:  # not the final save
                by_step[step] = max(by_step.get(step, 0.0), float(m.group(2)))
        if not by_step:
            sys.exit("ranks_bench: no stall lines in:\n" + out[-3000:])
        return list(by_step.values())
    finally:
        shutil.rmtree(d, ignore_errors=True)


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=8)
    args = ap.parse_args()
    for path in (LIFELINE, TRAINER):
        if not os.access(path, os.X_OK):
            sys.exit(f"ranks_bench: {path} is missing (bash scripts/setup.sh)")
    scratch = tempfile.mkdtemp(prefix="ranks-bench-", dir=BUILD)
    port = 29600 + os.getpid() % 200
    try:
        agreed, commit_ranks, commit_one = [], [], []
        for i in range(args.runs):  # alternate which goes first
            for ranks in ((True, False) if i % 2 == 0 else (False, True)):
                a, c = request_to_commit(ranks, scratch, port)
                if ranks:
                    agreed.append(a)
                    commit_ranks.append(c)
                else:
                    commit_one.append(c)
        stall_ranks, stall_one = [], []
        for i in range(2):
            for ranks in ((True, False) if i % 2 == 0 else (False, True)):
                (stall_ranks if ranks else stall_one).extend(stalls(ranks, scratch, port))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    med = statistics.median
    print(f"runs: {args.runs} stops each; {len(stall_ranks)} and {len(stall_one)} checkpoints for the stall rows")
    print("| measurement | 3 ranks | 1 trainer | ratio (median) |")
    print("|---|---|---|---|")
    print(f"| signal -> agreement, ms (median / p99) | {med(agreed):.1f} / {pct(agreed, 0.99):.1f} | - | - |")
    print(f"| signal -> commit, ms (median / p99) | {med(commit_ranks):.1f} / {pct(commit_ranks, 0.99):.1f} | "
          f"{med(commit_one):.1f} / {pct(commit_one, 0.99):.1f} | {med(commit_ranks) / med(commit_one):.2f} |")
    print(f"| checkpoint stall, 96 MiB in all, s (median / max) | {med(stall_ranks):.3f} / {max(stall_ranks):.3f} | "
          f"{med(stall_one):.3f} / {max(stall_one):.3f} | {med(stall_ranks) / med(stall_one):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
