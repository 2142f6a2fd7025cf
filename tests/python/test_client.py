"""The Python client (python/lifeline_client.py) on its own: inert mode, attach checks, requests,
signals, the commit protocol and failed saves. Standard library only; run by meson with
/usr/bin/python3 (LIFELINE_BIN names the lifeline binary for the cross-check with `verify`)."""
import contextlib
import errno
import fcntl
import hashlib
import io
import json
import mmap
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from unittest import mock

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import lifeline_client as L  # noqa: E402

LIFELINE_VARS = ("LIFELINE_CONTROL", "LIFELINE_CKPT_DIR", "LIFELINE_RESUME_FROM", "LIFELINE_RESUME_STEP",
                 "LIFELINE_ATTEMPT", "LIFELINE_LINEAGE", "SLURM_JOB_ID", "LIFELINE_RESUME_KIND")


class FakeBlock:
    """A control block in /dev/shm made the way the supervisor makes one, with test knobs."""

    def __init__(self, mode=0o600, size=L.SIZE, magic=L.MAGIC, version=L.VERSION):
        self.name = "/lifeline-test-%d-%s" % (os.getpid(), secrets.token_hex(4))
        self.path = os.path.join(L.SHM_DIR, self.name[1:])
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.fchmod(fd, mode)
        os.ftruncate(fd, size)
        self.map = mmap.mmap(fd, size)
        os.close(fd)
        if size >= L.SIZE:
            self.set("version", version)
            self.set("size", L.SIZE)
            self.set("owner_uid", os.getuid())
            self.set("supervisor_pid", os.getpid())
            self.set("magic", magic)

    def get(self, field):
        off, width = L.FIELDS[field]
        return int.from_bytes(self.map[off:off + width], sys.byteorder)

    def set(self, field, value):
        off, width = L.FIELDS[field]
        self.map[off:off + width] = value.to_bytes(width, sys.byteorder)

    def request(self, stop=False):
        """What ControlBlock::request does, without atomics (the test is single-threaded)."""
        self.set("request_reason", L.Reason.MANUAL)
        if stop:
            self.set("request_flags", self.get("request_flags") | L.FLAG_STOP)
        self.set("request_seq", self.get("request_seq") + 1)
        return self.get("request_seq")

    def close(self):
        self.map.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def no_writers(ckpt):
    """What a supervisor's probe does (lifeline::no_writers): True when it could take the writers'
    lock exclusively, i.e. no process holds it."""
    fd = os.open(os.path.join(ckpt, L.WRITERS_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0xFF]))


class ClientTestCase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="lifeline-pytest-")
        self.ckpt = os.path.join(self.tmp, "ckpt")
        self.saved_env = {k: os.environ.pop(k) for k in LIFELINE_VARS if k in os.environ}
        self.blocks = []
        self.clients = []

    def tearDown(self):
        for c in self.clients:
            c.close()
        for b in self.blocks:
            b.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        for k in LIFELINE_VARS:
            os.environ.pop(k, None)
        os.environ.update(self.saved_env)

    def block(self, **kw):
        b = FakeBlock(**kw)
        self.blocks.append(b)
        return b

    def client(self, block=None, **env):
        os.environ.update({"LIFELINE_CKPT_DIR": self.ckpt, **env})
        if block:
            os.environ["LIFELINE_CONTROL"] = block.name
        c = L.Client.from_env()
        self.clients.append(c)
        return c

    def commit(self, c, step, files=None, metrics=None):
        ck = c.begin_checkpoint(step)
        for rel, data in (files or {"a.bin": b"a" * 100}).items():
            ck.write_file(rel, data)
        return ck.commit(metrics)

    def folder(self, step):
        return os.path.join(self.ckpt, L.folder_name(step))

    def listdir(self):
        """The checkpoint directory without the writers' lock an attached client holds there."""
        return [n for n in os.listdir(self.ckpt) if n != L.WRITERS_LOCK]


class PeriodicStepTest(unittest.TestCase):
    def test_the_next_periodic_step_is_the_first_later_step_the_every_steps_rule_makes_due(self):
        for every in (1, 3, 10):
            for skip in (0, 1, 7, 30, 31):
                for step in range(100):
                    want = step + 1
                    while not L._is_periodic_step(want, every, skip):
                        want += 1
                    self.assertEqual(L._next_periodic_step(step, every, skip), want, (every, skip, step))
        self.assertTrue(L._is_periodic_step(30, 10, 25))
        self.assertFalse(L._is_periodic_step(20, 10, 25))
        self.assertFalse(L._is_periodic_step(0, 10, 0))
        self.assertFalse(L._is_periodic_step(10, 0, 0))
        self.assertEqual(L._next_periodic_step(5, 0, 0), L._NEVER)
        self.assertEqual(L._next_periodic_step(L._NEVER - 1, 10, 0), L._NEVER)


class MakeDirsTest(unittest.TestCase):
    def test_make_dirs_creates_missing_parents_and_fsyncs_the_parent_of_each_it_created(self):
        with tempfile.TemporaryDirectory() as d:
            synced = []
            real = L._fsync_dir
            with mock.patch.object(L, "_fsync_dir", side_effect=lambda p: (synced.append(p), real(p))):
                L._make_dirs(os.path.join(d, "runs", "a", "ckpt") + "/")
                self.assertTrue(os.path.isdir(os.path.join(d, "runs", "a", "ckpt")))
                self.assertEqual(synced, [d, os.path.join(d, "runs"), os.path.join(d, "runs", "a")])
                synced.clear()
                L._make_dirs(os.path.join(d, "runs", "a", "ckpt"))  # exists: nothing made, nothing synced
                self.assertEqual(synced, [])


