#include "store/manifest.h"

#include <nlohmann/json.hpp>
#include <stdexcept>

#include "common/clock.h"
#include "common/json_text.h"
#include "store/checksum.h"

namespace lifeline {
using nlohmann::json;

uint64_t Manifest::total_bytes() const {
  uint64_t sum = 0;
  for (const auto& f : files) sum += f.bytes;
  return sum;
}

std::string manifest_to_json(const Manifest& m) {
  json j;
  j["format"] = "lifeline-checkpoint";
  j["format_version"] = 1;
  j["step"] = m.step;
  j["created"] = iso8601(m.created_ns);
  j["created_ns"] = m.created_ns;
  j["job_id"] = m.job_id ? json(*m.job_id) : json(nullptr);
  j["attempt"] = m.attempt;
  j["lineage"] = m.lineage;
  j["host"] = m.host;
  j["metrics"] = json::object();
  for (const auto& [k, v] : m.metrics) j["metrics"][k] = v;
  j["checksum_algorithm"] = m.checksum_algorithm;
  j["files"] = json::array();
  for (const auto& f : m.files)
    j["files"].push_back({{"path", f.path}, {"bytes", f.bytes}, {"checksum", f.checksum}});
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

Manifest manifest_from_json(const std::string& text) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    // The parser quotes the bytes it stopped at: made valid, so the problem can go into JSON.
    throw std::runtime_error("MANIFEST is not valid JSON (" + valid_utf8(e.what()) + ")");
  }
  if (!j.is_object()) throw std::runtime_error("MANIFEST is not a JSON object");
  if (j.value("format", "") != "lifeline-checkpoint")
    throw std::runtime_error("MANIFEST format is not lifeline-checkpoint");
  Manifest m;
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
  m.checksum_algorithm = need(j, "checksum_algorithm", json::value_t::string).get<std::string>();
  if (!known_checksum(m.checksum_algorithm))
    throw std::runtime_error("unknown checksum algorithm '" + m.checksum_algorithm + "'");
  const json& files = need(j, "files", json::value_t::array);
  for (const auto& f : files) {
    if (!f.is_object()) throw std::runtime_error("manifest file entry is not an object");
    ManifestFile mf;
    mf.path = need(f, "path", json::value_t::string).get<std::string>();
    mf.bytes = need(f, "bytes", json::value_t::number_unsigned).get<uint64_t>();
    mf.checksum = need(f, "checksum", json::value_t::string).get<std::string>();
    std::string why = unsafe_path_reason(mf.path);
    if (!why.empty()) throw std::runtime_error("manifest has an unsafe " + why);
    if (mf.path == kManifestName) throw std::runtime_error("manifest lists itself");
    m.files.push_back(std::move(mf));
  }
  if (m.files.empty()) throw std::runtime_error("MANIFEST lists no files (an empty checkpoint has nothing to resume)");
  return m;
}

}  // namespace lifeline
