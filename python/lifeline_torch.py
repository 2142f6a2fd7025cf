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

Distributed (DDP) trainers, rank mode of docs/distributed.md (torchrun --standalone
--nproc-per-node N under one `lifeline run`): every rank calls checkpoint() (or save()) at the same
steps, and each writes its own part of the collective checkpoint; the supervisor commits it once
every rank's part is durable. A DDP trainer whose replicas hold the same state lets rank 0 alone
write the files and the other ranks commit empty parts, and every rank loads rank 0's part:

    rank = int(os.environ.get("RANK", "0"))
    start = lifeline_torch.resume(model, optimizer, from_rank=0)   # checkpoint/rank-00000
    ...
        if lifeline_torch.checkpoint(step, model, optimizer, write=(rank == 0)): break
"""
from __future__ import annotations

import copy
import inspect
import os
import random
import sys
import threading
from typing import Callable, Dict, Mapping, MutableMapping, Optional

import torch

from lifeline_client import Checkpoint, Client, ResumeInfo, rank_folder_name

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


def _extra_state(extra: Optional[Mapping[str, object]]) -> dict:
    """What extra.pt holds: each object's state_dict() when it has one (an LR scheduler, a
    GradScaler, a sampler or data loader that keeps its position), else the value itself (an
    epoch counter, a dict of your own)."""
    return {name: (obj.state_dict() if callable(getattr(obj, "state_dict", None)) else obj)
            for name, obj in (extra or {}).items()}


def save(ckpt: Checkpoint, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer], step: int,
         write: bool = True, extra: Optional[Mapping[str, object]] = None) -> None:
    """Writes model.pt, optimizer.pt, state.pt (step and RNG states) and, with `extra`, extra.pt
    into the checkpoint (see _extra_state; load() restores them). A write error does not raise: it
    fails the checkpoint, whose commit() then returns False. With write=False it writes nothing: a
    rank whose state another rank saves commits an empty part (rank mode only: a single trainer's
    checkpoint needs a file)."""
    if not write:
        return
    objects = {"model.pt": model.state_dict()}
    if optimizer is not None:
        objects["optimizer.pt"] = optimizer.state_dict()
    objects["state.pt"] = {"step": step, **_rng_state()}
    if extra:
        objects["extra.pt"] = _extra_state(extra)
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
             step: int, write: bool = True, extra: Optional[Mapping[str, object]] = None) -> Callable[[Checkpoint], None]:
    """Copies what save() writes into host buffers and returns the function that writes that copy.
    Call it from the snapshot function given to Client.save_async, which first waits for the
    save in flight: the next snapshot reuses the same buffers. Runs on the training thread: this
    is the stall. With write=False nothing is copied and the part stays empty (see save)."""
    if not write:
        return lambda ckpt: None
    _buffers.wait()
    objects = {"model.pt": _buffers.copy(model.state_dict(), "model.pt")}
    if optimizer is not None:
        objects["optimizer.pt"] = _buffers.copy(optimizer.state_dict(), "optimizer.pt")
    objects["state.pt"] = {"step": step, **_rng_state()}  # fresh objects already
    if extra:
        objects["extra.pt"] = copy.deepcopy(_extra_state(extra))  # small: schedulers, counters
    return lambda ckpt: _write(ckpt, objects)


def _load_extra(path: str, extra: Optional[MutableMapping[str, object]]) -> None:
    """Restores `extra` from extra.pt: load_state_dict() on the objects that have it, the saved
    value into the mapping for the others. A name the checkpoint lacks is said, and left as is."""
    if not extra:
        return
    file = os.path.join(path, "extra.pt")
    saved = torch.load(file, map_location="cpu", **_LOAD_ARGS) if os.path.exists(file) else {}
    for name, obj in list(extra.items()):
        if name not in saved:
            print(f"lifeline: the checkpoint in {path} has no '{name}' (extra): left as it is",
                  file=sys.stderr, flush=True)
        elif callable(getattr(obj, "load_state_dict", None)):
            obj.load_state_dict(saved[name])
        else:
            extra[name] = saved[name]


def load(path: str, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer],
         restore_rng: bool = True, extra: Optional[MutableMapping[str, object]] = None) -> int:
    """Restores what save() wrote into `model`, `optimizer`, `extra` (see _load_extra) and (unless
    `restore_rng` is False) the RNGs; returns the step."""
    model.load_state_dict(torch.load(os.path.join(path, "model.pt"), map_location="cpu", **_LOAD_ARGS))
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(os.path.join(path, "optimizer.pt"), map_location="cpu", **_LOAD_ARGS))
    _load_extra(path, extra)
    state = torch.load(os.path.join(path, "state.pt"), map_location="cpu", **_LOAD_ARGS)
    if not restore_rng:
        return int(state["step"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    if "numpy_rng" in state:
        import numpy
        numpy.random.set_state(state["numpy_rng"])
    return int(state["step"])


def load_weights(path: str, model: torch.nn.Module) -> int:
    """Loads only the model's weights (model.pt) of what save() wrote: a warm start that begins
    a new training with a fresh optimizer. Returns the checkpoint's step."""
    model.load_state_dict(torch.load(os.path.join(path, "model.pt"), map_location="cpu", **_LOAD_ARGS))
    state = torch.load(os.path.join(path, "state.pt"), map_location="cpu", **_LOAD_ARGS)
    return int(state["step"])


