"""The Python client in rank mode (docs/distributed.md): the launcher's variables, the rank slots
of layout version 2, the agreement on one step, the parts of a collective checkpoint, and the
verify and resume of sharded (version-2) checkpoints. The supervisor's half is played here in
Python (FakeSupervisor), as the C++ supervisor does it. Standard library only; run with
/usr/bin/python3."""
import contextlib
import hashlib
import io
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
import unittest
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import lifeline_client as L  # noqa: E402
from test_client import CommitCrashTest, FakeBlock, count_calls, flip_byte  # noqa: E402

RANK_VARS = ("LIFELINE_LOCAL_RANK", "LIFELINE_LOCAL_WORLD_SIZE", "LIFELINE_RANK", "LIFELINE_WORLD_SIZE",
             "LOCAL_RANK", "LOCAL_WORLD_SIZE", "RANK", "WORLD_SIZE", "LIFELINE_AGREE_MARGIN", "LIFELINE_RESHARD")


class FakeSupervisor:
    """The supervisor's half of docs/distributed.md on a FakeBlock, without atomics (the tests
    drive it step by step): the staging token, the agreement, phase 2 of the commit, abandons."""

    def __init__(self, block: FakeBlock, ckpt: str, world: int):
        self.b, self.ckpt, self.world = block, ckpt, world
        self.b.set("staging_token", (self.b.get("supervisor_pid") << 32) | int.from_bytes(secrets.token_bytes(4), "little"))

    def slot(self, i, field):
        off, width = L.SLOT_FIELDS[field]
        off += L.rank_slot_offset(i)
        return int.from_bytes(self.b.map[off:off + width], sys.byteorder)

    def set_slot(self, i, field, value):
        off, width = L.SLOT_FIELDS[field]
        off += L.rank_slot_offset(i)
        self.b.map[off:off + width] = value.to_bytes(width, sys.byteorder)

    def attached(self):
        return [i for i in range(L.MAX_LOCAL_RANKS)
                if self.slot(i, "pid") and self.slot(i, "state") != L.ClientState.EXITING]

    def agree(self):
        """Agrees once every attached rank has seen the newest request; returns the step or None."""
        r = self.b.get("request_seq")
        ranks = self.attached()
        if not ranks or any(self.slot(i, "seen_seq") < r for i in ranks):
            return None
        s = max(self.slot(i, "promised_step") for i in ranks)
        self.b.set("agreed_step", s)
        self.b.set("agreed_stop", 1 if self.b.get("request_flags") & L.FLAG_STOP else 0)
        self.b.set("agreement_seq", r)
        return s

    def staging(self, step):
        return os.path.join(self.ckpt, ".staging-%s-%d-%08x" % (
            L.folder_name(step), self.b.get("staging_token") >> 32, self.b.get("staging_token") & 0xFFFFFFFF))

    def commit(self, step):
        """Phase 2: the top MANIFEST over every part, the rename, the header's commit and ack."""
        staging = self.staging(step)
        assert all(self.slot(i, "part_step") == step for i in self.attached()), "a part is missing"
        parts = []
        for rank in range(self.world):
            with open(os.path.join(staging, L.rank_folder_name(rank), L.MANIFEST), "rb") as f:
                data = f.read()
            parts.append({"rank": rank, "path": L.rank_folder_name(rank) + "/MANIFEST", "bytes": len(data),
                          "checksum": hashlib.sha256(data).hexdigest()})
        top = {"format": "lifeline-checkpoint", "format_version": 2, "step": step, "world_size": self.world,
               "checksum_algorithm": "sha256", "parts": parts, "created": "2026-12-06T00:00:00.000Z"}
        with open(os.path.join(staging, L.MANIFEST), "w") as f:
            json.dump(top, f)
        os.rename(staging, os.path.join(self.ckpt, L.folder_name(step)))
        self.b.set("last_commit_step", step)
        self.b.set("ack_step", step)
        self.b.set("commit_count", self.b.get("commit_count") + 1)
        self.b.set("ack_seq", self.b.get("agreement_seq"))

    def abandon(self, step):
        shutil.rmtree(self.staging(step), ignore_errors=True)
        self.b.set("abandoned_step", step)
        self.b.set("failed_saves", self.b.get("failed_saves") + 1)


