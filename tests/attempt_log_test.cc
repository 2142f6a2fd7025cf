// AttemptLog: each typed writer appends exactly the event the supervisor used to build by hand
// (the expected lines below are those hand-built objects, written out), the name tables spell
// what history.jsonl has always said, and a history written only through AttemptLog folds into
// the attempts `lifeline history` shows.
#include <doctest.h>
#include <signal.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/json_text.h"
#include "history/attempt_log.h"
#include "history/history.h"
#include "history/ledger.h"
#include "history/lineage.h"
#include "history/names.h"
#include "support/temp_dir.h"

using namespace lifeline;
using lifeline::test::TempDir;
using json = nlohmann::json;

namespace {

constexpr uint64_t kT0 = 1795000000ull * 1000000000ull;  // 2026-11-18T11:06:40Z

// The lines of dir's history.jsonl, verbatim.
std::vector<std::string> lines_of(const std::string& dir) {
  std::ifstream in(dir + "/" + kHistoryName);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// Runs `write` against a fresh history and checks that it appended exactly one line, and that
// this line is byte for byte `expected` (literal JSON) plus the "time" and "time_ns" every
// event gets.
template <typename Write>
void check_writes(const char* expected, Write write) {
  TempDir dir;
  HistoryLog log(dir.path());
  AttemptLog attempt(log, 3);
  write(attempt);
  auto lines = lines_of(dir.path());
  REQUIRE(lines.size() == 1);
  json got = json::parse(lines[0]);
  REQUIRE(got.contains("time"));
  REQUIRE(got.contains("time_ns"));
  json want = json::parse(expected);
  want["time"] = got["time"];
  want["time_ns"] = got["time_ns"];
  INFO("written:  ", lines[0]);
  INFO("expected: ", dump_json(want));
  CHECK(lines[0] == dump_json(want));
}

}  // namespace

TEST_CASE("attempt_start writes the lineage, job, host, pid, resume and skipped checkpoints, and the requeue mode") {
  SUBCASE("resumed in a Slurm job, with a skipped checkpoint") {
    check_writes(R"({"event":"attempt_start","attempt":3,"lineage":"abc","job_id":"17_2","host":"node-a","pid":4242,
                    "resumed_from_step":500,"resumed_from":"/ckpt/step-500","skipped":[{"step":600,"problem":"bad size"}],
                    "requeue_mode":"scontrol"})",
                 [](AttemptLog& l) {
                   l.attempt_start({"abc", "17_2", "node-a", 4242, 500, "/ckpt/step-500",
                                    json::array({{{"step", 600}, {"problem", "bad size"}}}), RequeueMode::scontrol});
                 });
  }
  SUBCASE("from scratch outside Slurm: nulls and an empty skipped list") {
    check_writes(R"({"event":"attempt_start","attempt":3,"lineage":"abc","job_id":null,"host":"laptop","pid":7,
                    "resumed_from_step":null,"resumed_from":null,"skipped":[],"requeue_mode":"local"})",
                 [](AttemptLog& l) {
                   AttemptLog::Start s;
                   s.lineage = "abc";
                   s.host = "laptop";
                   s.pid = 7;
                   s.mode = RequeueMode::local;
                   s.skipped = nullptr;  // null is written as []
                   l.attempt_start(s);
                 });
  }
}

TEST_CASE("signal writes the signal's name and the state, and the signals that came together in signal order") {
  check_writes(R"({"event":"signal","attempt":3,"signal":"USR1","state":"running"})",
               [](AttemptLog& l) { l.signal(SIGUSR1, "running", 0); });
  check_writes(R"({"event":"signal","attempt":3,"signal":"TERM","state":"checkpointing","together":["USR1","TERM"]})",
               [](AttemptLog& l) { l.signal(SIGTERM, "checkpointing", (1ull << SIGTERM) | (1ull << SIGUSR1)); });
}

TEST_CASE("trainer_signal writes the name of the signal the trainer received") {
  check_writes(R"({"event":"trainer_signal","attempt":3,"signal":"INT"})", [](AttemptLog& l) { l.trainer_signal(SIGINT); });
}

