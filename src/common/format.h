#pragma once
// Sizes and durations written for people: the one home of every such formatter (parsing the
// forms people type is policy/units.h). Each style has its place; the examples are exact.
#include <cstdint>
#include <string>

namespace lifeline {

// "0 B", "512 B", "1.5 KiB", "50 GiB": binary units, one decimal unless within 0.05 of a
// whole number (policy messages and `policy explain`).
std::string format_size(double bytes);

// "0 B", "512 B", "1.5 KiB", "50.0 GiB": binary units, always one decimal above bytes (the
// checkpoint listings of `checkpoints` and `gc`).
std::string format_bytes(uint64_t bytes);

// "0s", "1.5s", "45s", "1m 30s", "2h", "1h 30m", "3d 4h", "forever": the two largest units,
// rounded (policy messages, `policy explain`, `status`'s policy line); below 0.05 s "33ms", "33µs"
// or "under 1µs", never "0s" for a time that is not zero.
std::string format_duration(double seconds);

// "4.2 s", "42 s", "3m 12s", "2h 05m", "3d 04h": a measured duration (history, status, request).
std::string human_duration(double seconds);

// `v` rounded to three decimals: how JSON output writes seconds and rates.
double round3(double v);

// "30 s", "5 min", "3 h": an age, whole units rounded down (`gc`'s leftovers).
std::string format_age(uint64_t ns);

}  // namespace lifeline
