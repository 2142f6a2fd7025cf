#pragma once
// Manifest: the JSON record that makes a checkpoint folder a checkpoint. Written last.
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace lifeline {

constexpr const char* kManifestName = "MANIFEST";

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

std::string manifest_to_json(const Manifest& m);
// Parses and checks the shape; throws std::runtime_error naming the problem.
Manifest manifest_from_json(const std::string& text);
// Empty when `path` is a safe relative path inside a checkpoint, else why it is not.
std::string unsafe_path_reason(const std::string& path);

}  // namespace lifeline