class InertTest(ClientTestCase):
    def test_outside_a_supervisor_the_client_is_inert_and_reads_resume_info_from_the_environment(self):
        c = self.client(LIFELINE_RESUME_FROM="/data/ckpt/step-000000000040", LIFELINE_RESUME_STEP="40",
                        LIFELINE_ATTEMPT="2")
        self.assertFalse(c.active)
        self.assertFalse(any(c.should_checkpoint(s) for s in range(1, 2001)))
        self.assertFalse(c.should_exit())
        self.assertEqual(c.resume(), ("/data/ckpt/step-000000000040", 40))
        self.assertEqual(c.resume().path, "/data/ckpt/step-000000000040")
        self.assertEqual(c.attempt, 2)
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            self.assertIs(signal.getsignal(sig), signal.SIG_DFL)
        self.assertIs(signal.getsignal(signal.SIGINT), signal.default_int_handler)

    def test_inert_client_commits_into_its_directory_and_without_one_into_checkpoints_where_lifeline_run_looks(self):
        c = self.client()
        self.assertTrue(self.commit(c, 7))
        self.assertEqual(L.checkpoint_problem(self.folder(7)), "")
        os.environ.pop("LIFELINE_CKPT_DIR")
        with tempfile.TemporaryDirectory() as cwd:
            old = os.getcwd()
            os.chdir(cwd)
            try:
                err = io.StringIO()
                with contextlib.redirect_stderr(err):
                    ck = L.Client.from_env().begin_checkpoint(1)
                    with open(os.path.join(ck.path, "w.bin"), "wb") as f:
                        f.write(b"x")
                    self.assertTrue(ck.commit())
                self.assertIn("LIFELINE_CKPT_DIR is unset", err.getvalue())
                self.assertEqual(L.resume_choice(os.path.join(cwd, "checkpoints")).resume.step, 1)
            finally:
                os.chdir(old)

    def test_resume_kind_is_warm_for_a_fork_continue_for_an_own_checkpoint_and_a_bad_value_is_refused(self):
        r = self.client(LIFELINE_RESUME_FROM="/src/step-000000000040", LIFELINE_RESUME_STEP="40",
                        LIFELINE_RESUME_KIND="warm").resume()
        self.assertEqual((r.kind, r.warm, r.step), ("warm", True, 40))
        for value in ("continue", ""):
            os.environ["LIFELINE_RESUME_KIND"] = value
            r = L.Client.from_env().resume()
            self.assertEqual((r.kind, r.warm), ("continue", False))
        os.environ.pop("LIFELINE_RESUME_KIND")  # a supervisor from before the variable
        self.assertEqual(L.Client.from_env().resume().kind, "continue")
        os.environ["LIFELINE_RESUME_KIND"] = "cold"
        with self.assertRaisesRegex(ValueError, "LIFELINE_RESUME_KIND='cold'"):
            L.Client.from_env()
        self.assertEqual(L.resume_kind_from_env("warm"), "warm")

    def test_no_resume_on_a_first_run(self):
        self.assertIsNone(self.client(LIFELINE_RESUME_FROM="", LIFELINE_RESUME_STEP="").resume())


class AttachTest(ClientTestCase):
    def refused(self, block, message):
        with self.assertRaisesRegex(L.ControlBlockError, message):
            self.client(block)

    def test_refuses_a_block_readable_by_others(self):
        self.refused(self.block(mode=0o644), "not owned by this user with mode 0600")

    @unittest.skipUnless(os.getuid() == 0, "needs root to give the block away")
    def test_refuses_a_block_owned_by_someone_else(self):
        b = self.block()
        os.chown(b.path, 4242, -1)
        self.refused(b, "not owned by this user with mode 0600")

    def test_refuses_a_block_of_another_version_size_or_magic(self):
        self.refused(self.block(version=L.VERSION + 1),
                     f"has layout version {L.VERSION + 1}, this client speaks {L.VERSION}")
        self.refused(self.block(magic=0x1234), "has no lifeline magic")
        self.refused(self.block(size=64), "is too small \\(64 bytes\\)")
        os.environ["LIFELINE_CONTROL"] = "/lifeline-test-does-not-exist"
        with self.assertRaisesRegex(L.ControlBlockError, "cannot open control block .*No such file"):
            L.Client.from_env()
        os.environ["LIFELINE_CONTROL"] = "/../etc/passwd"
        with self.assertRaisesRegex(L.ControlBlockError, "not a shared-memory name"):
            L.Client.from_env()

    def test_attach_reports_the_trainer_and_the_resumed_step(self):
        b = self.block()
        c = self.client(b, LIFELINE_RESUME_FROM="/x/step-000000000030", LIFELINE_RESUME_STEP="30")
        self.assertTrue(c.active)
        self.assertEqual(b.get("trainer_pid"), os.getpid())
        self.assertEqual(b.get("client_state"), L.ClientState.ATTACHED)
        self.assertEqual(b.get("current_step"), 30)
        c.close()
        self.assertEqual(b.get("client_state"), L.ClientState.EXITING)
        self.assertFalse(c.active)
        self.assertIs(signal.getsignal(signal.SIGUSR1), signal.SIG_DFL)


class RequestTest(ClientTestCase):
    def test_periodic_checkpoints_follow_every_steps_after_skip_first_steps(self):
        b = self.block()
        b.set("every_steps", 5)
        b.set("skip_first_steps", 10)
        c = self.client(b)
        due = [s for s in range(1, 31) if c.should_checkpoint(s)]
        self.assertEqual(due, [10, 15, 20, 25, 30])
        self.assertEqual(b.get("current_step"), 30)

    def test_a_supervisor_request_makes_should_checkpoint_true_until_a_commit_acks_it(self):
        b = self.block()
        c = self.client(b)
        self.assertFalse(c.should_checkpoint(1))
        seq = b.request()
        self.assertTrue(c.should_checkpoint(2))
        self.assertTrue(c.should_checkpoint(2))
        self.assertEqual(b.get("current_step"), 2)
        self.assertTrue(self.commit(c, 2, {"a.bin": b"a" * 100, "b/c.bin": b"c" * 28}))
        self.assertEqual(b.get("ack_seq"), seq)
        self.assertEqual(b.get("ack_step"), 2)
        self.assertEqual(b.get("commit_count"), 1)
        self.assertEqual(b.get("last_commit_step"), 2)
        self.assertEqual(b.get("last_commit_bytes"), 128)
        self.assertGreater(b.get("last_commit_ns"), 0)
        self.assertEqual(b.get("client_state"), L.ClientState.ATTACHED)
        self.assertFalse(c.should_checkpoint(3))
        self.assertFalse(c.should_exit())
        b.request(stop=True)
        self.assertTrue(c.should_checkpoint(4))
        self.assertTrue(c.should_exit())

    def test_a_request_posted_before_attaching_is_still_pending(self):
        b = self.block()
        b.request()
        self.assertTrue(self.client(b).should_checkpoint(1))

    def test_a_stop_signal_to_the_trainer_becomes_a_stop_request_and_handlers_are_restored(self):
        b = self.block()
        c = self.client(b)
        for n, sig in enumerate((signal.SIGUSR1, signal.SIGTERM, signal.SIGINT), start=1):
            signal.raise_signal(sig)  # the Python handler runs before the next bytecode
            self.assertEqual(b.get("trainer_signal"), sig)
            self.assertEqual(b.get("request_reason"), L.Reason.TRAINER_SIGNAL)
            self.assertTrue(b.get("request_flags") & L.FLAG_STOP)
            self.assertEqual(b.get("request_seq"), n)
            self.assertTrue(c.should_exit())
            self.assertTrue(c.should_checkpoint(n))
            self.assertTrue(self.commit(c, n))
            self.assertEqual(b.get("ack_seq"), n)
            self.assertFalse(c.should_checkpoint(n))
        c.close()
        self.assertIs(signal.getsignal(signal.SIGTERM), signal.SIG_DFL)
        self.assertIs(signal.getsignal(signal.SIGINT), signal.default_int_handler)

    def test_a_forked_child_such_as_a_dataloader_worker_ignores_stop_signals_and_leaves_the_block_alone(self):
        b = self.block()
        c = self.client(b)
        pid = os.fork()
        if pid == 0:
            signal.raise_signal(signal.SIGTERM)
            ok = not c.should_exit() and b.get("request_seq") == 0
            c.close()
            os._exit(0 if ok and b.get("client_state") == L.ClientState.ATTACHED else 1)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        self.assertEqual(b.get("request_seq"), 0)
        self.assertEqual(b.get("trainer_signal"), 0)
        self.assertEqual(b.get("client_state"), L.ClientState.ATTACHED)
        self.assertFalse(c.should_exit())

    def test_a_signal_is_pending_even_if_the_supervisor_counter_was_overwritten(self):
        b = self.block()
        c = self.client(b)
        signal.raise_signal(signal.SIGUSR1)
        b.set("request_seq", 0)  # as if a racing supervisor store had won
        self.assertTrue(c.should_checkpoint(1))
        self.assertTrue(c.should_exit())


