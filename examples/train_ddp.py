#!/usr/bin/env python3
"""train_ddp.py: the distributed twin of train_torch.py. A small network trained with PyTorch
DistributedDataParallel on deterministic synthetic data, each rank on its own shard of every
batch, checkpointed through the lifeline Python client in rank mode (docs/distributed.md): every
rank writes its part of the collective checkpoint at the agreed step, rank 0 alone with files
(model, optimizer, RNG states and the step, which is also the data position), the others empty
parts; on resume every rank loads rank 0's part (checkpoint/rank-00000). An interrupted and
resumed run ends with the same model digest as an uninterrupted one (same flags, same world size).

    lifeline run --policy policies/normal.yaml -- /usr/bin/python3 -m torch.distributed.run \\
        --standalone --nproc_per_node 2 examples/train_ddp.py --steps 1000 --digest-out digest.txt

Backend: gloo on CPU; NCCL when CUDA is available (one GPU per local rank; untested). Without
LIFELINE_CONTROL (no supervisor) it just trains; with one process (no torchrun) it trains alone
and checkpoints as train_torch.py does.
"""
import argparse
import gc
import hashlib
import os
import random
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

import lifeline_client  # noqa: E402
import lifeline_torch  # noqa: E402

BATCH = 32  # per rank


class Net(torch.nn.Module):
    """Two linear layers; Adam gives the optimizer state that must survive resumes."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 64)
        self.fc2 = torch.nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


def batch(seed: int, step: int, rank: int, device: torch.device):
    """Rank `rank`'s shard of batch `step`: a function of (seed, step, rank) alone, so the data
    position is the step and a resumed run sees the same data as an uninterrupted one."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + step) * 1024 + rank)
    x = torch.randn(BATCH, 16, generator=g)
    y = torch.sin(x.sum(1, keepdim=True))
    return x.to(device), y.to(device)


def ordered_allreduce(_state, bucket):
    """A DDP communication hook that averages a gradient bucket summing the ranks in rank order.

    Bit-exact resumes need it with more than two ranks: gloo's ring all-reduce adds the ranks'
    values in an order that depends on where an element sits in its bucket, and DDP rebuilds its
    buckets after the first step of every run, so the first step after a resume would round
    differently from the same step of an uninterrupted run. (Two ranks are immune: a + b == b + a.)
    Costs an all-gather instead of an all-reduce: fine for an example, not for a big model."""
    t = bucket.buffer()
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]

    def in_rank_order(_):
        total = parts[0].clone()
        for p in parts[1:]:
            total += p
        return total.div_(len(parts))
    # Asynchronous, as DDP's own hooks: a collective waited for inside the hook made the ranks
    # hang at interpreter exit now and then (torch 1.13, gloo).
    return dist.all_gather(parts, t, async_op=True).get_future().then(in_rank_order)


def leave(distributed: bool) -> None:
    """Ends the process group. The DDP model (whose reducer holds the Python comm hook) must be
    gone first: left to the interpreter's exit, its destruction now and then hung both ranks at
    exit (torch 1.13, gloo)."""
    gc.collect()
    if distributed:
        dist.destroy_process_group()


def model_digest(net: Net) -> str:
    """sha256 of the model state (every parameter and buffer, by name)."""
    h = hashlib.sha256()
    for name, t in net.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def count(kind: str):
    def parse(text: str) -> int:
        v = int(text)
        if v < 0 or (kind == "positive" and v == 0):
            raise argparse.ArgumentTypeError(f"must be a {kind} number")
        return v
    return parse


