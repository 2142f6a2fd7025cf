// Request latency: from the moment a checkpoint is asked for to the moment the trainer's
// should_checkpoint() returns true. Stamps are CLOCK_MONOTONIC, exchanged in shared memory.
//   shm        : a supervisor-like parent posts ControlBlock::request(); a trainer-like child
//                spins on should_checkpoint() (the bare shared-memory path);
//   trainer    : the parent sends SIGTERM to that child; the client's own handler posts the
//                request (what happens when Slurm signals the trainer directly);
//   sleeper    : the floor for `supervisor`: SIGUSR1 to a process asleep in pause() whose
//                handler posts the request, while the trainer-like child spins (what the
//                kernel and the machine cost to wake a sleeping process, with no lifeline code);
//   supervisor : SIGUSR1 to a real `lifeline run` whose trainer is this binary (--trainer):
//                its signal handler posts the request (SignalRelay), then its loop runs. The
//                signal comes SETTLE_MS after the trainer started spinning (default 150). A real
//                stop comes minutes into a run; in the first ~100 ms the scheduler's load
//                averages (PELT, 32 ms half-life) still rate the new trainer's core as light, may
//                wake lifeline on it, and lifeline then waits up to a tick (4 ms at HZ=250) for
//                the spinning trainer to be preempted (docs/performance.md, "Row 2").
// After each sample the trainer commits a tiny checkpoint (in /dev/shm), which acks it.
// A real trainer calls should_checkpoint() once per step: add up to one step to these numbers.
// Usage: request_latency_bench shm|trainer|sleeper [SAMPLES]
//        request_latency_bench supervisor LIFELINE_BIN [SAMPLES [SETTLE_MS]]
// Prints one JSON object: samples, median_us, p99_us, max_us (and settle_ms, exit_median_ms for
// supervisor).
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "control/control_block.h"
#include "lifeline/client.h"

extern char** environ;

namespace {

using lifeline::Client;
using lifeline::ControlBlock;

uint64_t mono_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

// What the two sides exchange, in a zero-filled shared mapping (lock-free atomics, as in the
// control block).
struct Shared {
  std::atomic<uint64_t> sample;   // driver: the sample being taken (1-based)
  std::atomic<uint64_t> ready;    // trainer: spinning for this sample
  std::atomic<uint64_t> done;     // trainer: saw and acked this sample
  std::atomic<uint64_t> seen_ns;  // trainer: when should_checkpoint() turned true
  std::atomic<int32_t> trainer_pid;
};
static_assert(std::atomic<uint64_t>::is_always_lock_free, "shared atomics must be lock-free");

Shared* map_shared(int fd) {
  void* p = mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, fd < 0 ? MAP_SHARED | MAP_ANONYMOUS : MAP_SHARED,
                 fd, 0);
  if (p == MAP_FAILED) throw std::runtime_error("mmap failed");
  return static_cast<Shared*>(p);
}

// Polls `cond` until it holds or `timeout_s` passes; false on timeout. With `sleep` the driver
// sleeps 50 us between polls, so that it does not take a core from the trainer or the
// supervisor (the latency is the trainer's stamp minus the driver's, whenever the driver looks);
// without, it spins, keeping its own core, as a supervisor's poster would be already running.
template <class F>
bool wait_until(F cond, double timeout_s, bool sleep) {
  uint64_t end = mono_ns() + uint64_t(timeout_s * 1e9);
  while (!cond()) {
    if (mono_ns() > end) return false;
    if (sleep) usleep(50);
  }
  return true;
}

// The trainer side of one sample: spin on should_checkpoint(), stamp, ack with a commit.
void trainer_sample(Client& c, Shared& sh, uint64_t sample, uint64_t& step) {
  sh.ready.store(sample, std::memory_order_release);
  while (!c.should_checkpoint(++step)) {
  }
  sh.seen_ns.store(mono_ns(), std::memory_order_release);
  auto w = c.begin_checkpoint(step);
  w.commit();
  sh.done.store(sample, std::memory_order_release);
}

