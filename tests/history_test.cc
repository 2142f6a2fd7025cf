// The history ledger: hand-written history.jsonl files (torn, unfinished, running) folded into
// attempts and a summary, the contract's JSON shape, the supervisor record, and the timeline.
#include <doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/clock.h"
#include "history/history.h"
#include "history/ledger.h"
#include "history/supervisor_record.h"
#include "history/timeline_svg.h"
#include "support/temp_dir.h"

using namespace lifeline;
using lifeline::test::TempDir;
using json = nlohmann::json;

namespace {

constexpr uint64_t kT0 = 1795000000ull * 1000000000ull;  // 2026-11-18, a whole second
constexpr uint64_t kSec = 1000000000ull;

// One history event at kT0 + `at` seconds, as the supervisor writes it.
json ev(double at, const std::string& name, json fields = json::object()) {
  uint64_t t = kT0 + uint64_t(at * 1e9);
  fields["event"] = name;
  fields["time"] = iso8601(t);
  fields["time_ns"] = t;
  return fields;
}

json start(double at, uint64_t attempt, json resumed = nullptr, json job = nullptr) {
  return ev(at, "attempt_start", {{"attempt", attempt}, {"lineage", "abc"}, {"job_id", job}, {"host", "node-a"},
                                  {"pid", 4242}, {"resumed_from_step", resumed}, {"skipped", json::array()},
                                  {"requeue_mode", "local"}});
}

json commit(double at, uint64_t attempt, uint64_t step, double secs = 0.5) {
  return ev(at, "checkpoint_commit", {{"attempt", attempt}, {"step", step}, {"bytes", 1000}, {"duration_s", secs}});
}

json end(double at, uint64_t attempt, const std::string& reason, json code, uint64_t checkpoints, json last_step) {
  return ev(at, "attempt_end", {{"attempt", attempt}, {"end_reason", reason}, {"exit_code", code},
                                {"checkpoints", checkpoints}, {"last_checkpoint_step", last_step},
                                {"signal", nullptr}});
}

// Writes `events` as history.jsonl lines into `dir`, then `tail` verbatim (a torn line, say).
void write_history(const std::string& dir, const std::vector<json>& events, const std::string& tail = "") {
  std::ofstream out(dir + "/" + kHistoryName, std::ios::trunc);
  for (const auto& e : events) out << e.dump() << "\n";
  out << tail;
}

Ledger fold_dir(const std::string& dir, Liveness live = {}, uint64_t now = kT0 + 1000 * kSec) {
  return fold_history(read_history_events(dir), live, now);
}

Liveness alive(uint64_t attempt) {
  Liveness l;
  l.state = Liveness::State::alive;
  l.attempt = attempt;
  return l;
}

// A run stopped by SIGUSR1 with a stop checkpoint, then resumed to completion.
std::vector<json> stopped_then_completed() {
  return {start(0, 0),
          commit(10, 0, 20),
          commit(20, 0, 40),
          ev(25, "signal", {{"attempt", 0}, {"signal", "USR1"}, {"state", "running"}}),
          ev(25, "checkpoint_request", {{"attempt", 0}, {"reason", "stop_signal"}, {"seq", 3}}),
          commit(25.5, 0, 45),
          end(26, 0, "stopped", 0, 3, 45),
          ev(26, "requeue", {{"attempt", 0}, {"mode", "none"}, {"result", "not requeued"}}),
          start(60, 1, 45),
          commit(70, 1, 60),
          commit(100, 1, 120, 1.0),
          end(100.25, 1, "completed", 0, 2, 120)};
}

}  // namespace

