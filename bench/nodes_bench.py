#!/usr/bin/python3
"""Several supervisors of one job (docs/distributed.md, "Several nodes"): how fast a request on
one node reaches every node and becomes one agreed step, measured side by side with one node.

    bash scripts/setup.sh                              # once: the build
    sudo /usr/bin/python3 bench/nodes_bench.py         # about 2 minutes; --rounds N (default 20)
    /usr/bin/python3 bench/nodes_bench.py --loopback   # without root: the 3 "nodes" share loopback

Three nodes: three network namespaces on a bridge (10.78.0.11-13, made and removed by this
script, as tests/slurm/cluster.sh --nodes does for Slurm), one `lifeline run --peers 3
--peer-index K` in each (nsenter --net), each with one rank of lifeline-train-example (RANK,
WORLD_SIZE; 5 ms steps). Each round sends SIGUSR1 to one supervisor chosen at random and reads,
from every supervisor's log (millisecond timestamps, one clock: one machine):
- learn: when the last node posted the stop request to its trainer (the signalled node at once,
  the others when the leader's `request` reached them), from the signal;
- agree: when the last node published the agreed step, from the signal.
Baseline, side by side: one `lifeline run` over torchrun with 3 local ranks (the one-node
protocol), SIGUSR1 to "ranks agreed". Targets (issue 19): learn and agree p99 < 50 ms.
"""
import argparse
import datetime
import os
import random
import re
import shutil
import signal
import socket
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
NODES = 3
BRIDGE, NS = "llbench0", "llbench-n%d"

STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}) ")


