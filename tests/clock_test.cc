// ISO 8601 stamps: what iso8601 writes, parse_iso8601 reads back, whatever its fraction.
#include <doctest.h>

#include "common/clock.h"

using namespace lifeline;

namespace {
constexpr uint64_t kSec = 1000000000ull;
constexpr uint64_t kMs = 1000000ull;
// 2026-11-21T23:40:00Z
constexpr uint64_t kT = 1795304400ull * kSec;
}  // namespace

TEST_CASE("a half-second fraction \".5Z\" is 500 ms, not 5 ms") {
  CHECK(parse_iso8601("2026-11-21T23:40:00.5Z") == kT + 500 * kMs);
}

TEST_CASE("fractions of any length are read as decimal fractions of a second") {
  CHECK(parse_iso8601("2026-11-21T23:40:00Z") == kT);
  CHECK(parse_iso8601("2026-11-21T23:40:00") == kT);
  CHECK(parse_iso8601("2026-11-21T23:40:00.05Z") == kT + 50 * kMs);
  CHECK(parse_iso8601("2026-11-21T23:40:00.123Z") == kT + 123 * kMs);
  CHECK(parse_iso8601("2026-11-21T23:40:00.123456Z") == kT + 123456000ull);
  CHECK(parse_iso8601("2026-11-21T23:40:00.123456789Z") == kT + 123456789ull);
  CHECK(parse_iso8601("2026-11-21T23:40:00.000Z") == kT);
}

TEST_CASE("iso8601 and parse_iso8601 round-trip to the millisecond") {
  CHECK(iso8601(kT + 123 * kMs) == "2026-11-21T23:40:00.123Z");
  CHECK(parse_iso8601(iso8601(kT + 7 * kMs)) == kT + 7 * kMs);
  uint64_t now = wall_ns();
  CHECK(parse_iso8601(iso8601(now)) == now / kMs * kMs);
}

TEST_CASE("text that is not a stamp parses to 0") {
  CHECK(parse_iso8601("") == 0);
  CHECK(parse_iso8601("yesterday") == 0);
  CHECK(parse_iso8601("2026-13-01T00:00:00Z") == 0);
  CHECK(parse_iso8601("1969-12-31T23:59:59Z") == 0);
}
