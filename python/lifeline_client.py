"""lifeline's trainer side for Python: resume information, checkpoint requests and the store's
commit protocol. Standard library only (the xxhash module, when importable, lets it check the C++
writer's xxh3-64 checkpoints too; see verify_checkpoint). It mirrors include/lifeline/client.h;
docs/protocol.md is what both speak.

    from lifeline_client import Client
    client = Client.from_env()
    r = client.resume()                          # (path, step) or None
    if r: step = load(r.path)
    while step < total:
        train_step(); step += 1                  # a step number counts completed steps
        if client.should_checkpoint(step):       # two memory accesses, no system call
            ckpt = client.begin_checkpoint(step) # a staging folder: ckpt.path
            save(ckpt.path)                      # any files, or ckpt.write_file(name, data)
            ckpt.commit({"val_loss": v})         # fsync, MANIFEST, rename, ack; False if it failed
            if client.should_exit(): break       # stop request: leave now

Asynchronous checkpoints (Client.save_async): only `snapshot` (a copy of the state to memory)
runs on the training thread; what it returns writes that copy on a background thread, followed by
the commit and the ack. At most one save is in flight; requests and every_steps points that come
meanwhile are coalesced into it; a stop is never coalesced away (should_checkpoint stays True so
the trainer reaches should_exit, then wait_for_saves makes the stop checkpoint durable); a crash
during the background write leaves the previous checkpoint the newest valid one. Same rules as
the C++ client (include/lifeline/client.h).

        def snapshot():                          # on the training thread: the part that stalls it
            copy = bytes(state)
            return lambda ckpt: ckpt.write_file("state.bin", copy)   # on the background thread
        if client.should_checkpoint(step):
            client.save_async(step, snapshot, {"val_loss": v})
            if client.should_exit():
                client.wait_for_saves()              # the stop checkpoint is durable and acked
                break
    client.wait_for_saves()                          # before reporting success

A failed save (disk full, I/O error) never ends training: the checkpoint fails at its first
error (its staging folder is removed at once), commit() returns False, and the failure is printed
and counted for the supervisor (its history records `checkpoint_failed`); older checkpoints stay
intact. Nothing raises into torch.save's C++ writer (see CheckpointFile).

Under a supervisor the client also, for as long as it lives (until close()), as the C++ client:
 - registers as a writer of the checkpoint directory: a shared flock on <dir>/.writers.lock, which
   lets the next attempt's supervisor prove that this process cannot commit any more. Forked
   children share the hold until they exit. A file system without flock gets a warning instead.
 - watches the supervisor (its pid is in the control block) from a daemon thread blocked in
   poll() on os.pidfd_open(pid) (os.kill(pid, 0) once a second where that is missing): when the
   supervisor is gone (kill -9, say) it prints "lifeline: supervisor pid N is gone: stopping this
   trainer" and SIGKILLs the trainer's process group (only itself when it shares the supervisor's
   group), so that no trainer, worker or grandchild writes on without its supervisor. A trainer
   that attaches after its supervisor died stops at once. LIFELINE_WATCH_SUPERVISOR=0 turns the
   watch off (a supervisor in another PID namespace). The thread needs the interpreter lock only
   once, to act; should_checkpoint() does not see it. Forked children have no such thread and
   their close() leaves the parent's alone.

Rank mode (docs/distributed.md): when the local world has more than one rank
(LIFELINE_LOCAL_WORLD_SIZE, else torchrun's LOCAL_WORLD_SIZE, > 1; see rank_env), each rank is a
client of the same control block with a slot of its own, and the ranks checkpoint one agreed step:

 - should_checkpoint(step) stays one store, one load and a compare while nothing is asked. On a
   new request the rank promises step + margin (2, or LIFELINE_AGREE_MARGIN) and keeps training;
   the supervisor agrees on the largest promise S; should_checkpoint is True at S on every rank.
   Only at its promised step with no agreement yet does a rank wait (polling every 100 us). A
   trainer that skips S is reported and its part counted as failed. every_steps points need no
   agreement (and are not coalesced into a save in flight: every rank writes the same parts).
 - begin_checkpoint(S) / save_async(S): ckpt.path is this rank's part folder,
   <dir>/.staging-step-<12 digits>-<supervisor pid>-<token>/rank-<5 digits>/, shared staging folder
   made by whichever rank comes first. commit() makes the part durable (files, may be none; a
   part MANIFEST) and returns True; the supervisor commits the checkpoint once every part is there.
   A new part first waits (up to part_patience seconds) for the previous one to be committed or
   abandoned.
 - resume(): path = this rank's part folder, checkpoint = the step-N folder; a checkpoint of
   another world size raises WorldSizeError unless LIFELINE_RESHARD=1 (path = the step-N folder).
 - the state, heartbeat and failures go into the rank's slot, never into the header.

Outside a supervisor (no LIFELINE_CONTROL) the client is inert: should_checkpoint and
should_exit are False, no signal handler, thread or lock is installed, resume() reads
LIFELINE_RESUME_FROM and LIFELINE_RESUME_STEP only (in rank mode: the rank's part, as above), and
begin_checkpoint still works (a single-process checkpoint into LIFELINE_CKPT_DIR, else ./checkpoints,
where `lifeline run` looks by default; without a supervisor no collective one is committed).

Memory ordering (docs/protocol.md, "Memory ordering"). The supervisor and the C++ client use
std::atomic on the control block, with acquire/release ordering where it matters; Python has no
atomics. Every field is naturally aligned and read or written as one 4- or 8-byte access, never
byte-wise. On 64-bit x86 (x86_64/amd64) the client uses plain memoryview.cast("I"/"Q") loads and
stores of the mmap (one mov each; x86-64's total store order makes them acquire/release): the
fast path. On any other machine (aarch64, such as Grace Hopper nodes, whose plain loads and
stores may be reordered) every ordered access goes through libatomic's __atomic_load_N /
__atomic_store_N / __atomic_fetch_add_N / __atomic_fetch_or_N with seq_cst, called through ctypes
(Debian package libatomic1, present wherever GCC is); only should_checkpoint's heartbeat store and
its first request_seq look stay plain, as they are relaxed in C++ too. Without libatomic the
client refuses to attach (ControlBlockError naming platform.machine(): install libatomic1 or use
the C++ client); it never runs with weaker ordering. LIFELINE_SHM_ATOMICS=1 takes the libatomic
path on x86-64 as well (the tests run it that way); Client.memory_ordering says which path is in
use. On the plain path read-modify-writes are a load and a store, not atomic; the client does them
only on fields nobody else writes (commit_count, failed_saves), on the stop flag (which only ever
gains the same bit), and once per received signal on request_seq (see Client._on_signal); with
libatomic they are atomic fetch_add / fetch_or, as in C++.
"""
from __future__ import annotations
__version__ = "0.1.0"  # meson.build's project version (tests/install/install_test.sh checks they agree)

import atexit
import contextlib
import enum
import errno
import fcntl
import hashlib
import json
import mmap
import os
import platform
import re
import secrets
import select
import shutil
import signal
import socket
import stat
import sys
import threading
import time
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

# --- The control block's byte layout, version 2: the one place Python reads it from. ----------
# It mirrors include/lifeline/control_layout.h; tests/python_test.cc proves the two agree.
# Version 2 = version 1's header unchanged + the agreement fields + one slot per local rank
# (docs/distributed.md); a single trainer uses the header only, as in version 1.
MAGIC = 0x314C54434E4C464C  # the bytes "LFLNCTL1" on a little-endian host
VERSION = 2
HEADER_SIZE = 256
MAX_LOCAL_RANKS = 64
RANK_SLOT_SIZE = 128
RANK_SLOTS_OFF = HEADER_SIZE  # rank slot i (a local rank) at RANK_SLOTS_OFF + i * RANK_SLOT_SIZE
SIZE = HEADER_SIZE + MAX_LOCAL_RANKS * RANK_SLOT_SIZE  # 8448
FLAG_STOP = 1

# field: (offset, width in bytes); native-endian, naturally aligned. 184..255 reserved, zero.
FIELDS: Dict[str, Tuple[int, int]] = {
    "magic": (0, 8),
    "version": (8, 4),
    "size": (12, 4),
    "owner_uid": (16, 4),
    "supervisor_pid": (20, 4),
    "trainer_pid": (24, 4),
    "trainer_signal": (28, 4),
    "request_seq": (32, 8),
    "request_reason": (40, 4),
    "request_flags": (44, 4),
    "deadline": (48, 8),
    "ack_seq": (56, 8),
    "ack_step": (64, 8),
    "current_step": (72, 8),
    "every_steps": (80, 8),
    "skip_first_steps": (88, 8),
    "commit_count": (96, 8),
    "last_commit_step": (104, 8),
    "last_commit_ns": (112, 8),
    "last_commit_bytes": (120, 8),
    "failed_saves": (128, 8),
    "client_state": (136, 4),
    "steps_seen": (144, 8),
    # Rank mode (docs/distributed.md): the agreement on one step, written by the supervisor.
    "agreement_seq": (152, 8),   # request_seq the agreement answers (release, last)
    "agreed_step": (160, 8),     # the step every rank checkpoints for it
    "staging_token": (168, 8),   # names the shared staging folder
    "abandoned_step": (176, 8),  # newest collective checkpoint given up
    "agreed_stop": (184, 4),     # 1: every rank leaves after the agreed step (before agreement_seq)
}

# Rank slot field: (offset within the slot, width in bytes). 72..127 reserved, zero.
SLOT_FIELDS: Dict[str, Tuple[int, int]] = {
    "pid": (0, 4),             # 0 = free; stored last on attach
    "rank": (4, 4),            # global rank
    "world_size": (8, 4),
    "state": (12, 4),          # ClientState of this rank
    "current_step": (16, 8),   # heartbeat
    "seen_seq": (24, 8),       # newest request_seq seen (after promised_step)
    "promised_step": (32, 8),  # no step beyond it before an agreement answers seen_seq
    "part_step": (40, 8),      # newest step whose part is durable (after part_bytes)
    "part_bytes": (48, 8),
    "failed_step": (56, 8),    # newest step whose part failed
    "failed_saves": (64, 8),   # parts that failed
    "part_ns": (72, 8),        # how long that part took, begin to durable (before part_step)
}


class Reason(enum.IntEnum):
    """Why a checkpoint was requested."""

    NONE = 0
    PERIODIC = 1
    STOP_SIGNAL = 2
    TIME_LIMIT = 3
    MANUAL = 4
    TRAINER_SIGNAL = 5


class ClientState(enum.IntEnum):
    """What the trainer side is doing."""

    ABSENT = 0
    ATTACHED = 1
    SAVING = 2
    EXITING = 3


