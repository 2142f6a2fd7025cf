#!/usr/bin/env python3
"""The node-local tier's benchmark (issue 20), driven by bench/tier_bench.sh, which makes the slow
"shared" disk (a throttled loop device) and runs this inside the blkio cgroup that throttles it.

Rows, each next to its baseline in the same run:
  drain : bench/drain_bench: drain_checkpoint of an N MiB checkpoint from the local disk to the
          slow disk vs `dd bs=4M conv=fsync` of the same bytes to the slow disk;
  stall : training stall per checkpoint of lifeline-train-example --state-mib N (sync saves)
          under `lifeline run`, committing to the local tier (drained in the background) vs
          straight to the slow disk;
  stop  : SIGUSR1 to `lifeline run` -> checkpoint committed, to the local tier vs straight to
          the slow disk (with the tier, also -> drained to the slow disk, and -> exit).
The stall and stop rows need `lifeline run` with a `storage:` section; when `lifeline policy
check` refuses one they are reported as not measured. Each row also counts the bytes written to
the slow disk by the bench's cgroup (throttled there) against all bytes written to it.
Standard library only. Results go to bench/tier_results.json (or --out) as they come.
"""
import argparse
import glob
import json
import os
import platform
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

from bench_table import print_table  # bench/bench_table.py (this script's folder)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(msg):
    print(f"[tier {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Runner:
    def __init__(self, a):
        self.a = a
        self.build = os.path.abspath(os.path.join(ROOT, a.build))
        self.lifeline = os.path.join(self.build, "src/cli/lifeline")
        self.example = os.path.join(self.build, "examples/lifeline-train-example")
        self.drain_bench = os.path.join(self.build, "bench/drain_bench")
        self.out = os.path.abspath(a.out)
        self.rows, self.notes, self.checks = [], [], {}
        self.started = time.time()
        self.load_at_start = list(os.getloadavg())
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
        # The example trainer on the allocator bench/run.sh gives it (see run_benchmarks.py).
        tcmalloc = next(iter(sorted(glob.glob("/usr/lib/*/libtcmalloc_minimal.so.4"))), None)
        if tcmalloc:
            self.allocator = "tcmalloc (libtcmalloc-minimal4, TCMALLOC_RELEASE_RATE=0)"
            self.torch_env = dict(self.env, LD_PRELOAD=tcmalloc, TCMALLOC_RELEASE_RATE="0")
        else:
            self.allocator = "glibc keeping its big blocks (MALLOC_MMAP_MAX_=0)"
            self.torch_env = dict(self.env, MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(1 << 40))
        self.children = []
        self.not_measured = "not measured: lifeline has no storage tier yet"

    # ---- the slow disk's accounting ---------------------------------------------------------
    def _bytes(self, path, op):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[0] == self.a.device and parts[1] == op:
                    return int(parts[2])
        return 0

    def io(self):
        """Bytes read/written on the slow disk: by the bench's cgroup, and by everyone (the root
        cgroup's recursive count: the bench's cgroup plus kernel threads such as the flusher)."""
        cg = os.path.join(self.a.cgroup, "blkio.throttle.io_service_bytes")
        root = os.path.join(os.path.dirname(self.a.cgroup), "blkio.throttle.io_service_bytes_recursive")
        return {"cgroup_write": self._bytes(cg, "Write"), "cgroup_read": self._bytes(cg, "Read"),
                "all_write": self._bytes(root, "Write"), "all_read": self._bytes(root, "Read")}

    def io_check(self, name, before):
        after = self.io()
        d = {k: after[k] - before[k] for k in after}
        share = d["cgroup_write"] / d["all_write"] if d["all_write"] else 1.0
        d["cgroup_share_of_writes"] = round(share, 4)
        self.checks[name] = d
        log(f"{name}: slow disk: {d['all_write'] / 2**20:.0f} MiB written, {share:.1%} of it by the bench's cgroup "
            f"(the rest by kernel threads, throttled by the root cgroup's rule); {d['all_read'] / 2**20:.0f} MiB read")
        return d

    # ---- bookkeeping -------------------------------------------------------------------------
    def row(self, figure, what, lifeline, baseline, ratio, target, ok, note=""):
        self.rows.append({"figure": figure, "measurement": what, "lifeline": lifeline, "baseline": baseline,
                          "ratio": ratio, "target": target, "meets_target": ok, "note": note})
        self.save()

    def save(self):
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout.strip()
        doc = {
            "machine": {"cores": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                        "trainer_allocator": self.allocator},
            "code": rev + (" + uncommitted changes" if dirty else ""),
            "command": self.a.command,
            "slow_disk": {"mechanism": "ext4 on a loop device (--direct-io=on) over a 3 GiB image in a tmpfs, reads "
                                       "and writes throttled by cgroup v1 blk-throttle (the bench's cgroup, and the "
                                       "root cgroup for kernel threads, each limit_mib_s)",
                          "limit_mib_s": self.a.mbps, "device": self.a.device, "loop": self.a.loop},
            "fast_disk": "the root file system (" + self.a.local + ")",
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "elapsed_s": round(time.time() - self.started, 1),
            "load_average_at_start": self.load_at_start,
            "load_average_now": list(os.getloadavg()),
            "rows": self.rows,
            "slow_disk_bytes": self.checks,
            "notes": self.notes,
        }
        with open(self.out, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")

    def policy(self, name, every_steps, tier_local=None):
        path = os.path.join(self.a.scratch, name + ".yaml")
        text = (f"version: 1\ncheckpoint:\n  every_steps: {every_steps}\n  every_seconds: 0\n"
                f"retention:\n  keep_last: 2\nstop:\n  grace_seconds: 600\n")
        if tier_local:
            text += f"storage:\n  local: {tier_local}\n  drain: async\n  keep_local: 2\n  drain_bandwidth: 0\n"
        with open(path, "w") as f:
            f.write(text)
        return path

    def tier_supported(self):
        p = self.policy("probe", 10, os.path.join(self.a.local, "probe"))
        if not os.access(self.lifeline, os.X_OK):
            return False, f"no {self.lifeline}"
        r = subprocess.run([self.lifeline, "policy", "check", p], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, env=self.env)
        return r.returncode == 0, r.stdout.strip()

    # ---- a. drain vs dd -------------------------------------------------------------------------
    def drain(self):
        before = self.io()
        local, shared = os.path.join(self.a.local, "drain"), os.path.join(self.a.shared, "drain")
        r = subprocess.run([self.drain_bench, local, shared, "--mib", str(self.a.mib), "--runs", str(self.a.runs)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900, env=self.env)
        shutil.rmtree(local, ignore_errors=True)
        shutil.rmtree(shared, ignore_errors=True)
        for line in r.stdout.splitlines():
            if line.startswith("drain_bench: run"):
                log(line)
        if r.returncode != 0:
            raise RuntimeError(r.stdout[-3000:])
        p = json.loads(r.stdout.strip().splitlines()[-1])
        chk = self.io_check("drain", before)
        drain_s, dd_s = statistics.median(p["drain_s"]), statistics.median(p["dd_s"])
        mib = p["mib"]
        ratio = dd_s / drain_s
        self.row("a", f"drain of a committed {mib} MiB checkpoint, local disk -> slow disk ({self.a.mbps} MiB/s): "
                 f"drain_checkpoint (read + checksum + copy + fsync + manifest + rename) vs `dd bs=4M conv=fsync` of the "
                 f"same file (median of {len(p['drain_s'])})",
                 f"{mib / drain_s:.1f} MiB/s", f"{mib / dd_s:.1f} MiB/s", f"{ratio:.2f}", ">= 0.9x", ratio >= 0.9,
                 "seconds: drain " + ", ".join(f"{x:.2f}" for x in p["drain_s"]) + "; dd "
                 + ", ".join(f"{x:.2f}" for x in p["dd_s"])
                 + f"; {chk['cgroup_share_of_writes']:.1%} of the bytes written to the slow disk were submitted by the "
                   "bench's cgroup")

    # ---- lifeline run ------------------------------------------------------------------------
    def start(self, argv):
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                             env=self.torch_env)
        self.children.append(p)
        lines = queue.Queue()

        def reader():
            for line in p.stdout:
                lines.put((time.monotonic(), line))
            lines.put((time.monotonic(), None))

        threading.Thread(target=reader, daemon=True).start()
        return p, lines

    @staticmethod
    def history(ckpt):
        events = []
        try:
            with open(os.path.join(ckpt, "history.jsonl")) as f:
                for line in f:
                    try:
                        events.append(json.loads(line))
                    except ValueError:
                        pass
        except OSError:
            pass
        return events

    def run_training(self, name):
        """One `lifeline run` of the example trainer with a sync checkpoint every E steps; returns
        each checkpoint's stall (the trainer's --report lines) and the history's events. name:
        "straight" (the checkpoint dir on the slow disk), "tier" (the same, with the local tier),
        "local" (the checkpoint dir on the local disk, no tier: the floor)."""
        e, k = self.a.every_steps, self.a.checkpoints
        steps = e * k + e // 2  # k checkpoints in the loop, then the final save
        ckpt = os.path.join(self.a.local if name == "local" else self.a.shared, f"stall-{name}")
        local = os.path.join(self.a.local, f"stall-{name}-tier") if name == "tier" else None
        pol = self.policy(f"stall-{name}", e, local)
        argv = [self.lifeline, "run", "--policy", pol, "--ckpt-dir", ckpt, "--requeue", "none", "--",
                self.example, "--steps", str(steps), "--state-mib", str(self.a.mib), "--report"]
        t0 = time.monotonic()
        p, lines = self.start(argv)
        out = []
        while True:
            _, line = lines.get(timeout=900)
            if line is None:
                break
            out.append(line)
        rc = p.wait()
        wall = time.monotonic() - t0
        text = "".join(out)
        if rc != 0:
            raise RuntimeError(f"lifeline run ({name}) exited {rc}:\n" + text[-3000:])
        # The periodic checkpoints' stalls; the final save (step == steps) is outside the loop.
        stalls = [float(x) for st, x in re.findall(r"checkpoint of step (\d+): stall ([0-9.]+) s", text)
                  if int(st) != steps]
        rate = re.search(r"trained (\d+) steps in ([0-9.]+) s", text)
        events = self.history(ckpt)
        shutil.rmtree(ckpt, ignore_errors=True)
        if local:
            shutil.rmtree(local, ignore_errors=True)
        if len(stalls) != k:
            raise RuntimeError(f"{name}: expected {k} checkpoint stalls, found {len(stalls)}:\n" + text[-3000:])
        return {"stalls": stalls, "events": events, "wall_s": wall,
                "train_s": float(rate.group(2)) if rate else None, "log": text}

    def stall(self, tier_ok):
        if not tier_ok:
            self.row("b", f"training stall per checkpoint, {self.a.mib} MiB state: local tier vs straight to the slow disk",
                     self.not_measured, "", "", "<= 0.1x", None)
            return
        before = self.io()
        # Straight to the slow disk once (its stall is the throttle's: steady), then the tier and
        # the floor in --stall-rounds rounds, which goes first alternating.
        order = ["straight", "tier", "local"]
        for i in range(1, self.a.stall_rounds):
            order += ["local", "tier"] if i % 2 == 1 else ["tier", "local"]
        runs = {"straight": [], "tier": [], "local": []}
        for name in order:
            log(f"stall: {name} ...")
            r = self.run_training(name)
            runs[name].append(r)
            log(f"stall: {name}: stalls " + ", ".join(f"{x:.3f}" for x in r["stalls"]) + f" s; run {r['wall_s']:.1f} s")
        chk = self.io_check("stall", before)
        stalls = {k: [x for r in v for x in r["stalls"]] for k, v in runs.items()}
        mt, ms, mf = (statistics.median(stalls[k]) for k in ("tier", "straight", "local"))
        kinds, done, gaps, diffs = {}, [], [], []
        for r in runs["tier"]:
            drains = [ev for ev in r["events"] if ev.get("event") == "drain"]
            for ev in drains:
                kinds[ev.get("result", "?")] = kinds.get(ev.get("result", "?"), 0) + 1
            ok = [ev for ev in drains if ev.get("result") == "drained" and ev.get("duration_s")]
            done += ok
            # Whether a drain (and the read-back by retention that follows it) could overlap a
            # periodic commit: the time from the end of the drain before it to its start.
            ends = sorted(ev["time_ns"] / 1e9 for ev in ok if "time_ns" in ev)
            commits = [ev for ev in r["events"] if ev.get("event") == "checkpoint_commit"
                       and "time_ns" in ev and isinstance(ev.get("duration_s"), (int, float))]
            for ev, stall in zip(commits, r["stalls"]):  # the periodic ones, in order; the final save last
                diffs.append(abs(ev["duration_s"] - stall))
                begin = ev["time_ns"] / 1e9 - ev["duration_s"]
                prior = [e for e in ends if e <= begin]
                if prior:
                    gaps.append(begin - prior[-1])
        drain_note = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "no drain events in history.jsonl"
        if done:
            drain_note += (" (" + ", ".join(f"{ev['duration_s']:.2f}" for ev in done) + " s; "
                           + f"median {statistics.median(ev['bytes'] / ev['duration_s'] for ev in done) / 2**20:.0f} MiB/s)")
        fmt = lambda xs: ", ".join(f"{x:.3f}" for x in xs)  # noqa: E731
        ratio = mt / ms
        nt = len(runs["tier"])
        self.row("b", f"training stall per checkpoint, {self.a.mib} MiB state, sync save, every {self.a.every_steps} steps: "
                 f"commit to the local tier (drained in the background) vs straight to the slow disk "
                 f"(median of {len(stalls['tier'])} and {len(stalls['straight'])} checkpoints)",
                 f"{mt:.3f} s", f"{ms:.3f} s", f"{ratio:.3f}x", "<= 0.1x", ratio <= 0.1,
                 f"stalls (s): tier {fmt(stalls['tier'])} ({nt} run{'s' if nt > 1 else ''}); straight {fmt(stalls['straight'])}"
                 + f"; the floor, the checkpoint dir on the local disk and no tier: {fmt(stalls['local'])} "
                 + f"(median {mf:.3f}; tier / floor {mt / mf:.2f}x)"
                 + f"; drains: {drain_note}"
                 + "; from the end of the drain before each periodic commit to it: "
                 + (", ".join(f"{g:.1f}" for g in gaps) + " s" if gaps else "-")
                 + "; training time, steps + stalls (s): "
                 + "; ".join(f"{k} " + ", ".join(f"{r['train_s']:.1f}" for r in runs[k]) for k in ("tier", "straight", "local"))
                 + (f"; history's checkpoint_commit duration_s within {max(diffs) * 1e3:.1f} ms of the trainer's stall"
                    if diffs else "")
                 + f"; {chk['cgroup_share_of_writes']:.1%} of the slow disk's writes by the bench's cgroup")

    # ---- c. stop latency -------------------------------------------------------------------------
    def stop_once(self, name, tier):
        ckpt = os.path.join(self.a.shared, f"stop-{name}")
        local = os.path.join(self.a.local, f"stop-{name}") if tier else None
        pol = self.policy(f"stop-{name}", 0, local)
        argv = [self.lifeline, "run", "--policy", pol, "--ckpt-dir", ckpt, "--requeue", "none", "--grace", "600",
                "--", self.example, "--steps", "100000000", "--state-mib", str(self.a.mib), "--log-every", "1", "--report"]
        p, lines = self.start(argv)
        out = []

        def wait_for(pred, timeout):
            end = time.monotonic() + timeout
            while True:
                t, line = lines.get(timeout=max(0.01, end - time.monotonic()))
                if line is None:
                    raise RuntimeError(f"lifeline run ({name}) ended early:\n" + "".join(out[-40:]))
                out.append(line)
                if pred(line):
                    return t, line

        for k in range(1, 4):
            wait_for(lambda l, k=k: l.startswith(f"step {k} "), 600)
        t0 = time.monotonic()
        p.send_signal(signal.SIGUSR1)
        t_commit, line = wait_for(lambda l: "checkpoint committed: step" in l, 900)
        m = re.search(r"step (\d+), (\d+) bytes in ([0-9.]+) s", line)
        step, save_s = int(m.group(1)), float(m.group(3))
        t_drained = t_stopped = None
        while True:
            t, line = lines.get(timeout=900)
            if line is None:
                break
            out.append(line)
            if t_drained is None and re.search(rf"drained step {step}\b", line):
                t_drained = t
            if t_stopped is None and re.search(r"attempt \d+ stopped", line):
                t_stopped = t
        rc = p.wait()
        t_exit = time.monotonic()
        shutil.rmtree(ckpt, ignore_errors=True)
        if local:
            shutil.rmtree(local, ignore_errors=True)
        if rc != 75:
            raise RuntimeError(f"lifeline run ({name}) exited {rc} after the stop:\n" + "".join(out[-40:]))
        if tier and t_drained is None:
            raise RuntimeError(f"lifeline run ({name}): no 'drained step {step}' line:\n" + "".join(out[-40:]))
        return {"commit_s": t_commit - t0, "drained_s": (t_drained - t0) if t_drained else None,
                "stopped_s": (t_stopped - t0) if t_stopped else float("nan"), "exit_s": t_exit - t0, "save_s": save_s}

    def stop(self, tier_ok):
        if not tier_ok:
            self.row("c", f"stop latency, {self.a.mib} MiB state: SIGUSR1 to `lifeline run` -> checkpoint committed, "
                     "local tier vs straight to the slow disk", self.not_measured, "", "",
                     "-", None)
            return
        res = {"tier": [], "straight": []}
        reads = {"tier": 0, "straight": 0}
        before = self.io()
        for i in range(self.a.stops):  # alternating which goes first
            for name in (("tier", "straight") if i % 2 == 0 else ("straight", "tier")):
                b = self.io()
                r = self.stop_once(name, name == "tier")
                reads[name] += self.io()["all_read"] - b["all_read"]
                res[name].append(r)
                log(f"stop: {name}: commit {r['commit_s']:.2f} s"
                    + (f", drained {r['drained_s']:.2f} s" if r["drained_s"] is not None else "")
                    + f", 'stopped' {r['stopped_s']:.2f} s, exit {r['exit_s']:.2f} s (save {r['save_s']:.2f} s)")
        chk = self.io_check("stop", before)
        med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
        t, s = res["tier"], res["straight"]
        ratio = med(t, "commit_s") / med(s, "commit_s")
        self.row("c", f"stop latency, {self.a.mib} MiB state: SIGUSR1 to `lifeline run` -> checkpoint committed, "
                 f"to the local tier vs straight to the slow disk (median of {len(t)} each)",
                 f"commit {med(t, 'commit_s'):.2f} s (on the slow disk {med(t, 'drained_s'):.2f} s, "
                 f"'stopped' {med(t, 'stopped_s'):.2f} s, exit {med(t, 'exit_s'):.2f} s)",
                 f"commit {med(s, 'commit_s'):.2f} s ('stopped' {med(s, 'stopped_s'):.2f} s, exit {med(s, 'exit_s'):.2f} s)",
                 f"{ratio:.2f}x (commit)", "none set (issue 20 sets none)", None,
                 "seconds after the signal; 'stopped': the supervisor's 'attempt N stopped' line (requeue decided); "
                 "tier: " + "; ".join(f"commit {r['commit_s']:.2f}, drained {r['drained_s']:.2f}, stopped {r['stopped_s']:.2f}, "
                                      f"exit {r['exit_s']:.2f}, save {r['save_s']:.2f}" for r in t)
                 + " // straight: " + "; ".join(f"commit {r['commit_s']:.2f}, stopped {r['stopped_s']:.2f}, "
                                              f"exit {r['exit_s']:.2f}, save {r['save_s']:.2f}" for r in s)
                 + f"; read back from the slow disk per stop: tier {reads['tier'] / len(t) / 2**20:.0f} MiB, "
                   f"straight {reads['straight'] / len(s) / 2**20:.0f} MiB"
                 + f"; {chk['cgroup_share_of_writes']:.1%} of the slow disk's writes by the bench's cgroup")

    # ---- table ---------------------------------------------------------------------------------
    def table(self):
        print_table(self.rows, self.notes, self.out, self.started, first_col="row")

    def end_children(self):
        for p in self.children:
            if p.poll() is None:
                p.kill()
                p.wait()


def parser():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--local", required=True, help="a folder on the fast local disk")
    ap.add_argument("--shared", required=True, help="the slow disk's mount point")
    ap.add_argument("--scratch", required=True)
    ap.add_argument("--cgroup", required=True, help="the blkio cgroup this runs in")
    ap.add_argument("--device", required=True, help="MAJ:MIN of the slow disk")
    ap.add_argument("--loop", default="")
    ap.add_argument("--no-lifeline", action="store_true", help="lifeline did not build: the drain row only")
    ap.add_argument("--command", default="bash bench/tier_bench.sh", help="how the bench was started (for the JSON)")
    ap.add_argument("--mbps", type=int, default=100, help="the slow disk's limit, MiB/s (set by tier_bench.sh)")
    ap.add_argument("--mib", type=int, default=256, help="checkpoint / training state size")
    ap.add_argument("--runs", type=int, default=3, help="drain and dd runs each")
    ap.add_argument("--every-steps", type=int, default=40, help="stall row: a checkpoint every N steps")
    ap.add_argument("--checkpoints", type=int, default=4, help="stall row: checkpoints per run")
    ap.add_argument("--stall-rounds", type=int, default=2, help="stall row: runs of the tier and of the floor each")
    ap.add_argument("--stops", type=int, default=3, help="stop row: stops each way")
    ap.add_argument("--only", default="", help="comma-separated subset: drain,stall,stop")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/tier_results.json"))
    return ap


def main():
    args = parser().parse_args()
    r = Runner(args)
    tier_ok, why = (False, "lifeline did not build") if args.no_lifeline else r.tier_supported()
    if args.no_lifeline:
        r.not_measured = "not measured: lifeline did not build"
    if not tier_ok:
        r.notes.append("stall and stop rows not measured: " + ("lifeline did not build" if args.no_lifeline else
                       "`lifeline policy check` refuses a storage section: " + (why.splitlines()[0] if why else "(no output)")))
    log(f"slow disk {args.loop} ({args.device}) at {args.shared}, throttled to {args.mbps} MiB/s; local {args.local}; "
        f"storage tier in lifeline: {'yes' if tier_ok else 'no'}")
    figures = [("drain", r.drain), ("stall", lambda: r.stall(tier_ok)), ("stop", lambda: r.stop(tier_ok))]
    only = [x for x in args.only.split(",") if x]
    failed = False
    try:
        for name, fn in figures:
            if only and name not in only:
                continue
            t = time.time()
            log(f"{name} ...")
            try:
                fn()
            except Exception as e:  # a broken row must not hide the others
                failed = True
                r.notes.append(f"{name}: {e}")
                log(f"{name} FAILED: {e}")
            finally:
                r.end_children()
            log(f"{name} done in {time.time() - t:.0f} s")
            r.save()
    finally:
        r.end_children()
    r.table()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
