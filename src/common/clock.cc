#include "common/clock.h"

#include <date/date.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <sstream>

namespace lifeline {

static uint64_t read_clock(clockid_t id) {
  timespec ts{};
  clock_gettime(id, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

uint64_t wall_ns() { return read_clock(CLOCK_REALTIME); }
uint64_t mono_ns() { return read_clock(CLOCK_MONOTONIC); }

std::string iso8601(uint64_t ns) {
  time_t secs = time_t(ns / 1000000000ull);
  unsigned millis = unsigned((ns / 1000000ull) % 1000);
  tm utc{};
  gmtime_r(&secs, &utc);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", utc.tm_year + 1900,
                utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, millis);
  return buf;
}

uint64_t parse_iso8601(const std::string& text) {
  // date::parse reads the seconds with their fraction as a decimal number, so ".5" is 500 ms
  // (sscanf's "%3u" read it as 5 ms); digits beyond nanoseconds are ignored, as is what follows.
  std::istringstream in(text);
  date::sys_time<std::chrono::nanoseconds> t;
  in >> date::parse("%FT%T", t);
  if (in.fail()) return 0;
  auto ns = t.time_since_epoch().count();
  return ns < 0 ? 0 : uint64_t(ns);
}

}  // namespace lifeline
