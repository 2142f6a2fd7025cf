#include "lifeline/client.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>

#include "client/background_save.h"
#include "client/rank_env.h"
#include "client/supervisor_watch.h"
#include "common/clock.h"
#include "common/errors.h"
#include "common/host.h"
#include "control/control_block.h"
#include "store/checkpoint_store.h"
#include "store/checkpoint_writer.h"
#include "store/file_system.h"
#include "store/manifest.h"
#include "store/sharded.h"
#include "store/writers_lock.h"

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

// Creates the checkpoint directory `dir` (parents fsynced) if it can; where it cannot, what
// follows (the lock, the staging folder) fails and says why.
void make_dirs_if_possible(const std::string& dir) {
  try {
    default_file_system().make_dirs(dir);
  } catch (const SystemError&) {
  }
}

// Registers this process as a writer of `dir` (see store/writers_lock.h). Where the lock file
// cannot be made (a read-only or foreign directory: its saves will fail, visibly) or the file
// system cannot lock (Lustre mounted noflock, say) it warns instead: the trainer still runs, but
// a supervisor cannot prove that it has stopped. A link or a non-file there still throws.
std::optional<WriterRegistration> register_writer(const std::string& dir) {
  make_dirs_if_possible(dir);
  try {
    return WriterRegistration(dir);
  } catch (const SystemError& e) {
    for (int code : {ENOSYS, EOPNOTSUPP, ENOLCK, EINVAL, EROFS, EACCES, EPERM}) {
      if (e.code != code) continue;
      std::fprintf(stderr, "lifeline: %s: going on without the writers' lock\n", e.what());
      return std::nullopt;
    }
    throw;
  }
}

// Watches the supervisor named in the block, unless it names none or LIFELINE_WATCH_SUPERVISOR=0
// (for setups where its pid means nothing here: another PID namespace).
std::unique_ptr<SupervisorWatch> watch_supervisor(const ControlBlock& b) {
  pid_t supervisor = pid_t(b.u32(kSupervisorPidOff).load());
  const char* opt = std::getenv("LIFELINE_WATCH_SUPERVISOR");
  if (supervisor <= 0 || (opt && std::string(opt) == "0")) return nullptr;
  // A trainer in its supervisor's process group (the jobscript's, say) stops alone.
  pid_t supervisor_group = getpgid(supervisor);
  bool whole_group = supervisor_group < 0 || supervisor_group != getpgrp();
  return std::make_unique<SupervisorWatch>(
      supervisor, [whole_group](pid_t pid) { SupervisorWatch::stop_trainer(pid, whole_group); });
}

// What a checkpoint and the files streamed into it share: the writer, and the first I/O error,
// which fails the checkpoint and removes its staging folder at once.
struct Staging {
  std::optional<CheckpointWriter> writer;
  bool failed = false;
  bool ended = false;  // commit() was called, or the checkpoint dropped
  std::string error;

  // Keeps the first error and drops the staging folder (freeing its space, on a full disk).
  void fail(const char* what) noexcept {
    if (!failed) {
      failed = true;
      try {
        error = what && *what ? what : "unknown error";
      } catch (...) {
      }
    }
    if (writer) writer->abort();
  }
  // Throws unless files may still be written: std::logic_error once the checkpoint has ended,
  // std::runtime_error with the error that failed it.
  void check_writable(uint64_t step) const {
    if (ended) throw std::logic_error("checkpoint of step " + std::to_string(step) + " was committed, failed or dropped");
    if (failed) throw std::runtime_error("checkpoint of step " + std::to_string(step) + " failed earlier: " + error);
  }
};

// Where a rank resumes from (docs/distributed.md, "Resume"): its own part of a checkpoint of its
// world size; the whole checkpoint with LIFELINE_RESHARD=1; otherwise a clear refusal.
ResumeInfo rank_resume(ResumeInfo r, const RankEnv& env) {
  r.checkpoint = r.path;
  FileRead text = default_file_system().read_file(r.path + "/" + kManifestName, kMaxManifestBytes);
  if (text.error != 0)
    throw std::runtime_error("lifeline: cannot read " + r.path + "/" + kManifestName + ": " + std::strerror(text.error));
  uint32_t world = manifest_from_json(text.content).world_size;
  if (world == env.world_size) {
    r.path += "/" + part_folder_name(env.rank);
    return r;
  }
  if (env.reshard) return r;
  throw std::runtime_error("lifeline: " + r.path + " was written by " + std::to_string(world) + " rank(s), this job has " +
                           std::to_string(env.world_size) +
                           " (WORLD_SIZE): start it with the same world size, or set LIFELINE_RESHARD=1 if the trainer "
                           "reshards a checkpoint itself");
}