TEST_CASE("a stopped attempt and its resumed successor fold into two attempts with resume step and counts") {
  TempDir d;
  write_history(d.path(), stopped_then_completed());
  Ledger l = fold_dir(d.path());
  REQUIRE(l.attempts.size() == 2);
  const Attempt& a0 = l.attempts[0];
  CHECK(a0.attempt == 0);
  CHECK(a0.end_reason == "stopped");
  CHECK(a0.exit_code == 0);
  CHECK(a0.checkpoints == 3);
  CHECK(a0.last_checkpoint_step == 45);
  CHECK_FALSE(a0.resumed_from_step);
  CHECK(a0.requeue == "none");
  CHECK(a0.signals.size() == 1);
  CHECK(a0.lost_seconds == doctest::Approx(0.5));  // stop checkpoint at 25.5, end at 26
  const Attempt& a1 = l.attempts[1];
  CHECK(a1.resumed_from_step == 45);
  CHECK(a1.end_reason == "completed");
  CHECK(a1.checkpoints == 2);
  CHECK(a1.lost_seconds == 0);
  CHECK_FALSE(a1.running);
}

TEST_CASE("the summary adds wall time, checkpoint time and lost work into goodput and counts interruptions") {
  TempDir d;
  write_history(d.path(), stopped_then_completed());
  Summary s = fold_dir(d.path()).summary;
  CHECK(s.attempts == 2);
  CHECK(s.wall_seconds == doctest::Approx(26 + 40.25));
  CHECK(s.span_seconds == doctest::Approx(100.25));
  CHECK(s.checkpoint_seconds == doctest::Approx(0.5 * 4 + 1.0));
  CHECK(s.lost_seconds == doctest::Approx(0.5));
  CHECK(s.useful_seconds == doctest::Approx(66.25 - 3.0 - 0.5));
  REQUIRE(s.goodput_percent);
  CHECK(*s.goodput_percent == doctest::Approx(100.0 * 62.75 / 66.25));
  CHECK(s.interruptions == std::map<std::string, uint64_t>{{"stopped", 1}});
  CHECK(s.checkpoints == 5);
  CHECK(s.last_checkpoint_step == 120);
  CHECK(s.state == "completed");
}

TEST_CASE("the JSON of an attempt carries every contract field with its type") {
  TempDir d;
  write_history(d.path(), stopped_then_completed());
  Ledger l = fold_dir(d.path());
  json a = attempt_json(l.attempts[1]);
  CHECK(a["attempt"] == 1);
  CHECK(a["job_id"].is_null());
  CHECK(a["host"] == "node-a");
  CHECK(a["started"] == iso8601(kT0 + 60 * kSec));
  CHECK(a["ended"] == iso8601(kT0 + 100250000000ull));
  CHECK(a["resumed_from_step"] == 45);
  CHECK(a["end_reason"] == "completed");
  CHECK(a["exit_code"] == 0);
  CHECK(a["checkpoints"] == 2);
  CHECK(a["last_checkpoint_step"] == 120);
  CHECK(a["requeue"] == "none");
  CHECK(a["lost_seconds"].is_number());
  json a0 = attempt_json(l.attempts[0]);
  CHECK(a0["resumed_from_step"].is_null());
  CHECK(a0["signals"][0]["signal"] == "USR1");
  CHECK(a0["checkpoint_requests"]["stop_signal"] == 1);
}

TEST_CASE("a torn last line is skipped and the attempt it would have ended runs while its supervisor lives") {
  TempDir d;
  auto events = stopped_then_completed();
  json last = events.back();
  events.pop_back();
  std::string torn = last.dump().substr(0, 40);  // killed mid-write: no newline, no closing brace
  write_history(d.path(), events, torn);
  REQUIRE(read_history_events(d.path()).size() == events.size());

  Ledger l = fold_dir(d.path(), alive(1), kT0 + 130 * kSec);
  REQUIRE(l.attempts.size() == 2);
  const Attempt& a1 = l.attempts[1];
  CHECK(a1.running);
  CHECK_FALSE(a1.ended_ns);
  CHECK(a1.lost_seconds == 0);
  CHECK(a1.at_risk_seconds == doctest::Approx(30));  // last commit at 100, now 130
  json j = attempt_json(a1);
  CHECK(j["ended"].is_null());
  CHECK(j["end_reason"].is_null());
  CHECK(l.summary.state == "running");
  CHECK(l.summary.wall_seconds == doctest::Approx(26 + 70));
}

