#pragma once
// HistoryLog appends one JSON event per line to <ckpt dir>/history.jsonl, each with a single
// O_APPEND write, so concurrent or interrupted writers never interleave within a line.
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace lifeline {

constexpr const char* kHistoryName = "history.jsonl";

class HistoryLog {
 public:
  explicit HistoryLog(std::string dir);
  // Adds "time" (ISO 8601) and "time_ns" to `event` and appends it. Never throws: a history
  // that cannot be written is reported on stderr and training goes on.
  void append(nlohmann::json event);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Every well-formed event of a history file, in order. A torn or garbled line is skipped.
std::vector<nlohmann::json> read_history_events(const std::string& dir);

}  // namespace lifeline
