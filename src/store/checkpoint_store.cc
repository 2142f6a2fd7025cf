#include "store/checkpoint_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/clock.h"
#include "common/json_text.h"
#include "store/checksum.h"
#include "store/file_system.h"
#include "store/sharded.h"

namespace lifeline {
namespace fs = std::filesystem;

std::string checkpoint_folder_name(uint64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%012llu", static_cast<unsigned long long>(step));
  return buf;
}

std::optional<uint64_t> step_from_folder_name(const std::string& name) {
  if (name.size() < 6 || name.compare(0, 5, "step-") != 0 || name.size() > 5 + 20) return std::nullopt;
  uint64_t step = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return std::nullopt;
    uint64_t digit = uint64_t(name[i] - '0');
    if (step > (UINT64_MAX - digit) / 10) return std::nullopt;  // not a step: it overflows
    step = step * 10 + digit;
  }
  return step;
}

bool is_staging_name(const std::string& name) { return name.rfind(".staging-", 0) == 0; }

// Reads the MANIFEST (through the file-system seam: never through a symbolic link, never
// blocking on a FIFO or device); false with the problem worded for a listing.
static bool read_manifest_text(const std::string& path, std::string& out, std::string& problem) {
  FileRead r = default_file_system().read_file(path, kMaxManifestBytes);
  switch (r.error) {
    case 0: out = std::move(r.content); return true;
    case ENOENT: problem = "no MANIFEST (unfinished or foreign folder)"; break;
    case ELOOP: problem = "MANIFEST is a symbolic link (never followed)"; break;
    case EINVAL: problem = "MANIFEST is not a regular file"; break;
    case EFBIG:
      problem = "MANIFEST is " + std::to_string(r.size) + " bytes, over the limit of " +
                std::to_string(kMaxManifestBytes >> 20) + " MiB (kMaxManifestBytes): not read";
      break;
    default: problem = std::string("cannot read MANIFEST: ") + std::strerror(r.error);
  }
  return false;
}

// Checks that every component of `rel` under `root` is a real directory or, last, a regular
// file: no symlink is ever followed.
static std::string check_no_links(const std::string& root, const std::string& rel) {
  std::string cur = root;
  size_t start = 0;
  while (true) {
    size_t end = rel.find('/', start);
    bool last = end == std::string::npos;
    cur += "/" + rel.substr(start, last ? std::string::npos : end - start);
    struct stat st {};
    if (lstat(cur.c_str(), &st) != 0) return "file " + rel + " is missing";
    if (S_ISLNK(st.st_mode)) return "file " + rel + " goes through a symbolic link";
    if (last) return S_ISREG(st.st_mode) ? "" : "file " + rel + " is not a regular file";
    if (!S_ISDIR(st.st_mode)) return "file " + rel + ": a parent is not a directory";
    start = end + 1;
  }
}

// Verifies `files`, listed relative to `root`/`prefix` (prefix "" or a part folder with its '/'),
// in `mode`; the first problem, naming the file relative to `root`, or "".
static std::string verify_files(const std::string& root, const std::string& prefix,
                                const std::vector<ManifestFile>& files, const std::string& algorithm,
                                VerifyMode mode) {
  for (const auto& f : files) {
    std::string rel = prefix + f.path;
    std::string why = check_no_links(root, rel);
    if (!why.empty()) return why;
    std::string full = root + "/" + rel;
    if (mode == VerifyMode::quick) {
      struct stat fst {};
      if (lstat(full.c_str(), &fst) != 0 || uint64_t(fst.st_size) != f.bytes)
        return "file " + rel + " has " + std::to_string(fst.st_size) + " bytes, the manifest says " +
               std::to_string(f.bytes);
      continue;
    }
    auto hasher = make_hasher(algorithm);
    unsigned long long got = 0;
    ReadCache cache = mode == VerifyMode::full_around_cache ? ReadCache::around_cache_when_cold : ReadCache::cached;
    if (!default_file_system().hash_file(full, *hasher, got, cache))
      return "file " + rel + " cannot be read: " + std::strerror(errno);
    if (got != f.bytes)
      return "file " + rel + " has " + std::to_string(got) + " bytes, the manifest says " + std::to_string(f.bytes) +
             " (truncated or grown)";
    if (hasher->hex_digest() != f.checksum) return "file " + rel + " does not match its " + algorithm + " checksum";
  }
  return "";
}