TEST_CASE("checkpoint_request writes reason and seq, and the deadline in ISO 8601 only when given") {
  check_writes(R"({"event":"checkpoint_request","attempt":3,"reason":"manual","seq":4})",
               [](AttemptLog& l) { l.checkpoint_request(RequestReason::manual, 4); });
  check_writes(R"({"event":"checkpoint_request","attempt":3,"reason":"periodic","seq":5})",
               [](AttemptLog& l) { l.checkpoint_request(RequestReason::periodic, 5, std::nullopt); });
  check_writes(R"({"event":"checkpoint_request","attempt":3,"reason":"stop_signal","seq":6,
                  "deadline":"2026-11-18T11:07:05.500Z"})",
               [](AttemptLog& l) { l.checkpoint_request(RequestReason::stop_signal, 6, kT0 + 25'500'000'000ull); });
  check_writes(R"({"event":"checkpoint_request","attempt":3,"reason":"time_limit","seq":7,
                  "deadline":"2026-11-18T11:06:40.000Z"})",
               [](AttemptLog& l) { l.checkpoint_request(RequestReason::time_limit, 7, kT0); });
}

TEST_CASE("checkpoint_commit writes step, bytes and the duration, null when it was not measured") {
  check_writes(R"({"event":"checkpoint_commit","attempt":3,"step":500,"bytes":123456,"duration_s":1.25})",
               [](AttemptLog& l) { l.checkpoint_commit(500, 123456, 1.25); });
  check_writes(R"({"event":"checkpoint_commit","attempt":3,"step":400,"bytes":99,"duration_s":null})",
               [](AttemptLog& l) { l.checkpoint_commit(400, 99, std::nullopt); });
}

TEST_CASE("checkpoint_failed, checkpoint_timeout and time_limit_near write their count, seq, or nothing more") {
  check_writes(R"({"event":"checkpoint_failed","attempt":3,"count":2})", [](AttemptLog& l) { l.checkpoint_failed(2); });
  check_writes(R"({"event":"checkpoint_timeout","attempt":3,"seq":9})", [](AttemptLog& l) { l.checkpoint_timeout(9); });
  check_writes(R"({"event":"time_limit_near","attempt":3})", [](AttemptLog& l) { l.time_limit_near(); });
}

TEST_CASE("hang writes the last step, and the client's state only when known") {
  check_writes(R"({"event":"hang","attempt":3,"step":700})", [](AttemptLog& l) { l.hang(700); });
  check_writes(R"({"event":"hang","attempt":3,"step":700,"client_state":"saving"})",
               [](AttemptLog& l) { l.hang(700, std::string_view("saving")); });
}

TEST_CASE("slurm_view writes the job state and reason, and end time, limit or cause only when given") {
  // classify_stop's shape, then refine_cause's.
  check_writes(R"({"event":"slurm_view","attempt":3,"job_state":"RUNNING","reason":"None",
                  "end_time":"2026-11-18T12:00:00","time_limit":"01:00:00"})",
               [](AttemptLog& l) {
                 l.slurm_view("RUNNING", "None", std::string("2026-11-18T12:00:00"), std::string("01:00:00"), std::nullopt);
               });
  check_writes(R"({"event":"slurm_view","attempt":3,"job_state":"PENDING","reason":"BeginTime","cause":"preempted"})",
               [](AttemptLog& l) { l.slurm_view("PENDING", "BeginTime", std::nullopt, std::nullopt, std::string("preempted")); });
}

TEST_CASE("retention writes the removed steps and the bytes freed") {
  check_writes(R"({"event":"retention","attempt":3,"removed_steps":[100,200],"bytes_freed":4096})",
               [](AttemptLog& l) { l.retention({100, 200}, 4096); });
}

