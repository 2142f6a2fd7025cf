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
  // `file_name` empty: history.jsonl (a follower of several supervisors keeps its own node's).
  explicit HistoryLog(std::string dir, std::string file_name = "");
  // Adds "time" (ISO 8601) and "time_ns" to `event` and appends it, strings made valid UTF-8
  // (dump_json). Never throws: a history that cannot be written (full disk; a link, FIFO or
  // hard link in its place, which is never written through) is reported on stderr and
  // training goes on.
  void append(nlohmann::json event) noexcept;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Every well-formed event of a history file, in order. A torn or garbled line is skipped; a
// missing file has no events. A history.jsonl that is a link, a FIFO or anything but a regular
// file is never opened through or waited on: no events, and the reason goes to `error` (or,
// without `error`, to stderr).
std::vector<nlohmann::json> read_history_events(const std::string& dir, std::string* error = nullptr);

}  // namespace lifeline