// Takes this rank's slot in the block: one process per local rank (an earlier process of the
// same rank that is gone leaves its pid behind, which may be taken over).
void claim_slot(const ControlBlock& b, const RankEnv& env, uint64_t resumed_step) {
  size_t slot = rank_slot(env.local_rank);
  uint32_t holder = b.u32(slot + kSlotPidOff).load(std::memory_order_acquire);
  if (holder != 0 && holder != uint32_t(getpid()) && (::kill(pid_t(holder), 0) == 0 || errno == EPERM))
    throw std::runtime_error("lifeline: local rank " + std::to_string(env.local_rank) + " is already attached (pid " +
                             std::to_string(holder) + "): two processes of one rank (LOCAL_RANK)?");
  b.u32(slot + kSlotRankOff).store(env.rank);
  b.u32(slot + kSlotWorldSizeOff).store(env.world_size);
  b.u64(slot + kSlotCurrentStepOff).store(resumed_step, std::memory_order_relaxed);
  b.u32(slot + kSlotStateOff).store(uint32_t(ClientState::attached));
  b.u32(slot + kSlotPidOff).store(uint32_t(getpid()), std::memory_order_release);
}

}  // namespace

std::string resume_kind_from_env(const char* value) {
  std::string v = value ? value : "";
  if (v.empty() || v == "continue") return "continue";
  if (v == "warm") return "warm";
  throw std::runtime_error("lifeline: LIFELINE_RESUME_KIND='" + v + "' is not continue or warm");
}

// Everything a Client owns besides the fields its inline fast path reads.
struct Client::State {
  pid_t owner = getpid();  // the trainer; a forked child's copy of the client is not it
  std::optional<ControlBlock> block;
  std::string ckpt_dir;
  // Outside `lifeline run` (LIFELINE_CKPT_DIR unset) checkpoints go into ./checkpoints, where
  // `lifeline run` looks by default; said once on stderr.
  void default_dir() {
    if (!ckpt_dir.empty()) return;
    std::error_code ec;
    auto abs = std::filesystem::absolute("checkpoints", ec);
    ckpt_dir = ec ? std::string("checkpoints") : abs.lexically_normal().string();
    default_file_system().make_dirs(ckpt_dir);
    std::fprintf(stderr,
                 "lifeline: LIFELINE_CKPT_DIR is unset (not under lifeline run): checkpoints go into %s, where "
                 "lifeline run looks by default\n",
                 ckpt_dir.c_str());
  }
  std::optional<ResumeInfo> resume;
  uint64_t attempt = 0;
  uint64_t every_steps = 0;
  uint64_t skip_first_steps = 0;
  CheckpointMeta meta;
  struct sigaction old_actions[3];
  bool handlers_installed = false;
  // The newest request sequence a background save settled (answered, or gave up on).
  std::atomic<uint64_t> settled_seq{0};
  // Held while the client lives (under a supervisor): this process may commit into ckpt_dir.
  std::optional<WriterRegistration> registration;
  // Stops the trainer when the supervisor is gone (under a supervisor).
  std::unique_ptr<SupervisorWatch> watch;
  // A rank of a distributed job (docs/distributed.md): its slot and where its agreement stands.
  struct Rank {
    RankEnv env;
    size_t slot = 0;                 // offset of this rank's slot in the block
    bool awaiting = false;           // a request seen, its agreement not yet
    uint64_t awaited_seq = 0;
    uint64_t promised = 0;           // no step beyond it before the agreement
    uint64_t target = UINT64_MAX;    // the agreed step, until reached
    bool stop_at_target = false;     // the agreement ends the run at target
    bool stop_agreed = false;        // ... and target was reached: should_exit()
    std::atomic<uint64_t> last_part{UINT64_MAX};  // step of the newest part begun
    std::string staging_name(const ControlBlock& b, uint64_t step) const {
      return shared_staging_name(step, b.u64(kStagingTokenOff).load());
    }
  };
  std::unique_ptr<Rank> rank;