// The part manifests of a version-2 checkpoint, each checked against the top manifest (size,
// checksum, step, rank, world size); sets info.bytes on success, else info.problem.
static bool read_parts(CheckpointInfo& info, const Manifest& m, std::vector<PartManifest>& parts) {
  uint64_t bytes = 0;
  for (const auto& listed : m.parts) {
    std::string part = "part manifest " + listed.path;
    std::string why = check_no_links(info.path, listed.path);
    if (!why.empty()) {
      info.problem = "rank " + std::to_string(listed.rank) + ": " + why;
      return false;
    }
    FileRead r = default_file_system().read_file(info.path + "/" + listed.path, kMaxManifestBytes);
    if (r.error == EFBIG) {
      info.problem = part + " is " + std::to_string(r.size) + " bytes, over the limit of " +
                     std::to_string(kMaxManifestBytes >> 20) + " MiB (kMaxManifestBytes): not read";
      return false;
    }
    if (r.error != 0) {
      info.problem = part + " cannot be read: " + std::strerror(r.error);
      return false;
    }
    if (r.content.size() != listed.bytes) {
      info.problem = part + " has " + std::to_string(r.content.size()) + " bytes, the MANIFEST says " +
                     std::to_string(listed.bytes);
      return false;
    }
    auto hasher = make_hasher(m.checksum_algorithm);
    hasher->update(r.content.data(), r.content.size());
    if (hasher->hex_digest() != listed.checksum) {
      info.problem = part + " does not match its " + m.checksum_algorithm + " checksum";
      return false;
    }
    PartManifest p;
    try {
      p = part_manifest_from_json(r.content);
    } catch (const std::exception& e) {
      info.problem = part + ": " + e.what();
      return false;
    }
    if (p.step != m.step || p.rank != listed.rank || p.world_size != m.world_size) {
      info.problem = part + " names step " + std::to_string(p.step) + ", rank " + std::to_string(p.rank) + " of " +
                     std::to_string(p.world_size) + ", not step " + std::to_string(m.step) + ", rank " +
                     std::to_string(listed.rank) + " of " + std::to_string(m.world_size);
      return false;
    }
    bytes += p.total_bytes();
    parts.push_back(std::move(p));
  }
  info.bytes = bytes;
  return true;
}

static CheckpointInfo verify_folder(const std::string& folder, VerifyMode mode) {
  CheckpointInfo info;
  std::error_code ec;
  fs::path abs = fs::absolute(folder, ec);
  info.path = ec ? folder : abs.lexically_normal().string();
  if (auto s = step_from_folder_name(fs::path(info.path).filename().string())) info.step = *s;
  struct stat st {};
  if (lstat(info.path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    info.problem = "not a directory (or a symbolic link)";
    return info;
  }
  std::string text;
  if (!read_manifest_text(info.path + "/" + kManifestName, text, info.problem)) return info;
  Manifest m;
  try {
    m = manifest_from_json(text);
  } catch (const std::exception& e) {
    info.problem = e.what();
    return info;
  }
  info.created_ns = m.created_ns;
  info.metrics = m.metrics;
  info.bytes = m.total_bytes();
  info.world_size = m.world_size;
  if (m.step != info.step) {
    info.problem = "MANIFEST says step " + std::to_string(m.step) + " but the folder is " +
                   checkpoint_folder_name(info.step);
    return info;
  }
  if (m.format_version != 2) {
    info.problem = verify_files(info.path, "", m.files, m.checksum_algorithm, mode);
    info.valid = info.problem.empty();
    return info;
  }
  std::vector<PartManifest> parts;
  if (!read_parts(info, m, parts)) return info;
  size_t files = 0;
  for (const auto& p : parts) {
    files += p.files.size();
    info.problem = verify_files(info.path, part_folder_name(p.rank) + "/", p.files, p.checksum_algorithm, mode);
    if (!info.problem.empty()) return info;
  }
  if (files == 0) {
    info.problem = "no rank's part lists a file (an empty checkpoint has nothing to resume)";
    return info;
  }
  info.valid = true;
  return info;
}

CheckpointInfo verify_checkpoint(const std::string& folder, VerifyMode mode) {
  CheckpointInfo info = verify_folder(folder, mode);
  info.problem = valid_utf8(info.problem);  // it quotes paths and parser messages: any bytes
  return info;
}

std::vector<std::pair<uint64_t, std::string>> checkpoint_folders(const std::string& dir) {
  std::vector<std::pair<uint64_t, std::string>> out;
  DIR* d = opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    if (auto s = step_from_folder_name(e->d_name)) out.emplace_back(*s, e->d_name);
  }
  closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<CheckpointInfo> list_checkpoints(const std::string& dir, VerifyMode mode) {
  std::vector<CheckpointInfo> out;
  for (const auto& [step, name] : checkpoint_folders(dir)) out.push_back(verify_checkpoint(dir + "/" + name, mode));
  return out;
}

ResumeChoice choose_resume(const std::string& dir) {
  ResumeChoice choice;
  auto folders = checkpoint_folders(dir);
  for (auto it = folders.rbegin(); it != folders.rend(); ++it) {
    CheckpointInfo info = verify_checkpoint(dir + "/" + it->second, VerifyMode::full);
    if (info.valid) {
      choice.resume = std::move(info);
      break;
    }
    choice.skipped.push_back(std::move(info));
  }
  return choice;
}

nlohmann::json checkpoint_object(const CheckpointInfo& info) {
  nlohmann::json j;
  j["step"] = info.step;
  j["path"] = valid_utf8(info.path);
  j["valid"] = info.valid;
  j["bytes"] = info.bytes;
  j["world_size"] = info.world_size;
  j["created"] = info.created_ns ? nlohmann::json(iso8601(info.created_ns)) : nlohmann::json(nullptr);
  j["metrics"] = nlohmann::json::object();
  for (const auto& [k, v] : info.metrics) j["metrics"][valid_utf8(k)] = v;
  if (!info.valid) j["problem"] = valid_utf8(info.problem);
  return j;
}

std::string checkpoint_json(const CheckpointInfo& info, int indent) { return dump_json(checkpoint_object(info), indent); }

}  // namespace lifeline
