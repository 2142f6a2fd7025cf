// No trainer outlives its supervisor: the client registers as a writer of the checkpoint
// directory and watches the supervisor's pid; when the supervisor is gone it stops the trainer's
// process group. A "supervisor" and a "trainer" here are this test binary run again as helpers
// (LIFELINE_WATCH_HELPER), the trainer a child of the test, not of the supervisor, as a trainer
// that re-execs, daemonises or runs under srun is.
#include <doctest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <optional>

#include "client/supervisor_watch.h"
#include "control/control_block.h"
#include "lifeline/client.h"
#include "store/writers_lock.h"
#include "support/client_env.h"
#include "support/process.h"
#include "support/temp_dir.h"
#include "support/tmpfs_mount.h"

using namespace lifeline;
using namespace lifeline::layout;
using lifeline::test::ClientEnv;
using lifeline::test::Process;
using lifeline::test::TempDir;
using Clock = std::chrono::steady_clock;

namespace {

// The supervisor: creates a control block, says its name, and waits to be killed.
int supervisor_helper() {
  ControlBlock block = ControlBlock::create("watch");
  std::printf("block %s\n", block.name().c_str());
  std::fflush(stdout);
  for (;;) pause();
}

// The trainer: its own process group (as lifeline run gives it), a client, and a forked worker
// that drops its copy of the client and stays, as a data-loader worker would.
int trainer_helper() {
  if (setpgid(0, 0) != 0) return 3;
  std::optional<Client> client;
  client.emplace(Client::from_env());
  pid_t worker = fork();
  if (worker < 0) return 4;
  if (worker == 0) {
    client.reset();
    for (;;) pause();
  }
  std::printf("attached, worker %d\n", int(worker));
  std::fflush(stdout);
  for (uint64_t step = 1;; ++step) {
    client->should_checkpoint(step);
    struct timespec ms {0, 1'000'000};
    nanosleep(&ms, nullptr);
  }
}

const bool kIsHelper = [] {
  const char* role = std::getenv("LIFELINE_WATCH_HELPER");
  if (role && std::string(role) == "supervisor") _exit(supervisor_helper());
  if (role && std::string(role) == "trainer") _exit(trainer_helper());
  return false;
}();

// True once `pid` has exited: a child of ours (not reaped here), or any process (gone or zombie).
bool exited(pid_t pid, bool our_child) {
  if (our_child) {
    siginfo_t info{};
    return waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid;
  }
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(in, stat)) return true;
  size_t paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z';
}

// Waits up to `limit` for `pid` to exit; returns how long it took, or nullopt.
std::optional<double> wait_exit(pid_t pid, bool our_child, std::chrono::seconds limit = std::chrono::seconds(10)) {
  auto t0 = Clock::now();
  while (Clock::now() - t0 < limit) {
    if (exited(pid, our_child)) return std::chrono::duration<double>(Clock::now() - t0).count();
    struct timespec ms {0, 2'000'000};
    nanosleep(&ms, nullptr);
  }
  return std::nullopt;
}

size_t thread_count() {
  size_t n = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/self/task"); it != std::filesystem::directory_iterator(); ++it)
    ++n;
  return n;
}

// A supervisor helper and the name of its block.
struct Supervisor {
  Process process{{"/proc/self/exe"}, {{"LIFELINE_WATCH_HELPER", "supervisor"}, {"LIFELINE_CONTROL", ""}}};
  std::string block;
  Supervisor() {
    std::string line = process.wait_for_line("block ");
    REQUIRE_MESSAGE(!line.empty(), process.output());
    block = line.substr(6);
  }
  ~Supervisor() { shm_unlink(block.c_str()); }  // killed: it could not unlink its block
};

}  // namespace