TEST_CASE("requeue writes mode and result, and detail, new job id, exit code or backoff only when given") {
  using R = AttemptLog::Requeue;
  check_writes(R"({"event":"requeue","attempt":3,"mode":"scontrol","result":"requeued","detail":"ok"})",
               [](AttemptLog& l) { l.requeue(R{RequeueMode::scontrol, RequeueResult::requeued, "ok", {}, {}, {}}); });
  check_writes(R"({"event":"requeue","attempt":3,"mode":"scontrol","result":"failed","detail":"Invalid job id"})",
               [](AttemptLog& l) { l.requeue(R{RequeueMode::scontrol, RequeueResult::failed, "Invalid job id", {}, {}, {}}); });
  check_writes(R"({"event":"requeue","attempt":3,"mode":"sbatch","result":"failed"})",
               [](AttemptLog& l) { l.requeue(R{RequeueMode::sbatch, RequeueResult::failed, {}, {}, {}, {}}); });
  check_writes(R"({"event":"requeue","attempt":3,"mode":"sbatch","result":"resubmitted","new_job_id":"42"})",
               [](AttemptLog& l) { l.requeue(R{RequeueMode::sbatch, RequeueResult::resubmitted, {}, "42", {}, {}}); });
  check_writes(R"({"event":"requeue","attempt":3,"mode":"exit","result":"exit code","exit_code":75})",
               [](AttemptLog& l) { l.requeue(R{RequeueMode::exit, RequeueResult::exit_code, {}, {}, 75, {}}); });
  check_writes(R"({"event":"requeue","attempt":3,"mode":"local","result":"restart","backoff_s":2.0})",
               [](AttemptLog& l) { l.requeue(R{RequeueMode::local, RequeueResult::restart, {}, {}, {}, 2.0}); });
  check_writes(R"({"event":"requeue","attempt":3,"mode":"exit","result":"budget exhausted"})",
               [](AttemptLog& l) { l.requeue(R{RequeueMode::exit, RequeueResult::budget_exhausted, {}, {}, {}, {}}); });
  check_writes(R"({"event":"requeue","attempt":3,"mode":"none","result":"not requeued"})",
               [](AttemptLog& l) { l.requeue(R{RequeueMode::none, RequeueResult::not_requeued, {}, {}, {}, {}}); });
}

TEST_CASE("attempt_end writes reason, status, counts, steps and signal, and the stop checkpoint only when given") {
  check_writes(R"({"event":"attempt_end","attempt":3,"end_reason":"failed","exit_code":1,"checkpoints":0,
                  "last_checkpoint_step":null,"last_step":120,"signal":null})",
               [](AttemptLog& l) { l.attempt_end({EndReason::failed, 1, 0, std::nullopt, 120, 0, nullptr}); });
  check_writes(R"({"event":"attempt_end","attempt":3,"end_reason":"failed","exit_code":null,"checkpoints":0,
                  "last_checkpoint_step":null,"last_step":0,"signal":null})",
               [](AttemptLog& l) { l.attempt_end({EndReason::failed, std::nullopt, 0, std::nullopt, 0, 0, nullptr}); });
  check_writes(R"({"event":"attempt_end","attempt":3,"end_reason":"preempted","exit_code":0,"checkpoints":4,
                  "last_checkpoint_step":800,"last_step":800,"signal":"TERM",
                  "stop_checkpoint":{"state":"committed","step":800}})",
               [](AttemptLog& l) {
                 l.attempt_end({EndReason::preempted, 0, 4, 800, 800, SIGTERM, {{"state", "committed"}, {"step", 800}}});
               });
  check_writes(R"({"event":"attempt_end","attempt":3,"end_reason":"time_limit","exit_code":143,"checkpoints":1,
                  "last_checkpoint_step":500,"last_step":650,"signal":null,
                  "stop_checkpoint":{"state":"missing","why":"the trainer did not commit it before the deadline and was stopped",
                                     "resume_step":500,"lost_steps":150}})",
               [](AttemptLog& l) {
                 l.attempt_end({EndReason::time_limit, 143, 1, 500, 650, 0,
                                {{"state", "missing"},
                                 {"why", "the trainer did not commit it before the deadline and was stopped"},
                                 {"resume_step", 500},
                                 {"lost_steps", 150}}});
               });
  check_writes(R"({"event":"attempt_end","attempt":3,"end_reason":"completed","exit_code":0,"checkpoints":2,
                  "last_checkpoint_step":1000,"last_step":1000,"signal":null})",
               [](AttemptLog& l) { l.attempt_end({EndReason::completed, 0, 2, 1000, 1000, 0, nullptr}); });
  check_writes(R"({"event":"attempt_end","attempt":3,"end_reason":"stopped","exit_code":0,"checkpoints":1,
                  "last_checkpoint_step":10,"last_step":10,"signal":"USR1","stop_checkpoint":{"state":"committed","step":10}})",
               [](AttemptLog& l) {
                 l.attempt_end({EndReason::stopped, 0, 1, 10, 10, SIGUSR1, {{"state", "committed"}, {"step", 10}}});
               });
}