def layout_table(slots: bool = False) -> dict:
    """The layout as plain data, for the test that compares it with the C++ header: the header's
    constants and offsets; with `slots`, also the rank slots' (header_size, max_local_ranks,
    rank_slot_size, rank_slots_off, and slot_offsets: each slot field's offset within the slot,
    named as tests/python_test.cc's snake() names the C++ constants: kSlotPidOff -> slot_pid)."""
    table = {
        "magic": MAGIC,
        "version": VERSION,
        "size": SIZE,
        "flag_stop": FLAG_STOP,
        "offsets": {name: off for name, (off, _) in FIELDS.items()},
        "reasons": {r.name.lower(): int(r) for r in Reason},
        "client_states": {s.name.lower(): int(s) for s in ClientState},
    }
    if slots:
        table.update({"header_size": HEADER_SIZE, "max_local_ranks": MAX_LOCAL_RANKS,
                      "rank_slot_size": RANK_SLOT_SIZE, "rank_slots_off": RANK_SLOTS_OFF,
                      "slot_offsets": {"slot_" + name: off for name, (off, _) in SLOT_FIELDS.items()}})
    return table


def rank_slot_table() -> Dict[str, Tuple[int, int]]:
    """A rank slot's fields: {name: (offset within the slot, width in bytes)} (C++ kSlot*Off)."""
    return dict(SLOT_FIELDS)


def rank_slot_offset(local_rank: int) -> int:
    """Where the slot of `local_rank` starts in the block (C++ layout::rank_slot)."""
    return RANK_SLOTS_OFF + local_rank * RANK_SLOT_SIZE


# --- Store constants (src/store) ----------------------------------------------------------------
MANIFEST = "MANIFEST"
MAX_MANIFEST_BYTES = 4 << 20  # the store's kMaxManifestBytes: bigger is refused on write and invalid on read
CHECKSUM = "sha256"  # what this client writes: hashlib always has it (the C++ writer's default is xxh3-64)
CHECKSUMS = ("xxh3-64", "sha256")  # every algorithm a MANIFEST may name (src/store/checksum.h)
try:  # Debian's python3-xxhash: lets Python check the C++ writer's xxh3-64 checkpoints too
    from xxhash import xxh3_64 as _xxh3_64
except ImportError:  # without it an xxh3-64 checkpoint is "not checked here", never invalid
    _xxh3_64 = None
_CHUNK = 8 << 20
_NEVER = 2**64 - 1
SHM_DIR = "/dev/shm"
PART_FORMAT = "lifeline-checkpoint-part"  # a rank's part MANIFEST (docs/distributed.md)
AGREEMENT_POLL = 100e-6  # seconds between looks at the agreement, at the promised step only
PART_POLL = 0.001        # seconds between looks for the previous part's commit
PART_PATIENCE = 120.0    # seconds a new part waits for the previous one to be committed or abandoned


# The every_steps rule of docs/protocol.md ("Poll"); the C++ client's copy is is_periodic_step and
# next_periodic_step in src/control/control_block.h: keep the two the same.
def _is_periodic_step(step: int, every: int, skip_first: int) -> bool:
    """Whether `step` is an every_steps point: a positive multiple of `every`, at least `skip_first`."""
    return every > 0 and step % every == 0 and step > 0 and step >= skip_first


