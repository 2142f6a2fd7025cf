#pragma once
// Reading a checkpoint dir's history (history.jsonl, one JSON event per line) in end-to-end tests.
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace lifeline::test {

// The events named `name` in `dir`/`file`, in order; lines that are not JSON objects are skipped.
inline std::vector<nlohmann::json> events_named(const std::string& dir, const std::string& name,
                                                const std::string& file = "history.jsonl") {
  std::vector<nlohmann::json> out;
  std::ifstream in(dir + "/" + file);
  for (std::string line; std::getline(in, line);)
    if (auto j = nlohmann::json::parse(line, nullptr, false); j.is_object() && j.value("event", "") == name)
      out.push_back(j);
  return out;
}

}  // namespace lifeline::test