TEST_CASE("attempt_lost names the lost attempt, not the writer's, and the block's steps only when known") {
  check_writes(R"({"event":"attempt_lost","attempt":1,"control":"/lifeline-1000-17","pid":4242,"last_step":77,
                  "last_checkpoint_step":50})",
               [](AttemptLog& l) { l.attempt_lost(1, "/lifeline-1000-17", 4242, 77, 50); });
  check_writes(R"({"event":"attempt_lost","attempt":1,"control":"/lifeline-1000-17","pid":4242,"last_step":77})",
               [](AttemptLog& l) { l.attempt_lost(1, "/lifeline-1000-17", 4242, 77, std::nullopt); });
}

TEST_CASE("set_attempt numbers the events that follow") {
  TempDir dir;
  HistoryLog log(dir.path());
  AttemptLog attempt(log, 0);
  attempt.time_limit_near();
  attempt.set_attempt(5);
  attempt.time_limit_near();
  auto events = read_history_events(dir.path());
  REQUIRE(events.size() == 2);
  CHECK(events[0]["attempt"] == 0);
  CHECK(events[1]["attempt"] == 5);
  CHECK(attempt.attempt() == 5);
}

TEST_CASE("every end reason, requeue mode, requeue result and request reason is spelled as history.jsonl spells it") {
  CHECK(name(EndReason::completed) == "completed");
  CHECK(name(EndReason::stopped) == "stopped");
  CHECK(name(EndReason::preempted) == "preempted");
  CHECK(name(EndReason::time_limit) == "time_limit");
  CHECK(name(EndReason::failed) == "failed");
  CHECK(name(EndReason::lost) == "lost");
  CHECK(name(RequeueMode::automatic) == "auto");
  CHECK(name(RequeueMode::scontrol) == "scontrol");
  CHECK(name(RequeueMode::sbatch) == "sbatch");
  CHECK(name(RequeueMode::exit) == "exit");
  CHECK(name(RequeueMode::local) == "local");
  CHECK(name(RequeueMode::none) == "none");
  CHECK(name(RequeueResult::requeued) == "requeued");
  CHECK(name(RequeueResult::resubmitted) == "resubmitted");
  CHECK(name(RequeueResult::exit_code) == "exit code");
  CHECK(name(RequeueResult::not_requeued) == "not requeued");
  CHECK(name(RequeueResult::restart) == "restart");
  CHECK(name(RequeueResult::failed) == "failed");
  CHECK(name(RequeueResult::budget_exhausted) == "budget exhausted");
  CHECK(name(RequestReason::periodic) == "periodic");
  CHECK(name(RequestReason::stop_signal) == "stop_signal");
  CHECK(name(RequestReason::time_limit) == "time_limit");
  CHECK(name(RequestReason::manual) == "manual");
}

