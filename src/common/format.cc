#include "common/format.h"

#include <array>
#include <cmath>
#include <cstdio>
#include <utility>

namespace lifeline {
namespace {

// `bytes` scaled by 1024 until below it (or out of units); the index of its unit in kSizeUnits.
constexpr std::array<const char*, 7> kSizeUnits = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
std::pair<double, size_t> scale_bytes(double bytes) {
  size_t i = 0;
  double v = bytes;
  while (v >= 1024 && i + 1 < kSizeUnits.size()) {
    v /= 1024;
    ++i;
  }
  return {v, i};
}

}  // namespace

std::string format_size(double bytes) {
  if (!(bytes >= 0)) bytes = 0;
  auto [v, i] = scale_bytes(bytes);
  char buf[64];
  if (i == 0)
    std::snprintf(buf, sizeof buf, "%.0f B", v);
  else if (std::fabs(v - std::round(v)) < 0.05)
    std::snprintf(buf, sizeof buf, "%.0f %s", std::round(v), kSizeUnits[i]);
  else
    std::snprintf(buf, sizeof buf, "%.1f %s", v, kSizeUnits[i]);
  return buf;
}

std::string format_bytes(uint64_t bytes) {
  auto [v, i] = scale_bytes(double(bytes));
  char buf[64];
  std::snprintf(buf, sizeof buf, i ? "%.1f %s" : "%.0f %s", v, kSizeUnits[i]);
  return buf;
}

std::string format_duration(double seconds) {
  if (!(seconds >= 0)) seconds = 0;
  char buf[64];
  if (seconds > 0 && seconds < 0.05) {  // "0s" would say it takes no time at all
    if (seconds < 0.0000005) return "under 1\u00b5s";
    if (seconds < 0.0005)
      std::snprintf(buf, sizeof buf, "%.0f\u00b5s", seconds * 1e6);
    else
      std::snprintf(buf, sizeof buf, "%.0fms", seconds * 1000);
    return buf;
  }
  if (seconds < 10 && std::fabs(seconds - std::round(seconds)) >= 0.05) {
    std::snprintf(buf, sizeof buf, "%.1fs", seconds);
    return buf;
  }
  if (seconds > 1e15) return "forever";
  auto total = static_cast<uint64_t>(std::llround(seconds));
  const std::array<std::pair<uint64_t, const char*>, 4> parts = {{
      {total / 86400, "d"},
      {total % 86400 / 3600, "h"},
      {total % 3600 / 60, "m"},
      {total % 60, "s"},
  }};
  size_t first = 0;
  while (first + 1 < parts.size() && parts[first].first == 0) ++first;
  std::string out = std::to_string(parts[first].first) + parts[first].second;
  if (first + 1 < parts.size() && parts[first + 1].first != 0)
    out += " " + std::to_string(parts[first + 1].first) + parts[first + 1].second;
  return out;
}

std::string human_duration(double seconds) {
  char buf[48];
  if (seconds < 0) seconds = 0;
  if (seconds < 10)
    std::snprintf(buf, sizeof buf, "%.1f s", seconds);
  else if (seconds < 60)
    std::snprintf(buf, sizeof buf, "%.0f s", seconds);
  else if (seconds < 3600) {
    auto s = uint64_t(std::llround(seconds));
    std::snprintf(buf, sizeof buf, "%llum %02llus", (unsigned long long)(s / 60), (unsigned long long)(s % 60));
  } else if (seconds < 86400) {
    auto m = uint64_t(std::llround(seconds / 60));
    std::snprintf(buf, sizeof buf, "%lluh %02llum", (unsigned long long)(m / 60), (unsigned long long)(m % 60));
  } else {
    auto h = uint64_t(std::llround(seconds / 3600));
    std::snprintf(buf, sizeof buf, "%llud %02lluh", (unsigned long long)(h / 24), (unsigned long long)(h % 24));
  }
  return buf;
}

double round3(double v) { return std::round(v * 1000.0) / 1000.0; }

std::string format_age(uint64_t ns) {
  uint64_t s = ns / 1000000000ull;
  char buf[32];
  if (s >= 7200)
    std::snprintf(buf, sizeof buf, "%llu h", static_cast<unsigned long long>(s / 3600));
  else if (s >= 120)
    std::snprintf(buf, sizeof buf, "%llu min", static_cast<unsigned long long>(s / 60));
  else
    std::snprintf(buf, sizeof buf, "%llu s", static_cast<unsigned long long>(s));
  return buf;
}

}  // namespace lifeline
