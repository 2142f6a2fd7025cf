#include "history/history.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "common/clock.h"

namespace lifeline {

HistoryLog::HistoryLog(std::string dir) : path_(std::move(dir) + "/" + kHistoryName) {}

void HistoryLog::append(nlohmann::json event) {
  uint64_t now = wall_ns();
  event["time"] = iso8601(now);
  event["time_ns"] = now;
  std::string line = event.dump() + "\n";
  int fd = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    std::fprintf(stderr, "lifeline: cannot open history %s: %s\n", path_.c_str(), std::strerror(errno));
    return;
  }
  ssize_t n = ::write(fd, line.data(), line.size());
  if (n != ssize_t(line.size()))
    std::fprintf(stderr, "lifeline: short write to history %s\n", path_.c_str());
  ::close(fd);
}

std::vector<nlohmann::json> read_history_events(const std::string& dir) {
  std::vector<nlohmann::json> events;
  std::ifstream in(dir + "/" + kHistoryName);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_object()) events.push_back(std::move(j));
  }
  return events;
}

}  // namespace lifeline