  // A rank's next part: waits until the supervisor has committed or given up its previous one
  // (a fast rank must not announce a new part before the slow ones finished the last), then
  // names the shared staging folder. nullopt for a single trainer.
  std::optional<PartOf> next_part(uint64_t step) {
    if (!rank) return std::nullopt;
    const ControlBlock& b = *block;
    uint64_t last = rank->last_part.load();
    if (last != UINT64_MAX && last != step) {
      auto settled = [&] {
        return b.u64(kLastCommitStepOff).load() >= last || b.u64(kAbandonedStepOff).load() >= last;
      };
      auto start = std::chrono::steady_clock::now();
      while (!settled() && std::chrono::steady_clock::now() - start < std::chrono::seconds(60))
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      if (!settled())
        std::fprintf(stderr, "lifeline: rank %u: the checkpoint of step %llu is neither committed nor given up after 60 s; writing step %llu\n",
                     rank->env.rank, static_cast<unsigned long long>(last), static_cast<unsigned long long>(step));
    }
    rank->last_part.store(step);
    b.u32(rank->slot + kSlotStateOff).store(uint32_t(ClientState::saving));
    return PartOf{rank->staging_name(b, step), rank->env.rank, rank->env.world_size};
  }
  // Declared last: destroyed first, so a save in flight finishes while the block is mapped, the
  // writers' lock is held and the supervisor watched.
  BackgroundSave saver;
};

static constexpr int kStopSignals[3] = {SIGTERM, SIGUSR1, SIGINT};

Client::Client() : state_(std::make_unique<State>()) {}
Client::Client(Client&& o) noexcept = default;
Client& Client::operator=(Client&& o) noexcept = default;

Client::~Client() {
  if (!state_) return;
  if (getpid() != state_->owner) {
    // A forked child (a data-loader worker) dropping its copy: the threads are the parent's and
    // the block, the watch's eventfd and the writers' lock are shared with it. Touch nothing; the
    // child's copies go when it exits.
    (void)state_.release();
    return;
  }
  state_->saver.wait();
  state_->watch.reset();
  state_->registration.reset();
  if (state_->handlers_installed) {
    for (int i = 0; i < 3; ++i) sigaction(kStopSignals[i], &state_->old_actions[i], nullptr);
  }
  if (state_->block) {
    size_t state_off = state_->rank ? state_->rank->slot + kSlotStateOff : kClientStateOff;
    state_->block->u32(state_off).store(uint32_t(ClientState::exiting));
    g_block.store(nullptr);
  }
}

Client Client::from_env() {
  Client c;
  State& s = *c.state_;
  s.ckpt_dir = env_or("LIFELINE_CKPT_DIR", "");
  std::string from = env_or("LIFELINE_RESUME_FROM", "");
  if (!from.empty())
    s.resume = ResumeInfo{from, env_u64("LIFELINE_RESUME_STEP"), from, resume_kind_from_env(std::getenv("LIFELINE_RESUME_KIND"))};
  s.attempt = env_u64("LIFELINE_ATTEMPT");
  s.meta.attempt = s.attempt;
  s.meta.lineage = env_or("LIFELINE_LINEAGE", "");
  s.meta.host = this_host();
  if (const char* job = std::getenv("SLURM_JOB_ID")) s.meta.job_id = job;

  std::optional<RankEnv> rank = rank_env(process_env());
  if (rank && s.resume) s.resume = rank_resume(*s.resume, *rank);
  if (s.resume && s.resume->checkpoint.empty()) s.resume->checkpoint = s.resume->path;

  std::string name = env_or("LIFELINE_CONTROL", "");
  if (name.empty()) return c;  // inert
  s.block = ControlBlock::attach(name);
  ControlBlock& b = *s.block;
  if (rank) {
    s.rank = std::make_unique<State::Rank>();
    s.rank->env = *rank;
    s.rank->slot = rank_slot(rank->local_rank);
    // A warm start's step is the trainer's choice (it may restart at 0): none until it reports one.
    claim_slot(b, *rank, s.resume && !s.resume->warm() ? s.resume->step : 0);
  }
  if (!s.ckpt_dir.empty()) s.registration = register_writer(s.ckpt_dir);
  s.watch = watch_supervisor(b);
  s.every_steps = b.u64(kEveryStepsOff).load();
  s.skip_first_steps = b.u64(kSkipFirstStepsOff).load();
  c.request_seq_ = &b.u64(kRequestSeqOff);
  if (s.rank) {
    // The supervisor shows the ranks as one trainer in the header; the rank has its slot.
    c.current_step_ = &b.u64(s.rank->slot + kSlotCurrentStepOff);
    // A request the supervisor has not agreed on yet is still pending for this rank.
    c.seen_seq_ = b.u64(kAgreementSeqOff).load(std::memory_order_acquire);
    c.next_periodic_step_ = 0;
  } else {
    b.u32(kTrainerPidOff).store(uint32_t(getpid()));
    b.u32(kClientStateOff).store(uint32_t(ClientState::attached));
    c.current_step_ = &b.u64(kCurrentStepOff);
    // A request posted before we attached (e.g. a signal during start-up) is still pending.
    c.seen_seq_ = b.u64(kAckSeqOff).load();
    c.next_periodic_step_ = s.every_steps ? 0 : UINT64_MAX;
    if (s.resume && !s.resume->warm()) b.u64(kCurrentStepOff).store(s.resume->step);
  }

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
  if (state_->rank) return rank_due(step);
  uint64_t every = state_->every_steps;
  if (every == 0) {
    next_periodic_step_ = UINT64_MAX;
    return false;
  }
  next_periodic_step_ = next_periodic_step(step, every, state_->skip_first_steps);
  // A point that comes while a save is in flight is coalesced into that save.
  if (state_->saver.busy()) return false;
  return is_periodic_step(step, every, state_->skip_first_steps);
}

