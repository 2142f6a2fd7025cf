// `lifeline history`, `status` and `request` end to end: the real supervisor supervising the real
// LibTorch example trainer, read from another process exactly as a user's shell would.
#include <doctest.h>
#include <signal.h>
#include <sys/mman.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/clock.h"
#include "support/process.h"
#include "support/table_text.h"
#include "support/temp_dir.h"

using namespace lifeline::test;
using json = nlohmann::json;

namespace {

std::string write_policy(const TempDir& d, int every_steps) {
  std::string path = d / "policy.yaml";
  std::ofstream(path) << "version: 1\n"
                         "checkpoint:\n  every_steps: "
                      << every_steps << "\n  every_seconds: 0\n";
  return path;
}

std::vector<std::string> lifeline_run(const TempDir& d, int steps, int delay_ms, int every_steps = 20) {
  return {binary("LIFELINE_BIN"), "run", "--policy", write_policy(d, every_steps), "--ckpt-dir", d / "ckpt", "--",
          binary("TRAIN_EXAMPLE_BIN"), "--steps", std::to_string(steps), "--seed", "7", "--step-delay-ms",
          std::to_string(delay_ms), "--log-every", "1"};
}

std::vector<std::string> cli(const std::vector<std::string>& args) {
  std::vector<std::string> v = {binary("LIFELINE_BIN")};
  v.insert(v.end(), args.begin(), args.end());
  return v;
}

// Runs a lifeline command that prints JSON on stdout; stderr is not captured into it.
json run_json(const std::vector<std::string>& args, int* status) {
  std::string out;
  *status = run(cli(args), &out);
  auto j = json::parse(out, nullptr, false);
  if (j.is_discarded()) FAIL_CHECK("not JSON: " << out);
  return j;
}

}  // namespace

TEST_CASE("history shows a run stopped by SIGUSR1 and its resumed completion as two attempts") {
  TempDir d;
  Process first(lifeline_run(d, 120, 10));
  REQUIRE(first.wait_for_line("step 50 ") != "");
  first.signal(SIGUSR1);
  std::string stop = first.wait_for_line("stopping at step ");
  REQUIRE_MESSAGE(stop != "", first.output());
  uint64_t stop_step = std::stoull(stop.substr(stop.find("stopping at step ") + 17));
  REQUIRE(first.wait() == 75);

  std::string out;
  REQUIRE_MESSAGE(run(lifeline_run(d, 120, 0)) == 0, out);

  int status = -1;
  json h = run_json({"history", d / "ckpt", "--json"}, &status);
  CHECK(status == 0);
  REQUIRE(h.is_array());
  REQUIRE(h.size() == 2);
  CHECK(h[0]["attempt"] == 0);
  CHECK(h[0]["end_reason"] == "stopped");
  CHECK(h[0]["resumed_from_step"].is_null());
  CHECK(h[0]["last_checkpoint_step"] == stop_step);
  // every 20 steps up to the stop step, plus the stop checkpoint itself unless it fell on a multiple.
  uint64_t first_commits = stop_step / 20 + (stop_step % 20 ? 1 : 0);
  CHECK(h[0]["checkpoints"] == first_commits);
  CHECK(h[0]["exit_code"] == 0);
  CHECK(h[0]["requeue"] == "none");
  CHECK(h[0]["signals"][0]["signal"] == "USR1");
  CHECK(h[0]["ended"].is_string());
  CHECK(h[1]["attempt"] == 1);
  CHECK(h[1]["end_reason"] == "completed");
  CHECK(h[1]["resumed_from_step"] == stop_step);
  CHECK(h[1]["last_checkpoint_step"] == 120);
  CHECK(h[1]["checkpoints"] == (120 - stop_step) / 20 + ((120 - stop_step) % 20 ? 1 : 0));
  CHECK(h[1]["lost_seconds"] == 0);
  for (const auto& a : h) {
    CHECK(a["host"].is_string());
    CHECK(a["job_id"].is_null());
    CHECK(a["started"].is_string());
    CHECK(a["lost_seconds"].is_number());
  }

  // The table and the timeline from the same history.
  REQUIRE(run(cli({"history", d / "ckpt", "--timeline", d / "t.svg"}), &out) == 0);
  CHECK(out.find("goodput") != std::string::npos);
  CHECK(out.find("interruptions  1 stopped") != std::string::npos);
  std::ifstream svg(d / "t.svg");
  std::stringstream text;
  text << svg.rdbuf();
  CHECK(text.str().find("attempt 0 \u00b7 stopped by SIGUSR1") != std::string::npos);
  CHECK(text.str().find("attempt 1 \u00b7 completed") != std::string::npos);

  // A .png is a real PNG (rsvg-convert, a setup package); another kind of file is refused.
  REQUIRE(run(cli({"history", d / "ckpt", "--timeline", d / "t.png"}), &out) == 0);
  std::ifstream png(d / "t.png", std::ios::binary);
  std::string magic(8, '\0');
  png.read(magic.data(), 8);
  CHECK(magic == std::string("\x89PNG\r\n\x1a\n", 8));
  CHECK(run(cli({"history", d / "ckpt", "--timeline", d / "t.jpg"}), &out) == 2);
  CHECK(out.find("a timeline is an .svg or a .png file, not .jpg") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(d / "t.jpg"));
}

