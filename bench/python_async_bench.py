#!/usr/bin/env python3
"""How long a checkpoint stalls a PyTorch trainer through the Python client: a synchronous save
(lifeline_torch.save: torch.save streamed into the checkpoint, sha256, fsync, manifest, rename)
against an asynchronous one (lifeline_torch.snapshot on the training thread, the rest on the
client's background thread), for the state of examples/train_torch.py --state-mib N (a square
layer whose weight and Adam moments make up the state). lifeline_torch.prepare() warms the
snapshot buffers after the first step, as the example does. Between saves the state moves on
by one training step.

Usage: /usr/bin/python3 bench/python_async_bench.py DIR [--mib N] [--runs R]   (DIR: scratch)
Prints one JSON object: sync_s, async_stall_s, async_background_s, and how long the background
save kept the interpreter lock from the training thread (gil_longest_s, gil_held_s)."""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))

import torch  # noqa: E402

import lifeline_client  # noqa: E402
import lifeline_torch  # noqa: E402
from train_torch import Net  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.dir, exist_ok=True)
    client = lifeline_client.Client({"LIFELINE_CKPT_DIR": args.dir})  # inert: no supervisor
    net = Net((args.mib << 20) // 12)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    step = 0

    def train() -> None:
        nonlocal step
        x = torch.randn(32, 16)
        loss = net.loss(x, torch.sin(x.sum(1, keepdim=True)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1

    train()
    lifeline_torch.prepare(net, opt)
    sync_s, stall_s, background_s = [], [], []
    for _ in range(args.runs):
        train()
        t0 = time.monotonic()
        ckpt = client.begin_checkpoint(step)
        lifeline_torch.save(ckpt, net, opt, step)
        if not ckpt.commit():
            return 1
        sync_s.append(time.monotonic() - t0)
    gil_max_s, gil_held_s = [], []
    for _ in range(args.runs):
        train()
        t0 = time.monotonic()
        client.save_async(step, lambda: lifeline_torch.snapshot(net, opt, step))
        t1 = last = time.monotonic()
        # While the save runs, this thread wakes every millisecond, as a training loop comes back
        # from its LibTorch calls (which release the interpreter lock), and reads the clock: a
        # gap well past 1 ms is time the background save held the lock, time that a Python
        # training loop would wait too. Python makes a holder let go after 5 ms
        # (sys.getswitchinterval) unless it is inside one C call, so gaps up to 10 ms do not count.
        longest = held = 0.0
        while client.save_in_flight:
            time.sleep(0.001)
            now = time.monotonic()
            gap, last = now - last, now
            longest = max(longest, gap)
            held += gap - 0.001 if gap > 0.010 else 0.0
        if not client.wait_for_saves():
            return 1
        stall_s.append(t1 - t0)
        background_s.append(time.monotonic() - t1)
        gil_max_s.append(longest)
        gil_held_s.append(held)
    print(json.dumps({"sync_s": sync_s, "async_stall_s": stall_s, "async_background_s": background_s,
                      "gil_longest_s": gil_max_s, "gil_held_s": gil_held_s}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
