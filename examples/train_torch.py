#!/usr/bin/env python3
"""train_torch.py: the Python twin of lifeline-train-example. A small PyTorch network trained on
deterministic synthetic data, checkpointed through the lifeline Python client; an interrupted and
resumed run ends with the same parameter digest as an uninterrupted one (with the same flags).
--async checkpoints in the background; --state-mib makes the training state big, for benchmarks.

    lifeline run --policy policies/normal.yaml -- /usr/bin/python3 examples/train_torch.py --steps 10000
"""
import argparse
import hashlib
import math
import os
import random
import sys
import time

# In the repository: its python/ first, as before; elsewhere the installed client (pip install
# ./python, the modulefile's PYTHONPATH, or the two single files copied next to this script).
_REPO_PYTHON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python")
if os.path.isfile(os.path.join(_REPO_PYTHON, "lifeline_client.py")):
    sys.path.insert(0, _REPO_PYTHON)

import torch  # noqa: E402

import lifeline_client  # noqa: E402
import lifeline_torch  # noqa: E402


class Net(torch.nn.Module):
    """Two linear layers; Adam gives the optimizer state that must survive resumes. A non-zero
    `wide_floats` adds a wide square layer (the bulk of the state) that every step computes on and
    updates through a tiny penalty, as lifeline-train-example's --state-mib does."""

    def __init__(self, wide_floats: int = 0) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 64)
        self.fc2 = torch.nn.Linear(64, 1)
        d = math.isqrt(wide_floats)
        self.wide = torch.nn.Parameter(torch.zeros(d, d)) if d > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = torch.nn.functional.mse_loss(self(x), y)
        if self.wide is None:
            return loss
        d = self.wide.shape[0]
        u = x.narrow(0, 0, 4).repeat(1, d // x.shape[1] + 1).narrow(1, 0, d)
        return loss + 1e-6 * u.matmul(self.wide).mean()


def parameter_digest(net: Net) -> str:
    h = hashlib.sha256()
    for name, p in net.named_parameters():
        h.update(name.encode())
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def count(kind: str):
    def parse(text: str) -> int:
        v = int(text)
        if v < 0 or (kind == "positive" and v == 0):
            raise argparse.ArgumentTypeError(f"must be a {kind} number")
        return v
    return parse


def main() -> int:
    ap = argparse.ArgumentParser(description="deterministic PyTorch trainer for lifeline")
    ap.add_argument("--steps", type=count("positive"), default=240, help="steps to train")
    ap.add_argument("--step-delay-ms", type=count("non-negative"), default=0,
                    help="sleep per step, to make runs long enough to interrupt")
    ap.add_argument("--seed", type=int, default=1, help="random seed")
    ap.add_argument("--digest-out", default="", help="write the sha256 hex of the final parameters here")
    ap.add_argument("--crash-at-step", type=count("non-negative"), default=0, help="abort when reaching this step")
    ap.add_argument("--crash-once", action="store_true", help="crash only when LIFELINE_ATTEMPT is 0")
    ap.add_argument("--log-every", type=count("non-negative"), default=0, help="print 'step N' every N steps (0: never)")
    ap.add_argument("--async", dest="background", action="store_true",
                    help="checkpoint asynchronously: copy the state, write it in the background")
    ap.add_argument("--state-mib", type=count("non-negative"), default=0,
                    help="make the training state (parameters + Adam moments) about this big")
    ap.add_argument("--report", action="store_true", help="print each checkpoint's stall and the training rate")
    ap.add_argument("--warm-start", choices=["reset", "continue"], default="continue",
                    help="starting from another run's checkpoint (lifeline run --init-from): reset = its weights only, "
                         "step 0, a fresh optimizer; continue = everything, continuing from its step")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    client = lifeline_client.Client.from_env()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    net = Net((args.state_mib << 20) // 12)  # parameters and Adam's two moments: 12 bytes a float
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    step = 0
    r = client.resume()
    if r and r.warm and args.warm_start == "reset":
        source_step = lifeline_torch.load_weights(r.path, net)
        print(f"train-example: warm start (reset) from step {source_step} ({r.path}): weights digest "
              f"{parameter_digest(net)}, step 0, fresh optimizer", flush=True)
    elif r:
        step = lifeline_torch.load(r.path, net, opt)
        if r.warm:
            print(f"train-example: warm start (continue) from step {step} ({r.path}): weights digest "
                  f"{parameter_digest(net)}", flush=True)
        else:
            print(f"train-example: resumed from step {step} ({r.path})", flush=True)
    else:
        print("train-example: starting at step 0", flush=True)
    can_save = client.active or bool(client.checkpoint_dir)
    first_step, started = step, time.monotonic()
    train_s = stall_s = 0.0
    saves = 0
    step_s = []  # each step's training time (--report)

    def print_rate() -> None:
        if args.report:
            n = step - first_step
            print(f"train-example: trained {n} steps in {train_s:.3f} s ({n / train_s:.2f} steps/s); "
                  f"checkpoint stall {stall_s:.3f} s over {saves} saves", flush=True)
            print("train-example: step times (s): " + " ".join(f"{t:.4f}" for t in step_s), flush=True)

    while step < args.steps:
        step_t0 = time.monotonic()
        x = torch.randn(32, 16)
        y = torch.sin(x.sum(1, keepdim=True))
        loss = net.loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if args.background and step == first_step + 1:  # once the optimizer state exists
            lifeline_torch.prepare(net, opt)  # the first snapshot's buffers are faulted in meanwhile
        if args.crash_at_step and step == args.crash_at_step and (not args.crash_once or client.attempt == 0):
            print(f"train-example: crashing at step {step} as asked", file=sys.stderr, flush=True)
            os.abort()
        if args.log_every and step % args.log_every == 0:
            print(f"step {step} loss {loss.item():.6f}", flush=True)
        if args.step_delay_ms:
            time.sleep(args.step_delay_ms / 1000)
        if args.report:
            step_s.append(time.monotonic() - step_t0)
        if step == args.steps:
            train_s = time.monotonic() - started
        if (client.should_checkpoint(step) or step == args.steps) and can_save:
            t0 = time.monotonic()
            metrics = {"val_loss": loss.item()}
            # A failed save (disk full, I/O error) is reported by the client (stderr, the supervisor's
            # history) and training goes on: the older checkpoints are intact.
            save_failed = False
            try:
                if args.background:
                    saved = client.save_async(step, lambda: lifeline_torch.snapshot(net, opt, step), metrics)
                else:
                    ckpt = client.begin_checkpoint(step)
                    lifeline_torch.save(ckpt, net, opt, step)
                    saved = ckpt.commit(metrics)
                    save_failed = not saved
            except Exception as e:  # not the disk's: no memory for the snapshot, say
                print(f"train-example: checkpoint of step {step} failed: {e}; training goes on",
                      file=sys.stderr, flush=True)
                saved, save_failed = False, True
            stall = time.monotonic() - t0
            if step < args.steps:
                stall_s += stall
                saves += saved
            if args.report and saved:
                print(f"train-example: checkpoint of step {step}: stall {stall:.6f} s "
                      f"({'async' if args.background else 'sync'})", flush=True)
            if client.should_exit() and step < args.steps:
                durable = client.wait_for_saves()  # the stop checkpoint is durable and acked before we leave
                train_s = time.monotonic() - started
                print_rate()
                after = ("a failed checkpoint" if save_failed or not durable
                         else "its checkpoint" if saved else "the checkpoint that was in flight")
                print(f"train-example: stopping at step {step} after {after}", flush=True)
                return 0
    if not client.wait_for_saves():
        print("train-example: the last checkpoint failed (see above)", flush=True)
    if train_s == 0:
        train_s = time.monotonic() - started
    print_rate()
    digest = parameter_digest(net)
    print(f"train-example: finished {args.steps} steps, digest {digest}", flush=True)
    if args.digest_out:
        with open(args.digest_out, "w") as f:
            f.write(digest + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