TEST_CASE("history answers 1 with an empty array when nothing ran") {
  TempDir d;
  std::filesystem::create_directory(d / "nothing");  // a missing directory is an input error (2)
  int status = -1;
  json h = run_json({"history", d / "nothing", "--json"}, &status);
  CHECK(status == 1);
  CHECK(h == json::array());
}

namespace {

// A history.jsonl written by hand: an array job's attempt on a host with a long name, preempted,
// whose scontrol requeue failed; then a second attempt of another job that completed.
void write_long_names_history(const std::string& dir) {
  constexpr uint64_t t0 = 1795000000ull * 1000000000ull;
  auto ev = [&](double at, const std::string& name, json fields) {
    uint64_t t = t0 + uint64_t(at * 1e9);
    fields["event"] = name;
    fields["time"] = lifeline::iso8601(t);
    fields["time_ns"] = t;
    return fields;
  };
  auto start = [&](double at, int attempt, const std::string& host, const std::string& job, json resumed) {
    return ev(at, "attempt_start", {{"attempt", attempt}, {"lineage", "abc"}, {"job_id", job}, {"host", host},
                                    {"pid", 4242}, {"resumed_from_step", resumed}, {"skipped", json::array()},
                                    {"requeue_mode", "scontrol"}});
  };
  std::vector<json> events = {
      start(0, 0, "gpu-node-0123.cluster.example.org", "123456_789", nullptr),
      ev(600, "checkpoint_commit", {{"attempt", 0}, {"step", 1000}, {"bytes", 35456}, {"duration_s", 2.5}}),
      ev(3600, "signal", {{"attempt", 0}, {"signal", "TERM"}, {"state", "running"}}),
      ev(3610, "checkpoint_commit", {{"attempt", 0}, {"step", 6000}, {"bytes", 35456}, {"duration_s", 2.5}}),
      ev(3611, "attempt_end", {{"attempt", 0}, {"end_reason", "preempted"}, {"exit_code", 0}, {"checkpoints", 2},
                               {"last_checkpoint_step", 6000}, {"signal", "TERM"}}),
      ev(3612, "requeue", {{"attempt", 0}, {"mode", "scontrol"}, {"result", "failed"},
                           {"detail", "scontrol requeue 123456_789: Invalid job id specified"}}),
      start(4000, 1, "n1", "17", 6000),
      ev(4100, "attempt_end", {{"attempt", 1}, {"end_reason", "completed"}, {"exit_code", 0}, {"checkpoints", 0},
                               {"last_checkpoint_step", nullptr}, {"signal", nullptr}}),
  };
  std::ofstream out(dir + "/history.jsonl");
  for (const auto& e : events) out << e.dump() << "\n";
}

const std::vector<std::string> kHistoryColumns = {"ATTEMPT", "JOB", "HOST", "START (UTC)", "DURATION",
                                                  "RESUMED", "END", "CKPTS", "LOST", "REQUEUE"};

}  // namespace

