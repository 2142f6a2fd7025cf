#pragma once
// Drain: the copy of a checkpoint committed on a node-local tier to the shared checkpoint
// directory (issue 20, docs/storage.md), with the same crash safety as a commit: the files and
// their manifests are copied into a staging folder of the shared directory, each file's checksum
// is computed as it is copied and must equal its manifest's (a checkpoint damaged on the local
// disk is never published), everything is fsynced, and only then is the folder renamed to
// `step-N` and the directory fsynced. A crash at any point leaves the shared directory with its
// older checkpoints and at most a `.staging-` folder, which the next attempt removes.
#include <cstdint>
#include <functional>
#include <string>

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

}  // namespace lifeline
