#!/usr/bin/env python3
"""train_torch.py: the Python twin of lifeline-train-example. A small PyTorch network trained on
deterministic synthetic data, checkpointed through the lifeline Python client; an interrupted and
resumed run ends with the same parameter digest as an uninterrupted one.

    lifeline run --policy policies/normal.yaml -- /usr/bin/python3 examples/train_torch.py --steps 10000
"""
import argparse
import hashlib
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import torch  # noqa: E402

import lifeline_client  # noqa: E402
import lifeline_torch  # noqa: E402


class Net(torch.nn.Module):
    """Two linear layers; Adam gives the optimizer state that must survive resumes."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 64)
        self.fc2 = torch.nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


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
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    client = lifeline_client.Client.from_env()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    step = 0
    r = client.resume()
    if r:
        step = lifeline_torch.load(r.path, net, opt)
        print(f"train-example: resumed from step {step} ({r.path})", flush=True)
    else:
        print("train-example: starting at step 0", flush=True)
    can_save = client.active or bool(client.checkpoint_dir)
    while step < args.steps:
        x = torch.randn(32, 16)
        y = torch.sin(x.sum(1, keepdim=True))
        loss = torch.nn.functional.mse_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if args.crash_at_step and step == args.crash_at_step and (not args.crash_once or client.attempt == 0):
            print(f"train-example: crashing at step {step} as asked", file=sys.stderr, flush=True)
            os.abort()
        if args.log_every and step % args.log_every == 0:
            print(f"step {step} loss {loss.item():.6f}", flush=True)
        if args.step_delay_ms:
            time.sleep(args.step_delay_ms / 1000)
        if (client.should_checkpoint(step) or step == args.steps) and can_save:
            ckpt = client.begin_checkpoint(step)
            lifeline_torch.save(ckpt, net, opt, step)
            ckpt.commit({"val_loss": loss.item()})
            if client.should_exit() and step < args.steps:
                print(f"train-example: stopping at step {step} after its checkpoint", flush=True)
                return 0
    digest = parameter_digest(net)
    print(f"train-example: finished {args.steps} steps, digest {digest}", flush=True)
    if args.digest_out:
        with open(args.digest_out, "w") as f:
            f.write(digest + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