TEST_CASE("each name parses back to its value, and any other spelling to none") {
  for (auto v : {EndReason::completed, EndReason::stopped, EndReason::preempted, EndReason::time_limit,
                 EndReason::failed, EndReason::lost})
    CHECK(parse_end_reason(name(v)) == v);
  for (auto v : {RequeueMode::automatic, RequeueMode::scontrol, RequeueMode::sbatch, RequeueMode::exit,
                 RequeueMode::local, RequeueMode::none})
    CHECK(parse_requeue_mode(name(v)) == v);
  for (auto v : {RequeueResult::requeued, RequeueResult::resubmitted, RequeueResult::exit_code,
                 RequeueResult::not_requeued, RequeueResult::restart, RequeueResult::failed,
                 RequeueResult::budget_exhausted})
    CHECK(parse_requeue_result(name(v)) == v);
  for (auto v : {RequestReason::periodic, RequestReason::stop_signal, RequestReason::time_limit, RequestReason::manual})
    CHECK(parse_request_reason(name(v)) == v);
  CHECK_FALSE(parse_end_reason("Completed"));
  CHECK_FALSE(parse_end_reason(""));
  CHECK_FALSE(parse_requeue_mode("automatic"));
  CHECK_FALSE(parse_requeue_result("exit_code"));
  CHECK_FALSE(parse_requeue_result("not_requeued"));
  CHECK_FALSE(parse_request_reason("stop signal"));
}

