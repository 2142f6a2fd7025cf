"""`lifeline run` end to end with the Python client: the real lifeline binary (LIFELINE_BIN)
supervising examples/train_torch.py on /usr/bin/python3 with Debian's python3-torch. Runs are
interrupted at a random step and resumed; the final parameters must be bit-identical to an
uninterrupted run's."""
import contextlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import unittest
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.normpath(os.path.join(HERE, "..", ".."))
TRAINER = os.path.join(SOURCE, "examples", "train_torch.py")
PYTHON = os.environ.get("PYTHON", "/usr/bin/python3")
LIFELINE = os.environ.get("LIFELINE_BIN", "")
STEPS = 120
sys.path.insert(0, os.path.join(SOURCE, "python"))


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_") and k != "SLURM_JOB_ID"}
    env.update(extra)
    return env


class Process:
    """A child with stdout+stderr read line by line, so a test waits for what it says."""

    def __init__(self, argv, env=None):
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=env or clean_env())
        self.output = ""

    def wait_for_line(self, needle):
        for line in self.p.stdout:
            self.output += line
            if needle in line:
                return line
        return ""

    def wait(self):
        self.output += self.p.stdout.read()
        self.p.stdout.close()
        return self.p.wait()

    def __del__(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        self.p.stdout.close()


def run(argv, env=None):
    p = Process(argv, env)
    return p.wait(), p.output


def train_cmd(digest, delay_ms, *extra):
    return [PYTHON, TRAINER, "--steps", str(STEPS), "--seed", "7", "--step-delay-ms", str(delay_ms),
            "--log-every", "1", "--digest-out", digest, *extra]


def read_digest(path):
    with open(path) as f:
        return f.read().strip()


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0xFF]))


def resumed_step(output):
    m = re.search(r"train-example: resumed from step ([0-9]+)", output)
    assert m, output
    return int(m.group(1))


