#pragma once
// Reading side of the checkpoint directory: listing, verification, and the resume choice.
#include <cstdint>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "store/manifest.h"

namespace lifeline {

// What one checkpoint folder is, as far as verification could tell.
struct CheckpointInfo {
  uint64_t step = 0;
  std::string path;  // absolute
  bool valid = false;
  uint64_t bytes = 0;          // of every file (a sharded checkpoint: of all its parts)
  uint32_t world_size = 1;     // ranks that wrote it (1 for a version-1 checkpoint)
  uint64_t created_ns = 0;
  std::map<std::string, double> metrics;
  std::string problem;  // set when !valid; always valid UTF-8 (odd bytes written as \xNN)
};

// full: every file's size and checksum; quick: manifest and sizes only. full_around_cache:
// full, reading big files that are mostly not in the page cache around it (O_DIRECT; see
// ReadCache in store/checksum.h), for a check whose data nobody reads next (retention's).
enum class VerifyMode { full, full_around_cache, quick };

// "step-000000000040": the committed folder name of a step.
std::string checkpoint_folder_name(uint64_t step);
// The step of a committed folder name, or nullopt for anything else (staging, trash, foreign).
std::optional<uint64_t> step_from_folder_name(const std::string& name);
// True for names the writer uses while a checkpoint is being written.
bool is_staging_name(const std::string& name);

// Committed folder names in `dir` with their steps, by step ascending; nothing is opened or
// verified (one readdir), so it stays cheap with thousands of checkpoints.
std::vector<std::pair<uint64_t, std::string>> checkpoint_folders(const std::string& dir);

// Valid when the MANIFEST parses and every file it lists (version 2: every part manifest, then
// every file each lists) is a regular file, no link on the way, of the listed size and, unless
// `mode` is quick, checksum (docs/protocol.md §3, docs/distributed.md).
CheckpointInfo verify_checkpoint(const std::string& folder, VerifyMode mode);
// Every committed folder in `dir`, by step ascending. A missing dir is an empty list.
std::vector<CheckpointInfo> list_checkpoints(const std::string& dir, VerifyMode mode);

// The checkpoint a resume would use: the newest that verifies, and the newer ones skipped.
// Verifies newest first and stops at the first valid one.
struct ResumeChoice {
  std::optional<CheckpointInfo> resume;
  std::vector<CheckpointInfo> skipped;  // newest first
};
ResumeChoice choose_resume(const std::string& dir);

// The contract's JSON object for a checkpoint (docs/contract.md), every string valid UTF-8 (a path
// or metric name with other bytes shows them as \xNN), ready to embed in a bigger document.
nlohmann::json checkpoint_object(const CheckpointInfo& info);
// checkpoint_object as text (dump_json in common/json_text.h): never throws on odd bytes.
std::string checkpoint_json(const CheckpointInfo& info, int indent = -1);

}  // namespace lifeline