TEST_CASE("an unfinished newest attempt whose supervisor is dead is lost, its end estimated from its last event") {
  TempDir d;
  write_history(d.path(), {start(0, 0), commit(10, 0, 20), commit(20, 0, 40),
                           ev(50, "checkpoint_request", {{"attempt", 0}, {"reason", "periodic"}, {"seq", 3}})});
  Liveness dead;
  dead.state = Liveness::State::dead;
  dead.attempt = 0;
  Ledger l = fold_dir(d.path(), dead);
  REQUIRE(l.attempts.size() == 1);
  const Attempt& a = l.attempts[0];
  CHECK(a.end_reason == "lost");
  CHECK(a.end_estimated);
  CHECK(a.ended_ns == kT0 + 50 * kSec);
  CHECK(a.lost_seconds == doctest::Approx(30));
  CHECK_FALSE(a.exit_code);
  json j = attempt_json(a);
  CHECK(j["end_reason"] == "lost");
  CHECK(j["ended_estimated"] == true);
  CHECK(j["lost_estimate_from"] == "last event");
  CHECK(l.summary.interruptions.at("lost") == 1);
}

TEST_CASE("an attempt followed by another attempt_start without its own end is lost even with no supervisor record") {
  TempDir d;
  write_history(d.path(), {start(0, 0), commit(10, 0, 20), ev(15, "signal", {{"attempt", 0}, {"signal", "TERM"}}),
                           start(300, 1, 20), commit(310, 1, 40), end(320, 1, "completed", 0, 1, 40)});
  Ledger l = fold_dir(d.path(), alive(1));
  REQUIRE(l.attempts.size() == 2);
  CHECK(l.attempts[0].end_reason == "lost");
  CHECK(l.attempts[0].lost_seconds == doctest::Approx(5));  // commit at 10, last sign of life at 15
  CHECK(l.attempts[1].end_reason == "completed");
  CHECK(l.summary.interruptions == std::map<std::string, uint64_t>{{"lost", 1}});
}

TEST_CASE("a dead supervisor's leftover control block extends the lost work by the steps it counted") {
  TempDir d;
  // 10 steps/s: step 100 committed 10 s after the start; the block says the trainer reached 250.
  write_history(d.path(), {start(0, 0), commit(10, 0, 100)});
  Liveness dead;
  dead.state = Liveness::State::dead;
  dead.attempt = 0;
  dead.stale_block_step = 250;
  const Attempt a = fold_dir(d.path(), dead).attempts.at(0);
  CHECK(a.end_reason == "lost");
  CHECK(a.lost_seconds == doctest::Approx(15));
  CHECK(a.lost_estimate_from == "control block step");
  CHECK(a.last_step == 250);
  CHECK(a.ended_ns == kT0 + 25 * kSec);
}

TEST_CASE("a commit the dead supervisor never recorded counts as kept, not lost") {
  // 10 steps/s; the history knows step 100, the leftover block a commit of 200 and step 250.
  Liveness dead;
  dead.state = Liveness::State::dead;
  dead.attempt = 0;
  dead.stale_block_step = 250;
  dead.stale_block_commit_step = 200;
  const Attempt a = fold_history({start(0, 0), commit(10, 0, 100)}, dead, kT0 + 1000 * kSec).attempts.at(0);
  CHECK(a.last_checkpoint_step == 200);
  CHECK(a.lost_seconds == doctest::Approx(5));
  CHECK(a.ended_ns == kT0 + 25 * kSec);
}

TEST_CASE("a supervisor on another host keeps the unfinished newest attempt running") {
  TempDir d;
  write_history(d.path(), {start(0, 0, nullptr, "17"), commit(10, 0, 20)});
  Liveness elsewhere;
  elsewhere.state = Liveness::State::elsewhere;
  elsewhere.attempt = 0;
  Ledger l = fold_dir(d.path(), elsewhere, kT0 + 40 * kSec);
  CHECK(l.attempts.at(0).running);
  CHECK(l.attempts.at(0).job_id == "17");
  CHECK(l.summary.interruptions.empty());
}

