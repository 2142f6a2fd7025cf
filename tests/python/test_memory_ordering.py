"""The Python client's memory ordering on the control block (docs/protocol.md, "Memory ordering"):
plain aligned accesses on x86-64, libatomic's seq_cst atomics on every other machine (aarch64:
Grace Hopper), a clear refusal where libatomic is missing. On an x86-64 machine (CI's) the
aarch64 path is forced (LIFELINE_SHM_ATOMICS=1, or memory_ordering patched for clients built from
an explicit environment) and run: field by field, between processes, through a real handshake
with the lifeline binary (LIFELINE_BIN), and through the whole of test_client.py and test_ranks.py
once more. Standard library only; run by meson with /usr/bin/python3."""
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "python"))
sys.path.insert(0, PYTHON_DIR)
sys.path.insert(0, HERE)
import lifeline_client as L  # noqa: E402
import test_client  # noqa: E402
import test_ranks  # noqa: E402

LIFELINE = os.environ.get("LIFELINE_BIN", "")
PYTHON = os.environ.get("PYTHON", sys.executable)
FORCED = {L.ATOMICS_ENV: "1"}
X86_64 = L.memory_ordering({}) == "plain"


def forced_ordering(env=None):
    """memory_ordering as on aarch64: libatomic, whatever the environment says."""
    return "libatomic"


class OrderingChoiceTest(unittest.TestCase):
    def test_every_field_is_naturally_aligned_so_each_access_is_one_aligned_4_or_8_byte_word(self):
        for table in (L.FIELDS, L.SLOT_FIELDS):
            for name, (off, width) in table.items():
                self.assertIn(width, (4, 8), name)
                self.assertEqual(off % width, 0, name)
        self.assertEqual(L.RANK_SLOTS_OFF % 8, 0)
        self.assertEqual(L.RANK_SLOT_SIZE % 8, 0)

    def test_plain_accesses_only_on_64_bit_x86_libatomic_on_aarch64_and_elsewhere_or_when_forced(self):
        with mock.patch.object(L.platform, "machine", return_value="x86_64"):
            self.assertEqual(L.memory_ordering({}), "plain" if sys.maxsize > 2**32 else "libatomic")
            self.assertEqual(L.memory_ordering(FORCED), "libatomic")
            with mock.patch.object(L.sys, "maxsize", 2**31 - 1):  # a 32-bit interpreter: 8-byte words may tear
                self.assertEqual(L.memory_ordering({}), "libatomic")
        for machine in ("aarch64", "arm64", "ppc64le", "riscv64", "i686", ""):
            with mock.patch.object(L.platform, "machine", return_value=machine):
                self.assertEqual(L.memory_ordering({}), "libatomic", machine)
        with self.assertRaisesRegex(L.ControlBlockError, "LIFELINE_SHM_ATOMICS='0': only 1"):
            L.memory_ordering({L.ATOMICS_ENV: "0"})

    @unittest.skipUnless(platform.machine() == "x86_64", "checks this x86-64 machine's default")
    def test_this_x86_64_machine_takes_the_plain_fast_path_by_default(self):
        self.assertEqual(L.memory_ordering({}), "plain")


