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
// Thread safety: one thread calls a Client; the signal handlers it installs only perform
// lock-free atomic stores. Outside a supervisor (no LIFELINE_CONTROL) the client is inert:
// should_checkpoint and should_exit are false, no handler is installed, and resume() reads
// LIFELINE_RESUME_FROM / LIFELINE_RESUME_STEP only.
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

namespace lifeline {

// Where to resume from: a verified checkpoint folder and the step it holds.
struct ResumeInfo {
  std::string path;
  uint64_t step = 0;
};

// One checkpoint being written; commit() or destruction (which discards it) ends it.
class Checkpoint {
 public:
  Checkpoint(Checkpoint&&) noexcept;
  Checkpoint& operator=(Checkpoint&&) noexcept;
  ~Checkpoint();

  // The staging folder to write files into.
  const std::string& path() const;
  uint64_t step() const;
  // Writes a file into the staging folder, checksumming while writing (faster than save+scan).
  void write_file(const std::string& relative_path, const void* data, size_t size);
  // Makes the checkpoint durable and tells the supervisor. Returns false when the save failed
  // (disk full, read-only, I/O error): the error is printed, older checkpoints are intact and
  // training may go on.
  bool commit(const std::map<std::string, double>& metrics = {});
  // The error of a failed commit.
  const std::string& error() const;

 private:
  friend class Client;
  struct Impl;
  explicit Checkpoint(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class Client {
 public:
  // Attaches to the supervisor's control block named by LIFELINE_CONTROL, if any.
  // Throws std::runtime_error when the variable names a block that cannot be used.
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
    if (request_seq_->load(std::memory_order_relaxed) != seen_seq_) return true;
    return step >= next_periodic_step_ && periodic_due(step);
  }

  // Starts a checkpoint of `step` (a staging folder in the checkpoint directory).
  Checkpoint begin_checkpoint(uint64_t step);

  // True once a stop was requested (by the supervisor or a signal to the trainer).
  bool should_exit() const;

 private:
  struct State;
  Client();
  bool periodic_due(uint64_t step);

  std::atomic<uint64_t>* request_seq_ = nullptr;
  std::atomic<uint64_t>* current_step_ = nullptr;
  uint64_t seen_seq_ = 0;
  uint64_t next_periodic_step_ = UINT64_MAX;
  std::unique_ptr<State> state_;
};

}  // namespace lifeline
