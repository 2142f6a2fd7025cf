// Sizes and durations as people write them in a policy file or on the command line
// ("50GiB", "500MB", "90s", "1.5h"), and back again for messages.
#pragma once

#include <cstdint>
#include <string>

#include "common/format.h"  // format_size, format_duration: the way back, for messages

namespace lifeline {

// Bytes from "1024", "500MB" (decimal: kB MB GB TB PB), "50GiB" (binary: KiB MiB GiB TiB
// PiB) or "512B"; units are case-insensitive, a fraction is allowed with a unit ("1.5GiB")
// and rounded to whole bytes. Bare K/M/G/T are refused as ambiguous. Throws
// std::invalid_argument with a message saying what is accepted.
uint64_t parse_size(const std::string& text);

// The longest duration lifeline accepts anywhere (policy, --grace, explain): 365 days. Every
// deadline is a 64-bit count of nanoseconds on the wall clock; anything longer than a year is
// a typo, and a value near the double's range would overflow that arithmetic into "no time".
constexpr double kMaxDurationSeconds = 365.0 * 86400;

// Seconds from "45", "90s", "500ms", "30m", "10min", "2h", "1d", "1.5h" or a sum of such parts
// ("1h30m", "1m 30s"; units ms s sec m min h d, case-insensitive, optionally after a space; a
// bare number alone is seconds), at most kMaxDurationSeconds. Throws std::invalid_argument with a message saying
// what is accepted.
double parse_duration(const std::string& text);

}  // namespace lifeline
