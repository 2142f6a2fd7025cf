#pragma once
// Retention: which checkpoints of a directory a policy keeps, and removing the rest without
// ever exposing a half-deleted checkpoint; plus the cleanup of abandoned staging and trash
// folders. `lifeline gc` runs it, and the supervisor runs it after every commit. The caller
// holds the directory's DirLock (one writer per directory; gc and the supervisor never run
// it at the same time). The trainer may be writing meanwhile: its staging folder is spared.
//
// The rules (policies/default.yaml documents the keys):
// - Kept: the union of what each rule protects, counted over VALID checkpoints only:
//   "newest valid"; "keep_last N" (the newest N valid, the newest valid among them);
//   "best <metric>" (the keep_best best valid by metric and mode; a tie goes to the NEWER
//   step, which trained longer for the same score; a checkpoint without the metric, or with
//   a NaN or infinite value, is never "best"); "every K" (steps that are multiples of
//   keep_every_steps); "resumed from by the running attempt" (protected_step, until a
//   valid checkpoint newer than it exists, even if it no longer verifies).
// - max_total_bytes: when the kept valid checkpoints add up to more, the OLDEST kept ones
//   are deleted until the total fits, never the newest valid one nor the protected one
//   (which may alone exceed the limit). Invalid folders do not count toward the total.
// - Invalid checkpoints never fill a rule's slot. Those OLDER than the newest valid are
//   deleted ("invalid: ..."). Those NEWER than the newest valid are left alone, reported
//   and not counted: they are what someone investigating a failed save wants to look at,
//   and deleting the newest folders on a read error (a flaky shared file system) would
//   throw away data that may be fine. With no valid checkpoint at all, nothing is deleted.
// - Verification: the newest valid checkpoint is found with a FULL verify (newest first, as
//   choose_resume does), because every deletion rests on it: if a checkpoint that only
//   passes the quick check were taken as newest valid, the older, good ones could be
//   deleted and leave nothing to resume. Older checkpoints get the QUICK check (manifest and
//   sizes) for speed: a bit flip there can at worst keep a damaged checkpoint in a rule's
//   slot, never delete the resume point; choose_resume verifies in full before any resume.
// - Deleting: rename the folder to `.trash-step-…-<pid>-<random>`, fsync the directory,
//   then remove the tree. A crash at any point leaves a committed name with its complete
//   checkpoint, or a trash folder that no reader looks at. The folder's inode is checked
//   after the rename, so a folder replaced since it was judged is put back, not deleted.
// - Leftovers: every `.trash-` folder goes (nothing ever resumes or writes into one). A
//   `.staging-step-<step>-<pid>-<random>` folder goes when its writer pid is not running on
//   this host and nothing in it changed for `dead_writer_grace`, or when nothing in it changed
//   for `abandoned_after` whatever the pid (a writer on another host of a shared file system
//   is not visible here; one that writes nothing for an hour is gone).
#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "policy/policy.h"
#include "store/checkpoint_store.h"
#include "store/file_system.h"

namespace lifeline {

// What retention decided for one checkpoint folder, and every reason for it.
struct RetentionDecision {
  CheckpointInfo checkpoint;
  bool keep = false;
  std::vector<std::string> reasons;  // "newest valid", "keep_last 3", "best val_loss", "every 1000", ...
};

// A staging or trash folder that was (or, in a dry run, would be) removed.
struct RemovedLeftover {
  std::string name;  // folder name inside the checkpoint directory
  std::string why;   // "trash", "writer pid 123 is not running", "untouched for 3 h"
};

// Everything one retention pass decided and did.
struct RetentionReport {
  std::vector<RetentionDecision> decisions;  // by step ascending
  uint64_t bytes_freed = 0;                  // by deleted checkpoints (a dry run: would be)
  uint64_t bytes_kept = 0;                   // by kept valid checkpoints
  std::vector<RemovedLeftover> leftovers_removed;
  std::vector<std::string> errors;  // deletions that failed; those folders stay for next time
};

// When a staging folder counts as abandoned (see the header comment).
struct LeftoverRules {
  uint64_t now_ns = 0;  // wall clock; 0 = now
  uint64_t dead_writer_grace_ns = 60ull * 1000000000ull;
  uint64_t abandoned_after_ns = 3600ull * 1000000000ull;
  // Whether a writer pid runs on this host; empty = kill(pid, 0).
  std::function<bool(pid_t)> writer_alive;
};

// The decisions alone, from an already verified list (any order; reported by step). The
// newest valid entry of `list` must come from a full verify (see the header comment).
RetentionReport plan_retention(const std::vector<CheckpointInfo>& list, const Policy::Retention& rules,
                               std::optional<uint64_t> protected_step);

// Lists and verifies `dir`, decides, and unless `dry_run` deletes what is not kept and the
// abandoned leftovers. Failures to delete are reported in `errors`, never thrown; a missing
// directory is an empty report.
RetentionReport apply_retention(FileSystem& fs, const std::string& dir, const Policy::Retention& rules,
                                std::optional<uint64_t> protected_step, bool dry_run,
                                const LeftoverRules& leftovers = {});

// Removes every `.staging-*` and `.trash-*` folder of `dir` now, whatever its age or writer pid,
// and returns those removed ("trash", "staging folder of a writer that is gone"). Only for a
// caller that has proved no writer of `dir` is alive: it holds the DirLock and no_writers()
// (store/writers_lock.h) was true, as a supervisor knows at the start of an attempt. Removals
// that fail go to `errors` when given (those folders stay for the next pass); never throws.
std::vector<RemovedLeftover> remove_all_leftovers(FileSystem& fs, const std::string& dir,
                                                  std::vector<std::string>* errors = nullptr);

// The writer pid in a staging folder name `.staging-step-<step>-<pid>-<random>`, if any.
std::optional<pid_t> staging_writer_pid(const std::string& name);

// One line per checkpoint ("keep    step 40  1.2 GiB  newest valid, keep_last 3"), per
// leftover and per error, then a summary; "would delete" / "would remove" for a dry run.
std::string retention_report_text(const RetentionReport& report, bool dry_run);

}  // namespace lifeline
