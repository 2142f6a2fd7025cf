#pragma once
// The trainer's side of lifeline: resume information, checkpoint requests, and the commit
// protocol, with no LibTorch dependency. Link liblifeline_client.
//
//   lifeline::Client c = lifeline::Client::from_env();
//   if (auto r = c.resume()) { load(r->path); step = r->step; }
//   while (step < total) {
//     train_step(); ++step;                        // a step number counts completed steps
//     if (c.should_checkpoint(step)) {
//       auto w = c.begin_checkpoint(step);         // staging folder
//       save(w.path());
//       w.commit({{"val_loss", v}});               // fsync, manifest, rename, ack
//       if (c.should_exit()) return 0;             // stop request: leave now
//     }
//   }
//
// Asynchronous checkpoints: only the copy of the state to memory stalls training; a background
// thread writes it, commits it and only then acks the supervisor.
//
//     if (c.should_checkpoint(step)) {
//       c.save_async(step, [&] {                   // runs now, on this thread: copy the state
//         auto copy = std::make_shared<State>(state);
//         return [copy](lifeline::Checkpoint& w) {  // runs on the background thread
//           w.write_file("state.bin", copy->data(), copy->size());
//         };
//       }, {{"val_loss", v}});
//       if (c.should_exit()) { c.wait_for_saves(); return 0; }   // the stop checkpoint is durable
//     }
//     ...
//     c.wait_for_saves();                          // before reporting success
//
// Rules of the asynchronous path:
//  - At most one save is in flight. save_async() and begin_checkpoint() first wait for it.
//  - A request or an every_steps point that comes while a save is in flight is coalesced into
//    it: should_checkpoint() stays false and that save's commit acks every request posted before
//    the commit (as a synchronous commit does). A request posted after that commit is answered by
//    the next save.
//  - A stop request is never coalesced away: while a save is in flight should_checkpoint() is
//    true so the trainer reaches should_exit(); save_async() then waits for the save in flight
//    and, when its commit answered the stop, takes no new snapshot. The trainer leaves after
//    wait_for_saves(), so the stop checkpoint is durable and acked before the trainer exits.
//  - A crash during the background write leaves the previous checkpoint the newest valid one:
//    nothing is renamed into place before every file and the manifest are durable.
//  - ~Client waits for a save in flight.
//
// A failed save (disk full, I/O error, read-only folder) never ends training. The first I/O
// error of a checkpoint fails it: its staging folder is removed at once (freeing its space),
// commit() returns false, and the failure is printed and counted in the control block (the
// supervisor records `checkpoint_failed` in the history). Older checkpoints stay intact; the
// request it answered is not retried on every step. A checkpoint dropped after such an error
// without commit() is reported the same way. The LibTorch helper (lifeline/torch.h) does not
// throw for a write error at all: its commit() reports it.
//
// Under a supervisor the client also, for as long as it lives:
//  - registers as a writer of the checkpoint directory: it holds `<dir>/.writers.lock` shared,
//    which lets the next attempt's supervisor prove that this process cannot commit any more
//    (store/writers_lock.h). Forked children share the hold until they exit. A file system
//    without flock gets a warning instead.
//  - watches the supervisor (its pid is in the control block) from a thread of its own, blocked
//    in poll() on a pidfd (once a second with kill(pid, 0) where pidfd_open is missing): when the
//    supervisor is gone (kill -9, say) it prints "lifeline: supervisor pid N is gone: stopping
//    this trainer" and SIGKILLs the trainer's process group (only itself when it shares the
//    supervisor's group), so that no trainer, grandchild or daemon outlives its supervisor and
//    writes on. A trainer that attaches after its supervisor died stops at once.
//    LIFELINE_WATCH_SUPERVISOR=0 turns the watch off (a supervisor in another PID namespace).
//    The watch costs should_checkpoint() nothing; ~Client wakes and joins its thread.
// A forked child (a data-loader worker) has neither thread; destroying its copy of the Client
// does nothing (the block, the lock and the watch stay the parent's).
//
// Ranks of a distributed job (LOCAL_WORLD_SIZE > 1, e.g. under torchrun; docs/distributed.md):
// every rank attaches to its node's block, all ranks checkpoint the same agreed step, each
// writes its own part (Checkpoint::path() is its `rank-NNNNN` folder; a rank may write no file),
// commit() returns once that part is durable, and the supervisor commits the checkpoint when
// every rank's part is. should_checkpoint() keeps its fast path; after a request it may wait
// (only) at the step it promised until the supervisor has agreed on the step.
//
// Thread safety: one thread calls a Client (the background save and watch threads are the
// client's own); the signal handlers it installs only perform lock-free atomic stores. Outside a
// supervisor (no LIFELINE_CONTROL) the client is inert: should_checkpoint and should_exit are
// false, no handler, thread or lock is installed, and resume() reads LIFELINE_RESUME_FROM /
// LIFELINE_RESUME_STEP only.
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

