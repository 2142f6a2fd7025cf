"""PyTorch state through lifeline: a model, its optimizer, the RNG states and the step, saved with
torch.save through the client's commit protocol and loaded back bit-exactly.

Three lines wrap a training loop (docs/python.md):

    import lifeline_torch
    start = lifeline_torch.resume(model, optimizer)                  # 0 on a fresh start
    for step in range(start + 1, total + 1):
        loss = train_one_step()
        if lifeline_torch.checkpoint(step, model, optimizer, {"loss": loss.item()}): break
"""
from __future__ import annotations

import inspect
import io
import os
import random
import sys
from typing import Mapping, Optional

import torch

from lifeline_client import Checkpoint, Client

_client: Optional[Client] = None
# Our own, verified checkpoints hold RNG states (tuples, numpy arrays): not weights-only.
_LOAD_ARGS = {"weights_only": False} if "weights_only" in inspect.signature(torch.load).parameters else {}


def get_client() -> Client:
    """The process's lifeline client, attached on first use."""
    global _client
    if _client is None:
        _client = Client.from_env()
    return _client


def save(ckpt: Checkpoint, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer], step: int) -> None:
    """Writes model.pt, optimizer.pt and state.pt (step and RNG states) into the checkpoint."""
    def put(name: str, obj: object) -> None:
        buf = io.BytesIO()
        torch.save(obj, buf)
        ckpt.write_file(name, buf.getbuffer())

    put("model.pt", model.state_dict())
    if optimizer is not None:
        put("optimizer.pt", optimizer.state_dict())
    state = {"step": step, "torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        state["numpy_rng"] = numpy.random.get_state()
    put("state.pt", state)


def load(path: str, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer]) -> int:
    """Restores what save() wrote into `model`, `optimizer` and the RNGs; returns the step."""
    model.load_state_dict(torch.load(os.path.join(path, "model.pt"), map_location="cpu", **_LOAD_ARGS))
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(os.path.join(path, "optimizer.pt"), map_location="cpu", **_LOAD_ARGS))
    state = torch.load(os.path.join(path, "state.pt"), map_location="cpu", **_LOAD_ARGS)
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    if "numpy_rng" in state:
        import numpy
        numpy.random.set_state(state["numpy_rng"])
    return int(state["step"])


def resume(model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
           client: Optional[Client] = None) -> int:
    """Loads the checkpoint lifeline chose, if any; returns its step (0 on a fresh start)."""
    r = (client or get_client()).resume()
    if r is None:
        return 0
    step = load(r.path, model, optimizer)
    print(f"lifeline: resumed from step {step} ({r.path})", file=sys.stderr, flush=True)
    return step


def checkpoint(step: int, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
               metrics: Optional[Mapping[str, float]] = None, final: bool = False,
               client: Optional[Client] = None) -> bool:
    """Checkpoints after `step` when due (or `final`); True when asked to stop (state saved: leave)."""
    c = client or get_client()
    if not (c.should_checkpoint(step) or final) or not c.checkpoint_dir:
        return c.should_exit()
    ckpt = c.begin_checkpoint(step)
    save(ckpt, model, optimizer, step)
    ckpt.commit(metrics)
    return c.should_exit()