class RankTestCase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="lifeline-pytest-ranks-")
        self.ckpt = os.path.join(self.tmp, "ckpt")
        self.saved_env = {k: os.environ.pop(k) for k in RANK_VARS if k in os.environ}
        self.blocks, self.clients = [], []

    def tearDown(self):
        for c in reversed(self.clients):  # each restores the signal handlers it found
            c.close()
        for b in self.blocks:
            b.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        os.environ.update(self.saved_env)

    def block(self, world=2):
        b = FakeBlock()
        self.blocks.append(b)
        return b, FakeSupervisor(b, self.ckpt, world)

    def rank(self, block, local_rank, world=2, **env):
        e = {"LIFELINE_CKPT_DIR": self.ckpt, "LIFELINE_WATCH_SUPERVISOR": "0",
             "LOCAL_RANK": str(local_rank), "LOCAL_WORLD_SIZE": str(world),
             "RANK": str(local_rank), "WORLD_SIZE": str(world), **env}
        if block is not None:
            e["LIFELINE_CONTROL"] = block.name
        c = L.Client(e)
        self.clients.append(c)
        return c

    def ranks(self, block, world=2, **env):
        return [self.rank(block, i, world, **env) for i in range(world)]

    def part(self, c, step, files=None):
        ck = c.begin_checkpoint(step)
        for rel, data in (files or {}).items():
            ck.write_file(rel, data)
        return ck.commit()

    def folder(self, step):
        return os.path.join(self.ckpt, L.folder_name(step))

    def sharded(self, step, files_by_rank, world=None):
        """A committed sharded checkpoint of `step` written by len(files_by_rank) ranks."""
        world = world or len(files_by_rank)
        b, sup = self.block(world)
        cs = self.ranks(b, world)
        for c, files in zip(cs, files_by_rank):
            self.assertTrue(self.part(c, step, files))
        sup.commit(step)
        for c in reversed(cs):
            c.close()
        return self.folder(step)


class LayoutTest(unittest.TestCase):
    def test_layout_version_2_keeps_the_header_table_and_adds_the_agreement_fields_and_rank_slots(self):
        t = L.layout_table()
        self.assertEqual((t["version"], t["size"]), (2, 8448))
        self.assertEqual(set(t), {"magic", "version", "size", "flag_stop", "offsets", "reasons", "client_states"})
        for name, off in (("agreement_seq", 152), ("agreed_step", 160), ("staging_token", 168), ("abandoned_step", 176)):
            self.assertEqual(L.FIELDS[name], (off, 8))
        self.assertEqual(L.FIELDS["agreed_stop"], (184, 4))
        self.assertEqual(L.rank_slot_table(), {
            "pid": (0, 4), "rank": (4, 4), "world_size": (8, 4), "state": (12, 4), "current_step": (16, 8),
            "seen_seq": (24, 8), "promised_step": (32, 8), "part_step": (40, 8), "part_bytes": (48, 8),
            "failed_step": (56, 8), "failed_saves": (64, 8), "part_ns": (72, 8)})
        t = L.layout_table(slots=True)
        self.assertEqual((t["header_size"], t["max_local_ranks"], t["rank_slot_size"], t["rank_slots_off"]),
                         (256, 64, 128, 256))
        self.assertEqual(t["slot_offsets"]["slot_failed_saves"], 64)
        self.assertEqual(len(t["slot_offsets"]), 12)
        end = 0
        for name, (off, width) in sorted(L.FIELDS.items(), key=lambda f: f[1]):
            self.assertTrue(width in (4, 8) and off % width == 0 and off >= end, name)
            end = off + width
        self.assertLessEqual(end, L.HEADER_SIZE)
        end = 0
        for name, (off, width) in sorted(L.SLOT_FIELDS.items(), key=lambda f: f[1]):
            self.assertTrue(width in (4, 8) and off % width == 0 and off >= end, name)
            end = off + width
        self.assertLessEqual(end, L.RANK_SLOT_SIZE)
        self.assertEqual(L.rank_slot_offset(L.MAX_LOCAL_RANKS), L.SIZE)


