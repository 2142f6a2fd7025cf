#include "store/manifest.h"

#include <nlohmann/json.hpp>
#include <stdexcept>

#include "common/clock.h"
#include "common/json_text.h"
#include "store/checksum.h"
#include "store/sharded.h"

namespace lifeline {
using nlohmann::json;

uint64_t Manifest::total_bytes() const {
  uint64_t sum = 0;
  for (const auto& f : files) sum += f.bytes;
  return sum;
}

uint64_t PartManifest::total_bytes() const {
  uint64_t sum = 0;
  for (const auto& f : files) sum += f.bytes;
  return sum;
}

static json files_json(const std::vector<ManifestFile>& files) {
  json out = json::array();
  for (const auto& f : files) out.push_back({{"path", f.path}, {"bytes", f.bytes}, {"checksum", f.checksum}});
  return out;
}

std::string manifest_to_json(const Manifest& m) {
  bool sharded = !m.parts.empty();
  json j;
  j["format"] = "lifeline-checkpoint";
  j["format_version"] = sharded ? 2 : 1;
  j["step"] = m.step;
  if (sharded) j["world_size"] = m.world_size;
  j["created"] = iso8601(m.created_ns);
  j["created_ns"] = m.created_ns;
  j["job_id"] = m.job_id ? json(*m.job_id) : json(nullptr);
  j["attempt"] = m.attempt;
  j["lineage"] = m.lineage;
  j["host"] = m.host;
  j["metrics"] = json::object();
  for (const auto& [k, v] : m.metrics) j["metrics"][k] = v;
  j["checksum_algorithm"] = m.checksum_algorithm;
  if (sharded) {
    j["parts"] = json::array();
    for (const auto& p : m.parts)
      j["parts"].push_back({{"rank", p.rank}, {"path", p.path}, {"bytes", p.bytes}, {"checksum", p.checksum}});
    j["files"] = json::array();
  } else {
    j["files"] = files_json(m.files);
  }
  return dump_json(j, 1) + "\n";
}

std::string part_manifest_to_json(const PartManifest& m) {
  json j;
  j["format"] = "lifeline-checkpoint-part";
  j["format_version"] = 2;
  j["step"] = m.step;
  j["rank"] = m.rank;
  j["world_size"] = m.world_size;
  j["checksum_algorithm"] = m.checksum_algorithm;
  j["files"] = files_json(m.files);
  return dump_json(j, 1) + "\n";
}

std::string unsafe_path_reason(const std::string& path) {
  if (path.empty()) return "empty file path";
  std::string shown = valid_utf8(path);
  if (shown != path) return "path '" + shown + "' is not valid UTF-8 (a MANIFEST cannot name it)";
  if (path[0] == '/') return "absolute path '" + path + "'";
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    std::string part = path.substr(start, end - start);
    if (part == "..") return "path '" + path + "' leaves the checkpoint ('..')";
    if (part.empty() || part == ".") return "path '" + path + "' is not normalized";
    start = end + 1;
  }
  if (path.find('\0') != std::string::npos) return "path contains NUL";
  return "";
}

static const json& need(const json& j, const char* key, json::value_t type) {
  auto it = j.find(key);
  if (it == j.end()) throw std::runtime_error(std::string("manifest lacks '") + key + "'");
  bool ok = it->type() == type ||
            (type == json::value_t::number_unsigned && it->type() == json::value_t::number_integer &&
             it->get<int64_t>() >= 0);
  if (!ok) throw std::runtime_error(std::string("manifest field '") + key + "' has the wrong type");
  return *it;
}

static uint32_t need_u32(const json& j, const char* key) {
  uint64_t v = need(j, key, json::value_t::number_unsigned).get<uint64_t>();
  if (v > UINT32_MAX) throw std::runtime_error(std::string("manifest field '") + key + "' is out of range");
  return uint32_t(v);
}

static json parse_text(const std::string& text, const char* what) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    // The parser quotes the bytes it stopped at: made valid, so the problem can go into JSON.
    throw std::runtime_error(std::string(what) + " is not valid JSON (" + valid_utf8(e.what()) + ")");
  }
}

static std::string known_algorithm(const json& j) {
  std::string algorithm = need(j, "checksum_algorithm", json::value_t::string).get<std::string>();
  if (!known_checksum(algorithm)) throw std::runtime_error("unknown checksum algorithm '" + algorithm + "'");
  return algorithm;
}

// The entries of a `files` array, each path checked against the path rules.
static std::vector<ManifestFile> parse_files(const json& files) {
  std::vector<ManifestFile> out;
  for (const auto& f : files) {
    if (!f.is_object()) throw std::runtime_error("manifest file entry is not an object");
    ManifestFile mf;
    mf.path = need(f, "path", json::value_t::string).get<std::string>();
    mf.bytes = need(f, "bytes", json::value_t::number_unsigned).get<uint64_t>();
    mf.checksum = need(f, "checksum", json::value_t::string).get<std::string>();
    std::string why = unsafe_path_reason(mf.path);
    if (!why.empty()) throw std::runtime_error("manifest has an unsafe " + why);
    if (mf.path == kManifestName) throw std::runtime_error("manifest lists itself");
    out.push_back(std::move(mf));
  }
  return out;
}