TEST_CASE("a history written only through AttemptLog folds into the attempts lifeline history shows") {
  TempDir dir;
  HistoryLog log(dir.path());
  AttemptLog a(log, 0);
  using R = AttemptLog::Requeue;

  // 0: preempted in a Slurm job, stop checkpoint committed, requeued by scontrol.
  a.attempt_start({"lin-1", "17", "node-a", 100, std::nullopt, std::nullopt, json::array(), RequeueMode::scontrol});
  a.checkpoint_request(RequestReason::periodic, 1);
  a.checkpoint_commit(100, 1000, 0.5);
  a.checkpoint_failed(2);
  a.signal(SIGUSR1, "running", (1ull << SIGUSR1) | (1ull << SIGTERM));
  a.checkpoint_request(RequestReason::stop_signal, 2, kT0);
  a.slurm_view("RUNNING", "None", std::string("Unknown"), std::string("01:00:00"), std::nullopt);
  a.checkpoint_commit(150, 1000, 0.25);
  a.retention({100}, 1000);
  a.attempt_end({EndReason::preempted, 0, 2, 150, 150, SIGUSR1, {{"state", "committed"}, {"step", 150}}});
  a.requeue(R{RequeueMode::scontrol, RequeueResult::requeued, "ok", {}, {}, {}});

  // 1: resumed; the trainer got TERM itself, then hung; restarted locally.
  a.set_attempt(1);
  a.attempt_start({"lin-1", "17", "node-b", 101, 150, std::string("/c/step-150"),
                   json::array({{{"step", 160}, {"problem", "manifest missing"}}}), RequeueMode::scontrol});
  a.trainer_signal(SIGTERM);
  a.checkpoint_request(RequestReason::manual, 1);
  a.checkpoint_timeout(1);
  a.hang(170, std::string_view("saving"));
  a.attempt_end({EndReason::failed, 137, 0, std::nullopt, 170, 0, nullptr});
  a.requeue(R{RequeueMode::local, RequeueResult::restart, {}, {}, {}, 1.0});

  // 2: time limit, no stop checkpoint, resubmitted by sbatch.
  a.set_attempt(2);
  a.attempt_start({"lin-1", "17", "node-b", 101, 150, std::string("/c/step-150"), json::array(), RequeueMode::sbatch});
  a.time_limit_near();
  a.checkpoint_request(RequestReason::time_limit, 1, kT0);
  a.checkpoint_commit(155, 10, std::nullopt);
  a.attempt_end({EndReason::time_limit, 143, 1, 155, 180, 0,
                 {{"state", "missing"}, {"why", "the trainer exited (status 143) before committing it"},
                  {"resume_step", 155}, {"lost_steps", 25}}});
  a.requeue(R{RequeueMode::sbatch, RequeueResult::resubmitted, {}, "42", {}, {}});

  // 3: completed.
  a.set_attempt(3);
  a.attempt_start({"lin-1", "42", "node-c", 102, 155, std::string("/c/step-155"), json::array(), RequeueMode::exit});
  a.checkpoint_commit(200, 10, 0.125);
  a.attempt_end({EndReason::completed, 0, 1, 200, 200, 0, nullptr});

  Ledger ledger = fold_history(read_history_events(dir.path()), Liveness{}, kT0);
  REQUIRE(ledger.attempts.size() == 4);
  std::vector<nlohmann::ordered_json> j;
  for (const auto& at : ledger.attempts) j.push_back(attempt_json(at));

  CHECK(j[0]["end_reason"] == "preempted");
  CHECK(j[0]["job_id"] == "17");
  CHECK(j[0]["exit_code"] == 0);
  CHECK(j[0]["checkpoints"] == 2);
  CHECK(j[0]["last_checkpoint_step"] == 150);
  CHECK(j[0]["requeue"] == "scontrol");
  CHECK(j[0]["requeue_result"] == "requeued");
  CHECK(j[0]["requeue_detail"] == "ok");
  CHECK(j[0]["failed_checkpoints"] == 2);
  CHECK(j[0]["checkpoint_bytes"] == 2000);
  CHECK(j[0]["checkpoint_seconds"] == 0.75);
  CHECK(j[0]["checkpoint_requests"] == nlohmann::ordered_json{{"periodic", 1}, {"stop_signal", 1}});
  REQUIRE(j[0]["signals"].size() == 1);
  CHECK(j[0]["signals"][0]["signal"] == "USR1");
  CHECK(j[0]["signals"][0]["to"] == "supervisor");
  CHECK(j[0]["stop_checkpoint"]["state"] == "committed");
  CHECK(j[0]["lineage"] == "lin-1");
  CHECK(j[0]["pid"] == 100);

  CHECK(j[1]["end_reason"] == "failed");
  CHECK(j[1]["exit_code"] == 137);
  CHECK(j[1]["resumed_from_step"] == 150);
  CHECK(j[1]["hang"] == true);
  CHECK(j[1]["last_step"] == 170);
  CHECK(j[1]["checkpoint_timeouts"] == 1);
  CHECK(j[1]["requeue"] == "local");
  CHECK(j[1]["requeue_result"] == "restart");
  CHECK(j[1]["signals"][0]["signal"] == "TERM");
  CHECK(j[1]["signals"][0]["to"] == "trainer");
  CHECK(j[1]["skipped_at_resume"] == nlohmann::ordered_json::array({{{"step", 160}, {"problem", "manifest missing"}}}));
  CHECK(j[1]["stop_checkpoint"].is_null());

  CHECK(j[2]["end_reason"] == "time_limit");
  CHECK(j[2]["requeue"] == "sbatch");
  CHECK(j[2]["requeue_result"] == "resubmitted");
  CHECK(j[2]["requeue_detail"] == "new job 42");
  CHECK(j[2]["checkpoint_requests"] == nlohmann::ordered_json{{"time_limit", 1}});
  CHECK(j[2]["stop_checkpoint"] == nlohmann::ordered_json{{"state", "missing"},
                                                          {"why", "the trainer exited (status 143) before committing it"},
                                                          {"resume_step", 155},
                                                          {"lost_steps", 25}});

  CHECK(j[3]["end_reason"] == "completed");
  CHECK(j[3]["requeue"] == "none");
  CHECK(j[3]["requeue_result"].is_null());
  CHECK(j[3]["lost_seconds"] == 0);

  CHECK(ledger.summary.state == "completed");
  CHECK(ledger.summary.checkpoints == 4);
  CHECK(ledger.summary.interruptions == std::map<std::string, uint64_t>{{"failed", 1}, {"preempted", 1}, {"time_limit", 1}});

  // What the next supervisor of this directory would start from.
  LineageState s = lineage_state(ledger);
  CHECK(s.lineage == "lin-1");
  CHECK(s.attempts == 4);
  CHECK(s.requeues == 2);  // requeued, resubmitted; the local restart is not a requeue
  CHECK(s.failures_in_row == 0);
  CHECK(s.commit_seconds == std::vector<double>{0.5, 0.25, 0.125});  // the unmeasured commit is left out
}
