// Tests for the policy module: YAML reading and validation, units, variable expansion, the
// shipped policies, and the numbers behind `lifeline policy explain`.
#include "policy/policy.h"

#include <doctest.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "policy/explain.h"
#include "policy/units.h"

#ifndef LIFELINE_SOURCE_DIR
#error "LIFELINE_SOURCE_DIR must name the project root (tests/meson.build defines it)"
#endif

using lifeline::ExplainInputs;
using lifeline::Explanation;
using lifeline::Policy;
using lifeline::PolicyError;

namespace {

constexpr double kGiB = 1024.0 * 1024 * 1024;

// The message parse_policy throws for `yaml`, or "" when it accepts it.
std::string error_of(const std::string& yaml) {
  try {
    lifeline::parse_policy(yaml, "p.yaml");
  } catch (const PolicyError& e) {
    return e.what();
  }
  return "";
}

std::vector<std::string> warnings_of(const std::string& yaml) {
  std::vector<std::string> w;
  lifeline::parse_policy(yaml, "p.yaml", w);
  return w;
}

void check_same(const Policy& a, const Policy& b) {
  CHECK(a.checkpoint.dir == b.checkpoint.dir);
  CHECK(a.checkpoint.every_steps == b.checkpoint.every_steps);
  CHECK(a.checkpoint.every_seconds == b.checkpoint.every_seconds);
  CHECK(a.checkpoint.on_signal == b.checkpoint.on_signal);
  CHECK(a.checkpoint.skip_first_steps == b.checkpoint.skip_first_steps);
  CHECK(a.retention.keep_last == b.retention.keep_last);
  CHECK(a.retention.keep_best == b.retention.keep_best);
  CHECK(a.retention.metric == b.retention.metric);
  CHECK(a.retention.mode == b.retention.mode);
  CHECK(a.retention.keep_every_steps == b.retention.keep_every_steps);
  CHECK(a.retention.max_total_bytes == b.retention.max_total_bytes);
  CHECK(a.restart.resume == b.restart.resume);
  CHECK(a.restart.max_requeues == b.restart.max_requeues);
  CHECK(a.restart.max_failures == b.restart.max_failures);
  CHECK(a.restart.backoff_seconds == b.restart.backoff_seconds);
  CHECK(a.restart.max_backoff_seconds == b.restart.max_backoff_seconds);
  CHECK(a.stop.signals == b.stop.signals);
  CHECK(a.stop.grace_seconds == b.stop.grace_seconds);
  CHECK(a.stop.hang_seconds == b.stop.hang_seconds);
  CHECK(a.requeue.mode == b.requeue.mode);
  CHECK(a.requeue.exit_code == b.requeue.exit_code);
}

// A file under the system temp dir, removed when the test ends.
struct TempFile {
  std::filesystem::path path;
  explicit TempFile(const std::string& text) {
    path = std::filesystem::temp_directory_path() /
           ("lifeline_policy_test_" + std::to_string(::getpid()) + ".yaml");
    std::ofstream(path) << text;
  }
  ~TempFile() { std::filesystem::remove(path); }
};

}  // namespace

// --- units -----------------------------------------------------------------------------

TEST_CASE("sizes take plain bytes, decimal units and binary units, case-insensitively") {
  CHECK(lifeline::parse_size("1024") == 1024);
  CHECK(lifeline::parse_size("512B") == 512);
  CHECK(lifeline::parse_size("500MB") == 500000000ULL);
  CHECK(lifeline::parse_size("1kb") == 1000);
  CHECK(lifeline::parse_size("50GiB") == 50ULL << 30);
  CHECK(lifeline::parse_size(" 2 gib ") == 2ULL << 30);
  CHECK(lifeline::parse_size("1.5GiB") == 3ULL << 29);
  CHECK(lifeline::parse_size("2TiB") == 2ULL << 40);
  CHECK(lifeline::parse_size("0") == 0);
  CHECK(lifeline::parse_size("18446744073709551615") == UINT64_MAX);
}

