// The trainer-side client: inert alone, fast when idle, and every request answered by a commit.
#include <doctest.h>
#include <signal.h>
#include <stdlib.h>

#include <filesystem>

#include "control/control_block.h"
#include "lifeline/client.h"
#include "store/checkpoint_store.h"
#include "support/temp_dir.h"

using namespace lifeline;
using namespace lifeline::layout;
using lifeline::test::TempDir;

namespace {
// Sets the LIFELINE_* variables a supervisor would pass, and clears them afterwards.
struct Env {
  Env(const std::string& control, const std::string& dir) {
    setenv("LIFELINE_CONTROL", control.c_str(), 1);
    setenv("LIFELINE_CKPT_DIR", dir.c_str(), 1);
    unsetenv("LIFELINE_RESUME_FROM");
    unsetenv("LIFELINE_RESUME_STEP");
  }
  ~Env() {
    for (const char* v : {"LIFELINE_CONTROL", "LIFELINE_CKPT_DIR", "LIFELINE_RESUME_FROM", "LIFELINE_RESUME_STEP"})
      unsetenv(v);
  }
};
}  // namespace

TEST_CASE("outside a supervisor the client is inert and reads resume info from the environment") {
  Env env("", "");
  unsetenv("LIFELINE_CONTROL");
  setenv("LIFELINE_RESUME_FROM", "/data/ckpt/step-000000000040", 1);
  setenv("LIFELINE_RESUME_STEP", "40", 1);
  Client c = Client::from_env();
  CHECK_FALSE(c.active());
  for (uint64_t s = 1; s <= 2000; ++s) CHECK_FALSE(c.should_checkpoint(s));
  CHECK_FALSE(c.should_exit());
  REQUIRE(c.resume());
  CHECK(c.resume()->step == 40);
  CHECK(c.resume()->path == "/data/ckpt/step-000000000040");
  // No handler installed: SIGUSR1 keeps its default disposition.
  struct sigaction sa {};
  sigaction(SIGUSR1, nullptr, &sa);
  CHECK((sa.sa_handler == SIG_DFL));
}

TEST_CASE("a supervisor request makes should_checkpoint true once and the commit acks it") {
  TempDir d;
  ControlBlock block = ControlBlock::create("test");
  Env env(block.name(), d.path());
  Client c = Client::from_env();
  REQUIRE(c.active());
  CHECK_FALSE(c.should_checkpoint(1));
  uint64_t seq = block.request(Reason::manual, false, 0);
  CHECK(c.should_checkpoint(2));
  CHECK(block.u64(kCurrentStepOff).load() == 2);
  auto ck = c.begin_checkpoint(2);
  ck.write_file("w.bin", "ab", 2);
  CHECK(ck.commit({{"val_loss", 0.5}}));
  CHECK(block.u64(kAckSeqOff).load() == seq);
  CHECK(block.u64(kAckStepOff).load() == 2);
  CHECK(block.u64(kCommitCountOff).load() == 1);
  CHECK_FALSE(c.should_checkpoint(3));
  CHECK_FALSE(c.should_exit());
  CHECK(verify_checkpoint(d / "step-000000000002", VerifyMode::full).valid);
}

TEST_CASE("every_steps from the policy makes exactly the multiples due") {
  TempDir d;
  ControlBlock block = ControlBlock::create("test");
  block.u64(kEveryStepsOff).store(20);
  Env env(block.name(), d.path());
  Client c = Client::from_env();
  std::vector<uint64_t> due;
  for (uint64_t s = 1; s <= 100; ++s)
    if (c.should_checkpoint(s)) due.push_back(s);
  CHECK(due == std::vector<uint64_t>{20, 40, 60, 80, 100});
}

TEST_CASE("SIGTERM, SIGUSR1 and SIGINT to the trainer become a stop request, not death") {
  for (int sig : {SIGTERM, SIGUSR1, SIGINT}) {
    CAPTURE(sig);
    TempDir d;
    ControlBlock block = ControlBlock::create("test");
    Env env(block.name(), d.path());
    Client c = Client::from_env();
    CHECK_FALSE(c.should_checkpoint(1));
    raise(sig);  // the handler runs before raise returns
    CHECK(c.should_checkpoint(2));
    CHECK(c.should_exit());
    CHECK(block.u32(kTrainerSignalOff).load() == uint32_t(sig));
    CHECK(Reason(block.u32(kRequestReasonOff).load()) == Reason::trainer_signal);
    auto ck = c.begin_checkpoint(2);
    CHECK(ck.commit());
    CHECK(block.u64(kAckSeqOff).load() == block.u64(kRequestSeqOff).load());
  }
}

TEST_CASE("a failed save is reported, keeps older checkpoints, and training can go on") {
  TempDir d;
  ControlBlock block = ControlBlock::create("test");
  Env env(block.name(), d.path());
  Client c = Client::from_env();
  block.request(Reason::manual, false, 0);
  REQUIRE(c.should_checkpoint(1));
  {
    auto ok = c.begin_checkpoint(1);
    CHECK(ok.commit());
  }
  block.request(Reason::manual, false, 0);
  REQUIRE(c.should_checkpoint(2));
  auto bad = c.begin_checkpoint(2);
  std::filesystem::create_symlink("/etc/hostname", bad.path() + "/link");
  CHECK_FALSE(bad.commit());
  CHECK(bad.error().find("symbolic link") != std::string::npos);
  CHECK(block.u64(kFailedSavesOff).load() == 1);
  CHECK_FALSE(c.should_checkpoint(3));  // not retried on every step
  auto choice = choose_resume(d.path());
  REQUIRE(choice.resume);
  CHECK(choice.resume->step == 1);
}