def resume(model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
           client: Optional[Client] = None, from_rank: Optional[int] = None,
           extra: Optional[MutableMapping[str, object]] = None, warm_start: str = "continue") -> int:
    """Loads the checkpoint lifeline chose, if any; returns the step to continue from (0 on a
    fresh start). In rank mode it loads this rank's part, or with `from_rank` that rank's part (a
    DDP trainer whose rank 0 alone saves: from_rank=0); a checkpoint of another world size raises
    WorldSizeError. A warm start from another run's checkpoint (`lifeline run --init-from`,
    ResumeInfo.kind "warm") with `warm_start="reset"` loads the weights only (fresh optimizer and
    RNGs) and returns 0; with "continue" (the default) it loads everything, as a resume does."""
    if warm_start not in ("reset", "continue"):
        raise ValueError(f"warm_start={warm_start!r}: reset or continue")
    r = (client or get_client()).resume()
    if r is None:
        return 0
    path = r.path if from_rank is None else part_path(r, from_rank)
    if r.kind == "warm" and warm_start == "reset":
        step = load_weights(path, model)
        print(f"lifeline: a warm start from the weights of step {step} of another run ({path}); step 0",
              file=sys.stderr, flush=True)
        return 0
    step = load(path, model, optimizer, extra=extra)
    print(f"lifeline: resumed from step {step} ({path})", file=sys.stderr, flush=True)
    return step


def part_path(r: ResumeInfo, rank: int) -> str:
    """The folder of `rank`'s part in the checkpoint `r` (a version-1 checkpoint: the folder)."""
    part = os.path.join(r.checkpoint, rank_folder_name(rank))
    return part if r.world_size > 1 or os.path.isdir(part) else r.path


def checkpoint(step: int, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
               metrics: Optional[Mapping[str, float]] = None, final: bool = False,
               client: Optional[Client] = None, background: bool = False, write: bool = True,
               extra: Optional[Mapping[str, object]] = None) -> bool:
    """Checkpoints after `step` when due (or `final`); True when asked to stop (state saved: leave).
    With `background`, only snapshot() stalls training; a stop or `final` waits for the write.
    write=False (rank mode): this rank commits an empty part, another rank saves the state."""
    c = client or get_client()
    if background and write and not _buffers._by_key and _buffers._warmer is None and c.checkpoint_dir:
        prepare(model, optimizer)  # first call: the optimizer state exists by now
    # Inert (no supervisor): no collective checkpoint; a rank that does not write has nothing to save.
    if (c.should_checkpoint(step) or final) and c.checkpoint_dir and (write or c.active):
        if background:
            try:
                c.save_async(step, lambda: snapshot(model, optimizer, step, write, extra), metrics)
            except Exception as e:  # the copy failed (no memory for it, say): no save, training goes on
                print(f"lifeline: checkpoint of step {step} failed: {type(e).__name__}: {e} "
                      "(older checkpoints are intact)", file=sys.stderr, flush=True)
                c._save_failed(step)
        else:
            ckpt = c.begin_checkpoint(step)
            try:
                save(ckpt, model, optimizer, step, write, extra)
            except Exception as e:  # not the disk's (that fails the checkpoint quietly): still no save
                ckpt._fail(f"{type(e).__name__}: {e}")
            ckpt.commit(metrics)  # False, reported, when the save failed
    stop = c.should_exit()
    if stop or final:
        c.wait_for_saves()  # the stop (or last) checkpoint is durable and acked before we return
    return stop