bool Client::rank_due(uint64_t step) {
  State& s = *state_;
  State::Rank& r = *s.rank;
  const ControlBlock& b = *s.block;
  if (r.awaiting) {
    auto agreed = [&] { return b.u64(kAgreementSeqOff).load(std::memory_order_acquire) >= r.awaited_seq; };
    if (!agreed() && step >= r.promised) {
      // The one wait: this rank promised not to pass this step before the supervisor agrees.
      auto start = std::chrono::steady_clock::now();
      bool told = false;
      while (!agreed()) {
        std::this_thread::sleep_for(std::chrono::microseconds(100));
        if (!told && std::chrono::steady_clock::now() - start > std::chrono::seconds(10)) {
          told = true;
          std::fprintf(stderr, "lifeline: rank %u waits at step %llu for the supervisor to agree on a checkpoint step\n",
                       r.env.rank, static_cast<unsigned long long>(step));
        }
      }
    }
    if (agreed()) {
      r.target = b.u64(kAgreedStepOff).load();
      r.stop_at_target = b.u32(kAgreedStopOff).load() != 0;
      r.awaiting = false;
    }
  }
  bool due = false;
  if (r.target != UINT64_MAX && step >= r.target) {
    if (step == r.target) {
      due = true;
      r.stop_agreed = r.stop_agreed || r.stop_at_target;
    } else {
      std::fprintf(stderr,
                   "lifeline: rank %u skipped the agreed checkpoint step %llu (now at %llu): it writes no part, the "
                   "checkpoint is given up\n",
                   r.env.rank, static_cast<unsigned long long>(r.target), static_cast<unsigned long long>(step));
      b.u64(r.slot + kSlotFailedSavesOff).fetch_add(1);
      b.u64(r.slot + kSlotFailedStepOff).store(r.target, std::memory_order_release);
      r.stop_agreed = r.stop_agreed || r.stop_at_target;  // it leaves with the others
    }
    r.target = UINT64_MAX;
  }
  if (is_periodic_step(step, s.every_steps, s.skip_first_steps)) due = true;
  uint64_t next = next_periodic_step(step, s.every_steps, s.skip_first_steps);
  next_periodic_step_ = r.awaiting ? step + 1 : std::min(next, r.target);
  return due;
}

void Client::absorb_settled() {
  uint64_t settled = state_->settled_seq.load(std::memory_order_acquire);
  if (settled > seen_seq_) seen_seq_ = settled;
}