TEST_CASE("a failed attempt loses the work since its last commit and a local restart is its requeue") {
  TempDir d;
  write_history(d.path(), {start(0, 0), commit(20, 0, 40), ev(45, "hang", {{"attempt", 0}, {"step", 77}}),
                           end(50, 0, "failed", 137, 1, 40),
                           ev(50, "requeue", {{"attempt", 0}, {"mode", "local"}, {"result", "restart"}}),
                           start(51, 1, 40), end(52, 1, "failed", 134, 0, nullptr)});
  Ledger l = fold_dir(d.path());
  REQUIRE(l.attempts.size() == 2);
  const Attempt& a0 = l.attempts[0];
  CHECK(a0.end_reason == "failed");
  CHECK(a0.exit_code == 137);
  CHECK(a0.hang);
  CHECK(a0.last_step == 77);
  CHECK(a0.lost_seconds == doctest::Approx(30));
  CHECK(a0.requeue == "local");
  CHECK(a0.requeue_result == "restart");
  const Attempt& a1 = l.attempts[1];
  CHECK(a1.lost_seconds == doctest::Approx(1));  // no commit: everything since its start
  CHECK(a1.requeue == "none");
  CHECK(l.summary.interruptions == std::map<std::string, uint64_t>{{"failed", 2}});
  CHECK(l.summary.state == "failed");
}

TEST_CASE("checkpoints skipped at resume are kept with their problem") {
  json s = start(0, 1, 20);
  json skipped = json::object({{"step", 40}, {"problem", "model.pt: checksum mismatch"}, {"path", "/x"}});
  s["skipped"] = json::array({skipped});
  Ledger l = fold_history({s}, alive(1), kT0 + 5 * kSec);
  REQUIRE(l.attempts.at(0).skipped.size() == 1);
  CHECK(l.attempts[0].skipped[0].step == 40);
  CHECK(attempt_json(l.attempts[0])["skipped_at_resume"][0]["problem"] == "model.pt: checksum mismatch");
}

TEST_CASE("an empty history folds into no attempts and no goodput") {
  Ledger l = fold_history({}, {}, kT0);
  CHECK(l.attempts.empty());
  CHECK_FALSE(l.summary.goodput_percent);
  CHECK(summary_json(l.summary)["goodput_percent"].is_null());
}

TEST_CASE("supervisor.json is read back, and a supervisor on another host cannot be judged from here") {
  TempDir d;
  std::ofstream(d / "supervisor.json") << json{{"pid", 1}, {"host", "some-other-host.invalid"}, {"job_id", "17"},
                                               {"control", "/lifeline-0-17-x"}, {"attempt", 3}, {"lineage", "abc"},
                                               {"started", iso8601(kT0)}, {"requeue_mode", "scontrol"},
                                               {"grace_seconds", 25}, {"policy", {{"every_steps", 20}}}}
                                              .dump();
  auto r = read_supervisor_record(d.path());
  REQUIRE(r);
  CHECK(r->pid == 1);
  CHECK(r->job_id == "17");
  CHECK(r->attempt == 3);
  CHECK(r->started_ns == kT0);
  CHECK(r->policy["every_steps"] == 20);
  CHECK(supervisor_state(*r) == Liveness::State::elsewhere);
  Liveness l = probe_liveness(d.path());
  CHECK(l.state == Liveness::State::elsewhere);
  CHECK(l.attempt == 3);
}

TEST_CASE("a supervisor record whose pid is not a lifeline process on this host is dead") {
  TempDir d;
  // Our own pid runs, but it is the test binary, not lifeline: a recycled pid must not count.
  std::ofstream(d / "supervisor.json") << json{{"pid", getpid()}, {"host", this_host()}, {"attempt", 0}}.dump();
  auto r = read_supervisor_record(d.path());
  REQUIRE(r);
  CHECK(supervisor_state(*r) == Liveness::State::dead);
  CHECK_FALSE(read_supervisor_record(d / "missing"));
}