// The `parts` of a version-2 manifest: exactly one per rank of the world, at its fixed path.
static std::vector<ManifestPart> parse_parts(const json& j, uint32_t world_size) {
  const json& parts = need(j, "parts", json::value_t::array);
  if (parts.size() != world_size)
    throw std::runtime_error("MANIFEST lists " + std::to_string(parts.size()) + " parts for a world of " +
                             std::to_string(world_size) + " ranks");
  std::vector<ManifestPart> out(world_size);
  std::vector<bool> seen(world_size, false);
  for (const auto& p : parts) {
    if (!p.is_object()) throw std::runtime_error("manifest part entry is not an object");
    ManifestPart mp;
    mp.rank = need_u32(p, "rank");
    mp.path = need(p, "path", json::value_t::string).get<std::string>();
    mp.bytes = need(p, "bytes", json::value_t::number_unsigned).get<uint64_t>();
    mp.checksum = need(p, "checksum", json::value_t::string).get<std::string>();
    if (mp.rank >= world_size)
      throw std::runtime_error("MANIFEST lists a part of rank " + std::to_string(mp.rank) + " in a world of " +
                               std::to_string(world_size) + " ranks");
    if (seen[mp.rank]) throw std::runtime_error("MANIFEST lists rank " + std::to_string(mp.rank) + " twice");
    std::string expected = part_folder_name(mp.rank) + "/" + kManifestName;
    if (mp.path != expected)
      throw std::runtime_error("MANIFEST lists the part of rank " + std::to_string(mp.rank) + " at '" + mp.path +
                               "', not " + expected);
    seen[mp.rank] = true;
    out[mp.rank] = std::move(mp);
  }
  return out;  // world_size entries, none repeated: every rank once, by rank
}

Manifest manifest_from_json(const std::string& text) {
  json j = parse_text(text, "MANIFEST");
  if (!j.is_object()) throw std::runtime_error("MANIFEST is not a JSON object");
  if (j.value("format", "") != "lifeline-checkpoint")
    throw std::runtime_error("MANIFEST format is not lifeline-checkpoint");
  Manifest m;
  // Version 1 never checked format_version: only an explicit 2 selects version 2.
  auto version = j.find("format_version");
  if (version != j.end() && version->is_number_integer() && version->get<int64_t>() == 2) m.format_version = 2;
  m.step = need(j, "step", json::value_t::number_unsigned).get<uint64_t>();
  if (j.contains("created_ns") && j["created_ns"].is_number_unsigned())
    m.created_ns = j["created_ns"].get<uint64_t>();
  else if (j.contains("created") && j["created"].is_string())
    m.created_ns = parse_iso8601(j["created"].get<std::string>());
  if (j.contains("job_id") && j["job_id"].is_string()) m.job_id = j["job_id"].get<std::string>();
  if (j.contains("attempt") && j["attempt"].is_number_unsigned()) m.attempt = j["attempt"].get<uint64_t>();
  if (j.contains("lineage") && j["lineage"].is_string()) m.lineage = j["lineage"].get<std::string>();
  if (j.contains("host") && j["host"].is_string()) m.host = j["host"].get<std::string>();
  if (j.contains("metrics") && j["metrics"].is_object())
    for (auto& [k, v] : j["metrics"].items())
      if (v.is_number()) m.metrics[k] = v.get<double>();
  m.checksum_algorithm = known_algorithm(j);
  if (m.format_version == 2) {
    m.world_size = need_u32(j, "world_size");
    if (m.world_size == 0) throw std::runtime_error("MANIFEST has world_size 0");
    m.parts = parse_parts(j, m.world_size);
    if (j.contains("files") && !(j["files"].is_array() && j["files"].empty()))
      throw std::runtime_error("a version-2 MANIFEST lists files outside its parts");
    return m;
  }
  m.files = parse_files(need(j, "files", json::value_t::array));
  if (m.files.empty()) throw std::runtime_error("MANIFEST lists no files (an empty checkpoint has nothing to resume)");
  return m;
}

PartManifest part_manifest_from_json(const std::string& text) {
  if (text.size() > kMaxManifestBytes)
    throw std::runtime_error("part manifest is " + std::to_string(text.size()) + " bytes, over the limit of " +
                             std::to_string(kMaxManifestBytes >> 20) + " MiB");
  json j = parse_text(text, "part manifest");
  if (!j.is_object()) throw std::runtime_error("part manifest is not a JSON object");
  if (j.value("format", "") != "lifeline-checkpoint-part")
    throw std::runtime_error("part manifest format is not lifeline-checkpoint-part");
  auto version = j.find("format_version");
  if (version == j.end() || !version->is_number_integer() || version->get<int64_t>() != 2)
    throw std::runtime_error("part manifest format_version is not 2");
  PartManifest m;
  m.step = need(j, "step", json::value_t::number_unsigned).get<uint64_t>();
  m.rank = need_u32(j, "rank");
  m.world_size = need_u32(j, "world_size");
  if (m.rank >= m.world_size)
    throw std::runtime_error("part manifest names rank " + std::to_string(m.rank) + " in a world of " +
                             std::to_string(m.world_size) + " ranks");
  m.checksum_algorithm = known_algorithm(j);
  m.files = parse_files(need(j, "files", json::value_t::array));
  return m;
}

}  // namespace lifeline