bool Client::request_pending() {
  if (state_->rank) {
    // A rank promises first (docs/distributed.md, "Agreeing on a step"), then goes on until the
    // agreed step. Nothing is coalesced into a save in flight: every rank must decide alike.
    State::Rank& r = *state_->rank;
    const ControlBlock& b = *state_->block;
    uint64_t step = current_step_->load(std::memory_order_relaxed);
    // An agreed step not reached yet is checkpointed first; a request that came after its
    // agreement is taken in after it (else a slow rank could skip a step the others wrote).
    if (r.target != UINT64_MAX && !r.awaiting) return rank_due(step);
    uint64_t seq = request_seq_->load(std::memory_order_acquire);
    if (!r.awaiting) {
      r.promised = step + r.env.agree_margin;
      b.u64(r.slot + kSlotPromisedStepOff).store(r.promised);
    }
    r.awaiting = true;
    r.awaited_seq = seq;
    seen_seq_ = seq;
    b.u64(r.slot + kSlotSeenSeqOff).store(seq, std::memory_order_release);
    return rank_due(step);
  }
  // Coalesced into the save in flight, whose commit acks it; a stop must still reach should_exit().
  if (state_->saver.busy()) return should_exit();
  absorb_settled();
  if (request_seq_->load(std::memory_order_acquire) != seen_seq_) return true;
  // A background commit answered it before the trainer looked: true once more for a stop, so
  // the trainer reaches should_exit().
  return should_exit();
}

std::optional<ResumeInfo> Client::resume() const { return state_->resume; }
uint64_t Client::attempt() const { return state_->attempt; }
const std::string& Client::checkpoint_dir() const { return state_->ckpt_dir; }

bool Client::should_exit() const {
  if (!state_->block) return false;
  // A rank leaves only at the agreed step of an agreement that said stop: every rank then
  // leaves after the same step, whenever each of them saw the flag.
  if (state_->rank) return state_->rank->stop_agreed;
  bool stop = (g_local_stop.load(std::memory_order_relaxed) && active()) ||
              (state_->block->u32(kRequestFlagsOff).load(std::memory_order_acquire) & kFlagStop);
  return stop;
}

// Reports a save that failed: stderr, the block's failed-save count, and every request up to now
// settled through `settle` (not retried on every step). Returns false.
// A rank (`rank_slot` = its slot's offset) reports in its slot; the supervisor gives the
// collective checkpoint up.
static constexpr size_t kNoSlot = SIZE_MAX;
template <class Settle>
static bool report_failed_save(ControlBlock* b, size_t slot, uint64_t step, const std::string& what, Settle&& settle) noexcept {
  std::fprintf(stderr, "lifeline: checkpoint of step %llu failed: %s (older checkpoints are intact)\n",
               static_cast<unsigned long long>(step), what.c_str());
  if (b && slot != kNoSlot) {
    b->u64(slot + kSlotFailedSavesOff).fetch_add(1);
    b->u64(slot + kSlotFailedStepOff).store(step, std::memory_order_release);
    b->u32(slot + kSlotStateOff).store(uint32_t(ClientState::attached));
  } else if (b) {
    b->u64(kFailedSavesOff).fetch_add(1);
    settle(b->u64(kRequestSeqOff).load());
    b->u32(kClientStateOff).store(uint32_t(ClientState::attached));
  }
  return false;
}

// The private part of a Checkpoint: its staging, and where to ack.
struct Checkpoint::Impl {
  std::shared_ptr<Staging> staging;
  uint64_t step = 0;
  std::string path;
  ControlBlock* block = nullptr;
  size_t slot = kNoSlot;                         // a rank's part: its slot in the block
  uint64_t* seen_seq = nullptr;                  // synchronous save: the client's, same thread
  std::atomic<uint64_t>* settled_seq = nullptr;  // background save: absorbed by the client later
  bool finished = false;                         // committed, or its failure reported

  // A staging folder for `step` in `dir`. An I/O error (the folder cannot be made: no space, no
  // inode, read-only) does not throw: it gives a checkpoint that has failed already.
  // For a rank, `part` names the shared staging folder and its part in it.
  static std::unique_ptr<Impl> create(const std::string& dir, uint64_t step, const CheckpointMeta& meta,
                                      const std::optional<PartOf>& part = std::nullopt) {
    auto impl = std::make_unique<Impl>();
    impl->step = step;
    impl->staging = std::make_shared<Staging>();
    make_dirs_if_possible(dir);
    try {
      if (part)
        impl->staging->writer.emplace(default_file_system(), dir, step, meta, *part);
      else
        impl->staging->writer.emplace(default_file_system(), dir, step, meta);
      impl->path = impl->staging->writer->path();
    } catch (const std::logic_error&) {
      throw;
    } catch (const std::exception& e) {
      impl->staging->fail(e.what());
      impl->path = dir + "/.staging-" + checkpoint_folder_name(step) + "-failed";  // never created
    }
    return impl;
  }