TEST_CASE("a bad size is refused with a message saying what is accepted") {
  CHECK_THROWS_WITH_AS(lifeline::parse_size("5G"),
                       "invalid size '5G': 'G' is ambiguous; write 5GiB (powers of 1024) or 5GB "
                       "(powers of 1000)",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(lifeline::parse_size("-1GiB"), "invalid size '-1GiB': must not be negative",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(lifeline::parse_size("lots"),
                       "invalid size 'lots': expected a byte count like 1024, 500MB or 50GiB",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(lifeline::parse_size("5 parsecs"),
                       "invalid size '5 parsecs': unknown unit 'parsecs'; expected a byte count "
                       "like 1024, 500MB or 50GiB",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(lifeline::parse_size("1.5"),
                       "invalid size '1.5': a byte count must be a whole number (a fraction needs "
                       "a unit, as in 1.5GiB)",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(lifeline::parse_size("20000PiB"),
                       "invalid size '20000PiB': too large (the limit is 16 EiB)",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(lifeline::parse_size("18446744073709551616"),
                       "invalid size '18446744073709551616': too large (the limit is 16 EiB)",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(lifeline::parse_size(""),
                       "empty size; expected a byte count like 1024, 500MB or 50GiB",
                       std::invalid_argument);
  CHECK_THROWS_AS(lifeline::parse_size("1.2.3GB"), std::invalid_argument);
}

TEST_CASE("durations take plain seconds or s, m, h, d units, with fractions") {
  CHECK(lifeline::parse_duration("45") == 45);
  CHECK(lifeline::parse_duration("90s") == 90);
  CHECK(lifeline::parse_duration("30m") == 1800);
  CHECK(lifeline::parse_duration("2h") == 7200);
  CHECK(lifeline::parse_duration("1d") == 86400);
  CHECK(lifeline::parse_duration("1.5h") == 5400);
  CHECK(lifeline::parse_duration("0.25") == 0.25);
  CHECK(lifeline::parse_duration("2 H") == 7200);
}

TEST_CASE("durations also take ms and min, words, and sums of parts such as 1h30m") {
  CHECK(lifeline::parse_duration("500ms") == doctest::Approx(0.5));
  CHECK(lifeline::parse_duration("10min") == 600);
  CHECK(lifeline::parse_duration("1h30m") == 5400);
  CHECK(lifeline::parse_duration("1m 30s") == 90);
  CHECK(lifeline::parse_duration("2 hours 15 minutes") == 8100);
  CHECK(lifeline::parse_duration("1d12h") == 129600);
  CHECK_THROWS_WITH_AS(lifeline::parse_duration("1h30"),
                       "invalid duration '1h30': every part needs a unit; expected a duration like 45, 90s, "
                       "500ms, 10min, 1h30m, 2h, 1d or 1.5h",
                       std::invalid_argument);
  CHECK_THROWS_AS(lifeline::parse_duration("300d100d"), std::invalid_argument);  // over 365 days in all
}

TEST_CASE("a bad duration is refused with a message saying what is accepted") {
  CHECK_THROWS_WITH_AS(lifeline::parse_duration("-5s"),
                       "invalid duration '-5s': must not be negative", std::invalid_argument);
  CHECK_THROWS_WITH_AS(lifeline::parse_duration("5 fortnights"),
                       "invalid duration '5 fortnights': unknown unit 'fortnights'; expected a "
                       "duration like 45, 90s, 500ms, 10min, 1h30m, 2h, 1d or 1.5h",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(
      lifeline::parse_duration("h"),
      "invalid duration 'h': expected a duration like 45, 90s, 500ms, 10min, 1h30m, 2h, 1d or 1.5h",
      std::invalid_argument);
  CHECK_THROWS_AS(lifeline::parse_duration(""), std::invalid_argument);
  CHECK_THROWS_AS(lifeline::parse_duration("1..5h"), std::invalid_argument);
}

TEST_CASE("sizes and durations print in the largest fitting unit") {
  CHECK(lifeline::format_size(0) == "0 B");
  CHECK(lifeline::format_size(512) == "512 B");
  CHECK(lifeline::format_size(1536) == "1.5 KiB");
  CHECK(lifeline::format_size(50 * kGiB) == "50 GiB");
  CHECK(lifeline::format_duration(0) == "0s");
  CHECK(lifeline::format_duration(2.5) == "2.5s");
  CHECK(lifeline::format_duration(90) == "1m 30s");
  CHECK(lifeline::format_duration(7200) == "2h");
  CHECK(lifeline::format_duration(5400) == "1h 30m");
  CHECK(lifeline::format_duration(3 * 86400 + 4 * 3600 + 59) == "3d 4h");
}

// --- reading a policy ------------------------------------------------------------------

TEST_CASE("a file with only 'version: 1' gives the built-in defaults and remembers its source") {
  Policy p = lifeline::parse_policy("version: 1\n", "p.yaml");
  check_same(p, lifeline::default_policy());
  CHECK(p.source == "p.yaml");
  CHECK(lifeline::default_policy().source.empty());
  CHECK(lifeline::default_policy().stop.signals == std::vector<int>{SIGUSR1, SIGTERM, SIGINT});
}

TEST_CASE("every key of the contract is read into the typed policy") {
  ::setenv("LIFELINE_TEST_SCRATCH", "/scratch/me", 1);
  Policy p = lifeline::parse_policy(R"(
version: 1
checkpoint:
  dir: ${LIFELINE_TEST_SCRATCH}/ckpt
  every_steps: 500
  every_seconds: 30m
  on_signal: false
  skip_first_steps: 100
retention:
  keep_last: 7
  keep_best: 2
  metric: accuracy
  mode: max
  keep_every_steps: 10000
  max_total_bytes: 50GiB
restart:
  resume: required
  max_requeues: 9
  max_failures: 4
  backoff_seconds: 2
  max_backoff_seconds: 1h
stop:
  signals: [sigusr2, TERM, SIGHUP]
  grace_seconds: 1.5m
  hang_seconds: 600
requeue:
  mode: exit
  exit_code: 99
)",
                                    "full.yaml");
  CHECK(p.checkpoint.dir == "/scratch/me/ckpt");
  CHECK(p.checkpoint.every_steps == 500);
  CHECK(p.checkpoint.every_seconds == 1800);
  CHECK_FALSE(p.checkpoint.on_signal);
  CHECK(p.checkpoint.skip_first_steps == 100);
  CHECK(p.retention.keep_last == 7);
  CHECK(p.retention.keep_best == 2);
  CHECK(p.retention.metric == "accuracy");
  CHECK(p.retention.mode == Policy::Mode::max);
  CHECK(p.retention.keep_every_steps == 10000);
  CHECK(p.retention.max_total_bytes == 50ULL << 30);
  CHECK(p.restart.resume == Policy::Resume::required);
  CHECK(p.restart.max_requeues == 9);
  CHECK(p.restart.max_failures == 4);
  CHECK(p.restart.backoff_seconds == 2);
  CHECK(p.restart.max_backoff_seconds == 3600);
  CHECK(p.stop.signals == std::vector<int>{SIGUSR2, SIGTERM, SIGHUP});
  CHECK(p.stop.grace_seconds == 90);
  CHECK(p.stop.hang_seconds == 600);
  CHECK(p.requeue.mode == "exit");
  CHECK(p.requeue.exit_code == 99);
  CHECK(p.source == "full.yaml");
  ::unsetenv("LIFELINE_TEST_SCRATCH");
}

TEST_CASE("an empty section keeps its defaults and enum values are case-insensitive") {
  Policy p = lifeline::parse_policy(
      "version: 1\ncheckpoint:\nrestart: {resume: OFF}\nrequeue: {mode: Local}\n", "p.yaml");
  CHECK(p.checkpoint.every_steps == 1000);
  CHECK(p.restart.resume == Policy::Resume::off);
  CHECK(p.requeue.mode == "local");
}

TEST_CASE("signals are names with or without SIG, in any case; KILL and STOP are not") {
  CHECK(lifeline::signal_from_name("USR1") == SIGUSR1);
  CHECK(lifeline::signal_from_name("SIGTERM") == SIGTERM);
  CHECK(lifeline::signal_from_name("sigint") == SIGINT);
  CHECK(lifeline::signal_from_name("Xcpu") == SIGXCPU);
  CHECK_FALSE(lifeline::signal_from_name("KILL").has_value());
  CHECK_FALSE(lifeline::signal_from_name("SIG").has_value());
  CHECK(lifeline::signal_name(SIGUSR1) == "USR1");
}

// --- errors: each names file:line:column and the key -----------------------------------

TEST_CASE("an unknown key is an error naming file:line:column and suggesting the closest key") {
  CHECK(error_of("version: 1\ncheckpoint:\n  every_step: 100\n") ==
        "p.yaml:3:3: key 'checkpoint.every_step': unknown key; did you mean 'every_steps'?");
  CHECK(error_of("version: 1\nretention:\n  keep_lsat: 2\n") ==
        "p.yaml:3:3: key 'retention.keep_lsat': unknown key; did you mean 'keep_last'?");
  CHECK(error_of("version: 1\nchekpoint: {}\n") ==
        "p.yaml:2:1: key 'chekpoint': unknown key; did you mean 'checkpoint'?");
  CHECK(error_of("version: 1\nstop:\n  grace: 30\n") ==
        "p.yaml:3:3: key 'stop.grace': unknown key; did you mean 'grace_seconds'?");
}

TEST_CASE("an unknown key with nothing close lists the keys that are valid there") {
  CHECK(error_of("version: 1\ncheckpoint:\n  frequency: 5\n") ==
        "p.yaml:3:3: key 'checkpoint.frequency': unknown key; expected one of: dir, "
        "every_steps, every_seconds, on_signal, skip_first_steps");
}

TEST_CASE("a key in the wrong section says which section it belongs under") {
  CHECK(error_of("version: 1\ncheckpoint:\n  keep_last: 2\n") ==
        "p.yaml:3:3: key 'checkpoint.keep_last': unknown key; 'keep_last' belongs under "
        "'retention'");
  CHECK(error_of("version: 1\nevery_steps: 10\n") ==
        "p.yaml:2:1: key 'every_steps': unknown key; 'every_steps' belongs under 'checkpoint'");
  CHECK(error_of("version: 1\nmode: min\n") ==
        "p.yaml:2:1: key 'mode': unknown key; 'mode' belongs under 'retention' or 'requeue'");
  CHECK(error_of("version: 1\ncheckpoint:\n  every_steps: 10\n  retention:\n    keep_last: 1\n") ==
        "p.yaml:4:3: key 'checkpoint.retention': 'retention' is a top-level section; un-indent it");
}

TEST_CASE("a duplicate key is an error pointing at the second one and naming the first") {
  CHECK(error_of("version: 1\ncheckpoint:\n  every_steps: 10\n  every_steps: 20\n") ==
        "p.yaml:4:3: key 'checkpoint.every_steps': duplicate key (first given at line 3, "
        "column 3)");
  CHECK(error_of("version: 1\nstop: {}\nversion: 1\n") ==
        "p.yaml:3:1: key 'version': duplicate key (first given at line 1, column 1)");
}

TEST_CASE("version must be present and be 1") {
  CHECK(error_of("checkpoint:\n  every_steps: 10\n") ==
        "p.yaml:1:1: key 'version': missing; a policy file starts with 'version: 1'");
  CHECK(error_of("version: 2\n") ==
        "p.yaml:1:10: key 'version': unsupported version 2; this lifeline reads version 1");
  CHECK(error_of("version: one\n") ==
        "p.yaml:1:10: key 'version': expected a whole number, got 'one'");
}

TEST_CASE("a value of the wrong type names what was expected and what was found") {
  CHECK(error_of("version: 1\ncheckpoint:\n  every_steps: ten\n") ==
        "p.yaml:3:16: key 'checkpoint.every_steps': expected a whole number, got 'ten'");
  CHECK(error_of("version: 1\ncheckpoint:\n  every_steps: [1, 2]\n") ==
        "p.yaml:3:16: key 'checkpoint.every_steps': expected a whole number, got a list");
  CHECK(error_of("version: 1\ncheckpoint:\n  every_steps:\n") ==
        "p.yaml:3:3: key 'checkpoint.every_steps': expected a whole number, got nothing");
  CHECK(error_of("version: 1\ncheckpoint:\n  every_steps: \"1000\"\n") ==
        "p.yaml:3:16: key 'checkpoint.every_steps': expected a whole number, got the string "
        "\"1000\" (remove the quotes)");
  CHECK(error_of("version: 1\ncheckpoint:\n  on_signal: maybe\n") ==
        "p.yaml:3:14: key 'checkpoint.on_signal': expected true or false, got 'maybe'");
  CHECK(error_of("version: 1\nretention: [keep_last]\n") ==
        "p.yaml:2:12: key 'retention': expected a mapping of keys (e.g. 'keep_last: ...'), got a "
        "list");
  CHECK(error_of("version: 1\nretention:\n  metric: {a: 1}\n") ==
        "p.yaml:3:11: key 'retention.metric': expected a name, got a mapping");
}

TEST_CASE("negative and fractional numbers are refused where a count is expected") {
  CHECK(error_of("version: 1\nretention:\n  keep_last: -2\n") ==
        "p.yaml:3:14: key 'retention.keep_last': must not be negative, got -2");
  CHECK(error_of("version: 1\nretention:\n  keep_last: 2.5\n") ==
        "p.yaml:3:14: key 'retention.keep_last': expected a whole number, got 2.5");
  CHECK(error_of("version: 1\nrestart:\n  max_requeues: 99999999999999999999\n") ==
        "p.yaml:3:17: key 'restart.max_requeues': too large, got 99999999999999999999");
  CHECK(error_of("version: 1\nstop:\n  grace_seconds: -1\n") ==
        "p.yaml:3:18: key 'stop.grace_seconds': invalid duration '-1': must not be negative");
}

TEST_CASE("a bad duration or size in the file names the key and the accepted forms") {
  CHECK(error_of("version: 1\ncheckpoint:\n  every_seconds: 10 moons\n") ==
        "p.yaml:3:18: key 'checkpoint.every_seconds': invalid duration '10 moons': unknown unit "
        "'moons'; expected a duration like 45, 90s, 500ms, 10min, 1h30m, 2h, 1d or 1.5h");
  CHECK(error_of("version: 1\nretention:\n  max_total_bytes: 50G\n") ==
        "p.yaml:3:20: key 'retention.max_total_bytes': invalid size '50G': 'G' is ambiguous; "
        "write 50GiB (powers of 1024) or 50GB (powers of 1000)");
}

TEST_CASE("an enum value outside its set lists the allowed values") {
  CHECK(error_of("version: 1\nretention:\n  mode: lowest\n") ==
        "p.yaml:3:9: key 'retention.mode': expected one of min, max; got 'lowest'");
  CHECK(error_of("version: 1\nrestart:\n  resume: automatic\n") ==
        "p.yaml:3:11: key 'restart.resume': expected one of auto, required, off; got 'automatic'");
  CHECK(error_of("version: 1\nrequeue:\n  mode: resubmit\n") ==
        "p.yaml:3:9: key 'requeue.mode': expected one of auto, scontrol, sbatch, exit, local, "
        "none; got 'resubmit'");
}

TEST_CASE("signals must be a list of catchable, known, distinct signal names") {
  CHECK(error_of("version: 1\nstop:\n  signals: TERM\n") ==
        "p.yaml:3:12: key 'stop.signals': expected a list of signal names like [USR1, TERM, INT], "
        "got 'TERM'");
  CHECK(error_of("version: 1\nstop:\n  signals: [USR1, USR3]\n") ==
        "p.yaml:3:19: key 'stop.signals[1]': unknown signal 'USR3'; expected one of USR1, USR2, "
        "TERM, INT, HUP, QUIT, ALRM, XCPU, PWR");
  CHECK(error_of("version: 1\nstop:\n  signals: [SIGKILL]\n") ==
        "p.yaml:3:13: key 'stop.signals[0]': SIGKILL cannot be caught; use USR1, TERM or INT");
  CHECK(error_of("version: 1\nstop:\n  signals:\n    - TERM\n    - sigterm\n") ==
        "p.yaml:5:7: key 'stop.signals[1]': TERM is listed twice");
}

TEST_CASE("requeue.exit_code must be between 1 and 255") {
  CHECK(error_of("version: 1\nrequeue:\n  exit_code: 0\n") ==
        "p.yaml:3:14: key 'requeue.exit_code': must be between 1 and 255, got 0");
  CHECK(error_of("version: 1\nrequeue:\n  exit_code: 256\n") ==
        "p.yaml:3:14: key 'requeue.exit_code': must be between 1 and 255, got 256");
  CHECK(error_of("version: 1\nrequeue:\n  exit_code: -3\n") ==
        "p.yaml:3:14: key 'requeue.exit_code': must be between 1 and 255, got -3");
  CHECK(error_of("version: 1\nrequeue:\n  exit_code: 255\n").empty());
}

TEST_CASE("impossible combinations are errors at the key that makes them impossible") {
  CHECK(error_of("version: 1\nretention:\n  keep_best: 2\n  metric: ''\n") ==
        "p.yaml:4:11: key 'retention.metric': empty, but keep_best is 2; name the metric to rank "
        "by, or set keep_best: 0");
  CHECK(error_of("version: 1\nretention:\n  keep_best: 0\n  metric: ''\n").empty());
  CHECK(error_of("version: 1\nrestart:\n  backoff_seconds: 1m\n  max_backoff_seconds: 30s\n") ==
        "p.yaml:4:24: key 'restart.max_backoff_seconds': max_backoff_seconds (30s) is shorter "
        "than backoff_seconds (1m)");
  CHECK(error_of("version: 1\nrestart:\n  backoff_seconds: 1h\n") ==
        "p.yaml:3:20: key 'restart.backoff_seconds': max_backoff_seconds (5m) is shorter than "
        "backoff_seconds (1h)");
}

TEST_CASE("YAML syntax errors and non-policy documents get file:line:column too") {
  CHECK(error_of("version: 1\ncheckpoint: [1,\n") ==
        "p.yaml:3:1: YAML syntax error: end of sequence flow not found");
  CHECK(error_of("version: 1\ncheckpoint:\n  every_steps: 1\n\ton_signal: true\n") ==
        "p.yaml:4:1: YAML syntax error: tabs are not allowed in YAML indentation; indent with spaces");
  CHECK(error_of("version: 1\ncheckpoint:\n\tevery_steps: 5\n") ==  // yaml-cpp: "illegal map value" at 3:13
        "p.yaml:3:1: YAML syntax error: tabs are not allowed in YAML indentation; indent with spaces");
  CHECK(error_of("version: 1\ncheckpoint:\n  \t every_steps: 5\n").find("3:3: YAML syntax error: tabs") != std::string::npos);
  CHECK(error_of("") == "p.yaml:1:1: the file is empty; a policy file needs at least 'version: 1'");
  CHECK(error_of("# only a comment\n") ==
        "p.yaml:1:1: the file is empty; a policy file needs at least 'version: 1'");
  CHECK(error_of("- version: 1\n") ==
        "p.yaml:1:1: expected a mapping of sections (version, checkpoint, retention, restart, "
        "stop, storage, requeue), got a list");
  CHECK(error_of("version: 1\n---\nversion: 1\n") ==
        "p.yaml:2:1: a policy file holds one YAML document; another document or stray text "
        "starts here");
  // yaml-cpp 0.7's LoadAll never returns on this one.
  CHECK(error_of(",") ==
        "p.yaml:1:1: a policy file holds one YAML document; another document or stray text "
        "starts here");
  CHECK(error_of("version: 1\n[a, b]: 1\n") ==
        "p.yaml:2:1: key '?': a key must be a plain name, got a list");
}

TEST_CASE("every bad key is reported, one line each in file order, not only the first") {
  const std::string yaml =
      "version: 1\n"
      "checkpoint:\n"
      "  every_steps: ten\n"
      "retention:\n"
      "  keep_lsat: 2\n"
      "stop:\n"
      "  signals: [USR1, USR3]\n";
  CHECK(error_of(yaml) ==
        "p.yaml:3:16: key 'checkpoint.every_steps': expected a whole number, got 'ten'\n"
        "p.yaml:5:3: key 'retention.keep_lsat': unknown key; did you mean 'keep_last'?\n"
        "p.yaml:7:19: key 'stop.signals[1]': unknown signal 'USR3'; expected one of USR1, USR2, "
        "TERM, INT, HUP, QUIT, ALRM, XCPU, PWR");
  try {
    lifeline::parse_policy(yaml, "p.yaml");
    FAIL("accepted");
  } catch (const PolicyError& e) {
    const std::vector<std::string> m = e.messages();
    REQUIRE(m.size() == 3);
    CHECK(m[0].rfind("p.yaml:3:16: key 'checkpoint.every_steps': ", 0) == 0);
    CHECK(m[1].rfind("p.yaml:5:3: key 'retention.keep_lsat': ", 0) == 0);
    CHECK(m[2].rfind("p.yaml:7:19: key 'stop.signals[1]': ", 0) == 0);
  }
}

TEST_CASE("collected errors: each bad signal of a list, a bad section, duplicates and a missing version") {
  CHECK(error_of("version: 1\nstop:\n  signals: [USR3, TERM, KILL, term]\n") ==
        "p.yaml:3:13: key 'stop.signals[0]': unknown signal 'USR3'; expected one of USR1, USR2, TERM, "
        "INT, HUP, QUIT, ALRM, XCPU, PWR\n"
        "p.yaml:3:25: key 'stop.signals[2]': SIGKILL cannot be caught; use USR1, TERM or INT\n"
        "p.yaml:3:31: key 'stop.signals[3]': TERM is listed twice");
  CHECK(error_of("version: 1\nretention: [keep_last]\nrequeue:\n  exit_code: 0\n  exit_code: 3\n") ==
        "p.yaml:2:12: key 'retention': expected a mapping of keys (e.g. 'keep_last: ...'), got a list\n"
        "p.yaml:4:14: key 'requeue.exit_code': must be between 1 and 255, got 0\n"
        "p.yaml:5:3: key 'requeue.exit_code': duplicate key (first given at line 4, column 3)");
  // The missing version is listed where the mapping starts: first.
  CHECK(error_of("checkpoint:\n  every_steps: ten\n") ==
        "p.yaml:1:1: key 'version': missing; a policy file starts with 'version: 1'\n"
        "p.yaml:2:16: key 'checkpoint.every_steps': expected a whole number, got 'ten'");
  // A bad version is one problem, not also a missing one.
  CHECK(error_of("version: two\nchekpoint: {}\n") ==
        "p.yaml:1:10: key 'version': expected a whole number, got 'two'\n"
        "p.yaml:2:1: key 'chekpoint': unknown key; did you mean 'checkpoint'?");
}

TEST_CASE("cross-key checks run only once every key was read; structural errors stop at once") {
  // max_backoff_seconds < backoff_seconds would be an error, but a key is bad: only that one.
  CHECK(error_of("version: 1\nrestart:\n  backoff_seconds: 1h\n  max_failures: x\n") ==
        "p.yaml:4:17: key 'restart.max_failures': expected a whole number, got 'x'");
  // With every key readable, both impossible combinations are listed.
  CHECK(error_of("version: 1\nretention:\n  metric: ''\nrestart:\n  backoff_seconds: 1h\n") ==
        "p.yaml:3:11: key 'retention.metric': empty, but keep_best is 1; name the metric to rank by, or "
        "set keep_best: 0\n"
        "p.yaml:5:20: key 'restart.backoff_seconds': max_backoff_seconds (5m) is shorter than "
        "backoff_seconds (1h)");
  // A syntax error after bad keys is the only message: nothing was read.
  CHECK(error_of("version: 1\ncheckpoint:\n  every_steps: ten\nstop: [1,\n") ==
        "p.yaml:5:1: YAML syntax error: end of sequence flow not found");
  try {
    lifeline::parse_policy("", "p.yaml");
    FAIL("accepted");
  } catch (const PolicyError& e) {
    CHECK(e.messages() == std::vector<std::string>{e.what()});
  }
}

TEST_CASE("whatever the input, a rejection is a PolicyError and never a yaml-cpp exception") {
  const std::vector<std::string> inputs = {
      "{",
      "]",
      "version: 1\n&a [*a]: 1\n",
      "*unknown",
      "version: 1\ncheckpoint: &c {every_steps: *c}\n",
      "version: !!binary 1\n",
      "version: 1\nstop:\n  signals: &s [*s]\n",
      "\xff\xfe",
      "version: 1\n? |\n  x\n",
      "%YAML 9.9\n---\nversion: 1\n",
      "version: 1\nretention: &r\n  keep_last: *r\n",
      std::string("version: 1\0\n", 12),
      std::string(3000, '['),
  };
  for (const auto& in : inputs) {
    CAPTURE(in);
    try {
      lifeline::parse_policy(in, "p.yaml");
    } catch (const PolicyError& e) {
      CHECK(std::string(e.what()).rfind("p.yaml:", 0) == 0);
    } catch (const YAML::Exception& e) {
      FAIL("yaml-cpp exception escaped: " << e.what());
    }
  }
}

TEST_CASE("a missing or unreadable file is a PolicyError naming the path") {
  CHECK_THROWS_WITH_AS(lifeline::load_policy_file("/nonexistent/lifeline/p.yaml"),
                       "/nonexistent/lifeline/p.yaml: cannot open policy file: No such file or "
                       "directory",
                       PolicyError);
  CHECK_THROWS_WITH_AS(lifeline::load_policy_file(std::filesystem::temp_directory_path().string()),
                       (std::filesystem::temp_directory_path().string() +
                        ": cannot read policy file: Is a directory")
                           .c_str(),
                       PolicyError);
}

TEST_CASE("a file on disk is read, and its errors carry its path") {
  TempFile f("version: 1\nretention:\n  keep_last: 4\n");
  CHECK(lifeline::load_policy_file(f.path.string()).retention.keep_last == 4);
  CHECK(lifeline::load_policy_file(f.path.string()).source == f.path.string());
  TempFile bad("version: 1\nretention:\n  keep_last: x\n");
  CHECK_THROWS_WITH_AS(lifeline::load_policy_file(bad.path.string()),
                       (bad.path.string() + ":3:14: key 'retention.keep_last': expected a whole "
                                            "number, got 'x'")
                           .c_str(),
                       PolicyError);
}

// --- checkpoint.dir expansion ------------------------------------------------------------

TEST_CASE("${VAR} and $VAR expand from the environment, $$ is a dollar, a lone $ stays") {
  std::map<std::string, std::string> env = {
      {"SCRATCH", "/scratch/u1"}, {"JOB", "42"}, {"EMPTY", ""}};
  auto lookup = [&](const std::string& name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  };
  CHECK(lifeline::expand_variables("${SCRATCH}/ckpt/$JOB", lookup) == "/scratch/u1/ckpt/42");
  CHECK(lifeline::expand_variables("$SCRATCH-x/${JOB}b", lookup) == "/scratch/u1-x/42b");
  CHECK(lifeline::expand_variables("a$$b/$/c$", lookup) == "a$b/$/c$");
  CHECK(lifeline::expand_variables("plain/path", lookup) == "plain/path");
  CHECK_THROWS_WITH_AS(lifeline::expand_variables("$NOPE/x", lookup),
                       "environment variable NOPE is not set", std::invalid_argument);
  CHECK_THROWS_WITH_AS(lifeline::expand_variables("${EMPTY}/x", lookup),
                       "environment variable EMPTY is set but empty", std::invalid_argument);
  CHECK_THROWS_WITH_AS(lifeline::expand_variables("${SCRATCH", lookup),
                       "'${' without a closing '}' in \"${SCRATCH\"", std::invalid_argument);
  CHECK_THROWS_AS(lifeline::expand_variables("${}", lookup), std::invalid_argument);
  CHECK_THROWS_AS(lifeline::expand_variables("${A-B}", lookup), std::invalid_argument);
}

TEST_CASE("an unset variable in checkpoint.dir is an error naming the key and the variable") {
  ::unsetenv("LIFELINE_TEST_UNSET");
  CHECK(error_of("version: 1\ncheckpoint:\n  dir: ${LIFELINE_TEST_UNSET}/ckpt\n") ==
        "p.yaml:3:8: key 'checkpoint.dir': environment variable LIFELINE_TEST_UNSET is not set");
  ::setenv("LIFELINE_TEST_SET", "/x", 1);
  CHECK(lifeline::parse_policy("version: 1\ncheckpoint:\n  dir: $LIFELINE_TEST_SET/y\n", "p.yaml")
            .checkpoint.dir == "/x/y");
  ::unsetenv("LIFELINE_TEST_SET");
}

// --- warnings ----------------------------------------------------------------------------

TEST_CASE("a policy that never asks for a checkpoint is accepted with a warning") {
  auto w = warnings_of(
      "version: 1\ncheckpoint:\n  every_steps: 0\n  every_seconds: 0\n  on_signal: false\n");
  REQUIRE(w.size() == 1);
  CHECK(
      w[0] ==
      "p.yaml:5:14: warning: key 'checkpoint': every_steps, every_seconds and on_signal are all "
      "off: lifeline never asks for a checkpoint, so only those the trainer makes on its own will "
      "exist");
}

TEST_CASE("questionable but legal settings produce warnings, not errors") {
  CHECK(warnings_of("version: 1\nstop:\n  grace_seconds: 0\n") ==
        std::vector<std::string>{"p.yaml:3:18: warning: key 'stop.grace_seconds': 0 while "
                                 "checkpoint.on_signal is true: a stop checkpoint gets no time to "
                                 "finish"});
  CHECK(warnings_of("version: 1\nstop:\n  signals: []\n") ==
        std::vector<std::string>{"p.yaml:3:12: warning: key 'stop.signals': empty, so "
                                 "checkpoint.on_signal never fires"});
  CHECK(warnings_of("version: 1\nrestart:\n  resume: off\n") ==
        std::vector<std::string>{"p.yaml:3:11: warning: key 'restart.resume': off: every requeue "
                                 "and restart begins training from scratch"});
  CHECK(warnings_of("version: 1\nretention:\n  keep_every_steps: 1500\n") ==
        std::vector<std::string>{"p.yaml:3:21: warning: key 'retention.keep_every_steps': 1500 is "
                                 "not a multiple of checkpoint.every_steps (1000): of the periodic "
                                 "checkpoints only those at multiples of 3000 are kept forever"});
  CHECK(warnings_of("version: 1\n").empty());
}

// --- shipped policies -------------------------------------------------------------------

TEST_CASE("every shipped policy in policies/ passes validation without warnings") {
  const std::filesystem::path dir = std::filesystem::path(LIFELINE_SOURCE_DIR) / "policies";
  // As inside a Slurm job (policies/local-tier.yaml names $TMPDIR and $SLURM_JOB_ID).
  ::setenv("TMPDIR", "/tmp", 0);
  ::setenv("SLURM_JOB_ID", "17", 0);
  int count = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".yaml") continue;
    CAPTURE(entry.path().string());
    std::vector<std::string> warnings;
    CHECK_NOTHROW(lifeline::load_policy_file(entry.path().string(), warnings));
    CHECK(warnings.empty());
    ++count;
  }
  CHECK(count >= 4);
}

TEST_CASE("policies/default.yaml says exactly what the built-in defaults are") {
  const std::string path = std::string(LIFELINE_SOURCE_DIR) + "/policies/default.yaml";
  check_same(lifeline::load_policy_file(path), lifeline::default_policy());
}

TEST_CASE(
    "the shipped regimes differ as documented: short keeps one, normal ten, long keeps some "
    "forever") {
  const std::string dir = std::string(LIFELINE_SOURCE_DIR) + "/policies/";
  Policy s = lifeline::load_policy_file(dir + "short.yaml");
  Policy n = lifeline::load_policy_file(dir + "normal.yaml");
  Policy l = lifeline::load_policy_file(dir + "long.yaml");
  CHECK(s.checkpoint.every_steps == 0);
  CHECK(s.retention.keep_last == 1);
  CHECK(n.retention.keep_last == 10);
  CHECK(n.retention.keep_best == 1);
  CHECK(l.retention.keep_every_steps > 0);
  CHECK(l.checkpoint.every_steps > n.checkpoint.every_steps);
  CHECK(l.retention.keep_last + l.retention.keep_best > s.retention.keep_last);
}

// --- explain ----------------------------------------------------------------------------

TEST_CASE("explain: default policy, 2 GiB at 1 GiB/s, 0.5 s steps, 3 days, 2 interruptions a day") {
  ExplainInputs in;
  in.checkpoint_bytes = 2ULL << 30;
  in.step_seconds = 0.5;
  in.run_seconds = 3 * 86400;
  in.interruptions_per_day = 2;
  Explanation e = lifeline::explain_policy(lifeline::default_policy(), in);
  // every_steps 1000 x 0.5 s = 500 s beats every_seconds 3600.
  REQUIRE(e.interval_seconds);
  CHECK(*e.interval_seconds == 500);
  CHECK_FALSE(e.interval_is_upper_bound);
  CHECK(*e.periodic_checkpoints == 518);  // floor(259200 / 500)
  CHECK(e.kept_newest == 3);
  CHECK(e.kept_best == 1);
  CHECK(*e.kept_forever == 0);
  CHECK(*e.kept_total == 4);
  CHECK(*e.checkpoint_write_seconds == 2);
  CHECK(*e.peak_disk_bytes == 5 * 2 * kGiB);  // 4 kept + 1 in flight
  CHECK(*e.lost_unsignalled_seconds == 250);
  CHECK(e.signalled_stop_saves_work);
  CHECK_FALSE(e.stop_checkpoint_may_not_fit);
  CHECK(*e.mtbi_seconds == 43200);
  CHECK(*e.optimal_interval_seconds == doctest::Approx(415.692).epsilon(1e-5));  // sqrt(2*2*43200)
  CHECK(*e.interval_over_optimal == doctest::Approx(1.20281).epsilon(1e-5));
  CHECK(*e.overhead_fraction == doctest::Approx(2.0 / 500 + 500.0 / 86400));
  CHECK(*e.optimal_overhead_fraction == doctest::Approx(2 * 2.0 / 415.692).epsilon(1e-5));
}

TEST_CASE("explain: keep-forever checkpoints count over the run and max_total_bytes caps them") {
  Policy p = lifeline::default_policy();
  p.checkpoint.every_steps = 10000;
  p.checkpoint.every_seconds = 7200;
  p.retention.keep_last = 5;
  p.retention.keep_best = 3;
  p.retention.keep_every_steps = 50000;
  ExplainInputs in;
  in.checkpoint_bytes = 100ULL << 30;
  in.step_seconds = 1;
  in.run_seconds = 14 * 86400;

  Explanation uncapped = lifeline::explain_policy(p, in);
  CHECK(*uncapped.interval_seconds == 7200);     // 10000 steps = 10000 s > 2 h
  CHECK(*uncapped.periodic_checkpoints == 168);  // 1209600 / 7200
  CHECK(*uncapped.kept_forever == 24);           // floor(1209600 / 50000)
  CHECK(*uncapped.kept_total == 32);             // 5 + 3 + 24
  CHECK(*uncapped.peak_disk_bytes == 33 * 100 * kGiB);
  CHECK(*uncapped.checkpoint_write_seconds == 100);
  CHECK(uncapped.stop_checkpoint_may_not_fit);  // 100 s to write, 25 s grace

  p.retention.max_total_bytes = 2ULL << 40;
  Explanation capped = lifeline::explain_policy(p, in);
  CHECK(*capped.kept_total == 20);  // floor(2048 GiB / 100 GiB)
  CHECK(capped.kept_capped_by_bytes);
  CHECK(*capped.peak_disk_bytes == 21 * 100 * kGiB);
}

TEST_CASE("explain: keep-forever uses the steps where both rules meet") {
  Policy p = lifeline::default_policy();
  p.checkpoint.every_steps = 300;
  p.checkpoint.every_seconds = 0;
  p.retention.keep_every_steps = 1000;
  ExplainInputs in;
  in.step_seconds = 1;
  in.run_seconds = 30000;
  CHECK(*lifeline::explain_policy(p, in).kept_forever ==
        10);  // multiples of lcm 3000 in 30000 steps
}

TEST_CASE(
    "explain: no step time makes every_seconds an upper bound; nothing periodic loses half the "
    "run") {
  Policy p = lifeline::default_policy();
  ExplainInputs in;
  in.run_seconds = 7200;
  Explanation e = lifeline::explain_policy(p, in);
  CHECK(*e.interval_seconds == 3600);
  CHECK(e.interval_is_upper_bound);
  CHECK_FALSE(e.checkpoint_write_seconds.has_value());
  CHECK_FALSE(e.peak_disk_bytes.has_value());
  CHECK_FALSE(e.optimal_interval_seconds.has_value());
  CHECK(e.interruptions_assumed);
  CHECK(e.interruptions_per_day == 1);

  p.checkpoint.every_seconds = 0;
  e = lifeline::explain_policy(p, in);
  CHECK_FALSE(e.interval_seconds.has_value());
  CHECK(*e.lost_unsignalled_seconds == 3600);
}

TEST_CASE(
    "explain: fewer checkpoints made than the rules keep caps the count; no signal, no rescue") {
  Policy p = lifeline::default_policy();
  p.checkpoint.every_steps = 0;
  p.checkpoint.on_signal = false;
  p.retention.keep_last = 10;
  ExplainInputs in;
  in.run_seconds = 3600;
  in.checkpoint_bytes = 1ULL << 30;
  Explanation e = lifeline::explain_policy(p, in);
  CHECK(*e.periodic_checkpoints == 1);
  CHECK(*e.kept_total == 1);
  CHECK(e.kept_capped_by_run);
  CHECK(*e.peak_disk_bytes == 2 * kGiB);
  CHECK_FALSE(e.signalled_stop_saves_work);
}

TEST_CASE("explain: zero interruptions a day leaves no Young/Daly optimum") {
  ExplainInputs in;
  in.checkpoint_bytes = 1ULL << 30;
  in.interruptions_per_day = 0;
  Explanation e = lifeline::explain_policy(lifeline::default_policy(), in);
  CHECK_FALSE(e.interruptions_assumed);
  CHECK_FALSE(e.mtbi_seconds.has_value());
  CHECK_FALSE(e.optimal_interval_seconds.has_value());
  std::string text = lifeline::render_explanation(lifeline::default_policy(), in, e);
  CHECK(text.find("no interruptions expected") != std::string::npos);
}

TEST_CASE("explain text says how much longer than optimal the interval is") {
  Policy p = lifeline::default_policy();
  p.checkpoint.every_steps = 0;
  p.checkpoint.every_seconds =
      1330;  // optimum sqrt(2 * 2 s * 43200 s) = 415.7 s; 1330 / 415.7 = 3.2
  ExplainInputs in;
  in.checkpoint_bytes = 2ULL << 30;
  in.interruptions_per_day = 2;
  std::string text = lifeline::render_explanation(p, in, lifeline::explain_policy(p, in));
  CHECK(text.find("is 3.2\u00d7 longer than optimal") != std::string::npos);
  CHECK(text.find("up to 10 GiB at peak (4 kept + 1 being written, 2 GiB each)") !=
        std::string::npos);
  CHECK(text.find("up to 22m 10s (one interval), about 11m 5s on average when the job dies without warning") !=
        std::string::npos);
  CHECK(text.find("about nothing when the scheduler signals first") != std::string::npos);

  p.checkpoint.every_seconds = 100;  // 415.7 / 100 = 4.2
  text = lifeline::render_explanation(p, in, lifeline::explain_policy(p, in));
  CHECK(text.find("is 4.2\u00d7 shorter than optimal") != std::string::npos);
}

TEST_CASE("the check summary names the triggers, the retention rules and the restart limits") {
  std::string s = lifeline::summarize_policy(lifeline::default_policy());
  CHECK(s.find("every 1000 steps or every 1h, whichever comes first") != std::string::npos);
  CHECK(s.find("SIGUSR1, SIGTERM or SIGINT") != std::string::npos);
  CHECK(s.find("the newest 3 and the best 1 by val_loss (lowest)") != std::string::npos);
  CHECK(s.find("up to 50 times") != std::string::npos);
}

// --- storage (the node-local tier, docs/storage.md) -------------------------------------

TEST_CASE("storage: local is expanded, drain async|off, keep_local at least 1, drain_bandwidth a rate") {
  ::setenv("LIFELINE_TEST_NODE_TMP", "/scratch/node", 1);
  auto p = lifeline::parse_policy(
      "version: 1\nstorage:\n  local: $LIFELINE_TEST_NODE_TMP/ll\n  drain: off\n  keep_local: 3\n"
      "  drain_bandwidth: 200MB/s\n",
      "p.yaml");
  CHECK(p.storage.enabled());
  CHECK(p.storage.local_spec == "$LIFELINE_TEST_NODE_TMP/ll");
  CHECK(p.storage.local == "/scratch/node/ll");
  CHECK_FALSE(p.storage.drain);
  CHECK(p.storage.keep_local == 3);
  CHECK(p.storage.drain_bandwidth == 200000000ull);
  CHECK_FALSE(lifeline::default_policy().storage.enabled());
  CHECK(error_of("version: 1\nstorage:\n  keep_local: 0\n").find("p.yaml:3:15: key 'storage.keep_local': must be at least 1") == 0);
  CHECK(error_of("version: 1\nstorage:\n  drain: sometimes\n").find("key 'storage.drain': expected one of async, off") !=
        std::string::npos);
  CHECK(error_of("version: 1\nstorage:\n  drain_bandwidth: fast\n").find("key 'storage.drain_bandwidth'") !=
        std::string::npos);
}

TEST_CASE("storage.local naming a variable unset here is a warning, expanded again where the job runs") {
  ::unsetenv("LIFELINE_TEST_UNSET_TMP");
  std::vector<std::string> warnings;
  auto p = lifeline::parse_policy("version: 1\nstorage:\n  local: ${LIFELINE_TEST_UNSET_TMP}/ll\n", "p.yaml", warnings);
  CHECK(p.storage.enabled());
  CHECK(p.storage.local.empty());
  REQUIRE(warnings.size() == 1);
  CHECK(warnings[0].find("p.yaml:3:10: warning: key 'storage.local'") == 0);
  CHECK(warnings[0].find("LIFELINE_TEST_UNSET_TMP") != std::string::npos);
  CHECK(warnings[0].find("expanded again where the job runs") != std::string::npos);
}

TEST_CASE("explain with a node-local tier: the drain at the shared disk's speed, capped by drain_bandwidth, against the grace") {
  lifeline::Policy p = lifeline::default_policy();
  p.storage.local_spec = p.storage.local = "/tmp/ll";
  p.stop.grace_seconds = 25;
  ExplainInputs in;
  in.checkpoint_bytes = 10ULL << 30;               // 10 GiB
  in.write_bytes_per_second = 5.0 * kGiB;          // local NVMe: 2 s
  in.shared_write_bytes_per_second = 0.5 * kGiB;   // shared: 20 s
  Explanation e = lifeline::explain_policy(p, in);
  CHECK(*e.checkpoint_write_seconds == 2);
  CHECK(*e.drain_seconds == 20);
  CHECK_FALSE(e.stop_drain_may_not_fit);  // 2 + 20 < 25
  std::string text = lifeline::render_explanation(p, in, e);
  CHECK(text.find("Node-local tier") != std::string::npos);
  CHECK(text.find("that fits") != std::string::npos);

  p.storage.drain_bandwidth = 256ULL << 20;  // 256 MiB/s: 40 s, no longer fits
  e = lifeline::explain_policy(p, in);
  CHECK(*e.drain_seconds == 40);
  CHECK(e.stop_drain_may_not_fit);
  text = lifeline::render_explanation(p, in, e);
  CHECK(text.find("storage.drain_bandwidth") != std::string::npos);
  CHECK(text.find("does not fit") != std::string::npos);

  p.storage.drain = false;
  e = lifeline::explain_policy(p, in);
  CHECK_FALSE(e.drain_seconds);
  CHECK(lifeline::render_explanation(p, in, e).find("storage.drain: off") != std::string::npos);
}