class RankEnvTest(RankTestCase):
    def refused(self, env, *words):
        with self.assertRaises(L.RankEnvError) as cm:
            L.rank_env(env)
        for w in words:
            self.assertIn(w, str(cm.exception))

    def test_a_local_world_of_one_or_no_launcher_variables_is_a_single_trainer(self):
        self.assertIsNone(L.rank_env({}))
        self.assertIsNone(L.rank_env({"LOCAL_WORLD_SIZE": "1", "LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1"}))
        self.assertIsNone(L.rank_env({"LOCAL_RANK": "3"}))

    def test_torchrun_variables_and_lifeline_variables_that_win_over_them(self):
        env = {"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "RANK": "1", "WORLD_SIZE": "4"}
        self.assertEqual(L.rank_env(env), L.RankEnv(1, 4, 1, 4, 2, False))
        self.assertEqual(L.rank_env({"LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "3"}), L.RankEnv(2, 3, 2, 3))
        env.update(LIFELINE_LOCAL_RANK="3", LIFELINE_RANK="3", LIFELINE_AGREE_MARGIN="5", LIFELINE_RESHARD="1")
        self.assertEqual(L.rank_env(env), L.RankEnv(3, 4, 3, 4, 5, True))
        self.assertIsNone(L.rank_env({**env, "LIFELINE_LOCAL_WORLD_SIZE": "1"}))

    def test_missing_or_malformed_values_are_refused_naming_the_variable(self):
        self.refused({"LOCAL_WORLD_SIZE": "2"}, "LOCAL_RANK", "unset")
        self.refused({"LOCAL_WORLD_SIZE": "two"}, "LOCAL_WORLD_SIZE='two'", "not a number")
        self.refused({"LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "-1"}, "LOCAL_RANK='-1'")
        self.refused({"LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "2"}, "LOCAL_RANK=2", "LOCAL_WORLD_SIZE=2")
        self.refused({"LOCAL_WORLD_SIZE": "65", "LOCAL_RANK": "0"}, "LOCAL_WORLD_SIZE=65", "64")
        self.refused({"LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "0", "RANK": "2", "WORLD_SIZE": "2"}, "RANK=2")
        self.refused({"LIFELINE_LOCAL_WORLD_SIZE": "2", "LIFELINE_LOCAL_RANK": "x"}, "LIFELINE_LOCAL_RANK")
        self.refused({"LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "0", "LIFELINE_AGREE_MARGIN": "0"},
                     "LIFELINE_AGREE_MARGIN")

    def test_a_world_larger_than_the_local_one_is_refused_under_a_lone_supervisor(self):
        self.refused({"LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "4"},
                     "WORLD_SIZE=4", "LOCAL_WORLD_SIZE=2", "one per node with srun")

    def test_under_one_of_several_supervisors_a_rank_spans_nodes_and_a_lone_rank_is_a_rank(self):
        env = {"LIFELINE_PEERS": "2", "LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "1", "RANK": "3", "WORLD_SIZE": "4"}
        self.assertEqual(L.rank_env(env), L.RankEnv(1, 2, 3, 4, 2, False))
        self.assertEqual(L.rank_env({"LIFELINE_PEERS": "3", "RANK": "2", "WORLD_SIZE": "3"}),
                         L.RankEnv(0, 1, 2, 3, 2, False))
        self.assertIsNone(L.rank_env({"LIFELINE_PEERS": "1", "RANK": "0", "WORLD_SIZE": "1"}))

    def test_attach_refuses_a_malformed_rank_but_an_inert_client_ignores_it(self):
        b, _ = self.block()
        with self.assertRaisesRegex(L.RankEnvError, "LOCAL_RANK"):
            self.rank(b, 0, LOCAL_RANK="zero")
        self.assertEqual(FakeSupervisor(b, self.ckpt, 2).slot(0, "pid"), 0)
        c = self.rank(None, 0, LOCAL_RANK="zero")
        self.assertFalse(c.active)
        self.assertIsNone(c.rank)


class AttachTest(RankTestCase):
    def test_a_rank_fills_its_slot_pid_last_and_leaves_the_header_to_the_supervisor(self):
        b, sup = self.block()
        c = self.rank(b, 1, LIFELINE_RESUME_FROM="/x/step-000000000030", LIFELINE_RESUME_STEP="30")
        self.assertEqual(c.rank, L.RankEnv(1, 2, 1, 2))
        self.assertEqual(sup.slot(1, "pid"), os.getpid())
        self.assertEqual((sup.slot(1, "rank"), sup.slot(1, "world_size")), (1, 2))
        self.assertEqual(sup.slot(1, "state"), L.ClientState.ATTACHED)
        self.assertEqual(sup.slot(1, "current_step"), 30)
        self.assertEqual(sup.slot(0, "pid"), 0)
        for field in ("trainer_pid", "client_state", "current_step"):
            self.assertEqual(b.get(field), 0, field)
        c.should_checkpoint(31)
        self.assertEqual((sup.slot(1, "current_step"), b.get("current_step")), (31, 0))
        c.close()
        self.assertEqual(sup.slot(1, "state"), L.ClientState.EXITING)
        self.assertEqual(b.get("client_state"), 0)

    def test_a_slot_held_by_another_live_process_is_refused(self):
        b, sup = self.block()
        sup.set_slot(0, "pid", os.getppid())
        sup.set_slot(0, "state", L.ClientState.ATTACHED)
        with self.assertRaisesRegex(L.ControlBlockError, "local rank 0 is already attached by pid"):
            self.rank(b, 0)


class AgreementTest(RankTestCase):
    def test_ranks_promise_step_plus_margin_and_checkpoint_the_largest_promise(self):
        b, sup = self.block()
        c0, c1 = self.ranks(b)
        self.assertFalse(c0.should_checkpoint(9))
        seq = b.request()
        self.assertFalse(c0.should_checkpoint(10))
        self.assertEqual((sup.slot(0, "promised_step"), sup.slot(0, "seen_seq")), (12, seq))
        self.assertIsNone(sup.agree())  # rank 1 has not seen it
        self.assertFalse(c1.should_checkpoint(11))
        self.assertEqual((sup.slot(1, "promised_step"), sup.slot(1, "seen_seq")), (13, seq))
        self.assertEqual(sup.agree(), 13)
        self.assertEqual([c0.should_checkpoint(s) for s in (11, 12, 13)], [False, False, True])
        self.assertEqual([c1.should_checkpoint(s) for s in (12, 13)], [False, True])
        self.assertTrue(c0.should_checkpoint(13))  # asked again: still due until its part starts
        for c in (c0, c1):
            self.assertTrue(self.part(c, 13, {"a.bin": b"x"} if c is c0 else {}))
            self.assertFalse(c.should_checkpoint(14))  # the fast path again
        sup.commit(13)
        self.assertEqual(L.verify_checkpoint(self.folder(13)), L.Verdict("", True))
        self.assertEqual(b.get("ack_seq"), seq)

    def test_lifeline_agree_margin_sets_the_promise(self):
        b, sup = self.block()
        c = self.rank(b, 0, LIFELINE_AGREE_MARGIN="7")
        b.request()
        c.should_checkpoint(3)
        self.assertEqual(sup.slot(0, "promised_step"), 10)

    def test_a_rank_waits_only_at_its_promised_step_until_the_agreement(self):
        b, sup = self.block()
        c0, c1 = self.ranks(b)
        b.request()
        c1.should_checkpoint(20)
        self.assertFalse(c0.should_checkpoint(20))
        self.assertFalse(c0.should_checkpoint(21))  # before the promise: no wait
        timer = threading.Timer(0.2, sup.agree)
        timer.start()
        t0 = time.monotonic()
        self.assertTrue(c0.should_checkpoint(22))  # the promise: waits, then checkpoints 22
        self.assertGreater(time.monotonic() - t0, 0.15)
        timer.join()

    def test_a_second_request_before_the_agreement_is_folded_in_the_promise_stays(self):
        b, sup = self.block()
        c0, c1 = self.ranks(b)
        b.request()
        c0.should_checkpoint(5)
        c1.should_checkpoint(5)
        seq2 = b.request(stop=True)
        self.assertIsNone(sup.agree())  # nobody has seen the second yet
        c0.should_checkpoint(6)
        self.assertEqual((sup.slot(0, "promised_step"), sup.slot(0, "seen_seq")), (7, seq2))
        c1.should_checkpoint(6)
        self.assertEqual(sup.agree(), 7)
        self.assertTrue(c0.should_checkpoint(7) and c1.should_checkpoint(7))
        self.assertFalse(c0.should_exit() or c1.should_exit())  # not before its part of the stop step
        self.assertTrue(self.part(c0, 7) and self.part(c1, 7))
        self.assertTrue(c0.should_exit() and c1.should_exit())

    def test_a_request_after_the_agreement_is_taken_in_once_the_agreed_part_is_started(self):
        b, sup = self.block()
        c0, c1 = self.ranks(b)
        b.request()
        for c in (c0, c1):
            c.should_checkpoint(10)
        self.assertEqual(sup.agree(), 12)
        self.assertFalse(c0.should_checkpoint(11))  # takes the agreement in
        seq2 = b.request(stop=True)
        self.assertTrue(c0.should_checkpoint(12))  # still 12, not a promise of 14 first
        self.assertEqual(sup.slot(0, "promised_step"), 12)
        # The agreement on 12 did not say stop: the stop that came after it ends the run at its
        # own agreed step, so that every rank leaves after the same one.
        self.assertFalse(c0.should_exit())
        self.assertTrue(self.part(c0, 12))
        self.assertFalse(c0.should_checkpoint(13))  # now it sees the second request
        self.assertEqual((sup.slot(0, "promised_step"), sup.slot(0, "seen_seq")), (15, seq2))

    def test_a_trainer_that_skips_the_agreed_step_reports_it_and_writes_no_part(self):
        b, sup = self.block()
        c0, c1 = self.ranks(b)
        b.request()
        c0.should_checkpoint(10)
        c1.should_checkpoint(10)
        self.assertEqual(sup.agree(), 12)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertFalse(c0.should_checkpoint(15))
        self.assertIn("skipped the agreed checkpoint step 12", err.getvalue())
        self.assertEqual((sup.slot(0, "failed_step"), sup.slot(0, "failed_saves")), (12, 1))
        self.assertFalse(c0.should_checkpoint(16))  # reported once

    def test_a_stop_signal_to_a_rank_becomes_a_request_it_promises_for(self):
        b, sup = self.block()
        c0, c1 = self.ranks(b)
        os.kill(os.getpid(), signal.SIGUSR1)
        self.assertFalse(c1.should_checkpoint(3))  # the handler ran in this process: both clients'
        self.assertFalse(c1.should_exit())  # a rank leaves at the agreed step, not before
        self.assertEqual(b.get("request_flags") & L.FLAG_STOP, L.FLAG_STOP)
        self.assertEqual(sup.slot(1, "seen_seq"), b.get("request_seq"))
        c0.should_checkpoint(3)
        self.assertEqual(sup.agree(), 5)
        for c in (c0, c1):
            self.assertFalse(c.should_checkpoint(4))
            self.assertTrue(c.should_checkpoint(5))
            self.assertTrue(self.part(c, 5))
            self.assertTrue(c.should_exit())

    def test_every_steps_needs_no_agreement(self):
        b, sup = self.block()
        b.set("every_steps", 5)
        c0, c1 = self.ranks(b)
        for c in (c0, c1):
            self.assertEqual([s for s in range(1, 13) if c.should_checkpoint(s)], [5, 10])
        self.assertEqual(b.get("agreement_seq"), 0)

    def test_an_agreement_on_a_step_already_saved_as_an_every_steps_point_writes_no_second_part(self):
        b, sup = self.block()
        b.set("every_steps", 10)
        c0, c1 = self.ranks(b)
        b.request()
        for c in (c0, c1):
            self.assertFalse(c.should_checkpoint(8))  # promise 10
            self.assertFalse(c.should_checkpoint(9))
        self.assertEqual(sup.agree(), 10)
        for c in (c0, c1):
            self.assertTrue(c.should_checkpoint(10))
            self.assertTrue(self.part(c, 10, {"a": b"1"}))
            self.assertFalse(c.should_checkpoint(11))


class PartTest(RankTestCase):
    def test_each_rank_writes_its_part_in_the_shared_staging_folder_and_the_supervisor_commits(self):
        b, sup = self.block()
        c0, c1 = self.ranks(b)
        ck0, ck1 = c0.begin_checkpoint(4), c1.begin_checkpoint(4)
        staging = sup.staging(4)
        self.assertEqual(ck0.path, os.path.join(staging, "rank-00000"))
        self.assertEqual(ck1.path, os.path.join(staging, "rank-00001"))
        self.assertRegex(os.path.basename(staging), r"^\.staging-step-000000000004-%d-[0-9a-f]{8}$" % os.getpid())
        self.assertEqual(sup.slot(0, "state"), L.ClientState.SAVING)
        ck0.write_file("model.pt", b"m" * 1000)
        os.makedirs(os.path.join(ck0.path, "sub"))
        with open(os.path.join(ck0.path, "sub", "direct.bin"), "wb") as f:
            f.write(b"d" * 10)
        self.assertTrue(ck0.commit())
        self.assertTrue(ck1.commit())  # no file: an empty part
        with open(os.path.join(ck0.path, "MANIFEST")) as f:
            m = json.load(f)
        self.assertEqual({k: m[k] for k in ("format", "format_version", "step", "rank", "world_size")},
                         {"format": "lifeline-checkpoint-part", "format_version": 2, "step": 4, "rank": 0,
                          "world_size": 2})
        self.assertEqual([f["path"] for f in m["files"]], ["model.pt", "sub/direct.bin"])
        with open(os.path.join(ck1.path, "MANIFEST")) as f:
            self.assertEqual(json.load(f)["files"], [])
        self.assertEqual((sup.slot(0, "part_step"), sup.slot(0, "part_bytes")), (4, 1010))
        self.assertEqual((sup.slot(1, "part_step"), sup.slot(1, "part_bytes")), (4, 0))
        self.assertEqual(sup.slot(0, "state"), L.ClientState.ATTACHED)
        for field in ("commit_count", "ack_seq", "last_commit_step", "failed_saves"):
            self.assertEqual(b.get(field), 0, field)  # the supervisor's to write
        self.assertTrue(os.path.isdir(staging))  # no rename by a rank
        sup.commit(4)
        v = L.verify_checkpoint(self.folder(4))
        self.assertEqual(v, L.Verdict("", True))
        r = L.resume_choice(self.ckpt).resume
        self.assertEqual((r.path, r.step, r.checkpoint, r.world_size), (self.folder(4), 4, self.folder(4), 2))

    def test_a_failed_part_removes_its_folder_and_tells_the_supervisor(self):
        b, sup = self.block()
        c0, c1 = self.ranks(b)
        self.assertTrue(self.part(c1, 6, {"a": b"1"}))
        ck = c0.begin_checkpoint(6)
        ck.write_file("a", b"1")
        with open(os.path.join(ck.path, "MANIFEST"), "w") as f:
            f.write("mine")
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertFalse(ck.commit())
        self.assertIn("checkpoint of step 6 failed: the trainer wrote a file named MANIFEST", err.getvalue())
        self.assertFalse(os.path.exists(ck.path))
        self.assertTrue(os.path.isdir(os.path.join(sup.staging(6), "rank-00001")))  # the others' stay
        self.assertEqual((sup.slot(0, "failed_step"), sup.slot(0, "failed_saves")), (6, 1))
        self.assertEqual(sup.slot(0, "part_step"), 0)
        self.assertEqual(b.get("failed_saves"), 0)
        sup.abandon(6)
        self.assertTrue(self.part(c0, 8))  # the next part goes on at once: 6 was abandoned

    def test_an_io_error_fails_the_part(self):
        b, sup = self.block()
        c0, _ = self.ranks(b)

        def no_space(fd):
            raise OSError(28, os.strerror(28))
        with contextlib.redirect_stderr(io.StringIO()), mock.patch.object(L.os, "fsync", no_space):
            self.assertFalse(self.part(c0, 3, {"a": b"1"}))
        self.assertEqual((sup.slot(0, "failed_step"), sup.slot(0, "failed_saves")), (3, 1))
        self.assertEqual(os.listdir(sup.staging(3)), [])

    def test_a_new_part_waits_for_the_previous_to_be_committed_or_abandoned_then_for_its_patience(self):
        b, sup = self.block()
        c0, c1 = self.ranks(b)
        self.assertTrue(self.part(c0, 10, {"a": b"1"}))
        self.assertTrue(self.part(c1, 10))
        timer = threading.Timer(0.2, sup.commit, (10,))
        timer.start()
        t0 = time.monotonic()
        self.assertTrue(self.part(c0, 20, {"a": b"2"}))
        self.assertGreater(time.monotonic() - t0, 0.15)
        timer.join()
        self.assertEqual(L.verify_checkpoint(self.folder(10)).problem, "")
        c0.part_patience = 0.1
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertTrue(self.part(c0, 30, {"a": b"3"}))  # 20 never completes (rank 1 wrote none)
        self.assertIn("step 20 is neither committed nor abandoned after 0.1 s", err.getvalue())
        sup.set_slot(0, "part_step", 30)

    def test_an_async_save_of_a_rank_writes_its_part_in_the_background(self):
        b, sup = self.block()
        c0, c1 = self.ranks(b)
        release = threading.Event()

        def snapshot():
            data = b"s" * 100

            def persist(ck):
                release.wait(30)
                ck.write_file("state.bin", data)
            return persist
        b.request(stop=True)
        for c in (c0, c1):
            c.should_checkpoint(1)
        self.assertEqual(sup.agree(), 3)
        for c in (c0, c1):
            c.should_checkpoint(2)
            self.assertTrue(c.should_checkpoint(3))
            self.assertTrue(c.save_async(3, snapshot))  # a stop: a rank still writes its part
        self.assertEqual(sup.slot(0, "state"), L.ClientState.SAVING)
        self.assertEqual(sup.slot(0, "part_step"), 0)
        release.set()
        self.assertTrue(c0.wait_for_saves() and c1.wait_for_saves())
        self.assertEqual((sup.slot(0, "part_step"), sup.slot(1, "part_step")), (3, 3))
        sup.commit(3)
        self.assertEqual(L.verify_checkpoint(self.folder(3)).problem, "")

    def test_an_inert_rank_writes_no_part_and_resume_still_picks_its_part_folder(self):
        folder = self.sharded(5, [{"a": b"1"}, {"b": b"2"}])
        c = self.rank(None, 1, LIFELINE_RESUME_FROM=folder, LIFELINE_RESUME_STEP="5")
        self.assertFalse(c.active)
        self.assertFalse(c.should_checkpoint(5))
        r = c.resume()
        self.assertEqual((r.path, r.checkpoint, r.step), (os.path.join(folder, "rank-00001"), folder, 5))


def part_crash_child(ckpt, block_name, kill_at, out):
    """In a forked child, rank 1 of 2: writes its part of step 2 with every file-system call
    counted, killed just before call `kill_at` (0: never); as crash_child in test_client.py."""
    try:
        real_write = os.write
        c = L.Client({"LIFELINE_CKPT_DIR": ckpt, "LIFELINE_CONTROL": block_name, "LIFELINE_WATCH_SUPERVISOR": "0",
                      "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
        count_calls(kill_at, out)
        ck = c.begin_checkpoint(2)
        ck.write_file("a.bin", b"new" * 1000)
        os.makedirs(os.path.join(ck.path, "sub"))
        fd = os.open(os.path.join(ck.path, "sub", "b.bin"), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        os.write(fd, b"direct")
        os.close(fd)
        real_write(out, b"committed\n" if ck.commit() else b"failed\n")
        os._exit(0)
    except BaseException:
        os._exit(3)


class PartCrashTest(RankTestCase):
    """A rank killed (or the machine losing power) at any call of its part: the supervisor sees
    part_step == 2 only for a part that is durable, so the collective checkpoint it commits
    verifies; otherwise it commits nothing and the previous checkpoint stays the resume choice."""

    def setUp(self):
        super().setUp()
        if os.path.isdir(L.SHM_DIR):
            self.shm_tmp = tempfile.mkdtemp(prefix="lifeline-pytest-", dir=L.SHM_DIR)
            self.addCleanup(shutil.rmtree, self.shm_tmp, True)
            self.ckpt = os.path.join(self.shm_tmp, "ckpt")

    def run_child(self, block, kill_at):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            part_crash_child(self.ckpt, block.name, kill_at, w)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            lines = [x if x == "committed" else json.loads(x) for x in f.read().decode().splitlines()]
        _, status = os.waitpid(pid, 0)
        return status, lines

    def kill_at_every_call(self, power_loss):
        points = 0
        for kill_at in range(1, 200):
            shutil.rmtree(self.ckpt, ignore_errors=True)
            self.sharded(1, [{"old": b"o"}, {}])
            b, sup = self.block()
            c0 = self.rank(b, 0)
            self.assertTrue(self.part(c0, 2, {"r0.bin": b"zero"}))
            status, lines = self.run_child(b, kill_at)
            killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            self.assertTrue(killed or os.WEXITSTATUS(status) == 0, (status, lines))
            if power_loss:
                CommitCrashTest.drop_unsynced([x for x in lines if x != "committed"])
            with self.subTest(kill_at=kill_at):
                if sup.slot(1, "part_step") == 2:  # what the supervisor goes by
                    sup.commit(2)
                    self.assertEqual(L.verify_checkpoint(self.folder(2)).problem, "")
                    self.assertEqual(L.resume_choice(self.ckpt).resume.step, 2)
                else:
                    self.assertNotIn("committed", lines)
                    self.assertEqual(L.resume_choice(self.ckpt).resume.step, 1)
            c0.close()
            if not killed:
                self.assertIn("committed", lines)
                break
            points += 1
        self.assertGreater(points, 15)

    def test_killed_at_any_call_of_a_part_the_supervisor_commits_only_a_durable_part(self):
        self.kill_at_every_call(False)

    def test_a_power_loss_at_any_call_of_a_part_leaves_no_part_or_a_durable_one(self):
        self.kill_at_every_call(True)


class VerifyShardedTest(RankTestCase):
    def top(self, folder):
        with open(os.path.join(folder, "MANIFEST")) as f:
            return json.load(f)

    def rewrite(self, folder, m, rel="MANIFEST"):
        with open(os.path.join(folder, rel), "w") as f:
            json.dump(m, f)

    def reseal(self, folder):
        """Refreshes the top manifest's part sizes and checksums (after a part manifest changed)."""
        m = self.top(folder)
        for p in m["parts"]:
            with open(os.path.join(folder, p["path"]), "rb") as f:
                data = f.read()
            p["bytes"], p["checksum"] = len(data), hashlib.sha256(data).hexdigest()
        self.rewrite(folder, m)

    def problem(self, folder):
        return L.verify_checkpoint(folder).problem

    def test_a_sharded_checkpoint_verifies_and_each_part_file_is_checked(self):
        folder = self.sharded(7, [{"model.pt": b"m" * 300}, {}, {"x/y.bin": b"y"}])
        self.assertEqual(self.problem(folder), "")
        flip_byte(os.path.join(folder, "rank-00002", "x", "y.bin"), 0)
        self.assertIn("file rank-00002/x/y.bin does not match its sha256 checksum", self.problem(folder))

    def test_a_missing_part_a_wrong_world_size_or_a_duplicate_rank_is_invalid(self):
        folder = self.sharded(7, [{"a": b"1"}, {"b": b"2"}])
        keep = os.path.join(self.tmp, "keep")
        shutil.copytree(folder, keep)

        def reset():
            shutil.rmtree(folder)
            shutil.copytree(keep, folder)

        shutil.rmtree(os.path.join(folder, "rank-00001"))
        self.assertIn("part rank-00001/: no MANIFEST", self.problem(folder))
        reset()
        m = self.top(folder)
        m["world_size"] = 3
        self.rewrite(folder, m)
        self.assertIn("2 parts for a world of 3 (rank 2 is missing)", self.problem(folder))
        reset()
        m = self.top(folder)
        m["parts"][1] = dict(m["parts"][0])
        self.rewrite(folder, m)
        self.assertIn("rank 0 twice", self.problem(folder))
        reset()
        m = self.top(folder)
        m["parts"].pop()
        self.rewrite(folder, m)
        self.assertIn("rank 1 is missing", self.problem(folder))
        reset()
        part = self.top(os.path.join(folder, "rank-00001"))
        part["world_size"] = 3
        self.rewrite(os.path.join(folder, "rank-00001"), part)
        self.assertIn("part rank-00001/MANIFEST has", self.problem(folder))  # the top manifest notices
        self.reseal(folder)
        self.assertIn("says world_size 3, the checkpoint 2", self.problem(folder))
        reset()
        part = self.top(os.path.join(folder, "rank-00001"))
        part["rank"] = 0
        self.rewrite(os.path.join(folder, "rank-00001"), part)
        self.reseal(folder)
        self.assertIn("says rank 0, the checkpoint 1", self.problem(folder))
        reset()
        m = self.top(folder)
        m["parts"][1]["path"] = "rank-1/MANIFEST"
        self.rewrite(folder, m)
        self.assertIn("not rank-00001/MANIFEST", self.problem(folder))
        reset()
        m = self.top(folder)
        del m["world_size"]
        self.rewrite(folder, m)
        self.assertIn("world_size", self.problem(folder))
        reset()
        self.assertEqual(self.problem(folder), "")

    def test_a_sharded_checkpoint_without_any_file_is_invalid_and_the_older_one_is_resumed(self):
        self.sharded(3, [{"a": b"1"}, {}])
        folder = self.sharded(4, [{}, {}])
        self.assertIn("no part lists a file", self.problem(folder))
        r = L.resume_choice(self.ckpt)
        self.assertEqual(r.resume.step, 3)
        self.assertEqual(r.skipped[0][0], 4)

    def test_a_part_file_of_another_size_is_invalid(self):
        folder = self.sharded(9, [{"a": b"12345"}, {"b": b"2"}])
        with open(os.path.join(folder, "rank-00000", "a"), "ab") as f:
            f.write(b"6")
        self.assertIn("file rank-00000/a has 6 bytes, the manifest says 5", self.problem(folder))


class ResumeTest(RankTestCase):
    def test_a_rank_resumes_from_its_part_folder_and_sees_the_checkpoint_folder(self):
        folder = self.sharded(5, [{"a": b"1"}, {"b": b"2"}])
        b, _ = self.block()
        cs = self.ranks(b, LIFELINE_RESUME_FROM=folder, LIFELINE_RESUME_STEP="5")
        for i, c in enumerate(cs):
            r = c.resume()
            self.assertEqual((r.path, r.step, r.checkpoint, r.world_size),
                             (os.path.join(folder, "rank-%05d" % i), 5, folder, 2))
            path, step = r  # still the pair it was
            self.assertEqual(step, 5)

    def test_a_checkpoint_of_another_world_size_is_refused_unless_lifeline_reshard_1(self):
        folder = self.sharded(5, [{"a": b"1"}, {"b": b"2"}, {}])
        b, _ = self.block()
        c = self.rank(b, 0, LIFELINE_RESUME_FROM=folder, LIFELINE_RESUME_STEP="5")
        with self.assertRaises(L.WorldSizeError) as cm:
            c.resume()
        self.assertIn("world of 3 rank(s), this job has 2", str(cm.exception))
        self.assertIn("LIFELINE_RESHARD=1", str(cm.exception))
        c.close()
        c = self.rank(b, 0, LIFELINE_RESUME_FROM=folder, LIFELINE_RESUME_STEP="5", LIFELINE_RESHARD="1")
        r = c.resume()
        self.assertEqual((r.path, r.checkpoint, r.world_size), (folder, folder, 3))

    def test_a_single_trainers_checkpoint_is_a_world_of_one(self):
        single = L.Client({"LIFELINE_CKPT_DIR": self.ckpt})
        ck = single.begin_checkpoint(2)
        ck.write_file("a", b"1")
        self.assertTrue(ck.commit())
        r = L.resume_choice(self.ckpt).resume
        self.assertEqual((r.path, r.checkpoint, r.world_size), (self.folder(2), self.folder(2), 1))
        c = self.rank(None, 1, LIFELINE_RESUME_FROM=self.folder(2), LIFELINE_RESUME_STEP="2")
        with self.assertRaisesRegex(L.WorldSizeError, "world of 1 rank\\(s\\), this job has 2"):
            c.resume()
        r = L.Client({"LIFELINE_RESUME_FROM": self.folder(2), "LIFELINE_RESUME_STEP": "2"}).resume()
        self.assertEqual((r, r.checkpoint), ((self.folder(2), 2), self.folder(2)))


if __name__ == "__main__":
    unittest.main(verbosity=2)