def main() -> int:
    ap = argparse.ArgumentParser(description="deterministic PyTorch DDP trainer for lifeline")
    ap.add_argument("--steps", type=count("positive"), default=240, help="steps to train")
    ap.add_argument("--step-delay-ms", type=count("non-negative"), default=0,
                    help="sleep per step, to make runs long enough to interrupt")
    ap.add_argument("--seed", type=int, default=1, help="random seed")
    ap.add_argument("--digest-out", default="", help="rank 0 writes the sha256 hex of the final model state here")
    ap.add_argument("--crash-at-step", type=count("non-negative"), default=0, help="abort when reaching this step")
    ap.add_argument("--crash-rank", type=count("non-negative"), default=0,
                    help="the rank that crashes (--crash-at-step) or dies (--die-in-save)")
    ap.add_argument("--die-in-save", type=count("non-negative"), default=0,
                    help="SIGKILL the crash rank while it writes its part of this step (not committed)")
    ap.add_argument("--crash-once", action="store_true", help="crash (or die in the save) only when LIFELINE_ATTEMPT is 0")
    ap.add_argument("--log-every", type=count("non-negative"), default=0, help="rank 0 prints 'step N' every N steps")
    ap.add_argument("--async", dest="background", action="store_true",
                    help="checkpoint asynchronously: copy the state, write it in the background")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    distributed = "WORLD_SIZE" in os.environ  # torchrun (or another launcher) set the rendezvous up
    use_cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if distributed:
        if use_cuda:  # untested: NCCL, one GPU per local rank
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    say = (lambda *a: print(*a, flush=True)) if rank == 0 else (lambda *a: None)

    client = lifeline_client.Client.from_env()  # rank mode when the local world has > 1 rank
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    net = Net().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    step = 0
    if client.resume():  # every rank loads rank 0's part: rank 0 alone saves the state
        step = lifeline_torch.resume(net, opt, client, from_rank=0)
        say(f"train-ddp: resumed from step {step} ({client.resume().checkpoint}), world of {world}")
    else:
        say(f"train-ddp: starting at step 0, world of {world}")
    model = DistributedDataParallel(net, device_ids=[local_rank] if use_cuda else None) if distributed else net
    if distributed and os.environ.get("NOHOOK") != "1":
        model.register_comm_hook(None, ordered_allreduce)
    # Under a supervisor every rank writes its part; alone, the process checkpoints as train_torch.py.
    can_save = client.active or (bool(client.checkpoint_dir) and world == 1)

    while step < args.steps:
        x, y = batch(args.seed, step, rank, device)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()  # DDP averages the gradients over the ranks here
        opt.step()
        step += 1
        if args.crash_at_step and step == args.crash_at_step and rank == args.crash_rank \
                and (not args.crash_once or client.attempt == 0):
            print(f"train-ddp: rank {rank} crashing at step {step} as asked", file=sys.stderr, flush=True)
            os.abort()
        if args.log_every and step % args.log_every == 0:
            say(f"step {step} loss {loss.item():.6f}")
        if args.step_delay_ms:
            time.sleep(args.step_delay_ms / 1000)
        # Every rank asks at every step: the agreement on one step needs every rank's promise.
        if (client.should_checkpoint(step) or step == args.steps) and can_save:
            metrics = {"loss": loss.item()}
            try:
                if args.background:
                    client.save_async(step, lambda: lifeline_torch.snapshot(net, opt, step, write=rank == 0), metrics)
                else:
                    ckpt = client.begin_checkpoint(step)
                    lifeline_torch.save(ckpt, net, opt, step, write=rank == 0)
                    if args.die_in_save == step and rank == args.crash_rank \
                            and (not args.crash_once or client.attempt == 0):
                        print(f"train-ddp: rank {rank} dying in the save of step {step} as asked", file=sys.stderr, flush=True)
                        os.kill(os.getpid(), signal.SIGKILL)
                    ckpt.commit(metrics)  # this rank's part is durable; the supervisor commits
            except Exception as e:  # not the disk's (the client reports those): no memory for the copy, say
                print(f"train-ddp: rank {rank} checkpoint of step {step} failed: {e}; training goes on",
                      file=sys.stderr, flush=True)
            # Every rank gets the same answer at the same step (the supervisor agreed on the stop
            # step), so they leave together without a collective of their own.
            if client.should_exit() and step < args.steps:
                client.wait_for_saves()  # this rank's part of the stop checkpoint is durable
                say(f"train-ddp: stopping at step {step} after its checkpoint")
                client.close()
                del model  # before the process group: see leave()
                leave(distributed)
                return 0
    client.wait_for_saves()
    digest = model_digest(net)
    say(f"train-ddp: finished {args.steps} steps, digest {digest}")
    if rank == 0 and args.digest_out:
        with open(args.digest_out, "w") as f:
            f.write(digest + "\n")
    client.close()
    del model  # before the process group: see leave()
    leave(distributed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