def _next_periodic_step(step: int, every: int, skip_first: int) -> int:
    """The first every_steps point after `step`; _NEVER when `every` is 0 or none fits in 64 bits."""
    if every == 0 or step >= _NEVER:
        return _NEVER
    start = max(step + 1, skip_first)
    return min(-(-start // every) * every, _NEVER)


class ControlBlockError(RuntimeError):
    """The control block named by LIFELINE_CONTROL cannot be used."""


class CheckpointError(Exception):
    """A checkpoint folder holds something the store does not allow."""


class WritersLockError(RuntimeError):
    """The checkpoint directory's writers' lock cannot be held (see register_writer)."""


class _ResumeTuple(NamedTuple):
    path: str
    step: int


class ResumeInfo(_ResumeTuple):
    """Where to resume from: a verified checkpoint folder and the step it holds, still the pair
    (path, step) it always was. In rank mode (docs/distributed.md) `path` is this rank's part
    folder (step-N/rank-<5 digits>; the checkpoint folder itself under LIFELINE_RESHARD=1) and
    `checkpoint` the step-N folder; for a single trainer `checkpoint` is `path`. `world_size` is
    the checkpoint's (1 for a version-1 checkpoint; 0 when not read). `kind` (LIFELINE_RESUME_KIND)
    is "continue" for this run's own checkpoint (load everything, continue from `step`) or "warm"
    for another run's (`lifeline run --init-from`, a fork): the trainer decides what it loads and
    whether its step count restarts at 0."""

    def __new__(cls, path: str, step: int, checkpoint: Optional[str] = None, world_size: int = 0,
                kind: str = "continue"):
        self = super().__new__(cls, path, step)
        self._extra = (checkpoint, world_size)
        self._kind = kind
        return self

    @property
    def kind(self) -> str:
        """"continue" (this run's own checkpoint) or "warm" (another run's: a fork)."""
        return self.__dict__.get("_kind", "continue")

    @property
    def warm(self) -> bool:
        """True for a warm start from another run's checkpoint (kind "warm")."""
        return self.kind == "warm"

    @property
    def checkpoint(self) -> str:
        """The step-N folder: `path` itself for a single trainer."""
        extra = self.__dict__.get("_extra", (None, 0))
        return self.path if extra[0] is None else extra[0]

    @property
    def world_size(self) -> int:
        return self.__dict__.get("_extra", (None, 0))[1]


def resume_kind_from_env(value: Optional[str]) -> str:
    """LIFELINE_RESUME_KIND as ResumeInfo.kind: unset or empty (a supervisor from before the
    variable) and "continue" give "continue", "warm" gives "warm"; anything else raises ValueError
    naming the variable."""
    if not value or value == "continue":
        return "continue"
    if value == "warm":
        return "warm"
    raise ValueError(f"lifeline: LIFELINE_RESUME_KIND={value!r} is not continue or warm")


class RankEnvError(ValueError):
    """A rank-mode launcher variable (LOCAL_RANK, WORLD_SIZE, ...) is missing or malformed."""


class WorldSizeError(RuntimeError):
    """The checkpoint to resume was written by another world size (see LIFELINE_RESHARD)."""


class RankEnv(NamedTuple):
    """Which rank of a distributed job this process is (docs/distributed.md, "Who is a rank")."""

    local_rank: int
    local_world_size: int
    rank: int
    world_size: int
    agree_margin: int = 2  # steps a rank runs on after seeing a request, before an agreement
    reshard: bool = False  # LIFELINE_RESHARD=1: the trainer loads a checkpoint of another world size


def _env_number(env: Mapping[str, str], names: Tuple[str, ...]) -> Tuple[Optional[int], str]:
    """The first of `names` set in `env` as a decimal number, and its name; (None, "") when none is
    set; RankEnvError naming the variable when it is not a number."""
    for name in names:
        text = env.get(name)
        if text is None or text == "":
            continue
        if not re.fullmatch(r"\s*[0-9]{1,9}\s*", text):
            raise RankEnvError(f"lifeline: {name}={text!r} is not a number")
        return int(text), name
    return None, ""


def rank_env(env: Mapping[str, str]) -> Optional[RankEnv]:
    """The rank this process is, or None for a single trainer (a local world of one, or no launcher
    variables). LIFELINE_LOCAL_RANK / LIFELINE_LOCAL_WORLD_SIZE / LIFELINE_RANK /
    LIFELINE_WORLD_SIZE win over torchrun's LOCAL_RANK / LOCAL_WORLD_SIZE / RANK / WORLD_SIZE.
    Raises RankEnvError naming the variable for a value that is missing, not a number or out of
    range, and for a world larger than the local one under a lone supervisor (several nodes need
    one supervisor per node, which sets LIFELINE_PEERS: docs/distributed.md)."""
    local_world, lw_name = _env_number(env, ("LIFELINE_LOCAL_WORLD_SIZE", "LOCAL_WORLD_SIZE"))
    peers, _ = _env_number(env, ("LIFELINE_PEERS",))
    peers = peers or 1
    if peers > 1 and local_world is None:
        local_world, lw_name = 1, "LOCAL_WORLD_SIZE"
    if local_world is None or local_world < 1 or (local_world == 1 and peers == 1):
        return None
    if local_world > MAX_LOCAL_RANKS:
        raise RankEnvError(f"lifeline: {lw_name}={local_world}: at most {MAX_LOCAL_RANKS} local ranks")
    local_rank, lr_name = _env_number(env, ("LIFELINE_LOCAL_RANK", "LOCAL_RANK"))
    if local_rank is None and local_world == 1:
        local_rank, lr_name = 0, "LOCAL_RANK"
    if local_rank is None:
        raise RankEnvError(f"lifeline: {lw_name}={local_world} but LIFELINE_LOCAL_RANK / LOCAL_RANK is unset")
    if local_rank >= local_world:
        raise RankEnvError(f"lifeline: {lr_name}={local_rank} is not below {lw_name}={local_world}")
    world, w_name = _env_number(env, ("LIFELINE_WORLD_SIZE", "WORLD_SIZE"))
    rank, r_name = _env_number(env, ("LIFELINE_RANK", "RANK"))
    if world is None:
        world, w_name = local_world, lw_name
    if rank is None:
        rank, r_name = local_rank, lr_name
    if world < 1:
        raise RankEnvError(f"lifeline: {w_name}={world} is not a world size")
    if rank >= world:
        raise RankEnvError(f"lifeline: {r_name}={rank} is not below {w_name}={world}")
    if world > local_world and peers == 1:
        raise RankEnvError(f"lifeline: {w_name}={world} spans several nodes ({lw_name}={local_world}) but this "
                           "lifeline run is the job's only supervisor: start one per node with srun "
                           "(docs/distributed.md, jobscripts/multi-node.sbatch)")
    if world < local_world:
        raise RankEnvError(f"lifeline: {w_name}={world} is smaller than {lw_name}={local_world}")
    margin, m_name = _env_number(env, ("LIFELINE_AGREE_MARGIN",))
    if margin is not None and margin < 1:
        raise RankEnvError(f"lifeline: {m_name}={margin}: the margin is at least 1 step")
    return RankEnv(local_rank, local_world, rank, world, 2 if margin is None else margin,
                   env.get("LIFELINE_RESHARD", "") == "1")


# --- Memory ordering (docs/protocol.md, "Memory ordering") -------------------------------------
# The supervisor and the C++ client use std::atomic on the control block with acquire/release (and
# seq_cst) ordering. Python has no atomics. Where plain aligned loads and stores already give that
# ordering (64-bit x86: total store order), the block is read and written through memoryview
# casts: one aligned 4- or 8-byte access each, the fast path. Everywhere else (aarch64, such as
# Grace Hopper nodes; ppc64le; a 32-bit interpreter) every ordered access goes through libatomic's
# __atomic_load_N / __atomic_store_N / __atomic_fetch_*_N with __ATOMIC_SEQ_CST (ldar/stlr and
# the like: at least the acquire/release C++ uses on each field), called through ctypes; without
# libatomic the client refuses to attach, naming the machine and what to do.
ATOMICS_ENV = "LIFELINE_SHM_ATOMICS"  # "1": the libatomic path even on x86-64 (tests use it)
LIBATOMIC_NAMES = ("libatomic.so.1", "libatomic.so")  # dlopen()ed in this order
_TSO_MACHINES = ("x86_64", "amd64")
_SEQ_CST = 5  # __ATOMIC_SEQ_CST
_MASKS = {4: 0xFFFFFFFF, 8: 0xFFFFFFFFFFFFFFFF}

# Every field must sit on a multiple of its width (and a slot on a multiple of 8) for its single
# aligned access: tests/python_test.cc checks the offsets against the C++ header, this their shape.
assert all(off % width == 0 for off, width in (*FIELDS.values(), *SLOT_FIELDS.values())), "misaligned field"
assert RANK_SLOTS_OFF % 8 == 0 and RANK_SLOT_SIZE % 8 == 0, "misaligned rank slots"


def memory_ordering(env: Optional[Mapping[str, str]] = None) -> str:
    """How this process reads and writes the control block: "plain" (aligned memoryview loads and
    stores, whose ordering x86-64 itself guarantees) on 64-bit x86, "libatomic" everywhere else, or
    anywhere with LIFELINE_SHM_ATOMICS=1. Raises ControlBlockError for another value of it."""
    env = os.environ if env is None else env
    forced = env.get(ATOMICS_ENV, "")
    if forced not in ("", "1"):
        raise ControlBlockError(f"lifeline: {ATOMICS_ENV}={forced!r}: only 1 (use libatomic for the control "
                                "block even where plain loads and stores suffice) or unset")
    tso = platform.machine().lower() in _TSO_MACHINES and sys.maxsize > 2**32
    return "plain" if tso and not forced else "libatomic"


class _LibAtomic:
    """libatomic's sized __atomic_* functions for 4- and 8-byte words, through ctypes.PyDLL: the
    interpreter lock stays held for the call (a CDLL call would release and retake it each time,
    which costs more than the access and can hand the lock to a background save thread)."""

    def __init__(self, ctypes, lib) -> None:
        self.ctypes = ctypes
        vp, i, u32, u64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_uint64

        def fn(name, restype, *argtypes):
            f = getattr(lib, name)  # AttributeError: not a libatomic
            f.restype, f.argtypes = restype, list(argtypes)
            return f

        word = {4: u32, 8: u64}
        self.load = {n: fn(f"__atomic_load_{n}", t, vp, i) for n, t in word.items()}
        self.store = {n: fn(f"__atomic_store_{n}", None, vp, t, i) for n, t in word.items()}
        self.fetch_add = {n: fn(f"__atomic_fetch_add_{n}", t, vp, t, i) for n, t in word.items()}
        self.fetch_or = {n: fn(f"__atomic_fetch_or_{n}", t, vp, t, i) for n, t in word.items()}
        self.is_lock_free = fn("__atomic_is_lock_free", ctypes.c_bool, ctypes.c_size_t, vp)


_libatomic_cache: Optional[Tuple[Optional[_LibAtomic], str]] = None


def _libatomic() -> Tuple[Optional[_LibAtomic], str]:
    """libatomic's functions, loaded once, or (None, why it cannot be loaded)."""
    global _libatomic_cache
    if _libatomic_cache is None:
        why = []
        try:
            import ctypes
        except ImportError as e:  # a Python built without _ctypes
            _libatomic_cache = (None, f"this Python has no ctypes ({e})")
            return _libatomic_cache
        for name in LIBATOMIC_NAMES:
            try:
                _libatomic_cache = (_LibAtomic(ctypes, ctypes.PyDLL(name)), "")
                return _libatomic_cache
            except (OSError, AttributeError) as e:
                why.append(str(e))
        _libatomic_cache = (None, "; ".join(why))
    return _libatomic_cache


def _no_atomics_message(name: str, why: str) -> str:
    machine = platform.machine() or "unknown"
    if memory_ordering({}) == "plain":  # only LIFELINE_SHM_ATOMICS=1 asked for it
        head = f"{ATOMICS_ENV}=1 asks for libatomic's atomics on control block {name}"
    else:
        head = (f"this is a {machine} machine, whose plain loads and stores do not give the acquire/release "
                f"ordering control block {name} needs (x86-64's do): the Python client reads and writes it "
                "through libatomic's atomics there")
    return (f"lifeline: {head}, but cannot load libatomic ({why}). Install it (Debian/Ubuntu: apt-get install "
            "libatomic1; RHEL/Rocky: dnf install libatomic), or use the C++ client (liblifeline_client, "
            "include/lifeline/client.h). Refusing to attach.")


def _closed(*args: object) -> int:
    raise ValueError("the control block is closed")


class ControlBlock:
    """One mapping of the supervisor's control block, checked before use. load/store/fetch_add/
    fetch_or and slot_load/slot_store are ordered (at least acquire for a load, release for a
    store, as the C++ side's std::atomic; see memory_ordering); the *_relaxed accesses are single
    aligned loads and stores with no ordering, for should_checkpoint's fast path (the C++ client's
    relaxed heartbeat store and request_seq load)."""

    def __init__(self, name: str, env: Optional[Mapping[str, str]] = None):
        self.name = name
        self.ordering = memory_ordering(env)
        atomics = None
        if self.ordering == "libatomic":
            atomics, why = _libatomic()
            if atomics is None:
                raise ControlBlockError(_no_atomics_message(name, why))
        shm = name.lstrip("/")
        if not shm or "/" in shm or shm in (".", ".."):
            raise ControlBlockError(f"control block name {name!r} is not a shared-memory name")
        try:
            fd = os.open(os.path.join(SHM_DIR, shm), os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as e:
            raise ControlBlockError(f"cannot open control block {name}: {e.strerror}") from e
        try:
            st = os.fstat(fd)
            if st.st_uid != os.getuid() or st.st_mode & 0o077 or not stat.S_ISREG(st.st_mode):
                raise ControlBlockError(
                    f"control block {name} is not owned by this user with mode 0600: refusing it")
            if st.st_size < SIZE:
                raise ControlBlockError(f"control block {name} is too small ({st.st_size} bytes)")
            self._map = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        # One aligned access per field: CPython's memoryview reads and writes a "Q" or "I" item with
        # a memcpy of exactly 8 or 4 bytes, which compilers turn into one load or store instruction
        # (never byte-wise, unlike slicing the mmap). The mapping is page-aligned.
        self._u32 = memoryview(self._map).cast("I")
        self._u64 = memoryview(self._map).cast("Q")
        self._anchor = None  # libatomic: the ctypes view whose address the calls use
        assert self._u32.itemsize == 4 and self._u64.itemsize == 8
        try:
            if atomics is not None:
                self._use_atomics(atomics)
            if self.load("magic") != MAGIC:  # ordered: the supervisor stores the magic last
                raise ControlBlockError(f"control block {name} has no lifeline magic")
            version = self.load("version")
            if version != VERSION:
                raise ControlBlockError(f"control block {name} has layout version {version}, "
                                        f"this client speaks {VERSION}")
            if self.load("size") != SIZE:
                raise ControlBlockError(f"control block {name} declares an unexpected size")
        except ControlBlockError:
            self.close()
            raise

    # The plain accesses: ordered on x86-64 (and the relaxed ones everywhere).
    def _plain_load(self, field: str) -> int:
        off, width = FIELDS[field]
        return self._u64[off >> 3] if width == 8 else self._u32[off >> 2]

    def _plain_store(self, field: str, value: int) -> None:
        off, width = FIELDS[field]
        if width == 8:
            self._u64[off >> 3] = value & 0xFFFFFFFFFFFFFFFF
        else:
            self._u32[off >> 2] = value & 0xFFFFFFFF

    def _plain_slot_load(self, local_rank: int, field: str) -> int:
        off, width = SLOT_FIELDS[field]
        off += rank_slot_offset(local_rank)
        return self._u64[off >> 3] if width == 8 else self._u32[off >> 2]

    def _plain_slot_store(self, local_rank: int, field: str, value: int) -> None:
        off, width = SLOT_FIELDS[field]
        off += rank_slot_offset(local_rank)
        if width == 8:
            self._u64[off >> 3] = value & 0xFFFFFFFFFFFFFFFF
        else:
            self._u32[off >> 2] = value & 0xFFFFFFFF

    def _plain_fetch_add(self, field: str, delta: int) -> int:
        """A load and a store, not one atomic step: see "Read-modify-writes" in docs/protocol.md."""
        old = self._plain_load(field)
        self._plain_store(field, old + delta)
        return old

    def _plain_fetch_or(self, field: str, bits: int) -> int:
        old = self._plain_load(field)
        self._plain_store(field, old | bits)
        return old

    load = _plain_load
    store = _plain_store
    slot_load = _plain_slot_load      # a field of the rank slot of `local_rank` (SLOT_FIELDS)
    slot_store = _plain_slot_store
    fetch_add = _plain_fetch_add      # returns the old value
    fetch_or = _plain_fetch_or
    load_relaxed = _plain_load        # never through libatomic: one aligned load, no ordering
    store_relaxed = _plain_store
    slot_store_relaxed = _plain_slot_store

    def _use_atomics(self, a: _LibAtomic) -> None:
        """Routes the ordered accesses through libatomic (seq_cst) at the mapping's address."""
        self._anchor = a.ctypes.c_char.from_buffer(self._map)  # keeps the mapping from being closed under us
        base = a.ctypes.addressof(self._anchor)
        if base % 8 or not (a.is_lock_free(8, base) and a.is_lock_free(4, base)):
            raise ControlBlockError(f"control block {self.name}: libatomic's 4- and 8-byte atomics are not "
                                    "lock-free here, so they cannot share memory with the supervisor's")
        vp, order = a.ctypes.c_void_p, _SEQ_CST
        # Per header field: (its libatomic functions by operation, its address, its mask).
        fields = {f: (a.load[w], a.store[w], a.fetch_add[w], a.fetch_or[w], vp(base + off), _MASKS[w])
                  for f, (off, w) in FIELDS.items()}

        def load(field: str) -> int:
            f = fields[field]
            return f[0](f[4], order)

        def store(field: str, value: int) -> None:
            f = fields[field]
            f[1](f[4], value & f[5], order)

        def fetch_add(field: str, delta: int) -> int:
            f = fields[field]
            return f[2](f[4], delta & f[5], order)

        def fetch_or(field: str, bits: int) -> int:
            f = fields[field]
            return f[3](f[4], bits & f[5], order)

        def slot_load(local_rank: int, field: str) -> int:
            off, w = SLOT_FIELDS[field]
            return a.load[w](base + rank_slot_offset(local_rank) + off, order)

        def slot_store(local_rank: int, field: str, value: int) -> None:
            off, w = SLOT_FIELDS[field]
            a.store[w](base + rank_slot_offset(local_rank) + off, value & _MASKS[w], order)

        self.load, self.store, self.fetch_add, self.fetch_or = load, store, fetch_add, fetch_or
        self.slot_load, self.slot_store = slot_load, slot_store

    def close(self) -> None:
        if self.ordering == "libatomic":  # no call may reach the unmapped address afterwards
            self.load = self.store = self.fetch_add = self.fetch_or = _closed
            self.slot_load = self.slot_store = _closed
        self._anchor = None
        self._u32.release()
        self._u64.release()
        self._map.close()


# --- Commit protocol helpers --------------------------------------------------------------------
def folder_name(step: int) -> str:
    """The committed folder name of a step: step-000000000040."""
    return "step-%012d" % step


def rank_folder_name(rank: int) -> str:
    """A rank's part folder in a sharded checkpoint: rank-00003."""
    return "rank-%05d" % rank


def staging_folder_name(step: int) -> str:
    """.staging-step-000000000040-<pid>-<8 hex digits>: where a checkpoint is written."""
    return ".staging-%s-%d-%s" % (folder_name(step), os.getpid(), secrets.token_hex(4))


def trash_folder_name(step: int) -> str:
    """.trash-step-000000000040-<pid>-<8 hex digits>: where a replaced folder goes just before it is
    removed (the C++ writer's trash_folder_name)."""
    return ".trash-%s-%d-%s" % (folder_name(step), os.getpid(), secrets.token_hex(4))


def _unsafe_path_reason(rel: str) -> str:
    if not rel:
        return "empty file path"
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: json.loads lets "\ud800" through
        return f"path {rel!r} is not valid UTF-8 (a MANIFEST cannot name it)"
    if rel.startswith("/"):
        return f"absolute path '{rel}'"
    for part in rel.split("/"):
        if part == "..":
            return f"path '{rel}' leaves the checkpoint ('..')"
        if part in ("", "."):
            return f"path '{rel}' is not normalized"
    if "\0" in rel:
        return "path contains NUL"
    return ""


def _write_all(fd: int, data: memoryview, hasher=None) -> None:
    """Writes everything, chunk by chunk, hashing each chunk right after writing it."""
    while data:
        chunk = data[:_CHUNK]
        n = os.write(fd, chunk)
        if hasher is not None:
            hasher.update(chunk[:n])
        data = data[n:]


def _os_error(what: str, path: str, e: OSError) -> str:
    """ "write /ckpt/.staging-.../model.pt: No space left on device", as the C++ client says it."""
    return f"{what} {path}: {e.strerror or e}"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(path: str) -> None:
    """os.makedirs(path, exist_ok=True) that fsyncs the parent of every directory it creates, so
    a new checkpoint directory survives a crash (C++: FileSystem::make_dirs in src/store/file_system.h)."""
    missing = []
    cur = os.path.normpath(path)
    while not os.path.isdir(cur):
        missing.append(cur)
        parent = os.path.dirname(cur)
        if not parent or parent == cur:
            break
        cur = parent
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:
            continue  # made meanwhile, by someone else: theirs to sync
        _fsync_dir(os.path.dirname(d) or ".")


def _hasher(algorithm: str):
    """A fresh hasher for a MANIFEST's checksum_algorithm, or None when this Python cannot compute
    it (xxh3-64 without the xxhash module). hexdigest() is lowercase hex: 64 digits for sha256,
    16 (the 64-bit value, zero-padded, most significant first) for xxh3-64, as the C++ store writes."""
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "xxh3-64" and _xxh3_64 is not None:
        return _xxh3_64()
    return None


def _hash_file(path: str, sync: bool, algorithm: str = CHECKSUM) -> Tuple[int, str]:
    """Size and checksum of a file (never through a link), fsynced first when asked."""
    h, size = _hasher(algorithm), 0
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        while True:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                break
            h.update(chunk)
            size += len(chunk)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return size, h.hexdigest()


def _iso8601(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + ".%03dZ" % (ns // 10**6 % 1000)


class Verdict(NamedTuple):
    """What verify_checkpoint found. `problem` is "" unless the folder is invalid. `checked` is
    False for a checkpoint whose checksums this Python cannot compute (xxh3-64 without the xxhash
    module): everything else was checked, file sizes included, and it is treated as valid (it is
    resumed, never replaced nor removed), as the C++ store would most likely judge it."""

    problem: str
    checked: bool = True


def _read_manifest(folder: str):
    """The bytes of folder/MANIFEST (at most MAX_MANIFEST_BYTES, never through a link; the folder
    itself a real directory), or a Verdict saying why not."""
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            return Verdict("not a directory (or a symbolic link)")
        fd = os.open(os.path.join(folder, MANIFEST), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return Verdict("no MANIFEST (unfinished or foreign folder)")
    except OSError as e:
        if e.errno == errno.ELOOP:
            return Verdict("MANIFEST is a symbolic link (never followed)")
        return Verdict(f"cannot read MANIFEST: {e.strerror}")
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return Verdict("MANIFEST is not a regular file")
        if st.st_size > MAX_MANIFEST_BYTES:
            return Verdict(f"MANIFEST is {st.st_size} bytes, over the {MAX_MANIFEST_BYTES >> 20} MiB limit")
        text = f.read(MAX_MANIFEST_BYTES + 1)
        if len(text) > MAX_MANIFEST_BYTES:
            return Verdict(f"MANIFEST is over the {MAX_MANIFEST_BYTES >> 20} MiB limit")
    return text


def _file_entries_problem(j: dict) -> str:
    """Why a manifest's `files` list is malformed or names an unsafe path; "" when it is fine."""
    if not isinstance(j.get("files"), list):
        return "manifest field 'files' is missing or has the wrong type"
    for entry in j["files"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) \
                or type(entry.get("bytes")) is not int or entry["bytes"] < 0 \
                or not isinstance(entry.get("checksum"), str):
            return "manifest file entry is malformed"
        rel = entry["path"]
        why = _unsafe_path_reason(rel)
        if why or rel == MANIFEST:
            return f"manifest has an unsafe {why or 'entry MANIFEST (it lists itself)'}"
    return ""


def _files_problem(folder: str, files: List[dict], algorithm: str, checked: bool, prefix: str = "") -> str:
    """Checks every listed file of `folder` (a regular file, no link on the way, the listed size
    and, when `checked`, checksum); "" when all verify. `prefix` names the folder in problems."""
    for entry in files:
        rel = entry["path"]
        parts, cur = rel.split("/"), folder
        for i, part in enumerate(parts):
            cur = os.path.join(cur, part)
            try:
                mode = os.lstat(cur).st_mode
            except OSError:
                return f"file {prefix}{rel} is missing"
            if stat.S_ISLNK(mode):
                return f"file {prefix}{rel} goes through a symbolic link"
            if i + 1 < len(parts) and not stat.S_ISDIR(mode):
                return f"file {prefix}{rel}: a parent is not a directory"
            if i + 1 == len(parts) and not stat.S_ISREG(mode):
                return f"file {prefix}{rel} is not a regular file"
        try:
            if checked:
                size, digest = _hash_file(cur, sync=False, algorithm=algorithm)
            else:
                size, digest = os.lstat(cur).st_size, entry["checksum"]
        except OSError as e:
            return f"file {prefix}{rel} cannot be read: {e.strerror}"
        if size != entry["bytes"]:
            return f"file {prefix}{rel} has {size} bytes, the manifest says {entry['bytes']} (truncated or grown)"
        if digest != entry["checksum"]:
            return f"file {prefix}{rel} does not match its {algorithm} checksum"
    return ""


def verify_checkpoint(folder: str) -> Verdict:
    """The store's full check of a committed folder (src/store/checkpoint_store.cc verify_folder):
    MANIFEST (at most MAX_MANIFEST_BYTES, never through a link) parses, names a known checksum
    algorithm and the folder's step, lists at least one safe path, and every file is a regular
    file (no link on the way) with the listed size and checksum. A sharded checkpoint (MANIFEST
    format_version 2, docs/distributed.md) is checked part by part (_verify_sharded)."""
    name = os.path.basename(os.path.normpath(folder))
    m = re.fullmatch(r"step-([0-9]{1,20})", name)
    step = int(m.group(1)) if m else 0
    text = _read_manifest(folder)
    if isinstance(text, Verdict):
        return text
    try:
        j = json.loads(text)
    except ValueError as e:  # UnicodeDecodeError too: a MANIFEST is UTF-8
        return Verdict(f"MANIFEST is not valid JSON ({e})")
    if not isinstance(j, dict) or j.get("format") != "lifeline-checkpoint":
        return Verdict("MANIFEST format is not lifeline-checkpoint")
    if type(j.get("step")) is not int or j["step"] < 0:
        return Verdict("manifest field 'step' is missing or has the wrong type")
    algorithm = j.get("checksum_algorithm")
    if not isinstance(algorithm, str):
        return Verdict("manifest field 'checksum_algorithm' is missing or has the wrong type")
    if algorithm not in CHECKSUMS:
        return Verdict(f"unknown checksum algorithm '{algorithm}'")
    if type(j.get("format_version")) is int and j["format_version"] == 2:
        if j["step"] != step:
            return Verdict(f"MANIFEST says step {j['step']} but the folder is {folder_name(step)}")
        return _verify_sharded(folder, j, algorithm)
    why = _file_entries_problem(j)
    if why:
        return Verdict(why)
    if not j["files"]:
        return Verdict("MANIFEST lists no files (an empty checkpoint has nothing to resume)")
    if j["step"] != step:
        return Verdict(f"MANIFEST says step {j['step']} but the folder is {folder_name(step)}")
    checked = _hasher(algorithm) is not None
    why = _files_problem(folder, j["files"], algorithm, checked)
    return Verdict(why) if why else Verdict("", checked)


def _verify_sharded(folder: str, top: dict, algorithm: str) -> Verdict:
    """A version-2 (sharded) checkpoint, by docs/distributed.md's "Valid when": world_size >= 1 and
    exactly one part per rank 0..world_size-1 at rank-<5 digits>/MANIFEST; each part MANIFEST has
    the listed size and checksum (of the top manifest's algorithm), parses, names the same step,
    rank and world size, and every file it lists verifies; at least one file in all."""
    world = top.get("world_size")
    if type(world) is not int or world < 1:
        return Verdict("manifest field 'world_size' is missing or not a positive integer")
    parts = top.get("parts")
    if not isinstance(parts, list):
        return Verdict("manifest field 'parts' is missing or has the wrong type")
    by_rank: Dict[int, dict] = {}
    for p in parts:
        if not isinstance(p, dict) or type(p.get("rank")) is not int or not isinstance(p.get("path"), str) \
                or type(p.get("bytes")) is not int or p["bytes"] < 0 or not isinstance(p.get("checksum"), str):
            return Verdict("manifest part entry is malformed")
        if not 0 <= p["rank"] < world:
            return Verdict(f"manifest lists a part of rank {p['rank']}, outside the world of {world}")
        if p["rank"] in by_rank:
            return Verdict(f"manifest lists rank {p['rank']} twice")
        if p["path"] != rank_folder_name(p["rank"]) + "/" + MANIFEST:
            return Verdict(f"manifest part of rank {p['rank']} is at '{p['path']}', "
                           f"not {rank_folder_name(p['rank'])}/{MANIFEST}")
        by_rank[p["rank"]] = p
    if len(by_rank) != world:
        missing = min(set(range(world)) - set(by_rank))
        return Verdict(f"manifest lists {len(by_rank)} parts for a world of {world} (rank {missing} is missing)")
    checked = _hasher(algorithm) is not None
    nfiles = 0
    for rank in range(world):
        p = by_rank[rank]
        part_dir = os.path.join(folder, rank_folder_name(rank))
        name = rank_folder_name(rank) + "/"
        text = _read_manifest(part_dir)
        if isinstance(text, Verdict):
            return Verdict(f"part {name}: {text.problem}")
        if len(text) != p["bytes"]:
            return Verdict(f"part {name}{MANIFEST} has {len(text)} bytes, the manifest says {p['bytes']}")
        h = _hasher(algorithm)
        if h is not None:
            h.update(text)
            if h.hexdigest() != p["checksum"]:
                return Verdict(f"part {name}{MANIFEST} does not match its {algorithm} checksum")
        try:
            j = json.loads(text)
        except ValueError as e:
            return Verdict(f"part {name}{MANIFEST} is not valid JSON ({e})")
        if not isinstance(j, dict) or j.get("format") != PART_FORMAT:
            return Verdict(f"part {name}{MANIFEST} format is not {PART_FORMAT}")
        for key, want in (("step", top["step"]), ("rank", rank), ("world_size", world)):
            if type(j.get(key)) is not int or j[key] != want:
                return Verdict(f"part {name}{MANIFEST} says {key} {j.get(key)!r}, the checkpoint {want}")
        part_algorithm = j.get("checksum_algorithm")
        if not isinstance(part_algorithm, str) or part_algorithm not in CHECKSUMS:
            return Verdict(f"part {name}{MANIFEST} names no known checksum algorithm")
        why = _file_entries_problem(j)
        if why:
            return Verdict(f"part {name}: {why}")
        part_checked = _hasher(part_algorithm) is not None
        checked = checked and part_checked
        why = _files_problem(part_dir, j["files"], part_algorithm, part_checked, name)
        if why:
            return Verdict(why)
        nfiles += len(j["files"])
    if nfiles == 0:
        return Verdict("no part lists a file (an empty checkpoint has nothing to resume)")
    return Verdict("", checked)


def _manifest_world_size(folder: str) -> int:
    """The world size a checkpoint was written by: its MANIFEST's world_size for a sharded
    (version-2) checkpoint, 1 for a version-1 one. Raises CheckpointError when it cannot be read."""
    text = _read_manifest(folder)
    if isinstance(text, Verdict):
        raise CheckpointError(f"lifeline: cannot resume {folder}: {text.problem}")
    try:
        j = json.loads(text)
    except ValueError as e:
        raise CheckpointError(f"lifeline: cannot resume {folder}: MANIFEST is not valid JSON ({e})") from e
    if not isinstance(j, dict):
        raise CheckpointError(f"lifeline: cannot resume {folder}: MANIFEST is not an object")
    if j.get("format_version") == 2 and type(j.get("world_size")) is int:
        return j["world_size"]
    return 1


def checkpoint_problem(folder: str) -> str:
    """Why `folder` is not a valid checkpoint, or "" when it is valid or cannot be checked here
    (see Verdict.checked)."""
    return verify_checkpoint(folder).problem


class Resume(NamedTuple):
    """What resume_choice found: the checkpoint to resume (None when none is usable) and the
    newer folders skipped, newest first, as (step, path, problem)."""

    resume: Optional[ResumeInfo]
    skipped: List[Tuple[int, str, str]]


def resume_choice(ckpt_dir: str) -> Resume:
    """The checkpoint a resume would use, as the C++ choose_resume picks it: the newest committed
    folder (step-<digits>) that verifies; staging and trash folders are never considered. An
    xxh3-64 checkpoint that cannot be checked here (Verdict.checked False) counts as valid."""
    try:
        names = os.listdir(ckpt_dir)
    except OSError:
        names = []
    folders = sorted((int(n[5:]), n) for n in names if re.fullmatch(r"step-[0-9]{1,20}", n) and int(n[5:]) < 2**64)
    skipped = []
    for step, name in reversed(folders):
        path = os.path.abspath(os.path.join(ckpt_dir, name))
        problem = verify_checkpoint(path).problem
        if not problem:
            return Resume(ResumeInfo(path, step, path, _manifest_world_size(path)), skipped)
        skipped.append((step, path, problem))
    return Resume(None, skipped)


class CheckpointFile:
    """One file of a checkpoint being written (Checkpoint.open_file): hashed while written,
    fsynced by close().

    write() never raises: torch.save(obj, f) calls it from PyTorch's C++ writer, which cannot
    survive a Python exception (it ends in std::terminate, the whole trainer gone). An I/O error
    fails the whole checkpoint at once (its staging folder is removed, commit() returns False with
    that error); later writes are dropped. Any other exception raised while writing
    (KeyboardInterrupt, MemoryError) fails the checkpoint too and is raised again by close(),
    outside torch.save."""

    def __init__(self, ckpt: "Checkpoint", rel: str):
        self._ckpt, self._rel = ckpt, rel
        self._full = os.path.join(ckpt.path, rel)
        self._hasher = hashlib.sha256()
        self._size = 0
        self._fd = -1
        self._deferred: Optional[BaseException] = None  # raised by close()
        if ckpt.failed:
            return
        try:
            os.makedirs(os.path.dirname(self._full), exist_ok=True)
            self._fd = os.open(self._full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as e:
            ckpt._fail(_os_error("create", self._full, e))

    def __enter__(self) -> "CheckpointFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        """Writes all of `data` (bytes-like); returns its length. Never raises (see the class)."""
        try:
            view = memoryview(data).cast("B")
            if self._fd >= 0:
                _write_all(self._fd, view, self._hasher)
                self._size += len(view)
            return len(view)
        except OSError as e:
            self._ckpt._fail(_os_error("write", self._full, e))
        except BaseException as e:  # noqa: B036 - deferred to close(), outside PyTorch's writer
            self._deferred = self._deferred or e
            self._ckpt._fail(f"{type(e).__name__} while writing {self._full}")
        try:
            return memoryview(data).nbytes
        except BaseException:  # noqa: B036
            return 0

    def flush(self) -> None:
        """Nothing is buffered here; close() makes the file durable."""

    def close(self) -> None:
        """fsyncs and closes the file; its size and checksum then go into the MANIFEST as written.
        Raises what a write() deferred (see the class)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.fsync(fd)
            except OSError as e:
                os.close(fd)  # before the staging folder goes, so that its space is freed
                self._ckpt._fail(_os_error("fsync", self._full, e))
            else:
                os.close(fd)
                self._ckpt._written[self._rel] = (self._size, self._hasher.hexdigest())
        deferred, self._deferred = self._deferred, None
        if deferred is not None:
            raise deferred

    def _drop(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Checkpoint:
    """One checkpoint being written into a staging folder; commit() or discard() ends it."""

    def __init__(self, client: "Client", step: int):
        self._client = client
        self.step = step
        self._dir = client.checkpoint_dir
        # Rank mode under a supervisor: this rank's part folder in the shared staging folder.
        self._rank = client._rank if client._block is not None else None
        if self._rank is not None:
            client._wait_previous_part()
            self.staging = os.path.join(self._dir, client._staging_name(step))
            self.path = os.path.join(self.staging, rank_folder_name(self._rank.rank))
        else:
            self.path = os.path.join(self._dir, staging_folder_name(step))
            self.staging = self.path
        self.error = ""  # what failed the checkpoint: its first I/O error, or the commit's
        self._written: Dict[str, Tuple[int, str]] = {}
        self._open: List["CheckpointFile"] = []  # files opened by open_file(), closed by commit()
        self._started = time.monotonic_ns()
        self._done = False
        self._pid = os.getpid()
        made = self.path
        try:
            _make_dirs(self._dir)
            if self._rank is not None:
                made = self.staging
                with contextlib.suppress(FileExistsError):  # another rank made it first
                    os.mkdir(self.staging)
                made = self.path
                if os.path.lexists(self.path):  # a part of ours that never became durable
                    shutil.rmtree(self.path)
            os.mkdir(self.path)
        except OSError as e:
            self._fail(_os_error("mkdir", made, e))

    @property
    def failed(self) -> bool:
        """True once an error failed this checkpoint (see `error`): its staging folder is gone,
        further writes are dropped, commit() returns False."""
        return bool(self.error)

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def __del__(self) -> None:
        try:
            if os.getpid() == self._pid:  # not in a forked child that inherited us
                self.discard()
        except Exception:
            pass

    def write_file(self, rel: str, data: bytes) -> None:
        """Writes `rel` in the staging folder, hashing while writing; an I/O error fails the
        checkpoint (see `failed`) and surfaces in commit()."""
        with self.open_file(rel) as f:
            f.write(data)

    def open_file(self, rel: str) -> "CheckpointFile":
        """Opens `rel` for writing in the staging folder: a binary file object (write, flush,
        close) that hashes while writing, so torch.save(obj, f) streams into the checkpoint.
        close() makes it durable; commit() closes what is still open. An I/O error fails the
        checkpoint at once (its staging folder is removed) and surfaces in commit()."""
        why = _unsafe_path_reason(rel)
        if why or rel == MANIFEST:
            raise ValueError(f"cannot write {rel}: {why or 'the name is reserved'}")
        if self._done:
            raise RuntimeError("checkpoint already committed or discarded")
        f = CheckpointFile(self, rel)
        self._open.append(f)
        return f

    def commit(self, metrics: Optional[Mapping[str, float]] = None) -> bool:
        """Makes the checkpoint durable and tells the supervisor. False when the save failed (an
        I/O error, no files, a MANIFEST over 4 MiB): the error is printed and counted, the staging
        folder is gone, older checkpoints are intact and training may go on.

        In rank mode it makes this rank's part durable (its files, may be none, and its part
        MANIFEST) and returns True then: the supervisor commits the checkpoint once every rank's
        part is there. A failed part removes the part folder and tells the supervisor, which
        gives the checkpoint up. The metrics of a part are not recorded."""
        if self._done:
            raise RuntimeError("checkpoint already committed or discarded")
        values = {str(k): float(v) for k, v in (metrics or {}).items()}
        try:
            for f in self._open:
                f.close()
            if self.failed:
                return self._failed(self.error)
            nbytes = self._commit_part() if self._rank is not None else self._commit(values)
        except (OSError, CheckpointError) as e:
            return self._failed(str(e))
        self._client._committed(self.step, nbytes, time.monotonic_ns() - self._started)
        return True

    def discard(self) -> None:
        """Drops the staging folder unless committed."""
        if not self._done:
            self._done = True
            for f in self._open:
                f._drop()
            shutil.rmtree(self.path, ignore_errors=True)

    def _fail(self, why: str) -> None:
        """Fails the checkpoint at an error: keeps the first, and drops the staging folder at once
        (on a full disk its space goes back to the supervisor's history). commit() reports it."""
        if not self.error:
            self.error = why
        for f in self._open:
            f._drop()
        if os.getpid() == self._pid:
            shutil.rmtree(self.path, ignore_errors=True)

    def _failed(self, why: str) -> bool:
        """Reports a save that failed (stderr, the block's failed-save count); returns False."""
        self.discard()
        self.error = self.error or why
        print(f"lifeline: checkpoint of step {self.step} failed: {why} (older checkpoints are intact)",
              file=sys.stderr, flush=True)
        self._client._save_failed(self.step)
        return False

    def _files(self):
        """(relative path, full path) of every file in the staging folder; subfolders fsynced."""
        out, dirs = [], []

        def walk(folder: str, prefix: str) -> None:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
            for e in entries:
                rel = prefix + e.name
                if e.is_symlink():
                    raise CheckpointError(f"checkpoint file {rel} is a symbolic link: not allowed")
                if e.is_dir(follow_symlinks=False):
                    dirs.append(e.path)
                    walk(e.path, rel + "/")
                elif not e.is_file(follow_symlinks=False):
                    raise CheckpointError(f"checkpoint file {rel} is not a regular file")
                elif rel == MANIFEST:
                    raise CheckpointError("the trainer wrote a file named MANIFEST")
                else:
                    out.append((rel, e.path))

        walk(self.path, "")
        for d in dirs:
            _fsync_dir(d)
        return out

    def _manifest_files(self) -> List[dict]:
        """The MANIFEST's file entries: every file of the folder, hashed and fsynced."""
        files = []
        for rel, full in self._files():
            size, digest = self._written[rel] if rel in self._written else _hash_file(full, sync=True)
            files.append({"path": rel, "bytes": size, "checksum": digest})
        return files

    def _write_manifest(self, manifest: dict, what: str) -> None:
        """Writes MANIFEST (at most MAX_MANIFEST_BYTES) into the folder and fsyncs it and the folder."""
        text = (json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()
        if len(text) > MAX_MANIFEST_BYTES:
            raise CheckpointError(f"its {what} would be {len(text)} bytes, over the {MAX_MANIFEST_BYTES >> 20} MiB "
                                  f"limit ({len(manifest['files'])} files, {len(manifest.get('metrics', {}))} metrics)")
        path = os.path.join(self.path, MANIFEST)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                _write_all(fd, memoryview(text))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise OSError(e.errno, _os_error("write", path, e)) from e
        _fsync_dir(self.path)

    def _commit_part(self) -> int:
        """Rank mode, phase 1 of docs/distributed.md: files fsynced, the part MANIFEST last, the
        part folder and the staging folder fsynced. No rename: the supervisor commits."""
        files = self._manifest_files()
        r = self._rank
        self._write_manifest({"format": PART_FORMAT, "format_version": 2, "step": self.step, "rank": r.rank,
                              "world_size": r.world_size, "checksum_algorithm": CHECKSUM, "files": files},
                             "part MANIFEST")
        _fsync_dir(self.staging)
        self._done = True
        return sum(f["bytes"] for f in files)

    def _commit(self, metrics: Dict[str, float]) -> int:
        """The store's protocol: files fsynced, MANIFEST last, rename, directory fsynced."""
        meta = self._client._meta
        files = self._manifest_files()
        if not files:
            raise CheckpointError(f"checkpoint of step {self.step} has no files: nothing to commit "
                                  "(write the state with write_file/open_file or into ckpt.path first)")
        created = time.time_ns()
        manifest = {
            "format": "lifeline-checkpoint", "format_version": 1, "step": self.step,
            "created": _iso8601(created), "created_ns": created, "job_id": meta["job_id"],
            "attempt": meta["attempt"], "lineage": meta["lineage"], "host": meta["host"],
            # nlohmann::json writes non-finite numbers as null; so do we (JSON has no NaN).
            "metrics": {k: (v if v == v and abs(v) != float("inf") else None) for k, v in metrics.items()},
            "checksum_algorithm": CHECKSUM, "files": files,
        }
        self._write_manifest(manifest, "MANIFEST")

        final = os.path.join(self._dir, folder_name(self.step))
        if os.path.lexists(final):
            # The same step was committed before (e.g. a stop request right after a resume): keep
            # a valid one, and one this Python cannot check (xxh3-64 without xxhash: the C++
            # writer's); replace an invalid one (moved aside first, never resumed).
            if not checkpoint_problem(final):
                self.discard()
                return sum(f["bytes"] for f in files)
            trash = os.path.join(self._dir, trash_folder_name(self.step))
            with contextlib.suppress(FileNotFoundError):  # gc moved it away first
                os.rename(final, trash)
            os.rename(self.path, final)
            _fsync_dir(self._dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(self.path, final)
            _fsync_dir(self._dir)
        self._done = True
        return sum(f["bytes"] for f in files)


# --- The writers' lock and the supervisor watch (src/store/writers_lock.h, src/client/supervisor_watch.h)
WRITERS_LOCK = ".writers.lock"
WRITERS_LOCK_PATIENCE = 10.0  # seconds a shared hold is retried while a supervisor probes the lock
_NO_FLOCK = (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL)
_NO_LOCK_FILE = (errno.EROFS, errno.EACCES, errno.EPERM)


def _flock_holders(path: str) -> str:
    """Who holds a flock on `path` on this host, from /proc/locks: "pid 12 (python3, exclusive)"."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return "another process"
    want = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    out = []
    for line in lines:  # "1: FLOCK  ADVISORY  READ 5430 fe:00:10953095 0 EOF"; waiters have "->"
        words = line.split()
        if len(words) < 6 or words[1] != "FLOCK" or words[5] != want:
            continue
        try:
            with open(f"/proc/{words[4]}/comm") as f:
                comm = f.read().strip()
        except OSError:
            comm = "gone"
        out.append(f"pid {words[4]} ({comm}, {'exclusive' if words[3] == 'WRITE' else 'shared'})")
    return ", ".join(out) or "another process"


def register_writer(ckpt_dir: str, patience: Optional[float] = None) -> Optional[int]:
    """Registers this process as a writer of `ckpt_dir`, as the C++ WriterRegistration does: opens
    <dir>/.writers.lock (created 0600, never through a link, refused unless a regular file) and
    takes a shared flock, retried for `patience` seconds (WRITERS_LOCK_PATIENCE) while a supervisor
    holds it exclusively. Returns the descriptor, which holds the lock until closed; None, with a
    warning, where the file cannot be made (a read-only or foreign directory: its saves will fail,
    visibly) or the file system cannot lock. Raises WritersLockError (a link, not a regular file,
    held exclusively for longer than the patience)."""
    path = os.path.join(ckpt_dir, WRITERS_LOCK)
    with contextlib.suppress(OSError):
        _make_dirs(ckpt_dir)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise WritersLockError(f"{path} is a symbolic link: lifeline never follows one; remove it") from e
        if e.errno in _NO_LOCK_FILE:
            print(f"lifeline: cannot open {path} ({e.strerror}): going on without the writers' lock",
                  file=sys.stderr, flush=True)
            return None
        raise WritersLockError(f"cannot open {path}: {e.strerror}") from e
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise WritersLockError(f"{path} is not a regular file: remove it")
        deadline = time.monotonic() + (WRITERS_LOCK_PATIENCE if patience is None else patience)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise WritersLockError(f"cannot register as a writer of {ckpt_dir}: {path} is held "
                                           f"exclusively by {_flock_holders(path)}") from None
            except OSError as e:
                if e.errno not in _NO_FLOCK:
                    raise WritersLockError(f"cannot lock {path}: {e.strerror}") from e
                print(f"lifeline: cannot lock {path} ({e.strerror}): going on without the writers' lock",
                      file=sys.stderr, flush=True)
                os.close(fd)
                return None
            time.sleep(0.005)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise


def _alive(pid: int) -> bool:
    """False once `pid` is gone or a zombie (exited, not reaped: os.kill(pid, 0) still succeeds)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
        return text[text.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):
        return True


class SupervisorWatch:
    """Calls `on_gone(pid)` as soon as the process `pid` (the supervisor) is gone, from a daemon
    thread blocked in poll() on os.pidfd_open(pid) and on a pipe that stop() writes; without
    pidfd_open (Python < 3.9, Linux < 5.3, a seccomp filter) or with use_pidfd=False it checks the
    process once a second. A process already gone is reported at once, by the constructor, which
    then starts no thread. Only the process that started it can stop it (a forked child has no
    such thread)."""

    def __init__(self, pid: int, on_gone: Callable[[int], None], use_pidfd: bool = True):
        self.pid = pid
        self._on_gone = on_gone
        self._owner = os.getpid()
        self._pidfd: Optional[int] = None
        self._thread: Optional[threading.Thread] = None
        gone = False
        if use_pidfd and hasattr(os, "pidfd_open"):
            try:
                self._pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                gone = True
            except OSError:
                pass  # ENOSYS, EPERM: polling
        self.mode = "pidfd" if self._pidfd is not None or gone else "polling"
        if gone or (self._pidfd is None and not _alive(pid)):
            on_gone(pid)  # a trainer that attaches too late never starts training
            return
        self._wake_r, self._wake_w = os.pipe()  # close-on-exec, as every descriptor Python makes
        self._thread = threading.Thread(target=self._run, name="lifeline-supervisor-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        gone = False
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        if self._pidfd is not None:
            poller.register(self._pidfd, select.POLLIN)
        while not gone:
            events = poller.poll(None if self._pidfd is not None else 1000)
            if any(fd == self._wake_r for fd, _ in events):
                return
            gone = bool(events) if self._pidfd is not None else not _alive(self.pid)
        self._on_gone(self.pid)

    def stop(self) -> None:
        """Wakes the thread and joins it, and closes the descriptors (in the owning process)."""
        if os.getpid() != self._owner or self._thread is None:
            return
        os.write(self._wake_w, b"x")
        if self._thread is not threading.current_thread():
            self._thread.join()
        for fd in (self._wake_r, self._wake_w, self._pidfd):
            if fd is not None:
                os.close(fd)

    @staticmethod
    def stop_trainer(pid: int, whole_group: bool) -> None:
        """One line on stderr (unless it would block: a pipe nobody reads any more), then SIGKILL
        to this process group, or to this process alone when it shares the supervisor's group."""
        line = f"lifeline: supervisor pid {pid} is gone: stopping this trainer\n".encode()
        try:
            poller = select.poll()
            poller.register(2, select.POLLOUT)
            if any(ev & select.POLLOUT for _, ev in poller.poll(100)):
                os.write(2, line)
        except OSError:
            pass
        if whole_group:
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)


def _watch_supervisor(pid: int, env: Mapping[str, str]) -> Optional[SupervisorWatch]:
    """The watch of the supervisor named in the block, unless it names none or
    LIFELINE_WATCH_SUPERVISOR=0."""
    if pid <= 0 or env.get("LIFELINE_WATCH_SUPERVISOR", "") == "0":
        return None
    try:  # a trainer in its supervisor's process group (the jobscript's, say) stops alone
        whole_group = os.getpgid(pid) != os.getpgrp()
    except OSError:
        whole_group = True
    return SupervisorWatch(pid, lambda p: SupervisorWatch.stop_trainer(p, whole_group))


def _env_u64(env: Mapping[str, str], name: str) -> int:
    m = re.match(r"\s*\+?([0-9]+)", env.get(name, ""))
    return int(m.group(1)) if m else 0


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


# Where checkpoints go when LIFELINE_CKPT_DIR is unset: `lifeline run`'s own default.
DEFAULT_CKPT_DIR = "checkpoints"


class Client:
    """The trainer's side of lifeline; inert outside a supervisor."""

    def __init__(self, env: Optional[Mapping[str, str]] = None):
        env = os.environ if env is None else env
        self.checkpoint_dir = env.get("LIFELINE_CKPT_DIR", "")
        resume_from = env.get("LIFELINE_RESUME_FROM", "")
        self._resume = ResumeInfo(resume_from, _env_u64(env, "LIFELINE_RESUME_STEP"),
                                  kind=resume_kind_from_env(env.get("LIFELINE_RESUME_KIND"))) if resume_from else None
        self._attempt = _env_u64(env, "LIFELINE_ATTEMPT")
        self._meta = {"job_id": env.get("SLURM_JOB_ID"), "attempt": self._attempt,
                      "lineage": env.get("LIFELINE_LINEAGE", ""), "host": socket.gethostname()}
        self._block: Optional[ControlBlock] = None
        self._every_steps = self._skip_first_steps = 0
        self._seen_seq = 0
        self._next_periodic = _NEVER
        self._local_stop = False         # a stop signal reached this process
        self._stop_at_agreed = False     # rank mode: the agreement in hand ends the run at its step
        self._stop_agreed = False        # rank mode: ... and this rank reached that step
        self._signal_unanswered = False  # ... and no commit has answered it yet
        self._old_handlers: Dict[int, object] = {}
        self._pid = os.getpid()  # forked children (DataLoader workers) inherit us but are not the trainer
        self._saver: Optional[threading.Thread] = None  # the asynchronous save in flight, if any
        self._last_save_ok = True
        self._settled_seq = 0  # the newest request_seq a background save settled; taken in later
        self._writers_lock: Optional[int] = None  # held while attached: this process may commit
        self._watch: Optional[SupervisorWatch] = None
        # Rank mode (docs/distributed.md): set when the local world has more than one rank.
        self._rank: Optional[RankEnv] = None
        self._promised: Optional[int] = None  # the step promised for an agreement not seen yet
        self._agreed: Optional[int] = None    # the agreed step this rank has not checkpointed yet
        self._part_step: Optional[int] = None  # the newest step whose part this rank started
        self.part_patience = PART_PATIENCE    # seconds a new part waits for the previous one

        name = env.get("LIFELINE_CONTROL", "")
        if not name:
            try:  # inert: only resume() follows rank mode; a malformed value is not our business
                self._rank = rank_env(env)
            except RankEnvError:
                pass
            return
        self._rank = rank_env(env)  # refused at attach, naming the variable
        b = ControlBlock(name, env)
        try:
            if self.checkpoint_dir:
                self._writers_lock = register_writer(self.checkpoint_dir)
            self._watch = _watch_supervisor(b.load("supervisor_pid"), env)
        except BaseException:
            self._release()
            b.close()
            raise
        self._block = b
        self._every_steps = b.load("every_steps")
        self._skip_first_steps = b.load("skip_first_steps")
        # A request posted before we attached (e.g. a signal during start-up) is still pending.
        self._seen_seq = b.load("ack_seq")
        self._next_periodic = 0 if self._every_steps else _NEVER
        if self._rank is not None:
            self._attach_slot(b, self._rank)
        else:
            b.store("trainer_pid", os.getpid())
            b.store("client_state", ClientState.ATTACHED)
            if self._resume and not self._resume.warm:  # a warm start's step is the trainer's choice
                b.store("current_step", self._resume.step)
        if threading.current_thread() is threading.main_thread():
            for sig in _STOP_SIGNALS:
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        else:
            print("lifeline: client created outside the main thread: stop signals are not trapped",
                  file=sys.stderr, flush=True)
        atexit.register(self.close)

    @classmethod
    def from_env(cls) -> "Client":
        """Attaches to the control block named by LIFELINE_CONTROL, if any; raises ControlBlockError."""
        return cls()

    @property
    def active(self) -> bool:
        return self._block is not None

    @property
    def attempt(self) -> int:
        return self._attempt

    @property
    def memory_ordering(self) -> Optional[str]:
        """How this client orders its control-block accesses: "plain" (x86-64) or "libatomic" (see
        the module function memory_ordering); None when inert."""
        b = self._block
        return None if b is None else b.ordering

    @property
    def rank(self) -> Optional[RankEnv]:
        """Which rank this process is in rank mode (docs/distributed.md); None for a single trainer."""
        return self._rank

    def resume(self) -> Optional[ResumeInfo]:
        """Where to resume from (LIFELINE_RESUME_FROM, LIFELINE_RESUME_STEP), or None. In rank mode
        `path` is this rank's part folder and `checkpoint` the step-N folder; a checkpoint of
        another world size raises WorldSizeError naming both, unless LIFELINE_RESHARD=1 (then
        `path` is the checkpoint folder)."""
        r, re_ = self._resume, self._rank
        if r is None or re_ is None:
            return r
        world = _manifest_world_size(r.path)
        if world != re_.world_size and not re_.reshard:
            raise WorldSizeError(
                f"lifeline: the checkpoint {r.path} was written by a world of {world} rank(s), this job has "
                f"{re_.world_size}: refusing to resume it (set LIFELINE_RESHARD=1 to load it and reshard)")
        path = r.path if world != re_.world_size else os.path.join(r.path, rank_folder_name(re_.rank))
        return ResumeInfo(path, r.step, r.path, world, r.kind)

    def should_checkpoint(self, step: int) -> bool:
        """True when a checkpoint should follow `step` (request, signal or every_steps); also the heartbeat."""
        b = self._block
        if b is None:
            return False
        # The fast path: the heartbeat store and the request_seq look are relaxed (plain, on every
        # machine), as in the C++ client; what follows a difference loads request_seq again, ordered.
        if self._rank is not None:  # the rank's fast path: one store, one load, one compare
            b.slot_store_relaxed(self._rank.local_rank, "current_step", step)
            if self._signal_unanswered or b.load_relaxed("request_seq") != self._seen_seq \
                    or self._promised is not None or self._agreed is not None:
                return self._rank_request(step)
            return step >= self._next_periodic and self._periodic_due(step)
        b.store_relaxed("current_step", step)
        if self._signal_unanswered or b.load_relaxed("request_seq") != self._seen_seq:
            return self._request_pending()
        return step >= self._next_periodic and self._periodic_due(step)

    def _default_dir(self) -> None:
        """Outside `lifeline run` (LIFELINE_CKPT_DIR unset) a checkpoint goes into ./checkpoints,
        where `lifeline run` looks by default, said once on stderr."""
        if self.checkpoint_dir:
            return
        self.checkpoint_dir = os.path.abspath(DEFAULT_CKPT_DIR)
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        print(f"lifeline: LIFELINE_CKPT_DIR is unset (not under lifeline run): checkpoints go into "
              f"{self.checkpoint_dir}, where lifeline run looks by default", file=sys.stderr, flush=True)

    def begin_checkpoint(self, step: int) -> Checkpoint:
        """Starts a checkpoint of `step` in a staging folder of the checkpoint directory. Waits for
        an asynchronous save in flight first."""
        self._default_dir()
        self.wait_for_saves()
        self._absorb_settled()
        self._part_started(step)
        ckpt = Checkpoint(self, step)
        self._set_state(ClientState.SAVING)
        return ckpt

    def save_async(self, step: int, snapshot: Callable[[], Callable[[Checkpoint], None]],
                   metrics: Optional[Mapping[str, float]] = None) -> bool:
        """Asynchronous checkpoint of `step`: waits for a save in flight, then (unless a stop
        request is already answered by a commit) calls `snapshot()` on this thread and runs what it
        returns, `persist(ckpt)`, on a background thread, followed by the commit and the ack.
        Returns True when it started a save. A failed background save is reported like a failed
        commit (stderr, failed-save count); older checkpoints stay intact. Exceptions of
        `snapshot` propagate."""
        self._default_dir()
        self.wait_for_saves()
        self._absorb_settled()
        b = self._block
        # A stop that a commit already answered needs no new snapshot: the trainer leaves next.
        # (A rank writes the part it is asked for: the other ranks' parts need it.)
        if b is not None and self._rank is None and self.should_exit() and not self._signal_unanswered \
                and b.load("request_seq") == self._seen_seq:
            return False
        values = {str(k): float(v) for k, v in (metrics or {}).items()}
        persist = snapshot()
        self._part_started(step)
        self._set_state(ClientState.SAVING)
        # Not a daemon: an interpreter that exits with a save in flight finishes it first.
        self._saver = threading.Thread(target=self._save_in_background, args=(step, persist, values),
                                       name=f"lifeline-save-{step}")
        self._saver.start()
        return True

    def wait_for_saves(self) -> bool:
        """Waits until no save is in flight. Returns False when the last asynchronous save failed."""
        t = self._saver
        if t is not None and t is not threading.current_thread():
            t.join()
            self._saver = None
        return self._last_save_ok

    @property
    def save_in_flight(self) -> bool:
        """True while an asynchronous save is being written."""
        t = self._saver
        return t is not None and t.is_alive()

    def _save_in_background(self, step: int, persist: Callable[[Checkpoint], None], metrics: Dict[str, float]) -> None:
        ckpt = Checkpoint(self, step)
        try:
            persist(ckpt)
            self._last_save_ok = ckpt.commit(metrics)
        except Exception as e:
            # The staging folder goes; the request stays settled, as after a failed commit (no
            # retry on every step).
            self._last_save_ok = ckpt._failed(f"{type(e).__name__}: {e}")

    def should_exit(self) -> bool:
        """True once a stop was requested (by the supervisor or a signal to the trainer)."""
        b = self._block
        if b is None:
            return False
        if self._rank is not None:
            # A rank leaves only at the agreed step of an agreement that said stop, so that every
            # rank leaves after the same step whenever it saw the flag (docs/distributed.md).
            return self._stop_agreed
        return self._local_stop or bool(b.load("request_flags") & FLAG_STOP)

    def close(self) -> None:
        """Restores the previous signal handlers, stops watching the supervisor, lets the writers'
        lock go and detaches; the client is inert afterwards. In a forked child it does nothing."""
        if os.getpid() == self._pid:
            self.wait_for_saves()
        b, self._block = self._block, None
        if b is None or os.getpid() != self._pid:
            return
        atexit.unregister(self.close)
        for sig, old in self._old_handlers.items():
            if old is not None:  # None: installed outside Python; ours stays, now harmless
                signal.signal(sig, old)
        self._old_handlers.clear()
        self._release()
        if self._rank is not None:
            b.slot_store(self._rank.local_rank, "state", ClientState.EXITING)
        else:
            b.store("client_state", ClientState.EXITING)
        b.close()

    def _release(self) -> None:
        """Stops the supervisor watch and lets the writers' lock go."""
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()
        fd, self._writers_lock = self._writers_lock, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _set_state(self, state: ClientState) -> None:
        """This trainer's state: the header's client_state, or in rank mode its slot's state."""
        b = self._block
        if b is None:
            return
        if self._rank is not None:
            b.slot_store(self._rank.local_rank, "state", state)
        else:
            b.store("client_state", state)

    def _attach_slot(self, b: ControlBlock, r: RankEnv) -> None:
        """Rank mode: fills this rank's slot, its pid last (the slot is then taken)."""
        i = r.local_rank
        other = b.slot_load(i, "pid")
        if other and other != os.getpid() and _alive(other) and b.slot_load(i, "state") != ClientState.EXITING:
            raise ControlBlockError(f"control block {b.name}: local rank {i} is already attached by pid {other}")
        b.slot_store(i, "pid", 0)
        b.slot_store(i, "rank", r.rank)
        b.slot_store(i, "world_size", r.world_size)
        b.slot_store(i, "state", ClientState.ATTACHED)
        b.slot_store(i, "current_step", self._resume.step if self._resume and not self._resume.warm else 0)
        b.slot_store(i, "promised_step", 0)
        b.slot_store(i, "seen_seq", self._seen_seq)
        b.slot_store(i, "pid", os.getpid())

    def _rank_request(self, step: int) -> bool:
        """should_checkpoint() in rank mode with a request unanswered or an agreement to keep:
        promise, wait for the agreement only at the promised step, checkpoint at the agreed step
        (docs/distributed.md, "Agreeing on a step")."""
        b, i = self._block, self._rank.local_rank
        # A request that comes after the agreement is taken in once this rank has started its part
        # of the agreed step: its promise then lies beyond that step, on every rank.
        if self._agreed is None and (self._signal_unanswered or b.load("request_seq") != self._seen_seq):
            self._signal_unanswered = False  # a rank answers a signal by taking it into an agreement
            seq = b.load("request_seq")
            if self._promised is None:
                self._promised = step + self._rank.agree_margin
                b.slot_store(i, "promised_step", self._promised)
            b.slot_store(i, "seen_seq", seq)  # after the promise; a second request keeps it
            self._seen_seq = seq
        if self._promised is not None:
            while True:
                if b.load("agreement_seq") >= self._seen_seq:
                    agreed = b.load("agreed_step")
                    self._stop_at_agreed = bool(b.load("agreed_stop"))
                    self._promised = None
                    if agreed != self._part_step:  # else this rank made that part already (every_steps)
                        self._agreed = agreed
                    else:
                        self._stop_agreed = self._stop_agreed or self._stop_at_agreed
                    break
                if step < self._promised:
                    return step >= self._next_periodic and self._periodic_due(step)
                time.sleep(AGREEMENT_POLL)  # the only wait: the supervisor is slower than the margin
        a = self._agreed
        if a is None or step < a:
            return step >= self._next_periodic and self._periodic_due(step)
        if step == a:
            return True  # until this rank starts its part of step `a` (begin_checkpoint, save_async)
        self._agreed = None
        self._stop_agreed = self._stop_agreed or self._stop_at_agreed
        print(f"lifeline: rank {self._rank.rank} skipped the agreed checkpoint step {a} (now at step {step}): "
              "it writes no part, the collective checkpoint is given up", file=sys.stderr, flush=True)
        self._part_failed(a)
        return step >= self._next_periodic and self._periodic_due(step)

    def _part_started(self, step: int) -> None:
        """Rank mode: a part of `step` is being written; an agreement on `step` is kept."""
        if self._rank is None or self._block is None:
            return
        if self._agreed is not None and step >= self._agreed:
            self._agreed = None
            self._stop_agreed = self._stop_agreed or self._stop_at_agreed
        self._part_step = step

    def _wait_previous_part(self) -> None:
        """Rank mode, before a new part: waits until the supervisor committed or abandoned the
        previous one (so that this rank's part_step is not overwritten before the slow ranks
        finish); after `part_patience` seconds it says so and goes on."""
        b = self._block
        if b is None or self._rank is None:
            return
        prev = b.slot_load(self._rank.local_rank, "part_step")
        if prev == 0:
            return
        deadline = time.monotonic() + self.part_patience
        while b.load("last_commit_step") < prev and b.load("abandoned_step") < prev:
            if time.monotonic() >= deadline:
                print(f"lifeline: rank {self._rank.rank}: the checkpoint of step {prev} is neither committed nor "
                      f"abandoned after {self.part_patience:g} s: writing the next part anyway",
                      file=sys.stderr, flush=True)
                return
            time.sleep(PART_POLL)

    def _staging_name(self, step: int) -> str:
        """The shared staging folder of `step` in rank mode (every rank derives the same)."""
        b = self._block
        token = b.load("staging_token")
        return ".staging-%s-%d-%08x" % (folder_name(step), token >> 32, token & 0xFFFFFFFF)

    def _part_failed(self, step: int) -> None:
        """Rank mode: this rank has no part of `step`; the supervisor abandons that checkpoint."""
        b, i = self._block, self._rank.local_rank
        b.slot_store(i, "failed_saves", b.slot_load(i, "failed_saves") + 1)  # only this rank writes it
        b.slot_store(i, "failed_step", step)

    def _request_pending(self) -> bool:
        """should_checkpoint() with a request pending."""
        if self.save_in_flight:
            return self.should_exit()  # coalesced into the save in flight, whose commit acks it
        self._absorb_settled()
        if self._signal_unanswered or self._block.load("request_seq") != self._seen_seq:
            return True
        # A background commit answered it before the trainer looked: True once more for a stop,
        # so the trainer reaches should_exit().
        return self.should_exit()

    def _absorb_settled(self) -> None:
        """Takes in what background saves answered (they never move _seen_seq themselves)."""
        self._seen_seq = max(self._seen_seq, self._settled_seq)

    def _periodic_due(self, step: int) -> bool:
        every = self._every_steps
        if every == 0:
            self._next_periodic = _NEVER
            return False
        self._next_periodic = _next_periodic_step(step, every, self._skip_first_steps)
        if self.save_in_flight and self._rank is None:
            return False  # coalesced into the save in flight (every rank must write the same parts)
        return _is_periodic_step(step, every, self._skip_first_steps) and step != self._part_step

    def _on_signal(self, signo: int, frame: object) -> None:
        """SIGTERM/SIGUSR1/SIGINT: a stop request. CPython runs this in the main thread between
        bytecodes, so plain code is safe here; it still does only a few stores.

        With libatomic (memory_ordering "libatomic") the stop flag and request_seq are bumped with
        real atomic fetch_or / fetch_add, as in C++. On the plain path (x86-64) each is a load and
        a store (no atomic read-modify-write in Python): a supervisor request() landing in between
        merges with ours: both wait for the next commit, which acks the value it reads then. Only
        two supervisor requests inside that window could move the counter back; the local flags
        keep should_checkpoint/should_exit right regardless, and the supervisor still sees the stop
        flag and the commit when the trainer leaves.

        A forked child (e.g. a DataLoader worker, which Slurm signals too) ignores the signal: the
        trainer decides when to stop, and its workers go when it does."""
        if os.getpid() != self._pid:
            return
        self._local_stop = True
        self._signal_unanswered = True
        b = self._block
        if b is None:
            return
        b.store("trainer_signal", signo)
        b.fetch_or("request_flags", FLAG_STOP)
        b.store("request_reason", Reason.TRAINER_SIGNAL)
        b.fetch_add("request_seq", 1)

    def _answer(self) -> int:
        """Marks every request up to now as answered; returns the request_seq answered. On the
        background save thread it is recorded as settled, for the training thread to take in:
        should_checkpoint() must still report a stop that the trainer has not looked at yet."""
        self._signal_unanswered = False
        seq = self._block.load("request_seq")
        if self._saver is not None and threading.current_thread() is self._saver:
            self._settled_seq = seq
        else:
            self._seen_seq = seq
        return seq

    def _committed(self, step: int, nbytes: int, duration_ns: int) -> None:
        b = self._block
        if b is None:
            return
        if self._rank is not None:  # the part is durable; the supervisor commits and acks
            i = self._rank.local_rank
            b.slot_store(i, "part_bytes", nbytes)
            b.slot_store(i, "part_ns", duration_ns)
            b.slot_store(i, "part_step", step)
            b.slot_store(i, "state", ClientState.ATTACHED)
            return
        b.store("last_commit_step", step)
        b.store("last_commit_ns", duration_ns)
        b.store("last_commit_bytes", nbytes)
        b.store("ack_step", step)
        b.fetch_add("commit_count", 1)  # only the trainer writes it
        # Every request up to now is answered by this fresh checkpoint; one that lands while we
        # ack is answered too (training has not moved on), so a stop never looks unanswered.
        seq = -1
        while seq != b.load("request_seq") or self._signal_unanswered:
            seq = self._answer()
            b.store("ack_seq", seq)
        b.store("client_state", ClientState.ATTACHED)

    def _save_failed(self, step: Optional[int] = None) -> None:
        b = self._block
        if b is None:
            return
        if self._rank is not None:
            step = self._part_step if step is None else step
            if self._agreed is not None and step is not None and step >= self._agreed:
                self._agreed = None  # the agreement is answered by this failure, not retried
            self._part_failed(step or 0)
            b.slot_store(self._rank.local_rank, "state", ClientState.ATTACHED)
            return
        b.fetch_add("failed_saves", 1)  # only the trainer writes it
        self._answer()  # do not retry on every step
        b.store("client_state", ClientState.ATTACHED)