// Latency samples in microseconds, printed as one JSON object.
struct Stats {
  std::vector<double> us;
  void print(const char* mode, const std::string& extra = "") {
    std::sort(us.begin(), us.end());
    auto at = [&](double q) { return us[std::min(us.size() - 1, size_t(q * double(us.size())))]; };
    std::printf("{\"mode\": \"%s\", \"samples\": %zu, \"median_us\": %.1f, \"p99_us\": %.1f, \"max_us\": %.1f%s}\n", mode,
                us.size(), at(0.5), at(0.99), us.back(), extra.c_str());
  }
};

std::string make_temp_dir(const char* base) {
  std::string tmpl = std::string(base) + "/lifeline-latency-XXXXXX";
  if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  return tmpl;
}

// A forked trainer-like child attached to `block`: `samples` samples, then it exits.
pid_t fork_trainer(const ControlBlock& block, const std::string& dir, Shared& sh, size_t samples) {
  pid_t child = fork();
  if (child == 0) {
    setenv("LIFELINE_CONTROL", block.name().c_str(), 1);
    setenv("LIFELINE_CKPT_DIR", dir.c_str(), 1);
    Client c = Client::from_env();
    uint64_t step = 0;
    for (uint64_t s = 1; s <= samples; ++s) trainer_sample(c, sh, s, step);
    _exit(0);
  }
  if (child < 0) throw std::runtime_error("fork failed");
  return child;
}

// shm and trainer modes: a forked trainer-like child, `samples` requests.
int run_forked(bool by_signal, size_t samples) {
  std::string dir = make_temp_dir("/dev/shm");
  ControlBlock block = ControlBlock::create("bench");
  Shared* sh = map_shared(-1);
  pid_t child = fork_trainer(block, dir, *sh, samples);
  Stats st;
  for (uint64_t s = 1; s <= samples; ++s) {
    if (!wait_until([&] { return sh->ready.load(std::memory_order_acquire) == s; }, 10, by_signal)) throw std::runtime_error("trainer not ready");
    uint64_t t0 = mono_ns();
    if (by_signal)
      kill(child, SIGTERM);
    else
      block.request(lifeline::layout::Reason::manual, false, 0);
    if (!wait_until([&] { return sh->done.load(std::memory_order_acquire) == s; }, 10, by_signal)) throw std::runtime_error("no ack");
    st.us.push_back(double(sh->seen_ns.load() - t0) / 1e3);
  }
  int status = 0;
  waitpid(child, &status, 0);
  std::filesystem::remove_all(dir);
  st.print(by_signal ? "trainer_sigterm" : "shm_request");
  return 0;
}

// The sleeper's block, for its handler.
const ControlBlock* g_sleeper_block = nullptr;
extern "C" void sleeper_handler(int) {
  g_sleeper_block->request(lifeline::layout::Reason::manual, false, 0);
}

// sleeper mode: driver -> SIGUSR1 -> a sleeping poster's handler -> the spinning trainer.
int run_sleeper(size_t samples) {
  std::string dir = make_temp_dir("/dev/shm");
  ControlBlock block = ControlBlock::create("bench");
  Shared* sh = map_shared(-1);
  pid_t trainer = fork_trainer(block, dir, *sh, samples);
  g_sleeper_block = &block;
  sigset_t usr1, old;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  sigprocmask(SIG_BLOCK, &usr1, &old);  // no signal before the handler is in place
  pid_t sleeper = fork();
  if (sleeper == 0) {
    struct sigaction sa {};
    sa.sa_handler = sleeper_handler;
    sigaction(SIGUSR1, &sa, nullptr);
    sigprocmask(SIG_SETMASK, &old, nullptr);
    for (;;) pause();
  }
  sigprocmask(SIG_SETMASK, &old, nullptr);
  Stats st;
  for (uint64_t s = 1; s <= samples; ++s) {
    if (!wait_until([&] { return sh->ready.load(std::memory_order_acquire) == s; }, 10, true)) throw std::runtime_error("trainer not ready");
    usleep(2000);  // the sleeper is asleep, as an idle supervisor is
    uint64_t t0 = mono_ns();
    kill(sleeper, SIGUSR1);
    if (!wait_until([&] { return sh->done.load(std::memory_order_acquire) == s; }, 10, true)) throw std::runtime_error("no ack");
    st.us.push_back(double(sh->seen_ns.load() - t0) / 1e3);
  }
  int status = 0;
  waitpid(trainer, &status, 0);
  kill(sleeper, SIGKILL);
  waitpid(sleeper, &status, 0);
  std::filesystem::remove_all(dir);
  st.print("sleeper_sigusr1");
  return 0;
}