TEST_CASE("a trainer whose supervisor is killed with SIGKILL is stopped with its process group, and frees the writers' lock") {
  TempDir d;
  std::string ckpt = d / "ckpt";
  Supervisor sup;
  Process trainer({"/proc/self/exe"},
                  {{"LIFELINE_WATCH_HELPER", "trainer"}, {"LIFELINE_CONTROL", sup.block}, {"LIFELINE_CKPT_DIR", ckpt}});
  std::string line = trainer.wait_for_line("attached, worker ");
  REQUIRE_MESSAGE(!line.empty(), trainer.output());
  pid_t worker = pid_t(std::stoi(line.substr(line.rfind(' ') + 1)));
  CHECK(getpgid(worker) == trainer.pid());  // the trainer leads its group; the worker is in it
  std::vector<LockHolder> holders;
  CHECK_FALSE(no_writers(ckpt, &holders));  // registered as a writer while it lives
  CHECK_MESSAGE(describe_holders(holders).find("pid " + std::to_string(trainer.pid())) != std::string::npos,
                describe_holders(holders));
  {
    // The worker that dropped its copy of the client left the block alone.
    ControlBlock view = ControlBlock::attach(sup.block);
    CHECK(ClientState(view.u32(kClientStateOff).load()) == ClientState::attached);
    CHECK(view.u32(kTrainerPidOff).load() == uint32_t(trainer.pid()));
  }

  sup.process.signal(SIGKILL);
  CHECK(sup.process.wait() == 128 + SIGKILL);
  std::optional<double> trainer_gone = wait_exit(trainer.pid(), true);
  std::optional<double> worker_gone = wait_exit(worker, false);
  CHECK_MESSAGE(trainer_gone, "the trainer outlived its supervisor");
  CHECK_MESSAGE(worker_gone, "the trainer's worker outlived its supervisor");
  if (!worker_gone) kill(worker, SIGKILL);  // so that a failure fails, not hangs
  if (!trainer_gone) trainer.signal(SIGKILL);
  if (trainer_gone) CHECK(*trainer_gone < 2.0);  // a pidfd wakes the watch at once
  CHECK(trainer.wait() == 128 + SIGKILL);
  CHECK_MESSAGE(trainer.output().find("lifeline: supervisor pid " + std::to_string(sup.process.pid()) +
                                      " is gone: stopping this trainer") != std::string::npos,
                trainer.output());
  CHECK(no_writers(ckpt));
}

TEST_CASE("a trainer that attaches after its supervisor is gone stops at once") {
  TempDir d;
  Supervisor sup;
  sup.process.signal(SIGKILL);
  REQUIRE(sup.process.wait() == 128 + SIGKILL);
  Process trainer({"/proc/self/exe"},
                  {{"LIFELINE_WATCH_HELPER", "trainer"}, {"LIFELINE_CONTROL", sup.block}, {"LIFELINE_CKPT_DIR", d / "ckpt"}});
  std::optional<double> gone = wait_exit(trainer.pid(), true);
  CHECK_MESSAGE(gone, "the trainer runs on without its supervisor");
  if (!gone) {  // so that a failure fails, not hangs: the trainer and its worker
    std::string line = trainer.wait_for_line("attached, worker ");
    if (!line.empty()) kill(pid_t(std::stoi(line.substr(line.rfind(' ') + 1))), SIGKILL);
    trainer.signal(SIGKILL);
  }
  CHECK(trainer.wait() == 128 + SIGKILL);
  CHECK_MESSAGE(trainer.output().find("is gone: stopping this trainer") != std::string::npos, trainer.output());
  CHECK(trainer.output().find("attached") == std::string::npos);  // from_env() never returned
  CHECK(no_writers(d / "ckpt"));
}

TEST_CASE("the client holds the writers' lock and a watch thread while it lives, and lets both go when destroyed") {
  TempDir d;
  ControlBlock block = ControlBlock::create("test");  // its supervisor is this process
  ClientEnv env(block.name(), d.path());
  size_t threads = thread_count();
  {
    Client c = Client::from_env();
    REQUIRE(c.active());
    CHECK_FALSE(no_writers(d.path()));
    CHECK(thread_count() == threads + 1);
    for (uint64_t s = 1; s <= 1000; ++s) c.should_checkpoint(s);
  }
  CHECK(thread_count() == threads);  // woken and joined
  CHECK(no_writers(d.path()));
}

