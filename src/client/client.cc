#include "lifeline/client.h"

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "common/clock.h"
#include "control/control_block.h"
#include "store/checkpoint_writer.h"

namespace lifeline {
using namespace layout;

namespace {

// The block the signal handlers poke; set while an active Client lives.
std::atomic<unsigned char*> g_block{nullptr};
std::atomic<uint32_t> g_local_stop{0};

std::atomic<uint64_t>& at64(unsigned char* base, size_t off) {
  return *reinterpret_cast<std::atomic<uint64_t>*>(base + off);
}
std::atomic<uint32_t>& at32(unsigned char* base, size_t off) {
  return *reinterpret_cast<std::atomic<uint32_t>*>(base + off);
}

// Async-signal-safe: lock-free atomic operations only. Turns the signal into a stop request.
extern "C" void on_stop_signal(int signo) {
  g_local_stop.store(1, std::memory_order_relaxed);
  unsigned char* base = g_block.load(std::memory_order_relaxed);
  if (!base) return;
  at32(base, kTrainerSignalOff).store(uint32_t(signo), std::memory_order_relaxed);
  at32(base, kRequestFlagsOff).fetch_or(kFlagStop, std::memory_order_relaxed);
  at32(base, kRequestReasonOff).store(uint32_t(Reason::trainer_signal), std::memory_order_relaxed);
  at64(base, kRequestSeqOff).fetch_add(1, std::memory_order_release);
}

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : fallback;
}

uint64_t env_u64(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return 0;
  return std::strtoull(v, nullptr, 10);
}

std::string host_name() {
  char buf[256] = {};
  gethostname(buf, sizeof buf - 1);
  return buf;
}

}  // namespace

struct Client::State {
  std::optional<ControlBlock> block;
  std::string ckpt_dir;
  std::optional<ResumeInfo> resume;
  uint64_t attempt = 0;
  uint64_t every_steps = 0;
  uint64_t skip_first_steps = 0;
  CheckpointMeta meta;
  struct sigaction old_actions[3];
  bool handlers_installed = false;
};

static constexpr int kStopSignals[3] = {SIGTERM, SIGUSR1, SIGINT};

Client::Client() : state_(std::make_unique<State>()) {}
Client::Client(Client&& o) noexcept = default;
Client& Client::operator=(Client&& o) noexcept = default;

Client::~Client() {
  if (!state_) return;
  if (state_->handlers_installed) {
    for (int i = 0; i < 3; ++i) sigaction(kStopSignals[i], &state_->old_actions[i], nullptr);
  }
  if (state_->block) {
    state_->block->u32(kClientStateOff).store(uint32_t(ClientState::exiting));
    g_block.store(nullptr);
  }
}

Client Client::from_env() {
  Client c;
  State& s = *c.state_;
  s.ckpt_dir = env_or("LIFELINE_CKPT_DIR", "");
  std::string from = env_or("LIFELINE_RESUME_FROM", "");
  if (!from.empty()) s.resume = ResumeInfo{from, env_u64("LIFELINE_RESUME_STEP")};
  s.attempt = env_u64("LIFELINE_ATTEMPT");
  s.meta.attempt = s.attempt;
  s.meta.lineage = env_or("LIFELINE_LINEAGE", "");
  s.meta.host = host_name();
  if (const char* job = std::getenv("SLURM_JOB_ID")) s.meta.job_id = job;

  std::string name = env_or("LIFELINE_CONTROL", "");
  if (name.empty()) return c;  // inert
  s.block = ControlBlock::attach(name);
  ControlBlock& b = *s.block;
  s.every_steps = b.u64(kEveryStepsOff).load();
  s.skip_first_steps = b.u64(kSkipFirstStepsOff).load();
  b.u32(kTrainerPidOff).store(uint32_t(getpid()));
  b.u32(kClientStateOff).store(uint32_t(ClientState::attached));
  c.request_seq_ = &b.u64(kRequestSeqOff);
  c.current_step_ = &b.u64(kCurrentStepOff);
  // A request posted before we attached (e.g. a signal during start-up) is still pending.
  c.seen_seq_ = b.u64(kAckSeqOff).load();
  c.next_periodic_step_ = s.every_steps ? 0 : UINT64_MAX;
  if (s.resume) b.u64(kCurrentStepOff).store(s.resume->step);

  g_block.store(reinterpret_cast<unsigned char*>(&b.u64(kMagicOff)));
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int i = 0; i < 3; ++i) sigaction(kStopSignals[i], &sa, &s.old_actions[i]);
  s.handlers_installed = true;
  return c;
}