pid_t spawn(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) throw std::runtime_error("cannot start " + argv[0]);
  return pid;
}

// supervisor mode: every sample is one `lifeline run` whose trainer is `self --trainer`.
int run_supervised(const std::string& lifeline, const std::string& self, size_t samples, double settle_ms) {
  std::string dir = make_temp_dir("/dev/shm");
  std::string shm_path = dir + "/shared";
  int fd = open(shm_path.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  if (fd < 0 || ftruncate(fd, sizeof(Shared)) != 0) throw std::runtime_error("cannot create " + shm_path);
  Shared* sh = map_shared(fd);
  setenv("LIFELINE_BENCH_SHM", shm_path.c_str(), 1);
  std::string policy = dir + "/policy.yaml";
  std::ofstream(policy) << "version: 1\ncheckpoint:\n  every_steps: 0\n  every_seconds: 0\n";
  Stats st;
  std::vector<double> exit_ms;
  for (uint64_t s = 1; s <= samples; ++s) {
    sh->sample.store(s);
    std::string ckpt = dir + "/ckpt-" + std::to_string(s);
    pid_t pid = spawn({lifeline, "run", "--policy", policy, "--ckpt-dir", ckpt, "--requeue", "none", "--", self, "--trainer"});
    if (!wait_until([&] { return sh->ready.load(std::memory_order_acquire) == s; }, 30, true)) throw std::runtime_error("trainer not ready");
    usleep(useconds_t(settle_ms * 1000));  // lifeline idles in its loop, as it does in a real run
    uint64_t t0 = mono_ns();
    kill(pid, SIGUSR1);
    int status = 0;
    waitpid(pid, &status, 0);
    exit_ms.push_back(double(mono_ns() - t0) / 1e6);
    if (sh->done.load(std::memory_order_acquire) != s) throw std::runtime_error("the trainer did not see the request");
    st.us.push_back(double(sh->seen_ns.load() - t0) / 1e3);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 75)
      throw std::runtime_error("lifeline run did not exit 75 after the stop (status " + std::to_string(status) + ")");
    std::filesystem::remove_all(ckpt);
  }
  std::filesystem::remove_all(dir);
  std::sort(exit_ms.begin(), exit_ms.end());
  char extra[96];
  std::snprintf(extra, sizeof extra, ", \"settle_ms\": %g, \"exit_median_ms\": %.1f", settle_ms, exit_ms[exit_ms.size() / 2]);
  st.print("supervisor_sigusr1", extra);
  return 0;
}

// The trainer `lifeline run` starts in supervisor mode: one sample, then leave as asked.
int run_trainer() {
  const char* path = std::getenv("LIFELINE_BENCH_SHM");
  if (!path) return 2;
  int fd = open(path, O_RDWR);
  if (fd < 0) return 2;
  Shared* sh = map_shared(fd);
  Client c = Client::from_env();
  sh->trainer_pid.store(int32_t(getpid()));
  uint64_t step = 0;
  trainer_sample(c, *sh, sh->sample.load(), step);
  return c.should_exit() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "--trainer") return run_trainer();
    if (mode == "shm" || mode == "trainer")
      return run_forked(mode == "trainer", argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 2000);
    if (mode == "sleeper") return run_sleeper(argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 200);
    if (mode == "supervisor" && argc > 2) {
      std::string self = std::filesystem::canonical("/proc/self/exe").string();
      return run_supervised(argv[2], self, argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 100,
                            argc > 4 ? std::strtod(argv[4], nullptr) : 150.0);
    }
    std::fprintf(stderr, "usage: request_latency_bench shm|trainer|sleeper [SAMPLES] | supervisor LIFELINE_BIN [SAMPLES [SETTLE_MS]]\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "request_latency_bench: %s\n", e.what());
    return 1;
  }
}
