#include "history/history.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common/clock.h"
#include "common/json_text.h"
#include "common/regular_file.h"

namespace lifeline {

HistoryLog::HistoryLog(std::string dir, std::string file_name)
    : path_(std::move(dir) + "/" + (file_name.empty() ? std::string(kHistoryName) : file_name)) {}

void HistoryLog::append(nlohmann::json event) noexcept {
  try {
    uint64_t now = wall_ns();
    if (!event.is_object() && !event.is_null()) event = nlohmann::json{{"value", std::move(event)}};
    event["time"] = iso8601(now);
    event["time_ns"] = now;
    std::string line = dump_json(event) + "\n";
    std::string error;
    int fd = open_regular_file(path_, O_WRONLY | O_APPEND | O_CREAT, 0644, error);
    if (fd < 0) {
      std::fprintf(stderr, "lifeline: cannot append to the history: %s\n", error.c_str());
      return;
    }
    ssize_t n;
    do n = ::write(fd, line.data(), line.size());
    while (n < 0 && errno == EINTR);
    if (n != ssize_t(line.size()))
      std::fprintf(stderr, "lifeline: %s to history %s\n", n < 0 ? std::strerror(errno) : "short write",
                   path_.c_str());
    ::close(fd);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lifeline: cannot append to history %s: %s\n", path_.c_str(), e.what());
  } catch (...) {
    std::fprintf(stderr, "lifeline: cannot append to history %s\n", path_.c_str());
  }
}

std::vector<nlohmann::json> read_history_events(const std::string& dir, std::string* error) {
  std::vector<nlohmann::json> events;
  std::string path = dir + "/" + kHistoryName, why;
  int fd = open_regular_file(path, O_RDONLY, 0, why);
  if (fd < 0) {
    if (!why.empty()) {
      if (error)
        *error = why;
      else
        std::fprintf(stderr, "lifeline: history ignored: %s\n", why.c_str());
    }
    return events;
  }
  auto take = [&](const std::string& line) {
    if (line.empty()) return;
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_object()) events.push_back(std::move(j));
  };
  std::string pending;
  char buf[65536];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // an error mid-file: the events read so far, as for a torn tail
    size_t from = 0;
    for (size_t i = 0; i < size_t(n); ++i) {
      if (buf[i] != '\n') continue;
      pending.append(buf + from, i - from);
      take(pending);
      pending.clear();
      from = i + 1;
    }
    pending.append(buf + from, size_t(n) - from);
  }
  ::close(fd);
  take(pending);  // a last line without its newline: kept when it parses
  return events;
}

}  // namespace lifeline
