#pragma once
// Drain: the copy of a checkpoint committed on a node-local tier to the shared checkpoint
// directory (issue 20, docs/storage.md), with the same crash safety as a commit: the files and
// their manifests are copied into a staging folder of the shared directory, each file's checksum
// is computed as it is copied and must equal its manifest's (a checkpoint damaged on the local
// disk is never published), everything is fsynced, and only then is the folder renamed to
// `step-N` and the directory fsynced. A crash at any point leaves the shared directory with its
// older checkpoints and at most a `.staging-` folder, which the next attempt removes.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "store/file_system.h"

namespace lifeline {

// What one drain did.
struct DrainResult {
  std::string path;            // the checkpoint folder in the shared directory
  uint64_t bytes = 0;          // file bytes copied (manifests not counted)
  uint64_t files = 0;
  uint64_t duration_ns = 0;
  bool already_present = false;  // a valid checkpoint of this step was there: nothing copied
};

// Called with (bytes copied so far, bytes in all); may be called often.
using DrainProgress = std::function<void(uint64_t done, uint64_t total)>;

// Copies `local_dir/step-N` (a committed checkpoint, version 1 or sharded) to
// `shared_dir/step-N`. `token` names the staging folder (shared_staging_name: its high half the
// draining process's pid, so gc leaves a live drain alone). Throws std::runtime_error (SystemError
// for an I/O error) naming the file, after removing its staging folder: the shared directory is
// then as it was.
DrainResult drain_checkpoint(FileSystem& fs, const std::string& local_dir, const std::string& shared_dir,
                             uint64_t step, uint64_t token, const DrainProgress& progress = {});

// Several supervisors per job (docs/storage.md): copies the part folders (`rank-XXXXX/`) this
// node's ranks wrote into `local_dir/staging_name` to the job's shared staging folder
// `shared_dir/staging_name`, which the other nodes fill with theirs and the leader then commits
// (commit_sharded). Each file's checksum is checked against its part manifest as it is copied,
// every file and folder is fsynced, and a part's MANIFEST is written last, so the leader never
// sees a part manifest whose files are not all durable. result.path is the shared staging
// folder. Throws std::runtime_error naming the file, after removing the part folders it began
// (never the shared staging folder itself: other nodes' parts are in it).
DrainResult drain_parts(FileSystem& fs, const std::string& local_dir, const std::string& shared_dir,
                        const std::string& staging_name, uint64_t step, const DrainProgress& progress = {});

// Drains committed local checkpoints on a thread of its own, at idle I/O priority: one at a
// time, newest first; checkpoints superseded by a newer one before their drain starts are
// skipped (only the newest matters for a resume, and retention keeps older ones locally).
class DrainQueue {
 public:
  // What became of one checkpoint.
  struct Event {
    enum class Kind { drained, skipped, failed } kind = Kind::drained;
    uint64_t step = 0;
    DrainResult result;  // drained
    std::string error;   // failed
  };
  // Called on the drain thread, once per checkpoint added.
  using Report = std::function<void(const Event&)>;
  // Where a drain stands, for `status`.
  struct Progress {
    std::optional<uint64_t> step;  // the checkpoint being drained
    uint64_t done = 0, total = 0;  // its bytes
    uint64_t started_mono_ns = 0;  // when its drain began (steady clock)
    std::optional<uint64_t> newest_drained;
  };

  // One drain: step, progress callback → what it did (throws on failure).
  using DrainFn = std::function<DrainResult(uint64_t step, const DrainProgress& progress)>;

  // `idle_io`: the thread asks for the idle I/O class (ioprio_set), so a drain never slows the
  // trainer's own reads and writes. `drain`: what draining a step means (default: drain_checkpoint
  // of `local_dir/step-N` into `shared_dir`, staging folder named by `token`).
  DrainQueue(FileSystem& fs, std::string local_dir, std::string shared_dir, uint64_t token, Report report,
             bool idle_io = true, DrainFn drain = {});
  // Lets the drain in flight finish; what is still queued is dropped (reported as skipped).
  ~DrainQueue();
  DrainQueue(const DrainQueue&) = delete;
  DrainQueue& operator=(const DrainQueue&) = delete;

  void add(uint64_t step);
  // Takes nothing more: the drain in flight finishes, what is queued is reported skipped. The
  // destructor does this first, then waits for the thread.
  void close();
  // Blocks until nothing is queued or in flight, or `deadline`; true when it got there.
  bool wait_idle(std::chrono::steady_clock::time_point deadline);
  Progress progress() const;
  // Caps the copy at `bytes_per_second` (0 = unlimited) from the next chunk on: a stop lifts
  // the cap, since the trainer no longer competes for the disk.
  void set_bandwidth(uint64_t bytes_per_second) { bandwidth_.store(bytes_per_second); }

 private:
  void run(bool idle_io);

  FileSystem& fs_;
  const std::string local_, shared_;
  const uint64_t token_;
  Report report_;
  DrainFn drain_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::set<uint64_t> queued_;
  bool busy_ = false, stopping_ = false;
  Progress progress_;
  std::atomic<uint64_t> bandwidth_{0};
  std::thread thread_;  // last: starts once the rest is ready
};

}  // namespace lifeline
