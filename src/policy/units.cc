#include "policy/units.h"

#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <utility>

namespace lifeline {
namespace {

// A quantity split into its number and its unit, both trimmed.
struct NumberAndUnit {
  std::string number;
  std::string unit;  // lower-cased
};

std::string trim(const std::string& s) {
  size_t b = 0;
  size_t e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

// The trimmed text as messages show it: at most 40 characters.
std::string shown(const std::string& s) {
  std::string t = trim(s);
  return t.size() > 40 ? t.substr(0, 40) + "..." : t;
}

// Splits "1.5 GiB" into "1.5" and "gib". `what` names the quantity for messages.
NumberAndUnit split(const std::string& text, const char* what, const std::string& forms) {
  std::string t = trim(text);
  if (t.empty()) throw std::invalid_argument(std::string("empty ") + what + "; expected " + forms);
  if (t[0] == '-')
    throw std::invalid_argument(std::string("invalid ") + what + " '" + shown(t) +
                                "': must not be negative");
  size_t i = 0;
  while (i < t.size() && (std::isdigit(static_cast<unsigned char>(t[i])) || t[i] == '.')) ++i;
  NumberAndUnit out;
  out.number = t.substr(0, i);
  for (char c : trim(t.substr(i)))
    out.unit += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  bool has_digit = false;
  for (char c : out.number) has_digit = has_digit || std::isdigit(static_cast<unsigned char>(c));
  if (!has_digit)
    throw std::invalid_argument(std::string("invalid ") + what + " '" + shown(t) + "': expected " +
                                forms);
  return out;
}

// Parses the whole of `s` as a finite non-negative decimal number, or returns false.
bool to_double(const std::string& s, double& out) {
  const char* end = s.data() + s.size();
  auto [p, ec] = std::from_chars(s.data(), end, out, std::chars_format::fixed);
  return ec == std::errc() && p == end && std::isfinite(out) && out >= 0;
}

constexpr double kTwoTo64 = 18446744073709551616.0;

}  // namespace

uint64_t parse_size(const std::string& text) {
  static const char* const kForms = "a byte count like 1024, 500MB or 50GiB";
  NumberAndUnit nu = split(text, "size", kForms);
  const std::string shown_text = shown(text);

  static const std::array<std::pair<const char*, uint64_t>, 12> kUnits = {{
      {"", 1},
      {"b", 1},
      {"kb", 1000ULL},
      {"mb", 1000ULL * 1000},
      {"gb", 1000ULL * 1000 * 1000},
      {"tb", 1000ULL * 1000 * 1000 * 1000},
      {"pb", 1000ULL * 1000 * 1000 * 1000 * 1000},
      {"kib", 1ULL << 10},
      {"mib", 1ULL << 20},
      {"gib", 1ULL << 30},
      {"tib", 1ULL << 40},
      {"pib", 1ULL << 50},
  }};
  uint64_t factor = 0;
  for (const auto& [name, f] : kUnits)
    if (nu.unit == name) factor = f;
  if (factor == 0) {
    if (nu.unit == "k" || nu.unit == "m" || nu.unit == "g" || nu.unit == "t" || nu.unit == "p") {
      std::string u(1, static_cast<char>(std::toupper(static_cast<unsigned char>(nu.unit[0]))));
      throw std::invalid_argument(
          "invalid size '" + shown_text + "': '" + u + "' is ambiguous; write " + shown(nu.number) +
          u + "iB (powers of 1024) or " + shown(nu.number) + u + "B (powers of 1000)");
    }
    throw std::invalid_argument("invalid size '" + shown_text + "': unknown unit '" +
                                shown(nu.unit) + "'; expected " + kForms);
  }

  const std::string too_large =
      "invalid size '" + shown_text + "': too large (the limit is 16 EiB)";
  if (nu.number.find('.') == std::string::npos) {
    uint64_t n = 0;
    const char* end = nu.number.data() + nu.number.size();
    auto [p, ec] = std::from_chars(nu.number.data(), end, n);
    if (ec == std::errc::result_out_of_range) throw std::invalid_argument(too_large);
    if (ec != std::errc() || p != end)
      throw std::invalid_argument("invalid size '" + shown_text + "': expected " + kForms);
    if (n > UINT64_MAX / factor) throw std::invalid_argument(too_large);
    return n * factor;
  }
  double v = 0;
  if (!to_double(nu.number, v))
    throw std::invalid_argument("invalid size '" + shown_text + "': expected " + kForms);
  if (factor == 1)
    throw std::invalid_argument("invalid size '" + shown_text +
                                "': a byte count must be a whole number (a fraction needs a unit, "
                                "as in 1.5GiB)");
  double bytes = std::floor(v * static_cast<double>(factor) + 0.5);
  if (!(bytes < kTwoTo64)) throw std::invalid_argument(too_large);
  return static_cast<uint64_t>(bytes);
}

double parse_duration(const std::string& text) {
  static const char* const kForms = "a duration like 45, 90s, 500ms, 10min, 1h30m, 2h, 1d or 1.5h";
  const std::string t = trim(text);
  const std::string shown_text = shown(t);
  if (t.empty()) throw std::invalid_argument(std::string("empty duration; expected ") + kForms);
  if (t[0] == '-') throw std::invalid_argument("invalid duration '" + shown_text + "': must not be negative");
  // One or more NUMBER UNIT pairs ("1h30m", "1m 30s"); a bare number alone is seconds.
  double seconds = 0;
  size_t i = 0, parts = 0;
  bool bare = false;
  while (i < t.size()) {
    size_t n0 = i;
    while (i < t.size() && (std::isdigit(static_cast<unsigned char>(t[i])) || t[i] == '.')) ++i;
    std::string number = t.substr(n0, i - n0);
    while (i < t.size() && t[i] == ' ') ++i;
    size_t u0 = i;
    while (i < t.size() && std::isalpha(static_cast<unsigned char>(t[i]))) ++i;
    std::string unit;
    for (char c : t.substr(u0, i - u0)) unit += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    while (i < t.size() && t[i] == ' ') ++i;
    double v = 0;
    if (number.empty() || !to_double(number, v))
      throw std::invalid_argument("invalid duration '" + shown_text + "': expected " + kForms);
    double factor = 0;
    if (unit.empty())
      factor = 1, bare = true;
    else if (unit == "ms")
      factor = 0.001;
    else if (unit == "s" || unit == "sec" || unit == "secs" || unit == "second" || unit == "seconds")
      factor = 1;
    else if (unit == "m" || unit == "min" || unit == "mins" || unit == "minute" || unit == "minutes")
      factor = 60;
    else if (unit == "h" || unit == "hour" || unit == "hours")
      factor = 3600;
    else if (unit == "d" || unit == "day" || unit == "days")
      factor = 86400;
    else
      throw std::invalid_argument("invalid duration '" + shown_text + "': unknown unit '" + shown(unit) +
                                  "'; expected " + kForms);
    seconds += v * factor;
    ++parts;
    if (!std::isfinite(seconds) || seconds > kMaxDurationSeconds)
      throw std::invalid_argument("invalid duration '" + shown_text + "': too large (at most 365d)");
  }
  if (bare && parts > 1)
    throw std::invalid_argument("invalid duration '" + shown_text + "': every part needs a unit; expected " + kForms);
  return seconds;
}

}  // namespace lifeline