TEST_CASE("outside lifeline the client starts no thread and takes no lock") {
  TempDir d;
  ClientEnv env("", d.path());
  size_t threads = thread_count();
  Client c = Client::from_env();
  CHECK_FALSE(c.active());
  CHECK(thread_count() == threads);
  CHECK_FALSE(std::filesystem::exists(d / kWritersLockName));
}

TEST_CASE("a checkpoint directory where the lock file cannot be made gets a warning, not a trainer that cannot start") {
  lifeline::test::TmpfsMount read_only("size=1m", MS_RDONLY);
  if (!read_only.mounted()) {
    MESSAGE("skipped: cannot mount a tmpfs (" << read_only.why() << "); run as root");
    return;
  }
  ControlBlock block = ControlBlock::create("test");
  ClientEnv env(block.name(), read_only.path());
  std::optional<Client> c;
  CHECK_NOTHROW(c.emplace(Client::from_env()));
  REQUIRE(c);
  CHECK(c->active());
  CHECK_FALSE(std::filesystem::exists(read_only / kWritersLockName));
  auto w = c->begin_checkpoint(1);  // its saves fail, visibly, and training goes on
  CHECK(w.failed());
  CHECK_FALSE(w.commit());
}

TEST_CASE("a writers' lock that is a symbolic link or not a regular file is refused") {
  TempDir d;
  ControlBlock block = ControlBlock::create("test");
  ClientEnv env(block.name(), d.path());
  std::filesystem::create_symlink(d / "elsewhere", d / kWritersLockName);
  CHECK_THROWS_WITH_AS(Client::from_env(), doctest::Contains("symbolic link"), std::runtime_error);
  CHECK_FALSE(std::filesystem::exists(d / "elsewhere"));
  std::filesystem::remove(d / kWritersLockName);
  REQUIRE(mkfifo((d / kWritersLockName).c_str(), 0600) == 0);
  CHECK_THROWS_WITH_AS(Client::from_env(), doctest::Contains("not a regular file"), std::runtime_error);
}

TEST_CASE("LIFELINE_WATCH_SUPERVISOR=0 turns the watch off, not the writers' lock") {
  TempDir d;
  ControlBlock block = ControlBlock::create("test");
  ClientEnv env(block.name(), d.path());
  setenv("LIFELINE_WATCH_SUPERVISOR", "0", 1);
  size_t threads = thread_count();
  {
    Client c = Client::from_env();
    CHECK(thread_count() == threads);
    CHECK_FALSE(no_writers(d.path()));
  }
  unsetenv("LIFELINE_WATCH_SUPERVISOR");
}

TEST_CASE("the watch sees a supervisor exit through a pidfd, and once a second by polling where pidfd_open is missing") {
  for (auto mode : {SupervisorWatch::Mode::pidfd, SupervisorWatch::Mode::polling}) {
    CAPTURE(int(mode));
    pid_t supervisor = fork();
    REQUIRE(supervisor >= 0);
    if (supervisor == 0) {
      for (;;) pause();
    }
    std::promise<pid_t> gone;
    auto t0 = Clock::now();
    {
      SupervisorWatch watch(supervisor, [&gone](pid_t pid) { gone.set_value(pid); }, mode);
      CHECK(watch.mode() == mode);
      kill(supervisor, SIGKILL);  // not reaped yet: a zombie still answers kill(pid, 0)
      std::future<pid_t> f = gone.get_future();
      REQUIRE(f.wait_for(std::chrono::seconds(5)) == std::future_status::ready);
      CHECK(f.get() == supervisor);
    }
    double took = std::chrono::duration<double>(Clock::now() - t0).count();
    CHECK(took < (mode == SupervisorWatch::Mode::pidfd ? 1.0 : 2.5));
    waitpid(supervisor, nullptr, 0);
  }
}

TEST_CASE("a watch destroyed while its supervisor lives is woken and joined at once") {
  auto t0 = Clock::now();
  {
    SupervisorWatch watch(getpid(), [](pid_t) { FAIL("this process is not gone"); }, SupervisorWatch::Mode::polling);
  }
  CHECK(std::chrono::duration<double>(Clock::now() - t0).count() < 0.5);  // not after a poll period
}