TEST_CASE("the timeline labels each bar with attempt, job and end reason and marks commits and lost work") {
  std::vector<json> events = stopped_then_completed();
  events[0]["job_id"] = "17";
  events[0]["host"] = "node <a> & b";
  Ledger l = fold_history(events, {}, kT0 + 200 * kSec);
  std::string svg = timeline_svg(l, "/scratch/run1", kT0 + 200 * kSec);
  CHECK(svg.rfind("<svg ", 0) == 0);
  CHECK(svg.find("</svg>") != std::string::npos);
  CHECK(svg.find("attempt 0 \u00b7 job 17 \u00b7 stopped by SIGUSR1") != std::string::npos);
  CHECK(svg.find("attempt 1 \u00b7 completed") != std::string::npos);
  CHECK(svg.find("node &lt;a&gt; &amp; b") != std::string::npos);
  CHECK(svg.find("node <a>") == std::string::npos);
  CHECK(svg.find("url(#lost)") != std::string::npos);
  CHECK(svg.find("goodput") != std::string::npos);
  CHECK(svg.find(">45<") != std::string::npos);  // commit step label
}

TEST_CASE("a requeue that failed reads as failed in the table's words and on the timeline, and stays none in JSON") {
  std::vector<json> events = stopped_then_completed();
  events[7] = ev(26, "requeue", {{"attempt", 0}, {"mode", "scontrol"}, {"result", "failed"}, {"detail", "no such job"}});
  Ledger l = fold_history(events, {}, kT0 + 200 * kSec);
  REQUIRE(l.attempts.size() == 2);
  const Attempt& a0 = l.attempts[0];
  CHECK(a0.requeue == "none");
  CHECK(a0.requeue_tried == "scontrol");
  CHECK(requeue_text(a0) == "scontrol failed");
  CHECK(attempt_json(a0)["requeue"] == "none");
  CHECK(attempt_json(a0)["requeue_result"] == "failed");
  CHECK(timeline_svg(l, "/scratch/run1", kT0 + 200 * kSec).find("requeue: scontrol failed") != std::string::npos);
  CHECK(requeue_text(l.attempts[1]) == "none");

  events[7] = ev(26, "requeue", {{"attempt", 0}, {"mode", "local"}, {"result", "budget exhausted"}});
  CHECK(requeue_text(fold_history(events, {}, kT0 + 200 * kSec).attempts[0]) == "none (budget exhausted)");
  events[7] = ev(26, "requeue", {{"attempt", 0}, {"mode", "local"}, {"result", "restart"}});
  CHECK(requeue_text(fold_history(events, {}, kT0 + 200 * kSec).attempts[0]) == "local");
}

namespace {

// Ends the test process (SIGALRM) when the scope takes longer than `seconds`: opening a FIFO
// for reading or writing without a peer blocks forever, and that is the failure to catch.
struct Deadline {
  explicit Deadline(unsigned seconds) { alarm(seconds); }
  ~Deadline() { alarm(0); }
  Deadline(const Deadline&) = delete;
  Deadline& operator=(const Deadline&) = delete;
};

std::string first_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

}  // namespace

TEST_CASE("a history.jsonl or supervisor.json that is a FIFO is refused without blocking") {
  TempDir d;
  REQUIRE(mkfifo((d / kHistoryName).c_str(), 0644) == 0);
  REQUIRE(mkfifo((d / kSupervisorRecordName).c_str(), 0644) == 0);
  Deadline deadline(20);
  HistoryLog(d.path()).append({{"event", "attempt_start"}, {"attempt", 0}});
  CHECK(read_history_events(d.path()).empty());
  std::string error;
  CHECK(read_history_events(d.path(), &error).empty());
  CHECK(error == d / "history.jsonl is not a regular file (a FIFO): remove it");
  CHECK_FALSE(read_supervisor_record(d.path(), &error));
  CHECK(error == d / "supervisor.json is not a regular file (a FIFO): remove it");
  CHECK(probe_liveness(d.path()).state == Liveness::State::none);
}

