// Sizes and durations for people: each style's exact text (common/format.h), which messages,
// listings and `status` print and scripts may read.
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

// A duration in seconds and how it must read.
struct Shown {
  double seconds;
  const char* text;
};

TEST_CASE("format_duration gives the two largest units, and a tenth below ten seconds") {
  for (Shown c : {Shown{0, "0s"}, Shown{1.5, "1.5s"}, Shown{45, "45s"}, Shown{90, "1m 30s"}, Shown{7200, "2h"},
                  Shown{5400, "1h 30m"}, Shown{3 * 86400 + 4 * 3600 + 59, "3d 4h"}, Shown{1e16, "forever"}}) {
    CAPTURE(c.seconds);
    CHECK(format_duration(c.seconds) == c.text);
  }
}

TEST_CASE("format_duration never shows a time that is not zero as 0s: milli- or microseconds below 0.05 s") {
  for (Shown c : {Shown{0.033, "33ms"}, Shown{0.0012, "1ms"}, Shown{0.0000330, "33\u00b5s"}, Shown{1e-8, "under 1\u00b5s"}, Shown{0.05, "0.1s"},
                  Shown{0.049, "49ms"}}) {
    CAPTURE(c.seconds);
    CHECK(format_duration(c.seconds) == c.text);
  }
}

TEST_CASE("human_duration reads as people write durations, the smaller unit in two digits") {
  for (Shown c : {Shown{0.04, "0.0 s"}, Shown{4.25, "4.2 s"}, Shown{42, "42 s"}, Shown{192, "3m 12s"},
                  Shown{65, "1m 05s"}, Shown{7500, "2h 05m"}, Shown{90000, "1d 01h"}}) {
    CAPTURE(c.seconds);
    CHECK(human_duration(c.seconds) == c.text);
  }
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