bool Client::periodic_due(uint64_t step) {
  uint64_t every = state_->every_steps;
  if (every == 0) {
    next_periodic_step_ = UINT64_MAX;
    return false;
  }
  next_periodic_step_ = (step / every + 1) * every;
  return step % every == 0 && step > 0 && step >= state_->skip_first_steps;
}

std::optional<ResumeInfo> Client::resume() const { return state_->resume; }
uint64_t Client::attempt() const { return state_->attempt; }
const std::string& Client::checkpoint_dir() const { return state_->ckpt_dir; }

bool Client::should_exit() const {
  if (g_local_stop.load(std::memory_order_relaxed) && active()) return true;
  if (!state_->block) return false;
  return state_->block->u32(kRequestFlagsOff).load(std::memory_order_acquire) & kFlagStop;
}

// The private part of a Checkpoint: the writer and where to ack.
struct Checkpoint::Impl {
  std::optional<CheckpointWriter> writer;
  ControlBlock* block = nullptr;
  uint64_t* seen_seq = nullptr;
  std::string error;
  std::string path;
};

Checkpoint::Checkpoint(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Checkpoint::Checkpoint(Checkpoint&&) noexcept = default;
Checkpoint& Checkpoint::operator=(Checkpoint&&) noexcept = default;
Checkpoint::~Checkpoint() = default;

const std::string& Checkpoint::path() const { return impl_->path; }
uint64_t Checkpoint::step() const { return impl_->writer->step(); }
const std::string& Checkpoint::error() const { return impl_->error; }

void Checkpoint::write_file(const std::string& rel, const void* data, size_t size) {
  impl_->writer->write_file(rel, data, size);
}

bool Checkpoint::commit(const std::map<std::string, double>& metrics) {
  ControlBlock* b = impl_->block;
  uint64_t step = impl_->writer->step();
  try {
    CommitResult r = impl_->writer->commit(metrics);
    if (b) {
      b->u64(kLastCommitStepOff).store(step);
      b->u64(kLastCommitNsOff).store(r.duration_ns);
      b->u64(kLastCommitBytesOff).store(r.bytes);
      b->u64(kAckStepOff).store(step);
      b->u64(kCommitCountOff).fetch_add(1);
      // Every request up to now is answered by this fresh checkpoint.
      // Ack until no request slipped in between the load and the store (a signal could).
      uint64_t seq;
      do {
        seq = b->u64(kRequestSeqOff).load(std::memory_order_acquire);
        *impl_->seen_seq = seq;
        b->u64(kAckSeqOff).store(seq, std::memory_order_release);
      } while (b->u64(kRequestSeqOff).load(std::memory_order_acquire) != seq);
      b->u32(kClientStateOff).store(uint32_t(ClientState::attached));
    }
    return true;
  } catch (const std::exception& e) {
    impl_->error = e.what();
    std::fprintf(stderr, "lifeline: checkpoint of step %llu failed: %s (older checkpoints are intact)\n",
                 static_cast<unsigned long long>(step), e.what());
    if (b) {
      b->u64(kFailedSavesOff).fetch_add(1);
      *impl_->seen_seq = b->u64(kRequestSeqOff).load();  // do not retry on every step
      b->u32(kClientStateOff).store(uint32_t(ClientState::attached));
    }
    return false;
  }
}

Checkpoint Client::begin_checkpoint(uint64_t step) {
  State& s = *state_;
  if (s.ckpt_dir.empty())
    throw std::runtime_error("lifeline: no checkpoint directory (LIFELINE_CKPT_DIR is unset)");
  auto impl = std::make_unique<Checkpoint::Impl>();
  std::error_code ec;
  std::filesystem::create_directories(s.ckpt_dir, ec);
  impl->writer.emplace(default_file_system(), s.ckpt_dir, step, s.meta);
  impl->path = impl->writer->path();
  if (s.block) {
    impl->block = &*s.block;
    impl->seen_seq = &seen_seq_;
    s.block->u32(kClientStateOff).store(uint32_t(ClientState::saving));
  } else {
    impl->seen_seq = &seen_seq_;
  }
  return Checkpoint(std::move(impl));
}

}  // namespace lifeline