TEST_CASE("history's table lines up with an array job id and a long host, and shows a failed requeue as failed") {
  TempDir d;
  std::filesystem::create_directory(d / "ckpt");
  write_long_names_history(d / "ckpt");
  std::string out;
  REQUIRE(run(cli({"history", d / "ckpt"}), &out, {{"COLUMNS", ""}}) == 0);  // not a terminal, no $COLUMNS: no limit
  std::vector<std::string> lines = screen_lines(out);
  size_t head = line_starting(lines, "ATTEMPT");
  REQUIRE_MESSAGE(head + 2 < lines.size(), out);
  std::vector<size_t> starts = column_starts(lines[head], kHistoryColumns);
  REQUIRE_MESSAGE(starts.size() == kHistoryColumns.size(), out);
  for (size_t r = head + 1; r <= head + 2; ++r) CHECK_MESSAGE(aligned(lines[r], starts), out);
  const std::string& a0 = lines[head + 1];
  CHECK(cell(a0, starts, 1) == "123456_789");
  CHECK(cell(a0, starts, 2) == "gpu-node-0123.cluster.example.org");
  CHECK(cell(a0, starts, 4) == "1h 00m");
  CHECK(cell(a0, starts, 6) == "preempted (TERM)");
  CHECK(cell(a0, starts, 9) == "scontrol failed");
  CHECK(cell(lines[head + 2], starts, 9) == "none");
  CHECK(out.find("attempt 0: the requeue (scontrol) failed: scontrol requeue 123456_789: Invalid job id specified") !=
        std::string::npos);
  // JSON keeps the contract: a requeue that failed brought nothing about ("none"), with its result.
  int status = -1;
  json h = run_json({"history", d / "ckpt", "--json"}, &status);
  REQUIRE(h.size() == 2);
  CHECK(h[0]["requeue"] == "none");
  CHECK(h[0]["requeue_result"] == "failed");
  CHECK(h[0]["job_id"] == "123456_789");

  // A 110-column terminal: the long cells are cut with an ellipsis, ids and times are not, and the rows
  // still line up under the header.
  REQUIRE(run(cli({"history", d / "ckpt"}), &out, {{"COLUMNS", "110"}}) == 0);
  lines = screen_lines(out);
  head = line_starting(lines, "ATTEMPT");
  REQUIRE_MESSAGE(head + 2 < lines.size(), out);
  starts = column_starts(lines[head], kHistoryColumns);
  REQUIRE_MESSAGE(starts.size() == kHistoryColumns.size(), out);
  for (size_t r = head; r <= head + 2; ++r) {
    CHECK_MESSAGE(lines[r].size() <= 110, out);
    if (r > head) CHECK_MESSAGE(aligned(lines[r], starts), out);
  }
  CHECK(cell(lines[head + 1], starts, 1) == "123456_789");
  CHECK(cell(lines[head + 1], starts, 3) == "2026-11-18 11:06:40");
  std::string host = cell(lines[head + 1], starts, 2);
  CHECK(host.back() == '~');
  CHECK(std::string("gpu-node-0123.cluster.example.org").rfind(host.substr(0, host.size() - 1), 0) == 0);
  CHECK(cell(lines[head + 1], starts, 9).rfind("scontrol f", 0) == 0);
}

TEST_CASE("status shows the running supervisor, its trainer and step, and answers 1 once it has exited") {
  TempDir d;
  Process p(lifeline_run(d, 4000, 5, 1000));  // bounded, should the test fail before stopping it
  REQUIRE(p.wait_for_line("step 20 ") != "");
  int status = -1;
  json s = run_json({"status", d / "ckpt", "--json"}, &status);
  CHECK(status == 0);
  CHECK(s["running"] == true);
  CHECK(s["reachable"] == true);
  CHECK(s["supervisor"]["pid"] == p.pid());
  CHECK(s["supervisor"]["attempt"] == 0);
  CHECK(s["trainer"]["pid"].is_number());
  CHECK(s["trainer"]["step"].get<uint64_t>() >= 20);
  CHECK(s["pending_request"].is_null());
  CHECK(s["next_checkpoint"]["every_steps"] == 1000);
  CHECK(s["next_checkpoint"]["step"] == 1000);
  CHECK(s["policy"]["every_steps"] == 1000);
  CHECK(s["attempt"]["running"] == true);

  std::string text;
  CHECK(run(cli({"status", d / "ckpt"}), &text) == 0);
  CHECK(text.find("supervisor      pid " + std::to_string(p.pid())) != std::string::npos);
  // The policy's durations as policy files write them, not as a count of seconds.
  CHECK_MESSAGE(text.find("checkpoint every 1000 steps / off; keep last 3 + best 1 by val_loss;") != std::string::npos, text);
  CHECK_MESSAGE(text.find("; grace 25s; hang check off") != std::string::npos, text);

  p.signal(SIGUSR1);
  CHECK(p.wait() == 75);
  s = run_json({"status", d / "ckpt", "--json"}, &status);
  CHECK(status == 1);
  CHECK(s["running"] == false);
  CHECK(s["last_attempt"]["end_reason"] == "stopped");
  CHECK(s["newest_checkpoint"]["step"] == s["last_attempt"]["last_checkpoint_step"]);
}

