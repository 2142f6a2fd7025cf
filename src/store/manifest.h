#pragma once
// Manifest: the JSON record that makes a checkpoint folder a checkpoint. Written last.
//
// Limits: a MANIFEST is at most kMaxManifestBytes (4 MiB, some 20000 files): the reader refuses
// a bigger one as invalid without reading it, and the writer refuses to commit a checkpoint
// whose manifest would be bigger (a 45 MB manifest cost every command ~560 MB of memory and
// ~3 s). A manifest must list at least one file: an empty checkpoint is reported invalid, so
// it can never be resumed nor count as the newest valid checkpoint that retention keeps.
//
// Version 2 (sharded, docs/distributed.md "MANIFEST version 2"): the top MANIFEST lists one
// part manifest per rank (`rank-<5 digits>/MANIFEST`) instead of files; each part manifest
// (format `lifeline-checkpoint-part`) lists that rank's files, relative to its part folder, and
// may list none. A version-1 reader refuses a version-2 manifest (it lists no files).
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace lifeline {

constexpr const char* kManifestName = "MANIFEST";
constexpr uint64_t kMaxManifestBytes = 4 << 20;

// One file of a checkpoint, relative to the checkpoint folder.
struct ManifestFile {
  std::string path;
  uint64_t bytes = 0;
  std::string checksum;
};

// One rank's part manifest as the top manifest of a sharded checkpoint lists it.
struct ManifestPart {
  uint32_t rank = 0;
  std::string path;  // part_folder_name(rank) + "/MANIFEST", relative to the checkpoint folder
  uint64_t bytes = 0;
  std::string checksum;  // of the part manifest, in the top manifest's algorithm
};

// Everything a manifest records: version 1 lists files, version 2 (parts non-empty) lists parts.
struct Manifest {
  uint32_t format_version = 1;  // as read; manifest_to_json derives it from `parts`
  uint32_t world_size = 1;
  std::vector<ManifestPart> parts;
  uint64_t step = 0;
  uint64_t created_ns = 0;
  std::optional<std::string> job_id;
  uint64_t attempt = 0;
  std::string lineage;
  std::string host;
  std::string checksum_algorithm;
  std::map<std::string, double> metrics;
  std::vector<ManifestFile> files;

  uint64_t total_bytes() const;  // of `files` (a version-2 manifest lists none)
};

// One rank's share of a sharded checkpoint: its files, relative to its part folder.
struct PartManifest {
  uint64_t step = 0;
  uint32_t rank = 0;
  uint32_t world_size = 1;
  std::string checksum_algorithm;
  std::vector<ManifestFile> files;

  uint64_t total_bytes() const;
};

// The MANIFEST text: version 2 (world_size, parts, "files": []) when `parts` is non-empty,
// else version 1. Strings that are not valid UTF-8 (a metric name, a host) are made valid
// (see valid_utf8 in common/json_text.h).
std::string manifest_to_json(const Manifest& m);
// Parses and checks the shape; throws std::runtime_error naming the problem, in valid UTF-8
// whatever bytes `text` holds. Version 1 (format_version absent or anything but 2): at least one
// file. Version 2: world_size >= 1, exactly one part per rank 0..world_size-1, each at
// part_folder_name(rank) + "/MANIFEST", no top-level files.
Manifest manifest_from_json(const std::string& text);
// A part manifest's text (format "lifeline-checkpoint-part", format_version 2).
std::string part_manifest_to_json(const PartManifest& m);
// Parses and checks a part manifest (rank < world_size, the path rules; `files` may be empty,
// the text at most kMaxManifestBytes); throws std::runtime_error as manifest_from_json does.
PartManifest part_manifest_from_json(const std::string& text);
// Empty when `path` is a safe relative path inside a checkpoint, else why it is not.
std::string unsafe_path_reason(const std::string& path);

}  // namespace lifeline
