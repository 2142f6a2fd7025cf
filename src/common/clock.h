#pragma once
// Wall-clock helpers shared by every part: ISO 8601 stamps and nanosecond clocks.
#include <cstdint>
#include <string>

namespace lifeline {

// Nanoseconds since the Unix epoch (CLOCK_REALTIME): comparable across processes and hosts.
uint64_t wall_ns();
// Nanoseconds of CLOCK_MONOTONIC: for durations inside one host.
uint64_t mono_ns();
// "2026-11-21T23:40:00.123Z" for a wall_ns() value.
std::string iso8601(uint64_t wall_ns);
// Inverse of iso8601, to the nanosecond: accepts any number of fraction digits (".5Z" is 500 ms)
// or none; returns 0 when the text does not parse or lies before the epoch.
uint64_t parse_iso8601(const std::string& text);

}  // namespace lifeline