TEST_CASE("request --wait makes the running trainer commit a checkpoint and reports its step") {
  TempDir d;
  // every_steps 0: no periodic checkpoint, so the only commit is the one requested.
  Process p(lifeline_run(d, 4000, 5, 0));
  REQUIRE(p.wait_for_line("step 10 ") != "");
  int status = -1;
  json r = run_json({"request", d / "ckpt", "--wait", "--timeout", "120", "--json"}, &status);
  CHECK(status == 0);
  CHECK(r["seq"].get<uint64_t>() >= 1);
  REQUIRE(r["committed_step"].is_number());
  uint64_t step = r["committed_step"];
  CHECK(step >= 10);
  REQUIRE(p.wait_for_line("checkpoint committed: step " + std::to_string(step)) != "");

  p.signal(SIGUSR1);
  CHECK(p.wait() == 75);
  json h = run_json({"history", d / "ckpt", "--json"}, &status);
  REQUIRE(h.size() == 1);
  CHECK(h[0]["checkpoint_requests"]["manual"] == 1);
  CHECK(h[0]["checkpoints"] == 2);  // the requested one and the stop checkpoint
}

TEST_CASE("request and status answer 1 when no supervisor runs") {
  TempDir d;
  std::filesystem::create_directory(d / "ckpt");  // a missing directory is an input error (2)
  std::string out;
  CHECK(run(cli({"request", d / "ckpt"}), &out) == 1);
  CHECK(out.find("no supervisor.json") != std::string::npos);
  CHECK(run(cli({"status", d / "ckpt"}), &out) == 1);
  CHECK(out.find("no supervisor is running") != std::string::npos);
}

TEST_CASE("an attempt whose supervisor was SIGKILLed shows as lost, with its lost work estimated") {
  TempDir d;
  Process first(lifeline_run(d, 4000, 5, 20));
  std::string started = first.wait_for_line("trainer started, pid ");
  REQUIRE(started != "");
  pid_t trainer = std::stoi(started.substr(started.find("pid ") + 4));
  // The supervisor records a commit in the history right after logging it, before the next one.
  REQUIRE(first.wait_for_line("checkpoint committed: step 60") != "");
  ::kill(trainer, SIGSTOP);  // freeze its step in the control block
  first.signal(SIGKILL);
  ::kill(trainer, SIGKILL);  // an orphan now, holding the output pipe open: nobody else would stop it
  first.wait();
  int status = -1;
  json h = run_json({"history", d / "ckpt", "--json"}, &status);
  // The killed supervisor never unlinked its control block; history read the trainer's last step from it.
  json rec = json::parse(std::ifstream(d / "ckpt/supervisor.json"), nullptr, false);
  REQUIRE(rec.is_object());
  CHECK(::shm_unlink(rec["control"].get<std::string>().c_str()) == 0);

  REQUIRE(h.size() == 1);
  CHECK(h[0]["end_reason"] == "lost");
  CHECK(h[0]["ended_estimated"] == true);
  CHECK(h[0]["exit_code"].is_null());
  CHECK(h[0]["last_checkpoint_step"].get<uint64_t>() >= 40);
  CHECK(h[0]["lost_seconds"].get<double>() >= 0);
  // Steps past the last checkpoint count as lost work, at the attempt's own rate.
  REQUIRE(h[0]["last_step"].is_number());
  uint64_t last_step = h[0]["last_step"], last_ckpt = h[0]["last_checkpoint_step"];
  CHECK(last_step >= last_ckpt);
  if (last_step > last_ckpt) CHECK(h[0]["lost_estimate_from"] == "control block step");
}