class BlockTestCase(unittest.TestCase):
    def setUp(self):
        self.blocks = []
        self.tmp = tempfile.mkdtemp(prefix="lifeline-pytest-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def tearDown(self):
        for b in self.blocks:
            b.close()

    def block(self):
        b = test_client.FakeBlock()
        self.blocks.append(b)
        return b


class LibatomicAccessTest(BlockTestCase):
    def test_every_field_written_through_libatomic_reads_back_through_plain_accesses_and_the_other_way(self):
        fake = self.block()
        cb = L.ControlBlock(fake.name, FORCED)
        self.addCleanup(cb.close)
        self.assertEqual(cb.ordering, "libatomic")
        for i, (name, (off, width)) in enumerate(L.FIELDS.items()):
            if name in ("magic", "version", "size"):
                continue
            top = (1 << (8 * width)) - 1
            value = (0x0102030405060708 * (i + 1)) & top
            cb.store(name, value)
            self.assertEqual((fake.get(name), cb._plain_load(name), cb.load(name)), (value, value, value), name)
            cb._plain_store(name, top - value)
            self.assertEqual((cb.load(name), cb.load_relaxed(name)), (top - value, top - value), name)
            cb.store(name, top + 5)  # masked to the width, as the plain store does
            self.assertEqual(fake.get(name), 4, name)
        self.assertEqual(cb.fetch_add("request_seq", 1), 4)
        self.assertEqual(cb.fetch_add("request_seq", 2), 5)
        self.assertEqual(fake.get("request_seq"), 7)
        cb.store("request_flags", 0)
        self.assertEqual(cb.fetch_or("request_flags", L.FLAG_STOP), 0)
        self.assertEqual(cb.fetch_or("request_flags", L.FLAG_STOP), L.FLAG_STOP)
        self.assertEqual(fake.get("request_flags"), L.FLAG_STOP)
        for rank in (0, 1, L.MAX_LOCAL_RANKS - 1):
            for name, (off, width) in L.SLOT_FIELDS.items():
                value = (0x1122334455667788 + rank * 97 + off) & ((1 << (8 * width)) - 1)
                cb.slot_store(rank, name, value)
                start = L.rank_slot_offset(rank) + off
                self.assertEqual(int.from_bytes(fake.map[start:start + width], sys.byteorder), value, (rank, name))
                self.assertEqual(cb._plain_slot_load(rank, name), value)
                cb.slot_store_relaxed(rank, name, value ^ 1)
                self.assertEqual(cb.slot_load(rank, name), value ^ 1)
        self.assertEqual((cb.load("magic"), cb.load("version"), cb.load("size")), (L.MAGIC, L.VERSION, L.SIZE))

    def test_a_closed_block_raises_instead_of_touching_the_unmapped_memory(self):
        for env in ({}, FORCED):
            cb = L.ControlBlock(self.block().name, env)
            cb.close()
            for call in (lambda: cb.load("request_seq"), lambda: cb.store("ack_seq", 1),
                         lambda: cb.fetch_add("commit_count", 1), lambda: cb.slot_load(0, "pid")):
                with self.assertRaises(ValueError):
                    call()

    def test_8_byte_fields_never_tear_between_processes_on_either_path(self):
        """A forked writer alternates two values whose halves differ; every load the reader makes,
        ordered and relaxed, must be one of them (a torn access would mix their halves)."""
        a, b = 0x0123456789ABCDEF, 0xFEDCBA9876543210
        for env in ({}, FORCED):
            with self.subTest(ordering=L.memory_ordering(env)):
                fake = self.block()
                cb = L.ControlBlock(fake.name, env)
                self.addCleanup(cb.close)
                cb.store("current_step", a)
                pid = os.fork()
                if pid == 0:
                    try:
                        end = time.monotonic() + 0.3
                        while time.monotonic() < end:
                            for _ in range(1000):
                                cb.store("current_step", b)
                                cb.store("current_step", a)
                    finally:
                        os._exit(0)
                seen = set()
                end = time.monotonic() + 0.3
                while time.monotonic() < end:
                    for _ in range(1000):
                        seen.add(cb.load("current_step"))
                        seen.add(cb.load_relaxed("current_step"))
                self.assertEqual(os.waitpid(pid, 0)[1], 0)
                self.assertLessEqual(seen, {a, b}, [hex(v) for v in seen - {a, b}])

    def test_a_forced_client_says_so_and_answers_a_request_and_a_signal_through_libatomic(self):
        fake = self.block()
        ckpt = os.path.join(self.tmp, "ckpt")
        env = {"LIFELINE_CONTROL": fake.name, "LIFELINE_CKPT_DIR": ckpt, "LIFELINE_WATCH_SUPERVISOR": "0", **FORCED}
        c = L.Client(env)
        self.addCleanup(c.close)
        self.assertEqual(c.memory_ordering, "libatomic")
        self.assertEqual(c._block.ordering, "libatomic")
        self.assertEqual(fake.get("trainer_pid"), os.getpid())
        self.assertFalse(c.should_checkpoint(1))
        self.assertEqual(fake.get("current_step"), 1)
        seq = fake.request()
        self.assertTrue(c.should_checkpoint(2))
        ck = c.begin_checkpoint(2)
        ck.write_file("w", b"x")
        self.assertTrue(ck.commit())
        self.assertEqual((fake.get("ack_seq"), fake.get("ack_step"), fake.get("commit_count")), (seq, 2, 1))
        self.assertFalse(c.should_checkpoint(3))
        os.kill(os.getpid(), signal.SIGTERM)  # the handler's fetch_or / fetch_add through libatomic
        self.assertEqual((fake.get("request_seq"), fake.get("trainer_signal")), (seq + 1, signal.SIGTERM))
        self.assertEqual(fake.get("request_flags") & L.FLAG_STOP, L.FLAG_STOP)
        self.assertTrue(c.should_checkpoint(4))
        self.assertTrue(c.should_exit())
        self.assertIsNone(L.Client({}).memory_ordering)  # inert


class RefusalTest(BlockTestCase):
    def setUp(self):
        super().setUp()
        for p in (mock.patch.object(L, "LIBATOMIC_NAMES", ("libatomic-missing-for-this-test.so.1",)),
                  mock.patch.object(L, "_libatomic_cache", None)):
            p.start()
            self.addCleanup(p.stop)

    def test_on_aarch64_without_libatomic_the_client_refuses_to_attach_naming_the_machine_and_what_to_do(self):
        fake = self.block()
        ckpt = os.path.join(self.tmp, "ckpt")
        handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
        with mock.patch.object(L.platform, "machine", return_value="aarch64"):
            with self.assertRaises(L.ControlBlockError) as e:
                L.Client({"LIFELINE_CONTROL": fake.name, "LIFELINE_CKPT_DIR": ckpt})
            message = str(e.exception)
            for needed in ("this is a aarch64 machine", fake.name, "libatomic-missing-for-this-test.so.1",
                           "apt-get install libatomic1", "use the C++ client", "Refusing to attach"):
                self.assertIn(needed, message)
            # Nothing was touched: no trainer registered, no handler, no writers' lock.
            self.assertEqual((fake.get("trainer_pid"), fake.get("client_state")), (0, 0))
            self.assertEqual({s: signal.getsignal(s) for s in handlers}, handlers)
            self.assertFalse(os.path.exists(os.path.join(ckpt, L.WRITERS_LOCK)))
            # Outside a supervisor the client needs no shared memory and works as ever.
            inert = L.Client({"LIFELINE_CKPT_DIR": ckpt})
            self.assertFalse(inert.active or inert.should_checkpoint(1))
            ck = inert.begin_checkpoint(1)
            ck.write_file("w", b"x")
            self.assertTrue(ck.commit())

    def test_forcing_libatomic_where_it_is_missing_is_refused_naming_the_variable(self):
        if not X86_64:
            self.skipTest("on this machine libatomic is not a choice")
        with self.assertRaisesRegex(L.ControlBlockError, "LIFELINE_SHM_ATOMICS=1 asks for libatomic's atomics"):
            L.Client({"LIFELINE_CONTROL": self.block().name, "LIFELINE_CKPT_DIR": self.tmp, **FORCED})


TRAINER = r"""
import sys, time
sys.path.insert(0, %r)
import lifeline_client as L
c = L.Client.from_env()
r = c.resume()
step = r.step if r else 0
print("trainer: ordering %%s, resumed from step %%d" %% (c.memory_ordering, step), flush=True)
while True:
    step += 1
    time.sleep(0.005)
    due = c.should_checkpoint(step)
    if step %% 10 == 0:
        print("trainer: step %%d" %% step, flush=True)
    if due:
        ck = c.begin_checkpoint(step)
        ck.write_file("state", b"%%d" %% step)
        print("trainer: commit of step %%d %%s" %% (step, "ok" if ck.commit({"val_loss": 1.0 / step}) else "FAILED"),
              flush=True)
        if c.should_exit():
            print("trainer: stopping at step %%d" %% step, flush=True)
            sys.exit(0)
""" % PYTHON_DIR


@unittest.skipUnless(LIFELINE, "LIFELINE_BIN is not set (run through meson test)")
class HandshakeTest(unittest.TestCase):
    """The real supervisor and a real Python trainer: `lifeline request --wait` (the C++ side posts
    a request, the trainer sees it, commits, acks), a stop by SIGUSR1 to the supervisor, then a
    stop signal to the trainer itself (its handler's read-modify-writes), on each path."""

    def setUp(self):
        self.d = tempfile.mkdtemp(prefix="lifeline-pytest-")
        self.addCleanup(shutil.rmtree, self.d, True)
        self.trainer = os.path.join(self.d, "trainer.py")
        with open(self.trainer, "w") as f:
            f.write(TRAINER)
        self.policy = os.path.join(self.d, "policy.yaml")
        with open(self.policy, "w") as f:
            f.write("version: 1\ncheckpoint:\n  every_steps: 0\n  every_seconds: 0\nrestart:\n  backoff_seconds: 0\n"
                    "retention:\n  keep_last: 1000\n  keep_best: 0\n")

    def env(self, forced):
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_") and k != "SLURM_JOB_ID"}
        return {**env, **FORCED} if forced else env

    def lifeline(self, *args):
        """Exit code, stdout, and stdout + stderr (for failure messages)."""
        p = subprocess.run([LIFELINE, *args], capture_output=True, text=True, timeout=120)
        return p.returncode, p.stdout, p.stdout + p.stderr

    def start(self, ckpt, forced):
        p = Process([LIFELINE, "run", "--policy", self.policy, "--ckpt-dir", ckpt, "--", PYTHON,
                     "-u", self.trainer], self.env(forced))
        self.addCleanup(p.kill)
        return p

    def test_request_commit_ack_and_stops_through_a_real_supervisor_on_the_libatomic_and_the_plain_path(self):
        for forced in (True, False):
            ordering = "libatomic" if forced or not X86_64 else "plain"
            with self.subTest(ordering=ordering):
                ckpt = os.path.join(self.d, "forced" if forced else "default")
                run = self.start(ckpt, forced)
                started = run.wait_for("trainer started, pid ")
                self.assertTrue(started, run.output)
                self.assertTrue(run.wait_for("trainer: ordering %s, resumed from step 0" % ordering), run.output)
                self.assertTrue(run.wait_for("trainer: step 20"), run.output)
                # The trainer's pid, state and heartbeat (current_step: a relaxed store), as read by C++.
                rc, out, said = self.lifeline("status", ckpt, "--json", "--sample", "0")
                self.assertEqual(rc, 0, said)
                trainer = json.loads(out)["trainer"]
                self.assertEqual(trainer["pid"], int(re.search(r"pid ([0-9]+)", started).group(1)))
                self.assertEqual(trainer["state"], "attached")
                self.assertGreaterEqual(trainer["step"], 20)
                # 1. A request from another process, answered by a commit and acked.
                rc, out, said = self.lifeline("request", ckpt, "--wait", "--timeout", "60")
                self.assertEqual(rc, 0, said + run.output)
                committed = int(re.search(r"committed step ([0-9]+)", out).group(1))
                self.assertGreater(committed, 20)
                self.assertTrue(run.wait_for("trainer: commit of step %d ok" % committed), run.output)
                self.assertTrue(run.wait_for("trainer: step %d" % ((committed // 10 + 3) * 10)), run.output)
                # 2. A stop: SIGUSR1 to the supervisor; the trainer commits, sees the stop, leaves.
                run.p.send_signal(signal.SIGUSR1)
                self.assertEqual(run.wait(), 75, run.output)
                stopped = int(re.search(r"trainer: stopping at step ([0-9]+)", run.output).group(1))
                self.assertGreater(stopped, committed)
                self.assertEqual(self.resume_step(ckpt), stopped)
                # 3. The next attempt resumes there; a SIGTERM to the trainer itself is its own stop.
                run = self.start(ckpt, forced)
                started = run.wait_for("trainer started, pid ")
                self.assertTrue(started, run.output)
                self.assertTrue(run.wait_for("trainer: ordering %s, resumed from step %d" % (ordering, stopped)),
                                run.output)
                self.assertTrue(run.wait_for("trainer: step %d" % ((stopped // 10 + 2) * 10)), run.output)
                os.kill(int(re.search(r"pid ([0-9]+)", started).group(1)), signal.SIGTERM)
                self.assertEqual(run.wait(), 75, run.output)
                self.assertIn("received SIGTERM itself", run.output)
                last = int(re.search(r"trainer: stopping at step ([0-9]+)", run.output).group(1))
                self.assertGreater(last, stopped)
                self.assertEqual(self.resume_step(ckpt), last)

    def resume_step(self, ckpt):
        rc, out, said = self.lifeline("verify", ckpt, "--json")
        self.assertEqual(rc, 0, said)
        return json.loads(out)["resume"]["step"]


class Process:
    """A child with stdout+stderr read line by line, so a test waits for what it says."""

    def __init__(self, argv, env):
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.output = ""

    def wait_for(self, needle):
        for line in self.p.stdout:
            self.output += line
            if needle in line:
                return line
        return ""

    def wait(self):
        self.output += self.p.stdout.read()
        return self.p.wait(timeout=120)

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        self.p.stdout.close()


class _Forced:
    """Runs a test of test_client.py or test_ranks.py on the libatomic path: every control block it
    attaches (its own environment or an explicit one) and every trainer it starts uses libatomic."""

    def setUp(self):
        for p in (mock.patch.object(L, "memory_ordering", forced_ordering), mock.patch.dict(os.environ, FORCED)):
            p.start()
            self.addCleanup(p.stop)
        attach = L.ControlBlock.__init__

        def checked_attach(block, *args, **kw):
            attach(block, *args, **kw)
            assert block.ordering == "libatomic", block.ordering

        p = mock.patch.object(L.ControlBlock, "__init__", checked_attach)
        p.start()
        self.addCleanup(p.stop)
        super().setUp()


# Every test case of the two client test files once more, forced onto the libatomic path.
for _module in (test_client, test_ranks):
    for _name, _case in sorted(vars(_module).items()):
        if isinstance(_case, type) and issubclass(_case, unittest.TestCase) and _case.__module__ == _module.__name__:
            _forced = type(_name + "OnLibatomic", (_Forced, _case), {"__module__": __name__})
            globals()[_forced.__name__] = _forced

if __name__ == "__main__":
    unittest.main()
