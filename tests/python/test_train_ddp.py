"""examples/train_ddp.py under torchrun (--standalone, 2 ranks on CPU over gloo) with the
supervisor's half of docs/distributed.md played in Python (test_ranks.FakeSupervisor): a stop
request is agreed on, every rank writes its part, the collective checkpoint is committed and
verifies, and the resumed run ends with the same model digest as an uninterrupted one. Needs
Debian's python3-torch (/usr/bin/python3); skipped without it."""
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.normpath(os.path.join(HERE, "..", ".."))
TRAINER = os.path.join(SOURCE, "examples", "train_ddp.py")
PYTHON = os.environ.get("PYTHON", "/usr/bin/python3")
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(SOURCE, "python"))
import lifeline_client as L  # noqa: E402
from test_client import FakeBlock  # noqa: E402
from test_ranks import FakeSupervisor  # noqa: E402

STEPS = 60
HAVE_TORCH = subprocess.run([PYTHON, "-c", "import torch.distributed"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL).returncode == 0


def torchrun(*args, nproc=2):
    # -r 1 -t 1: Debian's torch 1.13 on Python 3.11 cannot parse the default "0" of --redirects and
    # --tee (IntFlag no longer iterates NONE); stdout goes to a log file and to the console.
    return [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-r", "1", "-t", "1", TRAINER, "--steps", str(STEPS), *args]


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LIFELINE_") and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    env.update(extra)
    return env


@unittest.skipUnless(HAVE_TORCH, "needs torch (Debian's python3-torch)")
class TrainDdpTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="lifeline-pytest-ddp-")
        self.ckpt = os.path.join(self.tmp, "ckpt")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def digest(self, name):
        with open(os.path.join(self.tmp, name)) as f:
            return f.read().strip()

    def supervised(self, digest, stop_after=None, resume=None, extra=()):
        """One attempt: torchrun under a FakeBlock whose FakeSupervisor agrees, commits parts and,
        after `stop_after` steps, posts a stop request. Returns (exit code, output, committed steps)."""
        b = FakeBlock()
        sup = FakeSupervisor(b, self.ckpt, 2)
        env = clean_env(LIFELINE_CONTROL=b.name, LIFELINE_CKPT_DIR=self.ckpt)
        if resume:
            env.update(LIFELINE_RESUME_FROM=L.resume_choice(self.ckpt).resume.path, LIFELINE_RESUME_STEP=str(resume),
                       LIFELINE_ATTEMPT="1")
        out = open(os.path.join(self.tmp, "out.txt"), "w+")
        p = subprocess.Popen(torchrun("--step-delay-ms", "20", "--digest-out", os.path.join(self.tmp, digest), *extra),
                             stdout=out, stderr=subprocess.STDOUT, env=env)
        committed, stopped = [], False
        try:
            deadline = time.monotonic() + 240
            while p.poll() is None and time.monotonic() < deadline:
                ranks = sup.attached()
                if stop_after and not stopped and len(ranks) == 2 \
                        and min(sup.slot(i, "current_step") for i in ranks) >= stop_after:
                    b.request(stop=True)
                    stopped = True
                if b.get("agreement_seq") < b.get("request_seq"):
                    sup.agree()
                steps = {sup.slot(i, "part_step") for i in range(2)}
                if len(steps) == 1 and 0 < min(steps) and min(steps) not in committed:
                    sup.commit(min(steps))
                    committed.append(min(steps))
                time.sleep(0.005)
            if p.poll() is None:
                p.kill()
            p.wait()
            out.seek(0)
            return p.returncode, out.read(), committed
        finally:
            out.close()
            b.close()

    def test_an_interrupted_and_resumed_ddp_run_ends_with_the_digest_of_an_uninterrupted_one(self):
        self.interrupted_and_resumed(())

    def test_the_same_with_asynchronous_checkpoints(self):
        self.interrupted_and_resumed(("--async",))

    def interrupted_and_resumed(self, extra):
        p = subprocess.run(torchrun("--digest-out", os.path.join(self.tmp, "whole")), env=clean_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=240)
        self.assertEqual(p.returncode, 0, p.stdout)
        self.assertIn("finished 60 steps", p.stdout)
        self.assertEqual(os.listdir(self.tmp), ["whole"])  # inert: no checkpoint

        rc, out, committed = self.supervised("first", stop_after=15, extra=extra)
        self.assertEqual(rc, 0, out)
        self.assertEqual(len(committed), 1, out)
        s = committed[0]
        self.assertIn(f"stopping at step {s}", out)
        self.assertTrue(15 <= s < STEPS, out)
        folder = os.path.join(self.ckpt, L.folder_name(s))
        self.assertEqual(L.verify_checkpoint(folder).problem, "")
        self.assertEqual(sorted(os.listdir(os.path.join(folder, "rank-00000"))),
                         ["MANIFEST", "model.pt", "optimizer.pt", "state.pt"])
        self.assertEqual(os.listdir(os.path.join(folder, "rank-00001")), ["MANIFEST"])
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "first")))

        rc, out, committed = self.supervised("second", resume=s, extra=extra)
        self.assertEqual(rc, 0, out)
        self.assertIn(f"resumed from step {s}", out)
        self.assertEqual(committed, [STEPS], out)  # the final checkpoint
        self.assertEqual(self.digest("second"), self.digest("whole"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