class CommitTest(ClientTestCase):
    def test_commit_follows_the_store_protocol_and_the_manifest_matches_the_cxx_writer(self):
        c = self.client(LIFELINE_ATTEMPT="3", LIFELINE_LINEAGE="abc", SLURM_JOB_ID="77")
        ck = c.begin_checkpoint(40)
        self.assertTrue(os.path.basename(ck.path).startswith(".staging-step-000000000040-%d-" % os.getpid()))
        self.assertEqual(os.path.dirname(ck.path), self.ckpt)
        ck.write_file("model.pt", b"m" * 1000)
        os.makedirs(os.path.join(ck.path, "extra"))
        with open(os.path.join(ck.path, "extra", "notes.txt"), "wb") as f:
            f.write(b"written directly\n")
        self.assertTrue(ck.commit({"val_loss": 0.25, "bad": float("nan")}))
        self.assertEqual(sorted(self.listdir()), ["step-000000000040"])
        with open(os.path.join(self.folder(40), "MANIFEST")) as f:
            m = json.load(f)
        self.assertEqual(m["format"], "lifeline-checkpoint")
        self.assertEqual(m["format_version"], 1)
        self.assertEqual((m["step"], m["attempt"], m["lineage"], m["job_id"]), (40, 3, "abc", "77"))
        self.assertEqual(m["checksum_algorithm"], "sha256")
        self.assertEqual(m["metrics"], {"val_loss": 0.25, "bad": None})
        self.assertRegex(m["created"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertIsInstance(m["created_ns"], int)
        self.assertEqual([(f["path"], f["bytes"]) for f in m["files"]], [("extra/notes.txt", 17), ("model.pt", 1000)])
        self.assertEqual(L.checkpoint_problem(self.folder(40)), "")

    @unittest.skipUnless(os.environ.get("LIFELINE_BIN"), "LIFELINE_BIN is not set (run through meson test)")
    def test_a_python_checkpoint_verifies_with_lifeline_verify_and_a_flipped_byte_is_skipped(self):
        c = self.client()
        self.assertTrue(self.commit(c, 10, {"model.pt": bytes(range(256)) * 4}, {"val_loss": 1.5}))
        self.assertTrue(self.commit(c, 20, {"model.pt": bytes(range(256)) * 4, "sub/x": b"x"}, {"val_loss": 0.5}))

        def verify():
            p = subprocess.run([os.environ["LIFELINE_BIN"], "verify", self.ckpt, "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            return json.loads(p.stdout)

        v = verify()
        self.assertEqual(v["resume"]["step"], 20)
        self.assertEqual(v["resume"]["bytes"], 1025)
        self.assertEqual(v["resume"]["metrics"], {"val_loss": 0.5})
        self.assertEqual(v["skipped"], [])
        flip_byte(os.path.join(self.folder(20), "model.pt"), 100)
        v = verify()
        self.assertEqual(v["resume"]["step"], 10)
        self.assertEqual([s["step"] for s in v["skipped"]], [20])
        self.assertIn("model.pt", v["skipped"][0]["problem"])
        self.assertIn("model.pt", L.checkpoint_problem(self.folder(20)))

    def test_recommitting_a_step_keeps_a_valid_one_and_replaces_an_invalid_one(self):
        c = self.client()
        self.assertTrue(self.commit(c, 5, {"a.bin": b"first"}))
        self.assertTrue(self.commit(c, 5, {"a.bin": b"second"}))
        with open(os.path.join(self.folder(5), "a.bin"), "rb") as f:
            self.assertEqual(f.read(), b"first")
        with open(os.path.join(self.folder(5), "a.bin"), "wb") as f:
            f.write(b"FIRST")
        self.assertNotEqual(L.checkpoint_problem(self.folder(5)), "")
        self.assertTrue(self.commit(c, 5, {"a.bin": b"third"}))
        with open(os.path.join(self.folder(5), "a.bin"), "rb") as f:
            self.assertEqual(f.read(), b"third")
        self.assertEqual(L.checkpoint_problem(self.folder(5)), "")
        self.assertEqual(self.listdir(), ["step-000000000005"])

    def test_unsafe_names_are_refused(self):
        ck = self.client().begin_checkpoint(1)
        for bad in ("../x", "/etc/x", "a//b", "./a", "MANIFEST", ""):
            with self.assertRaises(ValueError, msg=bad):
                ck.write_file(bad, b"")
        ck.discard()
        self.assertEqual(self.listdir(), [])


class OpenFileTest(ClientTestCase):
    def test_a_file_streamed_through_open_file_gets_the_same_manifest_entry_as_write_file(self):
        c = self.client()
        data = secrets.token_bytes(3 * L._CHUNK + 5)  # more than one chunk
        ck = c.begin_checkpoint(1)
        ck.write_file("whole.bin", data)
        with ck.open_file("streamed.bin") as f:
            for i in range(0, len(data), 1 << 20):
                self.assertEqual(f.write(memoryview(data)[i:i + (1 << 20)]), min(1 << 20, len(data) - i))
        left_open = ck.open_file("open.bin")  # commit() closes (and fsyncs) what is still open
        left_open.write(data[:10])
        self.assertTrue(ck.commit())
        with open(os.path.join(self.folder(1), "MANIFEST")) as f:
            entries = {e["path"]: (e["bytes"], e["checksum"]) for e in json.load(f)["files"]}
        self.assertEqual(entries["streamed.bin"], entries["whole.bin"])
        self.assertEqual(entries["open.bin"][0], 10)
        self.assertEqual(L.checkpoint_problem(self.folder(1)), "")

    def test_a_write_error_in_a_streamed_file_fails_the_commit(self):
        c = self.client()
        self.assertTrue(self.commit(c, 1))
        ck = c.begin_checkpoint(2)

        def io_error(fd, data):
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        with ck.open_file("a.bin") as f, mock.patch.object(L.os, "write", io_error):
            f.write(b"x" * 100)
        with contextlib.redirect_stderr(io.StringIO()) as err:
            self.assertFalse(ck.commit())
        self.assertIn("Input/output error", err.getvalue())
        self.assertEqual(self.listdir(), ["step-000000000001"])


class FailedSaveTest(ClientTestCase):
    def failed(self, c, step, **patches):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.ExitStack() as stack:
            for name, fn in patches.items():
                stack.enter_context(mock.patch.object(L.os, name, fn))
            ok = self.commit(c, step)
        self.assertFalse(ok)
        self.assertIn("lifeline: checkpoint of step %d failed" % step, err.getvalue())
        self.assertIn("older checkpoints are intact", err.getvalue())
        return err.getvalue()

    def test_a_failed_save_returns_false_leaves_older_checkpoints_and_removes_its_staging_folder(self):
        b = self.block()
        c = self.client(b)
        self.assertTrue(self.commit(c, 10))

        def no_space(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        b.request()
        message = self.failed(c, 20, fsync=no_space)
        self.assertIn("No space left on device", message)
        self.assertEqual(self.listdir(), ["step-000000000010"])
        self.assertEqual(L.checkpoint_problem(self.folder(10)), "")
        self.assertEqual(b.get("failed_saves"), 1)
        self.assertEqual(b.get("commit_count"), 1)
        self.assertFalse(c.should_checkpoint(21))  # answered: no retry on every step
        self.assertEqual(b.get("client_state"), L.ClientState.ATTACHED)

        def short_write(fd, data):
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        self.failed(c, 30, write=short_write)
        self.assertEqual(self.listdir(), ["step-000000000010"])
        self.assertEqual(b.get("failed_saves"), 2)
        self.assertTrue(self.commit(c, 40))  # training and saving go on afterwards

    def test_a_write_error_fails_the_checkpoint_at_once_its_staging_folder_is_gone_before_commit(self):
        b = self.block()
        c = self.client(b)
        self.assertTrue(self.commit(c, 10))
        b.request()
        ck = c.begin_checkpoint(20)
        f = ck.open_file("model.pt")
        f.write(b"m" * 1000)

        def no_space(fd, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        with mock.patch.object(L.os, "write", no_space):
            self.assertEqual(f.write(b"x" * 100), 100)  # never raises: torch.save would not survive it
        self.assertFalse(os.path.exists(ck.path))  # at once: its space is back before commit()
        self.assertTrue(ck.failed)
        self.assertIn("write %s: No space left on device" % os.path.join(ck.path, "model.pt"), ck.error)
        ck.write_file("more.pt", b"y" * 10)  # the rest of the state is dropped
        self.assertFalse(os.path.exists(ck.path))
        with contextlib.redirect_stderr(io.StringIO()) as err:
            self.assertFalse(ck.commit())
        self.assertIn("No space left on device", err.getvalue())
        self.assertEqual(self.listdir(), ["step-000000000010"])
        self.assertEqual(b.get("failed_saves"), 1)
        self.assertFalse(c.should_checkpoint(21))
        self.assertTrue(self.commit(c, 30))

    def test_an_exception_other_than_an_os_error_inside_a_write_is_raised_by_close_not_by_write(self):
        c = self.client(self.block())
        ck = c.begin_checkpoint(1)
        f = ck.open_file("model.pt")

        def interrupted(fd, data):
            raise KeyboardInterrupt

        with mock.patch.object(L.os, "write", interrupted):
            self.assertEqual(f.write(b"x" * 100), 100)  # inside torch.save this must not raise
        self.assertTrue(ck.failed)
        self.assertFalse(os.path.exists(ck.path))
        with self.assertRaises(KeyboardInterrupt):
            f.close()
        with contextlib.redirect_stderr(io.StringIO()) as err:
            self.assertFalse(ck.commit())
        self.assertIn("KeyboardInterrupt while writing", err.getvalue())

    def test_a_staging_folder_that_cannot_be_made_gives_a_failed_checkpoint_not_an_exception(self):
        c = self.client(self.block())

        def no_space(path, mode=0o777):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        with mock.patch.object(L.os, "mkdir", no_space):
            ck = c.begin_checkpoint(1)
        self.assertTrue(ck.failed)
        ck.write_file("a.bin", b"a")
        with contextlib.redirect_stderr(io.StringIO()) as err:
            self.assertFalse(ck.commit())
        self.assertIn("mkdir %s: No space left on device" % ck.path, err.getvalue())

    def test_a_symbolic_link_in_the_staging_folder_fails_the_save(self):
        c = self.client()
        ck = c.begin_checkpoint(3)
        os.symlink("/etc/hostname", os.path.join(ck.path, "link"))
        with contextlib.redirect_stderr(io.StringIO()) as err:
            self.assertFalse(ck.commit())
        self.assertIn("symbolic link", err.getvalue())
        self.assertEqual(self.listdir(), [])


class ManifestLimitTest(ClientTestCase):
    """The store's limits, as the C++ writer and verifier apply them: no empty checkpoint, no
    MANIFEST over MAX_MANIFEST_BYTES (4 MiB)."""

    def test_an_empty_checkpoint_is_refused_with_a_clear_message(self):
        b = self.block()
        c = self.client(b)
        ck = c.begin_checkpoint(5)
        with contextlib.redirect_stderr(io.StringIO()) as err:
            self.assertFalse(ck.commit())
        self.assertIn("checkpoint of step 5 has no files: nothing to commit", err.getvalue())
        self.assertEqual(b.get("failed_saves"), 1)
        self.assertEqual(self.listdir(), [])

    def test_a_manifest_over_4_mib_is_refused_on_write(self):
        self.assertEqual(L.MAX_MANIFEST_BYTES, 4 << 20)
        c = self.client(self.block())
        ck = c.begin_checkpoint(6)
        ck.write_file("a.bin", b"a")
        with contextlib.redirect_stderr(io.StringIO()) as err:
            self.assertFalse(ck.commit({"m" * (L.MAX_MANIFEST_BYTES + 1): 1.0}))
        self.assertIn("over the 4 MiB limit", err.getvalue())
        self.assertEqual(self.listdir(), [])

    def write_manifest(self, step, files, pad=0):
        folder = self.folder(step)
        os.makedirs(folder)
        entries = []
        for rel, data in files.items():
            with open(os.path.join(folder, rel), "wb") as f:
                f.write(data)
            entries.append({"path": rel, "bytes": len(data), "checksum": hashlib.sha256(data).hexdigest()})
        manifest = {"format": "lifeline-checkpoint", "format_version": 1, "step": step, "checksum_algorithm": "sha256",
                    "files": entries, "metrics": {}}
        with open(os.path.join(folder, "MANIFEST"), "w") as f:
            f.write(json.dumps(manifest) + " " * pad)
        return folder

    def test_verify_treats_an_over_size_or_empty_file_list_manifest_as_invalid(self):
        self.assertEqual(L.checkpoint_problem(self.write_manifest(1, {"a.bin": b"a"})), "")
        self.assertIn("over the 4 MiB limit",
                      L.checkpoint_problem(self.write_manifest(2, {"a.bin": b"a"}, pad=L.MAX_MANIFEST_BYTES)))
        self.assertIn("lists no files", L.checkpoint_problem(self.write_manifest(3, {})))


GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "manifests")


class Xxh3Test(ClientTestCase):
    """Checkpoints written by the C++ store with its default checksum, xxh3-64 (the golden one of
    tests/data/manifests/valid-xxh3): checked with the xxhash module when it is importable, else
    "not checked here" (sizes only), never invalid, never replaced."""

    def setUp(self):
        super().setUp()
        os.makedirs(self.ckpt)
        shutil.copytree(os.path.join(GOLDEN, "valid-xxh3", "step-000000000007"), self.folder(7))

    def read(self, rel):
        with open(os.path.join(self.folder(7), rel), "rb") as f:
            return f.read()

    @unittest.skipUnless(L._xxh3_64, "the xxhash module (python3-xxhash) is not installed")
    def test_with_xxhash_an_xxh3_checkpoint_is_checked_and_a_flipped_byte_makes_it_invalid(self):
        self.assertEqual(L.verify_checkpoint(self.folder(7)), L.Verdict("", True))
        flip_byte(os.path.join(self.folder(7), "sub", "optimizer.bin"), 3)
        self.assertIn("does not match its xxh3-64 checksum", L.checkpoint_problem(self.folder(7)))
        self.assertIsNone(L.resume_choice(self.ckpt).resume)

    def test_without_xxhash_an_xxh3_checkpoint_is_unchecked_not_invalid_and_resumed_but_a_wrong_size_is_invalid(self):
        with mock.patch.object(L, "_xxh3_64", None):
            self.assertEqual(L.verify_checkpoint(self.folder(7)), L.Verdict("", False))
            self.assertEqual(L.resume_choice(self.ckpt), L.Resume(L.ResumeInfo(self.folder(7), 7), []))
            with open(os.path.join(self.folder(7), "model.bin"), "ab") as f:
                f.write(b"x")
            self.assertIn("has 1025 bytes, the manifest says 1024", L.checkpoint_problem(self.folder(7)))

    def test_a_python_commit_of_the_same_step_keeps_the_xxh3_checkpoint_with_or_without_xxhash(self):
        before = {rel: self.read(rel) for rel in ("MANIFEST", "model.bin", "sub/optimizer.bin")}
        for xxh3 in ([L._xxh3_64, None] if L._xxh3_64 else [None]):
            with mock.patch.object(L, "_xxh3_64", xxh3):
                c = self.client(self.block())
                self.assertTrue(self.commit(c, 7, {"model.bin": b"python"}))
                c.close()
                self.assertEqual({rel: self.read(rel) for rel in before}, before)
                self.assertEqual(self.listdir(), ["step-000000000007"])

    @unittest.skipUnless(os.environ.get("LIFELINE_BIN"), "LIFELINE_BIN is not set (run through meson test)")
    def test_lifeline_verify_accepts_the_golden_xxh3_checkpoint_and_resumes_a_newer_python_one(self):
        def verify():
            p = subprocess.run([os.environ["LIFELINE_BIN"], "verify", self.ckpt, "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            return json.loads(p.stdout)

        self.assertEqual(verify()["resume"]["step"], 7)
        self.assertTrue(self.commit(self.client(), 8, {"model.bin": b"python"}))
        self.assertEqual(verify()["resume"]["step"], 8)
        self.assertEqual(L.resume_choice(self.ckpt).resume.step, 8)


def count_calls(kill_at, out):
    """Wraps the os calls a commit makes (open, mkdir, write, fsync, close, rename): each is
    written to the descriptor `out` as a JSON array (op, path, and open's flags or rename's
    target) once it happened, and the process SIGKILLs itself just before call number `kill_at`
    (0: never). For a forked child only: it never undoes the wrapping."""
    real_write = os.write
    count, paths = [0], {}

    def counted(name, real, path_of):
        def call(*args, **kw):
            count[0] += 1
            if count[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            result = real(*args, **kw)
            if name == "open":
                paths[result] = args[0]
            real_write(out, (json.dumps([name, *path_of(args)]) + "\n").encode())
            return result
        return call

    os.open = counted("open", os.open, lambda a: [a[0], a[1]])
    os.mkdir = counted("mkdir", os.mkdir, lambda a: [a[0]])
    os.write = counted("write", os.write, lambda a: [paths.get(a[0], a[0])])
    os.fsync = counted("fsync", os.fsync, lambda a: [paths.get(a[0], a[0])])
    os.close = counted("close", os.close, lambda a: [paths.get(a[0], a[0])])
    os.rename = counted("rename", os.rename, lambda a: [a[0], a[1]])


def crash_child(ckpt, step, kill_at, out):
    """In a forked child: commits step 1 unless there, then commits `step` with every file-system
    call that changes or syncs something counted, killing itself with SIGKILL just before call
    number `kill_at` (0: never). Writes each counted call that happened as a JSON array (op, path,
    and open's flags or rename's target), then "committed" once commit() returned True, to the
    descriptor `out`; never returns."""
    try:
        real_write = os.write
        c = L.Client({"LIFELINE_CKPT_DIR": ckpt})
        if not os.path.exists(os.path.join(ckpt, L.folder_name(1))):
            ck = c.begin_checkpoint(1)
            ck.write_file("a.bin", b"old" * 1000)
            assert ck.commit()
        count_calls(kill_at, out)
        ck = c.begin_checkpoint(step)
        ck.write_file("a.bin", b"new" * 1000)
        os.makedirs(os.path.join(ck.path, "sub"))
        fd = os.open(os.path.join(ck.path, "sub", "b.bin"), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        os.write(fd, b"direct")  # written directly, hashed and fsynced by commit
        os.close(fd)
        real_write(out, b"committed\n" if ck.commit() else b"failed\n")
        os._exit(0)
    except BaseException:
        os._exit(3)


class CommitCrashTest(ClientTestCase):
    """The Python commit under crashes, as tests/store_crash_test.cc proves the C++ one: killed at
    any point, the directory holds the previous checkpoint or the new one as the resume choice,
    never neither; and the order of its writes, fsyncs and renames is the one that makes a power
    loss leave old-or-new too."""

    def setUp(self):
        super().setUp()
        if os.path.isdir(L.SHM_DIR):  # tmpfs: fsync costs nothing there, and a kill test needs no disk
            self.shm_tmp = tempfile.mkdtemp(prefix="lifeline-pytest-", dir=L.SHM_DIR)
            self.addCleanup(shutil.rmtree, self.shm_tmp, True)
            self.ckpt = os.path.join(self.shm_tmp, "ckpt")

    def run_child(self, step, kill_at):
        """Runs crash_child in a forked child (no interpreter start-up per crash point); returns
        its wait status and its lines (the calls decoded)."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            crash_child(self.ckpt, step, kill_at, w)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            lines = [line if line == "committed" else json.loads(line) for line in f.read().decode().splitlines()]
        _, status = os.waitpid(pid, 0)
        return status, lines

    @staticmethod
    def drop_unsynced(calls):
        """Power loss after `calls`, as tests/store_crash_test.cc simulates it: undoes, newest
        first, every rename, mkdir and file creation whose directory was not fsynced after it, and
        empties every file written but not fsynced after its last write (found where the renames
        that survive moved it)."""
        undone = set()

        def synced_after(i, path):
            return any(c[0] == "fsync" and c[1] == path for c in calls[i + 1:])

        def now(i, path):
            for j in range(i + 1, len(calls)):
                c = calls[j]
                if c[0] == "rename" and j not in undone and (path == c[1] or path.startswith(c[1] + "/")):
                    path = c[2] + path[len(c[1]):]
            return path

        for i in reversed(range(len(calls))):
            c = calls[i]
            if c[0] == "rename" and not synced_after(i, os.path.dirname(c[2])) and os.path.lexists(c[2]):
                os.rename(c[2], c[1])
                undone.add(i)
            elif c[0] == "mkdir" and not synced_after(i, os.path.dirname(c[1])):
                shutil.rmtree(now(i, c[1]), ignore_errors=True)
            elif c[0] == "open" and c[2] & os.O_CREAT and not synced_after(i, os.path.dirname(c[1])):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(now(i, c[1]))
            elif c[0] == "write" and not synced_after(i, c[1]) and os.path.exists(now(i, c[1])):
                os.truncate(now(i, c[1]), 0)

    def resume_steps(self):
        """The resume choice as Python and, when it is there, the lifeline binary see it."""
        steps = [L.resume_choice(self.ckpt).resume.step]
        if os.environ.get("LIFELINE_BIN"):
            p = subprocess.run([os.environ["LIFELINE_BIN"], "verify", self.ckpt, "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            steps.append(json.loads(p.stdout)["resume"]["step"])
        return steps

    def kill_at_every_call(self, step, prepare, power_loss=False):
        points = 0
        for kill_at in range(1, 200):
            shutil.rmtree(self.ckpt, ignore_errors=True)
            prepare()
            status, lines = self.run_child(step, kill_at)
            killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            self.assertTrue(killed or os.WEXITSTATUS(status) == 0, (status, lines))
            committed = "committed" in lines
            if power_loss:
                self.drop_unsynced([c for c in lines if c != "committed"])
            steps = self.resume_steps()
            with self.subTest(kill_at=kill_at):
                self.assertIn(steps[0], (1, step))
                self.assertEqual(len(set(steps)), 1, steps)
                if committed:
                    self.assertEqual(steps[0], step)
            if not killed:
                self.assertTrue(committed, lines)
                self.assertEqual(steps[0], step)
                break
            points += 1
        self.assertGreater(points, 20)  # the commit was interrupted at every one of its calls
        return points

    def test_killed_at_any_call_of_a_commit_the_previous_or_the_new_checkpoint_is_the_resume_choice(self):
        self.kill_at_every_call(2, lambda: None)

    def test_a_power_loss_at_any_call_of_a_commit_leaves_the_previous_or_the_new_checkpoint(self):
        self.kill_at_every_call(2, lambda: None, power_loss=True)

    def test_a_power_loss_at_any_call_while_replacing_an_invalid_folder_of_the_same_step_leaves_old_or_new(self):
        def prepare():
            self.assertIn("committed", self.run_child(2, 0)[1])
            flip_byte(os.path.join(self.folder(2), "a.bin"), 0)
        self.kill_at_every_call(2, prepare, power_loss=True)

    def test_killed_at_any_call_while_replacing_an_invalid_folder_of_the_same_step_old_or_new_is_resumed(self):
        def prepare():
            self.assertIn("committed", self.run_child(2, 0)[1])
            flip_byte(os.path.join(self.folder(2), "a.bin"), 0)  # step 2 is now invalid: it will be replaced
        self.kill_at_every_call(2, prepare)
        self.assertFalse([n for n in self.listdir() if n.startswith((".trash-", ".staging-"))])

    def test_every_file_is_fsynced_before_the_manifest_and_everything_before_the_rename_then_the_directory(self):
        os.makedirs(self.ckpt)
        _, lines = self.run_child(2, 0)
        self.assertEqual(lines[-1], "committed")
        calls = [(c[0], c[1] if c[0] != "rename" else f"{c[1]} -> {c[2]}") for c in lines[:-1]]

        def index(op, pred):
            found = [i for i, (o, arg) in enumerate(calls) if o == op and pred(arg)]
            self.assertTrue(found, f"no {op} matching in {calls}")
            return found

        staging = index("mkdir", lambda a: ".staging-step-000000000002-" in a)[0]
        staging_path = calls[staging][1]
        manifest_open = index("open", lambda a: a.endswith("/MANIFEST"))[0]
        manifest_sync = index("fsync", lambda a: a.endswith("/MANIFEST"))[0]
        rename = index("rename", lambda a: a.startswith(staging_path))[0]
        for rel in ("a.bin", "sub/b.bin"):
            self.assertLess(index("fsync", lambda a: a == f"{staging_path}/{rel}")[0], manifest_open, rel)
        self.assertLess(index("fsync", lambda a: a == f"{staging_path}/sub")[0], manifest_open)
        self.assertLess(manifest_open, manifest_sync)
        self.assertLess(max(index("write", lambda a: a.endswith("/MANIFEST"))), manifest_sync)
        self.assertLess(manifest_sync, index("fsync", lambda a: a == staging_path)[0])
        self.assertLess(index("fsync", lambda a: a == staging_path)[0], rename)
        self.assertEqual(calls[rename][1], f"{staging_path} -> {self.folder(2)}")
        dir_syncs = index("fsync", lambda a: a == self.ckpt)
        self.assertTrue(any(i > rename for i in dir_syncs), "the checkpoint directory is fsynced after the rename")


class WritersLockTest(ClientTestCase):
    """The writers' lock (<dir>/.writers.lock), the protocol of src/store/writers_lock.h."""

    def lock_path(self):
        return os.path.join(self.ckpt, L.WRITERS_LOCK)

    def try_exclusive(self):
        return no_writers(self.ckpt)

    def test_an_attached_client_holds_the_writers_lock_shared_until_close(self):
        c = self.client(self.block())
        st = os.lstat(self.lock_path())
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assertEqual(st.st_mode & 0o777, 0o600)
        self.assertFalse(self.try_exclusive())
        fd = os.open(self.lock_path(), os.O_RDWR)  # shared: a second writer is welcome
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        os.close(fd)
        c.close()
        self.assertTrue(self.try_exclusive())

    def test_an_inert_client_takes_no_lock_and_starts_no_thread(self):
        threads = threading.active_count()
        c = self.client()
        self.assertFalse(c.active)
        self.assertEqual(threading.active_count(), threads)
        self.assertFalse(os.path.exists(self.ckpt))

    def test_the_lock_waits_out_an_exclusive_holder_and_gives_up_naming_it(self):
        os.makedirs(self.ckpt)
        fd = os.open(self.lock_path(), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        with mock.patch.object(L, "WRITERS_LOCK_PATIENCE", 0.2):
            with self.assertRaises(L.WritersLockError) as e:
                self.client(self.block())
        self.assertIn("held exclusively by pid %d" % os.getpid(), str(e.exception))
        release = threading.Timer(0.1, fcntl.flock, (fd, fcntl.LOCK_UN))  # a supervisor's instant probe
        release.start()
        c = self.client(self.block())  # waits for it, within the patience
        release.join()
        os.close(fd)
        self.assertTrue(c.active)
        self.assertFalse(self.try_exclusive())

    def test_a_lock_file_that_is_a_link_or_not_a_regular_file_is_refused(self):
        os.makedirs(self.ckpt)
        os.symlink(os.path.join(self.tmp, "elsewhere"), self.lock_path())
        with self.assertRaisesRegex(L.WritersLockError, "symbolic link"):
            self.client(self.block())
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "elsewhere")))
        os.unlink(self.lock_path())
        os.mkfifo(self.lock_path())
        with self.assertRaisesRegex(L.WritersLockError, "not a regular file"):
            self.client(self.block())

    def test_a_directory_where_the_lock_file_cannot_be_made_gets_a_warning_not_a_refusal(self):
        real_open = os.open

        def read_only(path, flags, mode=0o777):
            if path.endswith(L.WRITERS_LOCK):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            return real_open(path, flags, mode)

        with mock.patch.object(L.os, "open", read_only), contextlib.redirect_stderr(io.StringIO()) as err:
            c = self.client(self.block())
        self.assertTrue(c.active)
        self.assertIn("Read-only file system): going on without the writers' lock", err.getvalue())

    def test_a_file_system_without_flock_gets_a_warning_not_a_refusal(self):
        def no_flock(fd, op):
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

        with mock.patch.object(L.fcntl, "flock", no_flock), contextlib.redirect_stderr(io.StringIO()) as err:
            c = self.client(self.block())
        self.assertTrue(c.active)
        self.assertIn("going on without the writers' lock", err.getvalue())


class SupervisorWatchTest(ClientTestCase):
    """The supervisor watch on its own (the kill itself: tests/python_test.cc)."""

    def watch_threads(self):
        return [t for t in threading.enumerate() if t.name == "lifeline-supervisor-watch"]

    def test_an_attached_client_watches_its_supervisor_until_close_which_joins_the_thread(self):
        b = self.block()  # its supervisor is this process
        c = self.client(b)
        self.assertEqual(len(self.watch_threads()), 1)
        self.assertEqual(c._watch.pid, os.getpid())
        c.close()
        self.assertEqual(self.watch_threads(), [])

    def test_lifeline_watch_supervisor_0_turns_the_watch_off_not_the_lock(self):
        c = self.client(self.block(), LIFELINE_WATCH_SUPERVISOR="0")
        self.assertEqual(self.watch_threads(), [])
        self.assertTrue(os.path.exists(os.path.join(self.ckpt, L.WRITERS_LOCK)))
        c.close()

    def test_the_watch_sees_a_supervisor_exit_through_a_pidfd_and_by_polling_without_one(self):
        for use_pidfd in (True, False):
            with self.subTest(use_pidfd=use_pidfd):
                supervisor = subprocess.Popen(["sleep", "60"])
                gone = []
                seen = threading.Event()
                w = L.SupervisorWatch(supervisor.pid, lambda pid: (gone.append(pid), seen.set()), use_pidfd=use_pidfd)
                self.assertEqual(w.mode, "pidfd" if use_pidfd else "polling")
                supervisor.kill()  # not reaped yet: a zombie still answers os.kill(pid, 0)
                self.assertTrue(seen.wait(5))
                self.assertEqual(gone, [supervisor.pid])
                supervisor.wait()
                w.stop()

    def test_a_watch_stopped_while_its_supervisor_lives_is_woken_and_joined_at_once(self):
        w = L.SupervisorWatch(os.getpid(), lambda pid: self.fail("this process is not gone"), use_pidfd=False)
        t0 = time.monotonic()
        w.stop()
        self.assertLess(time.monotonic() - t0, 0.5)  # not after a poll period
        self.assertEqual(self.watch_threads(), [])

    def test_a_forked_child_closing_its_copy_leaves_the_watch_and_the_lock_to_the_trainer(self):
        b = self.block()
        c = self.client(b)
        pid = os.fork()
        if pid == 0:  # a data-loader worker
            c.close()
            os._exit(0)
        self.assertEqual(os.waitpid(pid, 0)[1], 0)
        self.assertEqual(len(self.watch_threads()), 1)
        self.assertTrue(c._watch._thread.is_alive())
        self.assertEqual(b.get("client_state"), L.ClientState.ATTACHED)
        self.assertFalse(no_writers(self.ckpt))


class AsyncSaveTest(ClientTestCase):
    """Client.save_async: the rules of include/lifeline/client.h, from Python."""

    def setUp(self):
        super().setUp()
        self.releases = []

    def tearDown(self):
        for r in self.releases:  # a failed assertion must not leave close() waiting for a held save
            r.set()
        super().tearDown()

    def held_save(self, c, step, files=None, metrics=None):
        """Starts an async save of `step` whose background write waits for the returned event."""
        release, writing = threading.Event(), threading.Event()
        self.releases.append(release)
        data = dict(files or {"a.bin": b"a" * 100})

        def snapshot():
            copy = {k: bytes(v) for k, v in data.items()}

            def persist(ck):
                writing.set()
                release.wait()
                for rel, v in copy.items():
                    ck.write_file(rel, v)
            return persist

        self.assertTrue(c.save_async(step, snapshot, metrics))
        self.assertTrue(writing.wait(60))
        return release

    def manifest_files(self, step):
        with open(os.path.join(self.folder(step), "MANIFEST")) as f:
            return json.load(f)["files"]

    def test_an_async_save_writes_the_same_files_as_a_synchronous_one_and_acks_only_after_its_commit(self):
        b = self.block()
        c = self.client(b)
        files = {"a.bin": b"a" * 100, "sub/b.bin": bytes(range(256)) * 3}
        self.assertTrue(self.commit(c, 1, files))
        seq = b.request()
        self.assertTrue(c.should_checkpoint(2))
        release = self.held_save(c, 2, files, {"loss": 0.5})
        self.assertTrue(c.save_in_flight)
        self.assertEqual(b.get("client_state"), L.ClientState.SAVING)
        self.assertFalse(os.path.exists(self.folder(2)))
        self.assertEqual(b.get("ack_seq"), seq - 1)  # nothing acked before the commit
        self.assertEqual(b.get("commit_count"), 1)
        release.set()
        self.assertTrue(c.wait_for_saves())
        self.assertFalse(c.save_in_flight)
        self.assertEqual(b.get("ack_seq"), seq)
        self.assertEqual(b.get("ack_step"), 2)
        self.assertEqual(b.get("commit_count"), 2)
        self.assertEqual(b.get("client_state"), L.ClientState.ATTACHED)
        self.assertEqual(L.checkpoint_problem(self.folder(2)), "")
        self.assertEqual(self.manifest_files(2), self.manifest_files(1))
        self.assertFalse(c.should_checkpoint(3))

    def test_requests_and_every_steps_points_during_a_save_in_flight_are_coalesced_into_it(self):
        b = self.block()
        b.set("every_steps", 2)
        c = self.client(b)
        self.assertTrue(c.should_checkpoint(2))
        release = self.held_save(c, 2)
        self.assertFalse(c.should_checkpoint(4))  # the every_steps point is coalesced into the save in flight
        seq = b.request()
        self.assertFalse(c.should_checkpoint(5))  # and so is the request
        release.set()
        self.assertTrue(c.wait_for_saves())
        self.assertEqual(b.get("ack_seq"), seq)  # the commit answered the request posted meanwhile
        self.assertFalse(c.should_checkpoint(5))
        self.assertTrue(c.should_checkpoint(6))
        self.assertEqual(self.listdir(), ["step-000000000002"])

    def test_a_second_save_waits_for_the_one_in_flight_never_two_at_once(self):
        c = self.client(self.block())
        events = []
        release = self.held_save(c, 1)
        second_snapshot = threading.Event()

        def snapshot():
            events.append("snapshot 2, in flight: %s" % self.listdir())
            second_snapshot.set()
            return lambda ck: ck.write_file("b.bin", b"b")

        t = threading.Thread(target=c.save_async, args=(2, snapshot))
        t.start()
        self.assertFalse(second_snapshot.wait(0.5), "the second snapshot ran while the first save was in flight")
        release.set()
        t.join()
        self.assertTrue(c.wait_for_saves())
        self.assertEqual(events, ["snapshot 2, in flight: ['step-000000000001']"])  # after the first commit
        self.assertEqual(sorted(self.listdir()), ["step-000000000001", "step-000000000002"])

    def test_begin_checkpoint_waits_for_the_save_in_flight(self):
        c = self.client(self.block())
        release = self.held_save(c, 1)
        threading.Timer(0.2, release.set).start()
        self.assertTrue(self.commit(c, 2))
        self.assertEqual(sorted(self.listdir()), ["step-000000000001", "step-000000000002"])

    def test_a_stop_request_during_a_background_save_is_answered_by_it_and_needs_no_new_snapshot(self):
        b = self.block()
        c = self.client(b)
        release = self.held_save(c, 5)
        seq = b.request(stop=True)
        self.assertTrue(c.should_checkpoint(6))  # a stop is never coalesced away
        self.assertTrue(c.should_exit())
        release.set()  # the stop was posted before the commit: that commit answers it
        self.assertFalse(c.save_async(6, lambda: self.fail("snapshot taken for an answered stop")))
        self.assertTrue(c.wait_for_saves())
        self.assertEqual(b.get("ack_seq"), seq)
        self.assertEqual(b.get("ack_step"), 5)
        self.assertEqual(self.listdir(), ["step-000000000005"])

    def test_a_stop_answered_by_a_background_commit_before_the_trainer_looked_still_reaches_should_exit(self):
        for stop in ("supervisor", "signal"):
            with self.subTest(stop=stop):
                b = self.block()
                c = self.client(b)
                release = self.held_save(c, 5)
                if stop == "supervisor":
                    b.request(stop=True)
                else:
                    signal.raise_signal(signal.SIGTERM)
                release.set()
                self.assertTrue(c.wait_for_saves())
                self.assertEqual(b.get("ack_seq"), b.get("request_seq"))
                self.assertTrue(c.should_checkpoint(6))  # once more, so the loop reaches should_exit()
                self.assertTrue(c.should_exit())
                self.assertFalse(c.save_async(6, lambda: self.fail("snapshot taken for an answered stop")))
                c.close()

    def test_a_failed_background_save_is_reported_not_retried_every_step_and_older_checkpoints_stay(self):
        b = self.block()
        c = self.client(b)
        self.assertTrue(self.commit(c, 10))
        b.request()

        def persist(ck):
            ck.write_file("half.bin", b"h" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertTrue(c.save_async(20, lambda: persist))
            self.assertFalse(c.wait_for_saves())
        self.assertIn("lifeline: checkpoint of step 20 failed", err.getvalue())
        self.assertIn("No space left on device", err.getvalue())
        self.assertEqual(self.listdir(), ["step-000000000010"])  # no staging folder left either
        self.assertEqual(L.checkpoint_problem(self.folder(10)), "")
        self.assertEqual(b.get("failed_saves"), 1)
        self.assertEqual(b.get("client_state"), L.ClientState.ATTACHED)
        self.assertFalse(c.should_checkpoint(21))  # settled: no retry on every step
        self.assertTrue(c.save_async(30, lambda: lambda ck: ck.write_file("a.bin", b"a")))
        self.assertTrue(c.wait_for_saves())  # saving goes on afterwards

    def test_an_exception_in_snapshot_propagates_to_the_trainer_and_starts_no_save(self):
        c = self.client(self.block())

        def snapshot():
            raise MemoryError("no room for the copy")

        with self.assertRaises(MemoryError):
            c.save_async(1, snapshot)
        self.assertFalse(c.save_in_flight)
        self.assertFalse(os.path.exists(self.ckpt) and self.listdir())

    def test_close_waits_for_the_save_in_flight(self):
        b = self.block()
        c = self.client(b)
        release = self.held_save(c, 7)
        threading.Timer(0.2, release.set).start()
        c.close()
        self.assertEqual(L.checkpoint_problem(self.folder(7)), "")
        self.assertEqual(b.get("ack_step"), 7)
        self.assertEqual(b.get("client_state"), L.ClientState.EXITING)

    @unittest.skipUnless(os.environ.get("LIFELINE_BIN"), "LIFELINE_BIN is not set (run through meson test)")
    def test_killing_the_trainer_during_a_background_write_leaves_the_previous_checkpoint_the_resume_choice(self):
        script = """
import os, sys, threading
sys.path.insert(0, %r)
import lifeline_client as L
c = L.Client({"LIFELINE_CKPT_DIR": %r})
ck = c.begin_checkpoint(1); ck.write_file("a.bin", b"a" * 4096); assert ck.commit()
def persist(ck):
    with ck.open_file("a.bin") as f:
        f.write(b"b" * 4096)
        print(ck.path, flush=True)   # half written: the test kills us now
        threading.Event().wait()
c.save_async(2, lambda: persist)
threading.Event().wait()
""" % (os.path.dirname(L.__file__), self.ckpt)
        p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        staging = p.stdout.readline().strip()
        self.assertTrue(staging and os.path.isdir(staging), staging)
        p.kill()
        p.wait()
        p.stdout.close()
        out = subprocess.run([os.environ["LIFELINE_BIN"], "verify", self.ckpt, "--json"], capture_output=True,
                             text=True)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(json.loads(out.stdout)["resume"]["step"], 1)
        self.assertEqual(sorted(self.listdir()), sorted(["step-000000000001", os.path.basename(staging)]))


if __name__ == "__main__":
    unittest.main(verbosity=2)
