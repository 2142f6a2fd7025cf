#pragma once
// Manifest: the JSON record that makes a checkpoint folder a checkpoint. Written last.
//
// Limits: a MANIFEST is at most kMaxManifestBytes (4 MiB, some 20000 files): the reader refuses
// a bigger one as invalid without reading it, and the writer refuses to commit a checkpoint
// whose manifest would be bigger (a 45 MB manifest cost every command ~560 MB of memory and
// ~3 s). A manifest must list at least one file: an empty checkpoint is reported invalid, so
// it can never be resumed nor count as the newest valid checkpoint that retention keeps.
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

// Everything a manifest records.
struct Manifest {
  uint64_t step = 0;
  uint64_t created_ns = 0;
  std::optional<std::string> job_id;
  uint64_t attempt = 0;
  std::string lineage;
  std::string host;
  std::string checksum_algorithm;
  std::map<std::string, double> metrics;
  std::vector<ManifestFile> files;

  uint64_t total_bytes() const;
};

// The MANIFEST text; strings that are not valid UTF-8 (a metric name, a host) are made valid
// (see valid_utf8 in common/json_text.h).
std::string manifest_to_json(const Manifest& m);
// Parses and checks the shape (at least one file); throws std::runtime_error naming the
// problem, in valid UTF-8 whatever bytes `text` holds.
Manifest manifest_from_json(const std::string& text);
// Empty when `path` is a safe relative path inside a checkpoint, else why it is not.
std::string unsafe_path_reason(const std::string& path);

}  // namespace lifeline