def ip(*args, check=True):
    subprocess.run(["ip", *args], check=check, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_nodes():
    drop_nodes()
    ip("link", "add", BRIDGE, "type", "bridge")
    ip("addr", "add", "10.78.0.1/24", "dev", BRIDGE)
    ip("link", "set", BRIDGE, "up")
    for k in range(1, NODES + 1):
        ns, host, peer = NS % k, "llbv%d" % k, "llbp%d" % k
        ip("netns", "add", ns)
        ip("link", "add", host, "type", "veth", "peer", "name", peer)
        ip("link", "set", peer, "netns", ns)
        ip("-n", ns, "link", "set", peer, "name", "eth0")
        ip("-n", ns, "addr", "add", "10.78.0.1%d/24" % k, "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("link", "set", host, "master", BRIDGE)
        ip("link", "set", host, "up")


def drop_nodes():
    for k in range(1, NODES + 1):
        ip("netns", "del", NS % k, check=False)
        ip("link", "del", "llbv%d" % k, check=False)
    ip("link", "del", BRIDGE, check=False)


def stamp(line: str) -> float:
    m = STAMP.match(line)
    return datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").timestamp() if m else 0.0


def first(lines, pattern):
    for line in lines:
        if re.search(pattern, line) and STAMP.match(line):
            return stamp(line)
    return None


def write_policy(folder):
    path = os.path.join(folder, "policy.yaml")
    with open(path, "w") as f:
        f.write("version: 1\ncheckpoint:\n  every_steps: 0\n  every_seconds: 0\n")
    return path


def wait_for(proc_out, needle, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc_out.readline()
        if not line:
            return False
        if needle in line:
            return True
    return False


def nodes_round(work, netns):
    ckpt = os.path.join(work, "ckpt")
    shutil.rmtree(ckpt, ignore_errors=True)
    pol = write_policy(work)
    procs, logs = [], []
    for k in range(NODES):
        log = open(os.path.join(work, "sup%d.log" % k), "w+")
        argv = [LIFELINE, "run", "--policy", pol, "--ckpt-dir", ckpt, "--requeue", "none", "--peers", str(NODES),
                "--peer-index", str(k), "--", TRAINER, "--steps", "100000", "--step-delay-ms", "5",
                "--log-every", "1"]
        if netns:
            argv = ["nsenter", "--net=/var/run/netns/" + NS % (k + 1)] + argv
        env = dict(os.environ, RANK=str(k), WORLD_SIZE=str(NODES), LIFELINE_LOG_LEVEL="info")
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE if k == 0 else log, stderr=subprocess.STDOUT,
                                      env=env, text=True))
        logs.append(log)
    try:
        if not wait_for(procs[0].stdout, "step %d " % random.randint(30, 80)):
            raise RuntimeError("the leader's trainer did not get going")
        victim = random.randrange(NODES)
        # nsenter execs lifeline: the pid is the supervisor's.
        t0 = time.time()
        os.kill(procs[victim].pid, signal.SIGUSR1)
        rest = procs[0].communicate(timeout=120)[0]
        with open(os.path.join(work, "sup0.log"), "w") as f:
            f.write(rest)
        for p in procs[1:]:
            p.wait(timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    learn, agree = [], []
    for k in range(NODES):
        with open(os.path.join(work, "sup%d.log" % k)) as f:
            lines = f.read().splitlines()
        t = first(lines, r"SIGUSR1 at step|stop asked by the job's leader")
        a = first(lines, r"ranks agreed to checkpoint step")
        if t is None or a is None:
            raise RuntimeError("node %d: no request or agreement in its log:\n%s" % (k, "\n".join(lines[-20:])))
        learn.append(t - t0)
        agree.append(a - t0)
    return max(learn) * 1000, max(agree) * 1000, victim


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def one_node_round(work):
    ckpt = os.path.join(work, "ckpt1")
    shutil.rmtree(ckpt, ignore_errors=True)
    pol = write_policy(work)
    argv = [LIFELINE, "run", "--policy", pol, "--ckpt-dir", ckpt, "--requeue", "none", "--", PYTHON, "-m",
            "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(NODES), "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), "--redirects", "1", "--tee", "1", "--no_python", TRAINER, "--steps",
            "100000", "--step-delay-ms", "5", "--log-every", "1"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        if not wait_for(p.stdout, "step %d " % random.randint(30, 80)):
            raise RuntimeError("torchrun did not get going")
        t0 = time.time()
        os.kill(p.pid, signal.SIGUSR1)
        lines = p.communicate(timeout=120)[0].splitlines()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    a = first(lines, r"ranks agreed to checkpoint step")
    if a is None:
        raise RuntimeError("no agreement:\n" + "\n".join(lines[-20:]))
    return (a - t0) * 1000


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--loopback", action="store_true", help="no namespaces (no root needed)")
    args = ap.parse_args()
    netns = not args.loopback
    if netns and os.geteuid() != 0:
        sys.exit("nodes_bench.py: network namespaces need root (or use --loopback)")
    work = tempfile.mkdtemp(prefix="nodes-bench-", dir=BUILD)
    try:
        if netns:
            make_nodes()
        learn, agree, base = [], [], []
        for i in range(args.rounds):
            l, a, victim = nodes_round(work, netns)
            b = one_node_round(work)
            learn.append(l)
            agree.append(a)
            base.append(b)
            print("round %2d: signal to node %d: all nodes learned it in %6.1f ms, agreed in %6.1f ms; "
                  "one node (3 local ranks) agreed in %6.1f ms" % (i, victim, l, a, b), flush=True)
        print()
        print("%d rounds, %s" % (args.rounds, "3 network namespaces on a bridge" if netns else "loopback"))
        for name, v in (("3 nodes: signal -> every node has the request", learn),
                        ("3 nodes: signal -> every node has the agreed step", agree),
                        ("1 node, 3 ranks: signal -> agreed step (baseline)", base)):
            print("  %-52s median %6.1f ms  p99 %6.1f ms  max %6.1f ms" % (name, statistics.median(v), pct(v, 0.99),
                                                                           max(v)))
        print("  ratio of medians, agreement 3 nodes / 1 node: %.2fx" % (statistics.median(agree) /
                                                                          statistics.median(base)))
        ok = pct(learn, 0.99) < 50 and pct(agree, 0.99) < 50
        print("  target p99 < 50 ms:", "met" if ok else "NOT met")
    finally:
        if netns:
            drop_nodes()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