namespace lifeline {

// Where to resume from: a verified checkpoint folder and the step it holds. For a rank of a
// distributed job (docs/distributed.md) `path` is its own part of the checkpoint and
// `checkpoint` the whole one (a DDP trainer whose rank 0 alone saves loads
// checkpoint + "/rank-00000"); for a single trainer both are the checkpoint folder.
// `kind` (LIFELINE_RESUME_KIND) says whose checkpoint it is: "continue", this run's own (load
// everything, continue from `step`); "warm", another run's (`lifeline run --init-from`: a fork):
// the trainer decides what to load (weights only, or weights and optimizer) and whether its step
// count restarts at 0.
struct ResumeInfo {
  std::string path;
  uint64_t step = 0;
  std::string checkpoint;
  std::string kind = "continue";
  // True for a warm start from another run's checkpoint (kind "warm").
  bool warm() const { return kind == "warm"; }
};

// LIFELINE_RESUME_KIND's value as ResumeInfo::kind: "" (a supervisor from before the variable)
// and "continue" give "continue", "warm" gives "warm"; anything else throws std::runtime_error
// naming the variable.
std::string resume_kind_from_env(const char* value);

// A file streamed into a checkpoint (a serializer's output, say): checksummed while it is
// written, so commit() need not read it back. An I/O error throws std::runtime_error and fails
// the whole checkpoint (its staging folder goes at once; commit() returns false with that error);
// older checkpoints stay intact. close() fsyncs it and records it in the manifest; commit() fails
// while a file is not closed, whether still open or dropped. A large file does
// not fill the page cache: each 8 MiB is handed to the disk as it is written and dropped from
// the cache once written back; LIFELINE_WRITE_BEHIND=0 keeps it cached.
class CheckpointFile {
 public:
  CheckpointFile(CheckpointFile&&) noexcept;
  CheckpointFile& operator=(CheckpointFile&&) noexcept;
  ~CheckpointFile();
  void write(const void* data, size_t size);
  void close();