@unittest.skipUnless(LIFELINE, "LIFELINE_BIN is not set (run through meson test)")
class TrainTorchTest(unittest.TestCase):
    reference = ""

    @classmethod
    def setUpClass(cls):
        """The digest of an uninterrupted run: the trainer alone, without lifeline."""
        d = tempfile.mkdtemp(prefix="lifeline-pytest-")
        try:
            rc, out = run(train_cmd(os.path.join(d, "digest"), 0))
            assert rc == 0, out
            assert "train-example: starting at step 0" in out, out
            cls.reference = read_digest(os.path.join(d, "digest"))
            assert os.listdir(d) == ["digest"], "the inert trainer wrote checkpoints"
        finally:
            shutil.rmtree(d)

    def setUp(self):
        self.d = tempfile.mkdtemp(prefix="lifeline-pytest-")
        self.ckpt = os.path.join(self.d, "ckpt")
        self.digest = os.path.join(self.d, "digest")
        self.policy = os.path.join(self.d, "policy.yaml")
        with open(self.policy, "w") as f:
            f.write("version: 1\ncheckpoint:\n  every_steps: 20\n  every_seconds: 0\nrestart:\n  backoff_seconds: 0\n"
                    "retention:\n  keep_last: 1000\n  keep_best: 0\n")  # keep all: tests count them

    def tearDown(self):
        shutil.rmtree(self.d, ignore_errors=True)

    def lifeline_run(self, cmd, *opts):
        return [LIFELINE, "run", "--policy", self.policy, "--ckpt-dir", self.ckpt, *opts, "--", *cmd]

    def lifeline(self, *args):
        rc, out = run([LIFELINE, *args])
        return rc, out

    def verify(self):
        rc, out = self.lifeline("verify", self.ckpt, "--json")
        self.assertEqual(rc, 0, out)
        return json.loads(out)

    def finish_and_compare(self, min_resume_step):
        rc, out = run(self.lifeline_run(train_cmd(self.digest, 0)))
        self.assertEqual(rc, 0, out)
        self.assertGreaterEqual(resumed_step(out), min_resume_step)
        self.assertEqual(read_digest(self.digest), self.reference)
        return out

    def test_an_uninterrupted_run_completes_with_exit_0_and_the_trainers_own_digest(self):
        rc, out = run(self.lifeline_run(train_cmd(self.digest, 0)))
        self.assertEqual(rc, 0, out)
        self.assertEqual(read_digest(self.digest), self.reference)
        rc, listing = self.lifeline("checkpoints", self.ckpt, "--json")
        self.assertEqual(rc, 0, listing)
        ckpts = json.loads(listing)
        self.assertEqual([c["step"] for c in ckpts], list(range(20, STEPS + 1, 20)))
        self.assertTrue(all(c["valid"] and "val_loss" in c["metrics"] for c in ckpts), ckpts)
        with open(os.path.join(ckpts[-1]["path"], "MANIFEST")) as f:
            self.assertEqual(json.load(f)["checksum_algorithm"], "sha256")

    def test_a_run_interrupted_by_sigusr1_to_the_supervisor_at_a_random_step_resumes_to_the_same_digest(self):
        k = random.randint(5, STEPS - 15)
        first = Process(self.lifeline_run(train_cmd(self.digest, 10)))
        self.assertTrue(first.wait_for_line("step %d " % k), first.output)
        first.p.send_signal(signal.SIGUSR1)
        rc = first.wait()
        self.assertEqual(rc, 75, "k=%d\n%s" % (k, first.output))
        self.assertIn("train-example: stopping at step", first.output)
        self.assertFalse(os.path.exists(self.digest))
        self.finish_and_compare(k)

    def test_a_run_with_async_checkpoints_interrupted_by_sigusr1_acks_its_stop_checkpoint_and_resumes_bit_exact(self):
        k = random.randint(5, STEPS - 15)
        first = Process(self.lifeline_run(train_cmd(self.digest, 10, "--async")))
        self.assertTrue(first.wait_for_line("step %d " % k), first.output)
        first.p.send_signal(signal.SIGUSR1)
        rc = first.wait()
        self.assertEqual(rc, 75, "k=%d\n%s" % (k, first.output))
        stopped = int(re.search(r"train-example: stopping at step ([0-9]+)", first.output).group(1))
        self.assertIn("stop checkpoint done", first.output)
        commits = [int(s) for s in re.findall(r"checkpoint committed: step ([0-9]+)", first.output)]
        # The stop checkpoint is a save of the stop step, or the save that was in flight when the
        # stop came (its commit acks every request posted before it): then that save's step.
        if "after its checkpoint" in first.output:
            stop_checkpoint = stopped
        else:
            self.assertIn("after the checkpoint that was in flight", first.output)
            stop_checkpoint = commits[-1]
            self.assertLess(stop_checkpoint, stopped, first.output)
        self.assertEqual(commits[-1], stop_checkpoint, first.output)
        self.assertEqual(self.verify()["resume"]["step"], stop_checkpoint)  # durable before the exit
        rc, out = run(self.lifeline_run(train_cmd(self.digest, 0, "--async")))
        self.assertEqual(rc, 0, out)
        self.assertEqual(resumed_step(out), stop_checkpoint)
        self.assertEqual(read_digest(self.digest), self.reference)

    def test_a_run_whose_trainer_itself_gets_sigterm_at_a_random_step_resumes_to_the_same_digest(self):
        k = random.randint(5, STEPS - 15)
        first = Process(self.lifeline_run(train_cmd(self.digest, 10)))
        started = first.wait_for_line("trainer started, pid ")
        self.assertTrue(started, first.output)
        trainer = int(re.search(r"pid ([0-9]+)", started).group(1))
        self.assertTrue(first.wait_for_line("step %d " % k), first.output)
        os.kill(trainer, signal.SIGTERM)
        rc = first.wait()
        self.assertEqual(rc, 75, "k=%d\n%s" % (k, first.output))
        self.assertIn("received SIGTERM itself", first.output)
        self.assertIn("train-example: stopping at step", first.output)
        self.finish_and_compare(k)

    def test_a_corrupted_newest_checkpoint_is_skipped_by_verify_and_by_the_next_run_which_ends_bit_exact(self):
        first = Process(self.lifeline_run(train_cmd(self.digest, 10)))
        self.assertTrue(first.wait_for_line("step 65 "), first.output)
        first.p.send_signal(signal.SIGUSR1)
        self.assertEqual(first.wait(), 75, first.output)
        v = self.verify()
        newest, newest_step = v["resume"]["path"], v["resume"]["step"]
        flip_byte(os.path.join(newest, "model.pt"), 100)
        v = self.verify()
        self.assertLess(v["resume"]["step"], newest_step)
        self.assertEqual([s["step"] for s in v["skipped"]], [newest_step])
        self.assertIn("model.pt", v["skipped"][0]["problem"])
        out = self.finish_and_compare(v["resume"]["step"])
        self.assertEqual(resumed_step(out), v["resume"]["step"])
        self.assertIn("skipping checkpoint", out)

    def test_a_trainer_that_crashes_once_is_restarted_in_place_and_completes_bit_exact(self):
        rc, out = run(self.lifeline_run(train_cmd(self.digest, 0, "--crash-at-step", "50", "--crash-once"),
                                        "--requeue", "local"))
        self.assertEqual(rc, 0, out)
        self.assertIn("crashing at step 50 as asked", out)
        self.assertEqual(resumed_step(out), 40)
        self.assertEqual(read_digest(self.digest), self.reference)

    def test_outside_a_supervisor_the_trainer_saves_only_its_final_checkpoint_and_it_verifies(self):
        rc, out = run(train_cmd(self.digest, 0), env=clean_env(LIFELINE_CKPT_DIR=self.ckpt))
        self.assertEqual(rc, 0, out)
        self.assertEqual(read_digest(self.digest), self.reference)
        self.assertEqual(os.listdir(self.ckpt), ["step-%012d" % STEPS])
        self.assertEqual(self.verify()["resume"]["step"], STEPS)