  // Every request up to `seq` is settled: do not ask for it again.
  void settle(uint64_t seq) {
    if (seen_seq) *seen_seq = seq;
    if (settled_seq) settled_seq->store(seq, std::memory_order_release);
  }

  // Reports this checkpoint's failure once; returns false.
  bool report() noexcept {
    if (finished) return false;
    finished = true;
    return report_failed_save(block, slot, step, staging->error, [this](uint64_t seq) { settle(seq); });
  }
};

Checkpoint::Checkpoint(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Checkpoint::Checkpoint(Checkpoint&&) noexcept = default;
Checkpoint& Checkpoint::operator=(Checkpoint&&) noexcept = default;

Checkpoint::~Checkpoint() {
  if (!impl_) return;
  // Dropped after an I/O error without commit(): still a failed save for the supervisor.
  if (impl_->staging->failed) impl_->report();
  impl_->staging->ended = true;
  impl_->staging->writer.reset();  // an uncommitted staging folder goes now, not with its last file
}

const std::string& Checkpoint::path() const { return impl_->path; }
uint64_t Checkpoint::step() const { return impl_->step; }
const std::string& Checkpoint::error() const { return impl_->staging->error; }
bool Checkpoint::failed() const { return impl_->staging->failed; }

void Checkpoint::write_file(const std::string& rel, const void* data, size_t size) {
  Staging& s = *impl_->staging;
  s.check_writable(impl_->step);
  try {
    s.writer->write_file(rel, data, size);
  } catch (const std::logic_error&) {
    throw;  // the caller's mistake (a bad name, a second commit), not the disk's
  } catch (const std::exception& e) {
    s.fail(e.what());
    throw;
  }
}

// The private part of a CheckpointFile: its stream and the checkpoint it fails on an I/O error.
struct CheckpointFile::Impl {
  std::optional<StagedFile> file;  // reset after an I/O error: its descriptor goes at once
  std::weak_ptr<Staging> staging;
  uint64_t step = 0;

  // Fails the checkpoint with the error being thrown; closes this file first, so that removing
  // the staging folder frees its space.
  void fail(const char* what) noexcept {
    file.reset();
    if (auto s = staging.lock()) s->fail(what);
  }
  void check_writable() const {
    if (auto s = staging.lock()) s->check_writable(step);
  }
};
CheckpointFile::CheckpointFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CheckpointFile::CheckpointFile(CheckpointFile&&) noexcept = default;
CheckpointFile& CheckpointFile::operator=(CheckpointFile&&) noexcept = default;
CheckpointFile::~CheckpointFile() = default;

void CheckpointFile::write(const void* data, size_t size) {
  impl_->check_writable();
  if (!impl_->file) throw std::logic_error("checkpoint file written after its checkpoint was dropped");
  try {
    impl_->file->append(data, size);
  } catch (const std::logic_error&) {
    throw;
  } catch (const std::exception& e) {
    impl_->fail(e.what());
    throw;
  }
}

void CheckpointFile::close() {
  impl_->check_writable();
  if (!impl_->file) throw std::logic_error("checkpoint file closed after its checkpoint was dropped");
  try {
    impl_->file->close();
  } catch (const std::logic_error&) {
    throw;
  } catch (const std::exception& e) {
    impl_->fail(e.what());
    throw;
  }
}

CheckpointFile Checkpoint::open_file(const std::string& rel) {
  Staging& s = *impl_->staging;
  s.check_writable(impl_->step);
  auto f = std::make_unique<CheckpointFile::Impl>();
  f->staging = impl_->staging;
  f->step = impl_->step;
  try {
    f->file.emplace(s.writer->open_file(rel));
  } catch (const std::logic_error&) {
    throw;
  } catch (const std::exception& e) {
    s.fail(e.what());
    throw;
  }
  return CheckpointFile(std::move(f));
}

bool Checkpoint::commit(const std::map<std::string, double>& metrics) {
  Impl& c = *impl_;
  Staging& s = *c.staging;
  if (s.ended && !s.failed) return false;  // committed before: nothing more to do (as ever, false)
  s.ended = true;
  if (s.failed) return c.report();  // its staging folder is gone already
  ControlBlock* b = c.block;
  try {
    CommitResult r = s.writer->commit(metrics);
    c.finished = true;
    if (b && c.slot != kNoSlot) {
      // This rank's part is durable; the supervisor commits the checkpoint once all are.
      b->u64(c.slot + kSlotPartBytesOff).store(r.bytes);
      b->u64(c.slot + kSlotPartNsOff).store(r.duration_ns);
      b->u64(c.slot + kSlotPartStepOff).store(c.step, std::memory_order_release);
      b->u32(c.slot + kSlotStateOff).store(uint32_t(ClientState::attached));
    } else if (b) {
      b->u64(kLastCommitStepOff).store(c.step);
      b->u64(kLastCommitNsOff).store(r.duration_ns);
      b->u64(kLastCommitBytesOff).store(r.bytes);
      b->u64(kAckStepOff).store(c.step);
      b->u64(kCommitCountOff).fetch_add(1);
      // Every request up to now is answered by this fresh checkpoint.
      // Ack until no request slipped in between the load and the store (a signal could).
      uint64_t seq;
      do {
        seq = b->u64(kRequestSeqOff).load(std::memory_order_acquire);
        c.settle(seq);
        b->u64(kAckSeqOff).store(seq, std::memory_order_release);
      } while (b->u64(kRequestSeqOff).load(std::memory_order_acquire) != seq);
      b->u32(kClientStateOff).store(uint32_t(ClientState::attached));
    }
    return true;
  } catch (const std::exception& e) {
    s.fail(e.what());  // the writer removed the staging folder before it threw
    return c.report();
  }
}

Checkpoint Client::begin_checkpoint(uint64_t step) {
  State& s = *state_;
  s.saver.wait();
  absorb_settled();
  s.default_dir();
  std::optional<PartOf> part = s.next_part(step);
  auto impl = Checkpoint::Impl::create(s.ckpt_dir, step, s.meta, part);
  impl->seen_seq = &seen_seq_;
  if (s.block) {
    impl->block = &*s.block;
    if (s.rank)
      impl->slot = s.rank->slot;
    else
      s.block->u32(kClientStateOff).store(uint32_t(ClientState::saving));
  }
  return Checkpoint(std::move(impl));
}

}  // namespace lifeline