TEST_CASE("a history.jsonl or supervisor.json that is a symbolic link or a hard link is never written or read through") {
  TempDir d;
  std::string line = json{{"event", "attempt_start"}, {"attempt", 0}, {"time_ns", kT0}}.dump();
  std::string victim = d / "victim";
  std::ofstream(victim) << line << "\n";
  SUBCASE("symbolic link") {
    std::filesystem::create_symlink(victim, d / kHistoryName);
    std::filesystem::create_symlink(victim, d / kSupervisorRecordName);
    std::string error;
    CHECK(read_history_events(d.path(), &error).empty());
    CHECK(error == d / "history.jsonl is a symbolic link: lifeline never follows one; remove it");
    CHECK_FALSE(read_supervisor_record(d.path()));
  }
  SUBCASE("hard link") {
    std::filesystem::create_hard_link(victim, d / kHistoryName);
  }
  HistoryLog(d.path()).append({{"event", "attempt_end"}, {"attempt", 0}});
  std::ifstream in(victim);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(text == line + "\n");
}

TEST_CASE("HistoryLog::append never throws, and strings with invalid UTF-8 are kept as \\xNN") {
  TempDir d;
  HistoryLog log(d.path());
  CHECK_NOTHROW(log.append({{"event", "checkpoint_failed"}, {"attempt", 0}, {"error", "bad \xff\xfe bytes"},
                            {"metrics", {{"loss\xc3", 1.5}}}}));
  CHECK_NOTHROW(log.append(json::array({1, 2})));  // not an object: kept under "value"
  auto events = read_history_events(d.path());
  REQUIRE(events.size() == 2);
  CHECK(events[0]["error"] == "bad \\xff\\xfe bytes");
  CHECK(events[0]["metrics"]["loss\\xc3"] == 1.5);
  CHECK(events[1]["value"] == json::array({1, 2}));
  CHECK(events[1]["time_ns"].is_number());
}

TEST_CASE("a supervisor.json with odd field types is read without throwing and keeps only scalar policy numbers") {
  TempDir d;
  std::ofstream(d / kSupervisorRecordName)
      << R"({"pid": "not a number", "host": 7, "attempt": 2, "policy": {"every_steps": 20, "deep": [[[[1]]]]}})";
  std::optional<SupervisorRecord> r;
  REQUIRE_NOTHROW(r = read_supervisor_record(d.path()));
  REQUIRE(r);
  CHECK(r->pid == 0);
  CHECK(r->host == "");
  CHECK(r->attempt == 2);
  CHECK(r->policy == json{{"every_steps", 20}});
  CHECK(first_line(d / kSupervisorRecordName).find("not a number") != std::string::npos);
}

TEST_CASE("the timeline of a directory whose name is not valid UTF-8 is valid UTF-8") {
  Ledger l = fold_history(stopped_then_completed(), {}, kT0 + 200 * kSec);
  std::string svg = timeline_svg(l, "/scratch/run-\xff", kT0 + 200 * kSec);
  CHECK(svg.find("/scratch/run-\\xff") != std::string::npos);
  CHECK(svg.find("\xff") == std::string::npos);
}

TEST_CASE("failed saves are counted from each checkpoint_failed event's count, one for an event without it") {
  Liveness none;
  const Attempt a = fold_history({start(0, 0), ev(5, "checkpoint_failed", {{"attempt", 0}, {"count", 3}}),
                                  ev(6, "checkpoint_failed", {{"attempt", 0}}), end(7, 0, "completed", 0, 0, nullptr)},
                                 none, kT0 + 1000 * kSec)
                        .attempts.at(0);
  CHECK(a.failed_checkpoints == 4);
}
