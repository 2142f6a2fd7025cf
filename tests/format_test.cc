// Sizes and durations for people: each style's exact text (common/format.h), which messages,
// listings and `status` print and scripts may read (human_duration: history_test.cc).
#include <doctest.h>

#include "common/format.h"

using namespace lifeline;

TEST_CASE("format_size drops the decimal of a near-whole value, format_bytes always keeps one") {
  CHECK(format_size(0) == "0 B");
  CHECK(format_size(512) == "512 B");
  CHECK(format_size(1536) == "1.5 KiB");
  CHECK(format_size(50.0 * (1ull << 30)) == "50 GiB");
  CHECK(format_size(-1) == "0 B");
  CHECK(format_bytes(0) == "0 B");
  CHECK(format_bytes(512) == "512 B");
  CHECK(format_bytes(1536) == "1.5 KiB");
  CHECK(format_bytes(50ull << 30) == "50.0 GiB");
  CHECK(format_bytes(3ull << 50) == "3.0 PiB");
}

TEST_CASE("format_duration gives the two largest units, and a tenth below ten seconds") {
  CHECK(format_duration(0) == "0s");
  CHECK(format_duration(1.5) == "1.5s");
  CHECK(format_duration(45) == "45s");
  CHECK(format_duration(90) == "1m 30s");
  CHECK(format_duration(7200) == "2h");
  CHECK(format_duration(5400) == "1h 30m");
  CHECK(format_duration(3 * 86400 + 4 * 3600 + 59) == "3d 4h");
  CHECK(format_duration(1e16) == "forever");
}

TEST_CASE("format_age rounds down to whole seconds, minutes from 2 min, hours from 2 h") {
  constexpr uint64_t kSec = 1000000000ull;
  CHECK(format_age(30 * kSec) == "30 s");
  CHECK(format_age(119 * kSec) == "119 s");
  CHECK(format_age(5 * 60 * kSec + 59 * kSec) == "5 min");
  CHECK(format_age(3 * 3600 * kSec + 1) == "3 h");
}

TEST_CASE("round3 keeps three decimals") {
  CHECK(round3(1.23456) == doctest::Approx(1.235));
  CHECK(round3(2.0) == 2.0);
}
