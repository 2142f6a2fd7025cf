#include "common/clock.h"

#include <cstdio>
#include <ctime>

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
  tm utc{};
  unsigned millis = 0;
  int n = std::sscanf(text.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d.%3u", &utc.tm_year, &utc.tm_mon,
                      &utc.tm_mday, &utc.tm_hour, &utc.tm_min, &utc.tm_sec, &millis);
  if (n < 6) return 0;
  utc.tm_year -= 1900;
  utc.tm_mon -= 1;
  time_t secs = timegm(&utc);
  if (secs < 0) return 0;
  return uint64_t(secs) * 1000000000ull + uint64_t(millis) * 1000000ull;
}

}  // namespace lifeline