class MetricWarningTest(unittest.TestCase):
    def test_keep_best_by_a_metric_no_checkpoint_carries_is_said_once_and_a_reported_one_is_not(self):
        d = tempfile.mkdtemp(prefix="lifeline-pytest-")
        self.addCleanup(shutil.rmtree, d)
        policy = os.path.join(d, "policy.yaml")
        with open(policy, "w") as f:
            f.write("version: 1\ncheckpoint:\n  every_steps: 10\n  every_seconds: 0\n"
                    "retention:\n  keep_last: 2\n  keep_best: 1\n  metric: val_loss\n")
        trainer = ("import sys; sys.path.insert(0, %r)\n"
                   "import lifeline_client as L\n"
                   "c = L.Client.from_env()\n"
                   "for s in range(1, 51):\n"
                   "    if c.should_checkpoint(s):\n"
                   "        ck = c.begin_checkpoint(s)\n"
                   "        open(ck.path + '/w', 'w').write('x')\n"
                   "        ck.commit({sys.argv[1]: 1.0 / s})\n") % os.path.join(SOURCE, "python")
        for metric, warned in (("loss", True), ("val_loss", False)):
            rc, out = run([LIFELINE, "run", "--policy", policy, "--ckpt-dir", os.path.join(d, metric), "--requeue",
                           "none", "--", PYTHON, "-c", trainer, metric])
            self.assertEqual(rc, 0, out)
            self.assertEqual(out.count("which no checkpoint carries"), 1 if warned else 0, out)