 private:
  friend class Checkpoint;
  struct Impl;
  explicit CheckpointFile(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// One checkpoint being written; commit() or destruction (which discards it) ends it.
class Checkpoint {
 public:
  Checkpoint(Checkpoint&&) noexcept;
  Checkpoint& operator=(Checkpoint&&) noexcept;
  ~Checkpoint();

  // The staging folder to write files into (a folder that does not exist when the checkpoint
  // failed before it could be made).
  const std::string& path() const;
  uint64_t step() const;
  // Writes a file into the staging folder, checksumming while writing (faster than save+scan).
  // An I/O error throws std::runtime_error and fails the checkpoint (see failed()).
  void write_file(const std::string& relative_path, const void* data, size_t size);
  // Creates a file in the staging folder to stream into (see CheckpointFile).
  CheckpointFile open_file(const std::string& relative_path);
  // Makes the checkpoint durable and tells the supervisor. Returns false when the save failed
  // (disk full, read-only, I/O error, or failed() already): the error is printed and counted,
  // the staging folder is gone, older checkpoints are intact and training may go on.
  bool commit(const std::map<std::string, double>& metrics = {});
  // True once an I/O error failed this checkpoint (its staging folder is removed at once; further
  // writes throw; commit() returns false).
  bool failed() const;
  // What failed the checkpoint: its first I/O error or the commit's; empty otherwise.
  const std::string& error() const;

 private:
  friend class Client;
  struct Impl;
  explicit Checkpoint(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Writes a snapshot's files into a checkpoint; runs on the background save thread.
using PersistFn = std::function<void(Checkpoint&)>;
// Copies the training state to memory and returns how to persist that copy; runs on the
// training thread (the only part of an asynchronous checkpoint that stalls training).
using SnapshotFn = std::function<PersistFn()>;

// The trainer's connection to its supervisor: requests in, commits and acks out.
class Client {
 public:
  // Attaches to the supervisor's control block named by LIFELINE_CONTROL, if any, registers as a
  // writer of LIFELINE_CKPT_DIR and starts watching the supervisor (see above). Throws
  // std::runtime_error when the variable names a block that cannot be used, or when the
  // writers' lock stays held exclusively for 10 s or cannot be opened (a link, not a file).
  static Client from_env();

  Client(Client&&) noexcept;
  Client& operator=(Client&&) noexcept;
  ~Client();

  bool active() const { return request_seq_ != nullptr; }
  std::optional<ResumeInfo> resume() const;
  uint64_t attempt() const;
  const std::string& checkpoint_dir() const;

  // True when a checkpoint should be written after completing `step`: a request is pending
  // (supervisor, or a SIGTERM/SIGUSR1/SIGINT the trainer received) or `step` is due by
  // the policy's every_steps. Also reports `step` as the trainer's heartbeat. No system call.
  bool should_checkpoint(uint64_t step) {
    if (!request_seq_) return false;
    current_step_->store(step, std::memory_order_relaxed);
    if (request_seq_->load(std::memory_order_relaxed) != seen_seq_) return request_pending();
    return step >= next_periodic_step_ && periodic_due(step);
  }

  // Starts a checkpoint of `step` (a staging folder in the checkpoint directory). Waits for an
  // asynchronous save in flight first. When the folder cannot be made (no space, no inode,
  // read-only) it does not throw: the checkpoint it returns has failed() and its commit()
  // returns false.
  Checkpoint begin_checkpoint(uint64_t step);

  // Asynchronous checkpoint of `step`: waits for a save in flight, then (unless a stop request
  // is already answered by a commit) calls `snapshot` on this thread and runs what it returns on
  // a background thread, followed by the commit and the ack. Returns true when it started a
  // save. A failed background save is reported like a failed commit (stderr, failed-save count
  // in the control block); older checkpoints stay intact. Exceptions of `snapshot` propagate.
  bool save_async(uint64_t step, const SnapshotFn& snapshot, const std::map<std::string, double>& metrics = {});
  // Waits until no save is in flight. Returns false when the last asynchronous save failed.
  bool wait_for_saves();
  // True while an asynchronous save is being written.
  bool save_in_flight() const;

  // True once a stop was requested (by the supervisor or a signal to the trainer).
  bool should_exit() const;

 private:
  struct State;
  Client();
  bool periodic_due(uint64_t step);
  // periodic_due for a rank: the agreed step, every_steps points, and the wait for an agreement.
  bool rank_due(uint64_t step);
  // should_checkpoint() with a request pending: coalesces it into a save in flight.
  bool request_pending();
  // Takes in what background commits answered.
  void absorb_settled();

  std::atomic<uint64_t>* request_seq_ = nullptr;
  std::atomic<uint64_t>* current_step_ = nullptr;
  uint64_t seen_seq_ = 0;
  uint64_t next_periodic_step_ = UINT64_MAX;
  std::unique_ptr<State> state_;
};

}  // namespace lifeline