namespace lifeline {

bool Client::save_async(uint64_t step, const SnapshotFn& snapshot, const std::map<std::string, double>& metrics) {
  State& s = *state_;
  s.default_dir();
  s.saver.wait();
  absorb_settled();
  // A stop that a commit already answered needs no new snapshot: the trainer leaves next. (A
  // rank was told its step: it always writes its part.)
  if (request_seq_ && !s.rank && should_exit() && request_seq_->load(std::memory_order_acquire) == seen_seq_) return false;
  PersistFn persist = snapshot();
  ControlBlock* block = s.block ? &*s.block : nullptr;
  if (block && !s.rank) block->u32(kClientStateOff).store(uint32_t(ClientState::saving));
  if (block && s.rank) block->u32(s.rank->slot + kSlotStateOff).store(uint32_t(ClientState::saving));
  size_t slot = s.rank ? s.rank->slot : kNoSlot;
  State* state = &s;
  s.saver.start([state, block, slot, step, persist = std::move(persist), metrics]() -> bool {
    auto settle = [state](uint64_t seq) { state->settled_seq.store(seq, std::memory_order_release); };
    try {
      std::optional<PartOf> part = state->next_part(step);
      auto impl = Checkpoint::Impl::create(state->ckpt_dir, step, state->meta, part);
      impl->block = block;
      impl->slot = slot;
      impl->settled_seq = &state->settled_seq;
      Checkpoint checkpoint(std::move(impl));
      Staging& staging = *checkpoint.impl_->staging;
      if (!staging.failed) {
        try {
          persist(checkpoint);
        } catch (const std::exception& e) {
          staging.fail(e.what());
        } catch (...) {
          staging.fail("unknown exception while persisting");
        }
      }
      return checkpoint.commit(metrics);  // reports a failure, after the staging folder is gone
    } catch (const std::exception& e) {
      return report_failed_save(block, slot, step, e.what(), settle);
    } catch (...) {
      return report_failed_save(block, slot, step, "unknown exception while persisting", settle);
    }
  });
  return true;
}

bool Client::wait_for_saves() {
  // What the save settled is taken in by the next should_checkpoint(), which then still
  // reports a stop that the save answered.
  return state_->saver.wait();
}

bool Client::save_in_flight() const { return state_->saver.busy(); }

}  // namespace lifeline