class LifelineTorchTest(unittest.TestCase):
    def test_the_three_line_helper_saves_and_resumes_model_optimizer_and_rng_bit_exactly(self):
        import torch
        import lifeline_client
        import lifeline_torch

        d = tempfile.mkdtemp(prefix="lifeline-pytest-")
        self.addCleanup(shutil.rmtree, d)

        def model_and_optimizer():
            torch.manual_seed(3)
            m = torch.nn.Linear(4, 2)
            return m, torch.optim.Adam(m.parameters(), lr=0.1)

        def train(m, opt):
            loss = m(torch.randn(8, 4)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

        m, opt = model_and_optimizer()
        saver = lifeline_client.Client({"LIFELINE_CKPT_DIR": d})
        self.assertEqual(lifeline_torch.resume(m, opt, client=saver), 0)
        for step in range(1, 4):
            loss = train(m, opt)
            self.assertFalse(lifeline_torch.checkpoint(step, m, opt, {"loss": loss.item()}, final=step == 3,
                                                       client=saver))
        self.assertEqual(os.listdir(d), ["step-000000000003"])
        expected = [train(m, opt).item() for _ in range(3)]

        m2, opt2 = model_and_optimizer()
        train(m2, opt2)  # diverge first: resume must overwrite everything
        resumer = lifeline_client.Client({"LIFELINE_RESUME_FROM": os.path.join(d, "step-000000000003"),
                                          "LIFELINE_RESUME_STEP": "3"})
        self.assertEqual(lifeline_torch.resume(m2, opt2, client=resumer), 3)
        self.assertEqual([train(m2, opt2).item() for _ in range(3)], expected)


class ExtraStateTest(unittest.TestCase):
    def test_an_lr_scheduler_a_grad_scaler_and_plain_values_resume_exactly_through_extra(self):
        import torch
        import lifeline_client
        import lifeline_torch

        d = tempfile.mkdtemp(prefix="lifeline-pytest-")
        self.addCleanup(shutil.rmtree, d)

        def setup():
            torch.manual_seed(5)
            m = torch.nn.Linear(4, 2)
            opt = torch.optim.SGD(m.parameters(), lr=0.5)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
            scaler = torch.cuda.amp.GradScaler(enabled=False, init_scale=1024.0)
            return m, opt, sched, scaler

        def train(m, opt, sched):
            loss = m(torch.randn(8, 4)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            return loss.item(), opt.param_groups[0]["lr"]

        m, opt, sched, scaler = setup()
        saver = lifeline_client.Client({"LIFELINE_CKPT_DIR": d})
        extra = {"scheduler": sched, "scaler": scaler, "epoch": 0, "sampler": {"position": 0}}
        for step in range(1, 6):
            train(m, opt, sched)
            extra["epoch"] = step // 2
            extra["sampler"] = {"position": step * 8}
            lifeline_torch.checkpoint(step, m, opt, final=step == 5, client=saver, extra=extra)
        expected = [train(m, opt, sched) for _ in range(4)]  # the learning rate keeps decaying

        m2, opt2, sched2, scaler2 = setup()
        extra2 = {"scheduler": sched2, "scaler": scaler2, "epoch": None, "sampler": None, "missing": 7}
        resumer = lifeline_client.Client({"LIFELINE_RESUME_FROM": os.path.join(d, "step-000000000005"),
                                          "LIFELINE_RESUME_STEP": "5"})
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertEqual(lifeline_torch.resume(m2, opt2, client=resumer, extra=extra2), 5)
        self.assertEqual(extra2["epoch"], 2)
        self.assertEqual(extra2["sampler"], {"position": 40})
        self.assertEqual(extra2["missing"], 7)  # not in the checkpoint: left, and said
        self.assertIn("has no 'missing'", err.getvalue())
        self.assertEqual(sched2.last_epoch, 5)
        self.assertEqual([train(m2, opt2, sched2) for _ in range(4)], expected)


class AsyncTorchSaveTest(unittest.TestCase):
    """lifeline_torch.snapshot() with Client.save_async against lifeline_torch.save()."""

    def setUp(self):
        import torch
        import lifeline_client
        import lifeline_torch
        self.torch, self.L, self.lt = torch, lifeline_client, lifeline_torch
        self.d = tempfile.mkdtemp(prefix="lifeline-pytest-")
        self.addCleanup(shutil.rmtree, self.d)
        lifeline_torch._buffers._by_key.clear()  # the module keeps them: start each test without
        torch.manual_seed(5)
        # BatchNorm brings an int64 buffer and state_dict() _metadata (module versions) along.
        self.model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=0.05)

    def train(self):
        loss = self.model(self.torch.randn(16, 6)).pow(2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def client(self, name):
        return self.L.Client({"LIFELINE_CKPT_DIR": os.path.join(self.d, name)})

    def files(self, name, step):
        with open(os.path.join(self.d, name, "step-%012d" % step, "MANIFEST")) as f:
            return json.load(f)["files"]

    def sync_save(self, name, step):
        ck = self.client(name).begin_checkpoint(step)
        self.lt.save(ck, self.model, self.opt, step)
        self.assertTrue(ck.commit())

    def test_an_async_save_writes_the_same_bytes_as_a_synchronous_one_even_when_training_goes_on_meanwhile(self):
        self.train()
        self.sync_save("sync", 1)
        c = self.client("async")
        release = threading.Event()

        def snapshot():
            persist = self.lt.snapshot(self.model, self.opt, 1)

            def held(ck):
                release.wait()
                persist(ck)
            return held

        self.assertTrue(c.save_async(1, snapshot))
        self.train()  # changes every parameter and moment while the save is in flight
        release.set()
        self.assertTrue(c.wait_for_saves())
        self.assertEqual(self.files("async", 1), self.files("sync", 1))

    def test_later_snapshots_reuse_their_buffers_and_write_the_new_state(self):
        c = self.client("async")
        self.train()
        first = self.lt.snapshot(self.model, self.opt, 1)
        weight = self.lt._buffers._by_key["model.pt/0.weight"]
        self.assertTrue(c.save_async(1, lambda: first))
        self.assertTrue(c.wait_for_saves())
        self.train()
        self.sync_save("sync", 2)
        self.assertTrue(c.save_async(2, lambda: self.lt.snapshot(self.model, self.opt, 2)))
        self.assertTrue(c.wait_for_saves())
        self.assertIs(self.lt._buffers._by_key["model.pt/0.weight"], weight)
        self.assertEqual(self.files("async", 2), self.files("sync", 2))
        self.assertNotEqual(self.files("async", 1), self.files("async", 2))

    def test_prepare_allocates_in_the_background_the_buffers_that_the_first_snapshot_then_copies_into(self):
        self.train()
        self.lt.prepare(self.model, self.opt)
        self.lt._buffers.wait()
        prepared = dict(self.lt._buffers._by_key)
        self.assertIn("model.pt/0.weight", prepared)
        self.assertIn("optimizer.pt/state/0/exp_avg", prepared)
        self.assertTrue(all(not b.any() for b in prepared.values()))  # zero-filled: every page touched
        c = self.client("async")
        self.assertTrue(c.save_async(1, lambda: self.lt.snapshot(self.model, self.opt, 1)))
        self.assertTrue(c.wait_for_saves())
        self.assertEqual(self.lt._buffers._by_key.keys(), prepared.keys())
        self.assertTrue(all(self.lt._buffers._by_key[k] is b for k, b in prepared.items()))
        self.sync_save("sync", 1)
        self.assertEqual(self.files("async", 1), self.files("sync", 1))

    def test_the_helper_with_background_reports_a_snapshot_that_fails_and_training_goes_on(self):
        c = self.client("async")
        self.train()
        err = io.StringIO()
        with mock.patch.object(self.lt, "snapshot", side_effect=MemoryError("no room for the copy")), \
                contextlib.redirect_stderr(err):
            self.assertFalse(self.lt.checkpoint(1, self.model, self.opt, client=c, background=True, final=True))
        self.assertIn("lifeline: checkpoint of step 1 failed: MemoryError: no room for the copy", err.getvalue())
        self.assertFalse(c.save_in_flight)
        self.train()
        self.assertFalse(self.lt.checkpoint(2, self.model, self.opt, client=c, background=True, final=True))
        self.assertEqual(self.L.checkpoint_problem(os.path.join(self.d, "async", "step-000000000002")), "")

    def test_the_helper_with_background_returns_from_the_final_checkpoint_only_once_it_is_committed(self):
        c = self.client("async")
        self.train()
        self.assertFalse(self.lt.checkpoint(1, self.model, self.opt, client=c, background=True, final=True))
        self.assertFalse(c.save_in_flight)
        self.assertEqual(os.listdir(os.path.join(self.d, "async")), ["step-000000000001"])
        self.assertEqual(self.L.checkpoint_problem(os.path.join(self.d, "async", "step-000000000001")), "")



class TorchSaveFailureTest(unittest.TestCase):
    def test_an_exception_while_torch_save_writes_into_a_checkpoint_comes_after_torch_save_not_through_it(self):
        """PyTorch's C++ writer cannot survive an exception from the file object's write(): it ends
        in std::terminate. A KeyboardInterrupt (Ctrl-C outside lifeline) or a MemoryError while
        writing must reach the trainer only once torch.save has returned, with the checkpoint
        failed. In a child process, which the old behaviour aborts."""
        d = tempfile.mkdtemp(prefix="lifeline-pytest-")
        self.addCleanup(shutil.rmtree, d)
        script = """
import os, sys
sys.path.insert(0, %r)
import torch
import lifeline_client as L
import lifeline_torch
c = L.Client({"LIFELINE_CKPT_DIR": %r})
ck = c.begin_checkpoint(1)
real_write, calls = os.write, [0]
def write(fd, data):
    calls[0] += 1
    if calls[0] == 2:
        raise KeyboardInterrupt
    return real_write(fd, data)
os.write = write
try:
    lifeline_torch.save(ck, torch.nn.Linear(64, 64), None, 1)
except KeyboardInterrupt:
    print("interrupted after torch.save", flush=True)
finally:
    os.write = real_write
assert ck.failed and not os.path.exists(ck.path), ck.path
print("commit", ck.commit(), flush=True)
""" % (os.path.join(SOURCE, "python"), d)
        p = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("interrupted after torch.save", p.stdout)
        self.assertIn("commit False", p.stdout)
        self.assertIn("KeyboardInterrupt while writing", p.stderr)
        self.assertEqual(os.listdir(d), [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
