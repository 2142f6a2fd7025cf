"""PyTorch state through lifeline: a model, its optimizer, the RNG states and the step, saved with
torch.save through the client's commit protocol and loaded back bit-exactly.

Three lines wrap a training loop (README.md, "Your trainer (Python / PyTorch)"):

    import lifeline_torch
    start = lifeline_torch.resume(model, optimizer)                  # 0 on a fresh start
    for step in range(start + 1, total + 1):
        loss = train_one_step()
        if lifeline_torch.checkpoint(step, model, optimizer, {"loss": loss.item()}): break

With background=True a checkpoint stalls training only for a copy of the state into buffers kept
between checkpoints (one more copy of the state in host memory); torch.save, the checksums, fsync
and the commit run on the client's background thread.

A failed save (disk full, I/O error) never ends training: save() and the background write do not
raise for it; the checkpoint fails at its first error (its staging folder is removed at once), the
rest of the state is skipped, and its commit reports the error (stderr, the supervisor's history).
checkpoint() then returns as after a save; older checkpoints stay intact.
"""
from __future__ import annotations

import copy
import inspect
import os
import random
import sys
import threading
from typing import Callable, Dict, Mapping, Optional

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


def _rng_state() -> dict:
    state = {"torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        state["numpy_rng"] = numpy.random.get_state()
    return state


def _write(ckpt: Checkpoint, objects: Mapping[str, object]) -> None:
    """torch.save of each object straight into its checkpoint file (hashed while written). After a
    write error (the checkpoint has failed) the rest is skipped."""
    for name, obj in objects.items():
        if ckpt.failed:
            return
        with ckpt.open_file(name) as f:
            torch.save(obj, f)


def save(ckpt: Checkpoint, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer], step: int) -> None:
    """Writes model.pt, optimizer.pt and state.pt (step and RNG states) into the checkpoint. A write
    error does not raise: it fails the checkpoint, whose commit() then returns False."""
    objects = {"model.pt": model.state_dict()}
    if optimizer is not None:
        objects["optimizer.pt"] = optimizer.state_dict()
    objects["state.pt"] = {"step": step, **_rng_state()}
    _write(ckpt, objects)


class _Buffers:
    """Host copies of a state's tensors, kept between snapshots so that later snapshots copy into
    memory that is already there (a fresh page costs a fault; the copy itself is a memcpy)."""

    def __init__(self) -> None:
        self._by_key: Dict[str, torch.Tensor] = {}
        self._warmer: Optional[threading.Thread] = None

    def prepare(self, objects: Mapping[str, object]) -> None:
        """Allocates and faults in buffers for `objects` on a thread of its own (tensor fills
        release the GIL); the next copy() waits for it."""
        self.wait()
        self._warmer = threading.Thread(target=lambda: [self._buffer(o, k, fill=True) for k, o in _tensors(objects)],
                                        name="lifeline-prepare", daemon=True)
        self._warmer.start()

    def wait(self) -> None:
        if self._warmer is not None:
            self._warmer.join()
            self._warmer = None

    def copy(self, obj: object, key: str) -> object:
        """`obj` with every tensor in it (dicts, lists, tuples) replaced by a host copy."""
        if isinstance(obj, torch.Tensor):
            return self._buffer(obj, key).copy_(obj.detach())
        if isinstance(obj, dict):
            out = type(obj)((k, self.copy(v, f"{key}/{k}")) for k, v in obj.items())
            if hasattr(obj, "__dict__"):  # a state_dict()'s _metadata (module versions) goes along
                out.__dict__.update(copy.deepcopy(vars(obj)))
            return out
        if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
            return type(obj)(self.copy(v, f"{key}/{i}") for i, v in enumerate(obj))
        return copy.deepcopy(obj)

    def _buffer(self, t: torch.Tensor, key: str, fill: bool = False) -> torch.Tensor:
        buf = self._by_key.get(key)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype or buf.stride() != t.stride():
            buf = torch.empty_like(t, device="cpu")
            if fill:
                buf.zero_()  # touches every page now rather than in the first snapshot
            self._by_key[key] = buf
        return buf


def _tensors(obj: object, key: str = ""):
    """(key, tensor) for every tensor in `obj`, keyed as _Buffers.copy keys them."""
    if isinstance(obj, torch.Tensor):
        yield key, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{key}/{k}" if key else str(k))
    elif isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{key}/{i}")


_buffers = _Buffers()


def prepare(model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
    """Allocates the buffers snapshot() copies into and faults their pages in, on a thread of its
    own, so that the first snapshot costs no more than the later ones. Call it once the optimizer
    state exists (after the first step); optional."""
    objects = {"model.pt": model.state_dict()}
    if optimizer is not None:
        objects["optimizer.pt"] = optimizer.state_dict()
    _buffers.prepare(objects)


def snapshot(model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer],
             step: int) -> Callable[[Checkpoint], None]:
    """Copies what save() writes into host buffers and returns the function that writes that copy.
    Call it from the snapshot function given to Client.save_async, which first waits for the
    save in flight: the next snapshot reuses the same buffers. Runs on the training thread: this
    is the stall."""
    _buffers.wait()
    objects = {"model.pt": _buffers.copy(model.state_dict(), "model.pt")}
    if optimizer is not None:
        objects["optimizer.pt"] = _buffers.copy(optimizer.state_dict(), "optimizer.pt")
    objects["state.pt"] = {"step": step, **_rng_state()}  # fresh objects already
    return lambda ckpt: _write(ckpt, objects)


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
               client: Optional[Client] = None, background: bool = False) -> bool:
    """Checkpoints after `step` when due (or `final`); True when asked to stop (state saved: leave).
    With `background`, only snapshot() stalls training; a stop or `final` waits for the write."""
    c = client or get_client()
    if background and not _buffers._by_key and _buffers._warmer is None and c.checkpoint_dir:
        prepare(model, optimizer)  # first call: the optimizer state exists by now
    if (c.should_checkpoint(step) or final) and c.checkpoint_dir:
        if background:
            try:
                c.save_async(step, lambda: snapshot(model, optimizer, step), metrics)
            except Exception as e:  # the copy failed (no memory for it, say): no save, training goes on
                print(f"lifeline: checkpoint of step {step} failed: {type(e).__name__}: {e} "
                      "(older checkpoints are intact)", file=sys.stderr, flush=True)
                c._save_failed()
        else:
            ckpt = c.begin_checkpoint(step)
            try:
                save(ckpt, model, optimizer, step)
            except Exception as e:  # not the disk's (that fails the checkpoint quietly): still no save
                ckpt._fail(f"{type(e).__name__}: {e}")
            ckpt.commit(metrics)  # False, reported, when the save failed
    stop = c.should_exit()
    if stop or final:
        c.wait_for_saves()  # the stop (or last) checkpoint is durable and acked before we return
    return stop
