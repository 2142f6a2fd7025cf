// read_lineage: what earlier attempts left (next attempt number, failures in a row, requeues,
// commit durations), computed through the ledger, against hand-written histories. Each case
// also checks that the result is what the supervisor's own reader of raw events gave before
// (kept below as the reference).
#include <doctest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/clock.h"
#include "history/history.h"
#include "history/ledger.h"
#include "history/lineage.h"
#include "support/temp_dir.h"

using namespace lifeline;
using lifeline::test::TempDir;
using json = nlohmann::json;

namespace {

constexpr uint64_t kT0 = 1795000000ull * 1000000000ull;

// The supervisor's read_lineage before it moved onto the ledger (supervisor.cc), minus the
// random lineage id: the reference the ledger-based one must agree with.
LineageState read_lineage_from_raw_events(const std::string& dir) {
  LineageState s;
  for (const auto& e : read_history_events(dir)) {
    std::string ev = e.value("event", "");
    if (ev == "attempt_start") {
      ++s.attempts;
      if (s.lineage.empty()) s.lineage = e.value("lineage", "");
    } else if (ev == "attempt_end") {
      bool failed = e.value("end_reason", "") == "failed";
      uint64_t commits = e.value("checkpoints", uint64_t(0));
      s.failures_in_row = (failed && commits == 0) ? s.failures_in_row + 1 : 0;
    } else if (ev == "checkpoint_commit") {
      auto d = e.find("duration_s");
      if (d != e.end() && d->is_number()) s.commit_seconds.push_back(d->get<double>());
    } else if (ev == "requeue") {
      std::string result = e.value("result", "");
      if (result == "requeued" || result == "resubmitted" || result == "exit code") ++s.requeues;
    }
  }
  return s;
}

json ev(double at, const std::string& name, json fields = json::object()) {
  uint64_t t = kT0 + uint64_t(at * 1e9);
  fields["event"] = name;
  fields["time"] = iso8601(t);
  fields["time_ns"] = t;
  return fields;
}

json start(double at, uint64_t attempt, const std::string& lineage = "lin-a") {
  return ev(at, "attempt_start", {{"attempt", attempt}, {"lineage", lineage}, {"job_id", nullptr}, {"host", "node-a"},
                                  {"pid", 4242}, {"resumed_from_step", nullptr}, {"resumed_from", nullptr},
                                  {"skipped", json::array()}, {"requeue_mode", "scontrol"}});
}

json commit(double at, uint64_t attempt, uint64_t step, json secs) {
  return ev(at, "checkpoint_commit", {{"attempt", attempt}, {"step", step}, {"bytes", 1000}, {"duration_s", secs}});
}

json end(double at, uint64_t attempt, const std::string& reason, uint64_t checkpoints) {
  return ev(at, "attempt_end", {{"attempt", attempt}, {"end_reason", reason}, {"exit_code", reason == "failed" ? 1 : 0},
                                {"checkpoints", checkpoints}, {"last_checkpoint_step", nullptr}, {"last_step", 0},
                                {"signal", nullptr}});
}

json requeue(double at, uint64_t attempt, const std::string& mode, const std::string& result) {
  return ev(at, "requeue", {{"attempt", attempt}, {"mode", mode}, {"result", result}});
}

void write_history(const std::string& dir, const std::vector<json>& events, const std::string& tail = "") {
  std::ofstream out(dir + "/" + kHistoryName, std::ios::trunc);
  for (const auto& e : events) out << e.dump() << "\n";
  out << tail;
}

// read_lineage(dir), checked field by field against the reference reader.
LineageState read_and_compare(const std::string& dir) {
  LineageState got = read_lineage(dir);
  LineageState before = read_lineage_from_raw_events(dir);
  if (!before.lineage.empty()) CHECK(got.lineage == before.lineage);
  CHECK(got.attempts == before.attempts);
  CHECK(got.failures_in_row == before.failures_in_row);
  CHECK(got.requeues == before.requeues);
  CHECK(got.commit_seconds == before.commit_seconds);
  return got;
}

bool is_hex16(const std::string& s) {
  return s.size() == 16 && s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

}  // namespace

TEST_CASE("a directory without history starts attempt 0 of a new random lineage with no budget used") {
  TempDir dir;
  LineageState s = read_and_compare(dir.path());
  CHECK(s.attempts == 0);
  CHECK(s.failures_in_row == 0);
  CHECK(s.requeues == 0);
  CHECK(s.commit_seconds.empty());
  CHECK(is_hex16(s.lineage));
  CHECK(read_lineage(dir.path()).lineage != s.lineage);
  CHECK(is_hex16(new_lineage_id()));
}

TEST_CASE("the lineage id and the next attempt number come from the attempts recorded so far") {
  TempDir dir;
  write_history(dir.path(), {start(0, 0, "first"), end(10, 0, "stopped", 0), start(20, 1, "second"),
                             end(30, 1, "completed", 0)});
  LineageState s = read_and_compare(dir.path());
  CHECK(s.lineage == "first");
  CHECK(s.attempts == 2);
}

TEST_CASE("two failures without a commit count as two in a row, and a failure that committed resets the count") {
  TempDir dir;
  std::vector<json> events{start(0, 0), end(10, 0, "failed", 0), start(20, 1), end(30, 1, "failed", 0)};
  write_history(dir.path(), events);
  CHECK(read_and_compare(dir.path()).failures_in_row == 2);

  events.push_back(start(40, 2));
  events.push_back(commit(45, 2, 100, 0.5));
  events.push_back(end(50, 2, "failed", 1));
  write_history(dir.path(), events);
  LineageState s = read_and_compare(dir.path());
  CHECK(s.failures_in_row == 0);
  CHECK(s.attempts == 3);
  CHECK(s.commit_seconds == std::vector<double>{0.5});

  events.push_back(start(60, 3));
  events.push_back(end(70, 3, "failed", 0));
  write_history(dir.path(), events);
  CHECK(read_and_compare(dir.path()).failures_in_row == 1);

  // Any end but failed breaks the series too.
  events.push_back(start(80, 4));
  events.push_back(end(90, 4, "preempted", 0));
  write_history(dir.path(), events);
  CHECK(read_and_compare(dir.path()).failures_in_row == 0);
}

TEST_CASE("requeued, resubmitted and exit code count as requeues; restart, failed, not requeued and budget exhausted do not") {
  TempDir dir;
  write_history(dir.path(), {
      start(0, 0), end(1, 0, "preempted", 0), requeue(2, 0, "scontrol", "requeued"),
      start(10, 1), end(11, 1, "time_limit", 0), requeue(12, 1, "sbatch", "resubmitted"),
      start(20, 2), end(21, 2, "stopped", 0), requeue(22, 2, "exit", "exit code"),
      start(30, 3), end(31, 3, "failed", 0), requeue(32, 3, "local", "restart"),
      start(40, 4), end(41, 4, "stopped", 0), requeue(42, 4, "scontrol", "failed"),
      start(50, 5), end(51, 5, "stopped", 0), requeue(52, 5, "local", "not requeued"),
      start(60, 6), end(61, 6, "stopped", 0), requeue(62, 6, "exit", "budget exhausted"),
  });
  LineageState s = read_and_compare(dir.path());
  CHECK(s.requeues == 3);
  CHECK(s.attempts == 7);
}

TEST_CASE("a torn last line is skipped: the attempt_end it would have been does not count") {
  TempDir dir;
  write_history(dir.path(), {start(0, 0), end(10, 0, "failed", 0), start(20, 1), commit(25, 1, 50, 1.5)},
                R"({"event":"attempt_end","attempt":1,"end_reason":"fail)");
  LineageState s = read_and_compare(dir.path());
  CHECK(s.attempts == 2);
  CHECK(s.failures_in_row == 1);
  CHECK(s.commit_seconds == std::vector<double>{1.5});
}

TEST_CASE("a lost attempt neither adds to nor breaks the failures in a row, and its commits still count") {
  TempDir dir;
  write_history(dir.path(), {
      start(0, 0), end(10, 0, "failed", 0),
      start(20, 1), commit(25, 1, 100, 2.0),  // killed: no attempt_end
      start(40, 2),
      ev(40.5, "attempt_lost", {{"attempt", 1}, {"control", "/lifeline-1000-x"}, {"pid", 4242}, {"last_step", 120},
                                {"last_checkpoint_step", 100}}),
      end(50, 2, "failed", 0),
  });
  LineageState s = read_and_compare(dir.path());
  CHECK(s.attempts == 3);
  CHECK(s.failures_in_row == 2);
  CHECK(s.commit_seconds == std::vector<double>{2.0});
}

TEST_CASE("commits without a measured duration are left out of the commit times") {
  TempDir dir;
  write_history(dir.path(), {start(0, 0), commit(5, 0, 100, nullptr), commit(6, 0, 200, 0.75), commit(7, 0, 300, 0.25)});
  LineageState s = read_and_compare(dir.path());
  CHECK(s.commit_seconds == std::vector<double>{0.75, 0.25});
}

TEST_CASE("lineage_state of a ledger with an attempt still running leaves the failure count as the recorded ends say") {
  std::vector<json> events{start(0, 0), end(10, 0, "failed", 0), start(20, 1)};
  Liveness live;
  live.state = Liveness::State::alive;
  live.attempt = 1;
  Ledger ledger = fold_history(events, live, kT0 + 30 * 1000000000ull);
  REQUIRE(ledger.attempts.back().running);
  LineageState s = lineage_state(ledger);
  CHECK(s.attempts == 2);
  CHECK(s.failures_in_row == 1);
  CHECK(s.lineage == "lin-a");
}
