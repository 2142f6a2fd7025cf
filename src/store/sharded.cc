#include "store/sharded.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "common/clock.h"
#include "common/json_text.h"
#include "store/checkpoint_store.h"
#include "store/checksum.h"
#include "store/manifest.h"

namespace lifeline {

std::string part_folder_name(uint32_t rank) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "rank-%05u", static_cast<unsigned>(rank));
  return buf;
}

std::string shared_staging_name(uint64_t step, uint64_t token) {
  char hex[16];
  std::snprintf(hex, sizeof hex, "%08x", static_cast<unsigned>(token & 0xffffffffu));
  return ".staging-" + checkpoint_folder_name(step) + "-" + std::to_string(token >> 32) + "-" + hex;
}

// Why `path` is not a real directory (a link is never followed), or "".
static std::string not_a_folder(const std::string& path) {
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) return std::strerror(errno);
  if (S_ISLNK(st.st_mode)) return "a symbolic link (never followed)";
  if (!S_ISDIR(st.st_mode)) return "not a directory";
  return "";
}

// The part manifest of `rank` in `staging`, checked against the checkpoint it belongs to.
static PartManifest read_part(FileSystem& fs, const std::string& staging, uint64_t step, uint32_t rank,
                              uint32_t world_size, ManifestPart& listed, const std::string& algorithm) {
  std::string where = "cannot commit step " + std::to_string(step) + ": the part of rank " + std::to_string(rank);
  std::string folder = part_folder_name(rank);
  std::string why = not_a_folder(staging + "/" + folder);
  if (!why.empty()) throw std::runtime_error(where + " (" + folder + "/) is missing or unusable: " + why);
  listed.rank = rank;
  listed.path = folder + "/" + kManifestName;
  FileRead r = fs.read_file(staging + "/" + listed.path, kMaxManifestBytes);
  switch (r.error) {
    case 0: break;
    case ENOENT: throw std::runtime_error(where + " has no " + listed.path + " (the rank has not finished its part)");
    case ELOOP: throw std::runtime_error(where + ": " + listed.path + " is a symbolic link (never followed)");
    case EINVAL: throw std::runtime_error(where + ": " + listed.path + " is not a regular file");
    case EFBIG:
      throw std::runtime_error(where + ": " + listed.path + " is " + std::to_string(r.size) +
                               " bytes, over the limit of " + std::to_string(kMaxManifestBytes >> 20) + " MiB");
    default: throw std::runtime_error(where + ": cannot read " + listed.path + ": " + std::strerror(r.error));
  }
  PartManifest part;
  try {
    part = part_manifest_from_json(r.content);
  } catch (const std::exception& e) {
    throw std::runtime_error(where + ": " + listed.path + ": " + e.what());
  }
  if (part.step != step || part.rank != rank || part.world_size != world_size)
    throw std::runtime_error(where + ": " + listed.path + " names step " + std::to_string(part.step) + ", rank " +
                             std::to_string(part.rank) + " of " + std::to_string(part.world_size) +
                             ", not step " + std::to_string(step) + ", rank " + std::to_string(rank) + " of " +
                             std::to_string(world_size));
  auto hasher = make_hasher(algorithm);
  hasher->update(r.content.data(), r.content.size());
  listed.bytes = r.content.size();
  listed.checksum = hasher->hex_digest();
  return part;
}

CommitResult commit_sharded(FileSystem& fs, const std::string& dir, const std::string& staging_name, uint64_t step,
                            uint32_t world_size, const CheckpointMeta& meta, uint64_t started_ns,
                            const std::map<std::string, double>& metrics) {
  std::string step_text = std::to_string(step);
  if (world_size == 0) throw std::runtime_error("cannot commit step " + step_text + ": a world of 0 ranks");
  if (!known_checksum(meta.checksum_algorithm))
    throw std::runtime_error("cannot commit step " + step_text + ": unknown checksum algorithm " +
                             meta.checksum_algorithm);
  if (!is_staging_name(staging_name) || staging_name.find('/') != std::string::npos)
    throw std::runtime_error("cannot commit step " + step_text + ": '" + valid_utf8(staging_name) +
                             "' is not a staging folder name");
  std::string staging = dir + "/" + staging_name;
  std::string why = not_a_folder(staging);
  if (!why.empty())
    throw std::runtime_error("cannot commit step " + step_text + ": staging folder " + valid_utf8(staging) + ": " +
                             why);

  Manifest m = manifest_of(meta, step, metrics);
  m.format_version = 2;
  m.world_size = world_size;
  uint64_t bytes = 0;
  size_t files = 0;
  for (uint32_t rank = 0; rank < world_size; ++rank) {
    ManifestPart listed;
    PartManifest part = read_part(fs, staging, step, rank, world_size, listed, meta.checksum_algorithm);
    bytes += part.total_bytes();
    files += part.files.size();
    m.parts.push_back(std::move(listed));
  }
  if (files == 0)
    throw std::runtime_error("cannot commit step " + step_text + ": none of its " + std::to_string(world_size) +
                             " ranks wrote a file (an empty checkpoint has nothing to resume)");
  m.created_ns = wall_ns();
  std::string text = manifest_to_json(m);
  if (text.size() > kMaxManifestBytes)
    throw std::runtime_error("the MANIFEST of step " + step_text + " would be " + std::to_string(text.size()) +
                             " bytes, over the limit of " + std::to_string(kMaxManifestBytes >> 20) + " MiB");
  std::string top = staging + "/" + kManifestName;
  struct stat st {};
  if (lstat(top.c_str(), &st) == 0) fs.remove_tree(top);  // from an earlier try that did not rename
  auto out = fs.create_file(top);
  out->append(text.data(), text.size());
  out->sync();
  out->close();
  fs.sync_dir(staging);

  CommitResult result = publish_staging(fs, dir, step, staging);
  if (result.already_present) remove_staging(fs, dir, staging_name);
  result.bytes = bytes;
  uint64_t now = mono_ns();
  result.duration_ns = now > started_ns ? now - started_ns : 0;
  return result;
}

void remove_staging(FileSystem& fs, const std::string& dir, const std::string& staging_name) noexcept {
  if (!is_staging_name(staging_name) || staging_name.find('/') != std::string::npos) return;
  try {
    fs.remove_tree(dir + "/" + staging_name);
  } catch (...) {
    // A leftover staging folder: never resumed, removed by gc.
  }
}

}  // namespace lifeline
