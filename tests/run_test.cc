// `lifeline run` end to end: the real supervisor binary and the real LibTorch example trainer,
// real signals, real files. Runs are interrupted at a random step and resumed; the final
// parameters must be bit-identical to an uninterrupted run's.
#include <doctest.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>

#include "support/process.h"
#include "support/temp_dir.h"

using namespace lifeline::test;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr int kSteps = 240;

std::string read_all(const std::string& path) {
  std::ifstream in(path);
  std::string s;
  std::getline(in, s);
  return s;
}

std::string write_policy(const TempDir& d, const std::string& extra = "") {
  std::string path = d / "policy.yaml";
  std::ofstream(path) << "version: 1\n"
                         "checkpoint:\n  every_steps: 20\n  every_seconds: 0\n"
                         "restart:\n  backoff_seconds: 0\n"
                      << (extra.empty() ? "retention:\n  keep_last: 1000\n  keep_best: 0\n" : extra);
  return path;
}

std::vector<std::string> train_cmd(const std::string& digest, int delay_ms, const std::vector<std::string>& extra = {}) {
  std::vector<std::string> v = {binary("TRAIN_EXAMPLE_BIN"), "--steps", std::to_string(kSteps), "--seed", "7",
                                "--step-delay-ms", std::to_string(delay_ms), "--log-every", "1",
                                "--digest-out", digest};
  v.insert(v.end(), extra.begin(), extra.end());
  return v;
}

std::vector<std::string> lifeline_run(const TempDir& d, const std::vector<std::string>& cmd,
                                      const std::vector<std::string>& opts = {}, const std::string& policy_extra = "") {
  std::vector<std::string> v = {binary("LIFELINE_BIN"), "run", "--policy", write_policy(d, policy_extra), "--ckpt-dir", d / "ckpt"};
  v.insert(v.end(), opts.begin(), opts.end());
  v.push_back("--");
  v.insert(v.end(), cmd.begin(), cmd.end());
  return v;
}

// The digest of an uninterrupted run, computed once: the trainer alone, without lifeline.
const std::string& reference_digest() {
  static std::string digest = [] {
    TempDir d;
    std::string out;
    int rc = run(train_cmd(d / "digest", 0), &out, {{"LIFELINE_CONTROL", ""}, {"LIFELINE_CKPT_DIR", ""}});
    REQUIRE_MESSAGE(rc == 0, out);
    return read_all(d / "digest");
  }();
  return digest;
}

int random_step() {
  std::random_device rd;
  return std::uniform_int_distribution<int>(5, kSteps - 15)(rd);
}

uint64_t resumed_step(const std::string& output) {
  std::smatch m;
  std::regex re("resumed from step ([0-9]+)");
  REQUIRE_MESSAGE(std::regex_search(output, m, re), output);
  return std::stoull(m[1]);
}

}  // namespace

TEST_CASE("an uninterrupted run under lifeline completes with exit 0 and the trainer's own digest") {
  TempDir d;
  std::string out;
  int rc = run(lifeline_run(d, train_cmd(d / "digest", 0)), &out);
  CHECK_MESSAGE(rc == 0, out);
  CHECK(read_all(d / "digest") == reference_digest());
  // every_steps 20 over 240 steps: 20, 40, ..., 240 (the last one also as the final checkpoint).
  std::string listing;
  REQUIRE(run({binary("LIFELINE_BIN"), "checkpoints", d / "ckpt", "--json"}, &listing) == 0);
  json list = json::parse(listing);
  REQUIRE(list.size() == 12);
  for (size_t i = 0; i < list.size(); ++i) {
    CHECK(list[i]["step"] == 20 * (i + 1));
    CHECK(list[i]["valid"] == true);
    CHECK(list[i]["metrics"].contains("val_loss"));
  }
}

TEST_CASE("a run interrupted by SIGUSR1 to the supervisor at a random step resumes to the same digest") {
  TempDir d;
  int k = random_step();
  CAPTURE(k);
  Process first(lifeline_run(d, train_cmd(d / "digest", 10)));
  REQUIRE(first.wait_for_line("step " + std::to_string(k) + " ") != "");
  first.signal(SIGUSR1);
  int rc = first.wait();
  CHECK_MESSAGE(rc == 75, first.output());
  CHECK(first.output().find("stopping at step") != std::string::npos);
  CHECK_FALSE(std::ifstream(d / "digest").good());

  std::string out;
  rc = run(lifeline_run(d, train_cmd(d / "digest", 0)), &out);
  CHECK_MESSAGE(rc == 0, out);
  CHECK(resumed_step(out) >= uint64_t(k));
  CHECK(read_all(d / "digest") == reference_digest());
}

TEST_CASE("a run whose trainer itself gets SIGTERM at a random step resumes to the same digest") {
  TempDir d;
  int k = random_step();
  CAPTURE(k);
  Process first(lifeline_run(d, train_cmd(d / "digest", 10)));
  std::string started = first.wait_for_line("trainer started, pid ");
  REQUIRE(started != "");
  pid_t trainer = std::stoi(started.substr(started.find("pid ") + 4));
  REQUIRE(first.wait_for_line("step " + std::to_string(k) + " ") != "");
  ::kill(trainer, SIGTERM);
  int rc = first.wait();
  CHECK_MESSAGE(rc == 75, first.output());
  CHECK(first.output().find("received SIGTERM itself") != std::string::npos);

  std::string out;
  rc = run(lifeline_run(d, train_cmd(d / "digest", 0)), &out);
  CHECK_MESSAGE(rc == 0, out);
  CHECK(resumed_step(out) >= uint64_t(k));
  CHECK(read_all(d / "digest") == reference_digest());
}

TEST_CASE("a corrupted newest checkpoint is skipped by verify and by the next run, which still ends bit-exact") {
  TempDir d;
  Process first(lifeline_run(d, train_cmd(d / "digest", 10)));
  REQUIRE(first.wait_for_line("step 65 ") != "");
  first.signal(SIGUSR1);
  REQUIRE(first.wait() == 75);
  // Flip one byte in the newest checkpoint's model.
  std::string verify_out;
  REQUIRE(run({binary("LIFELINE_BIN"), "verify", d / "ckpt", "--json"}, &verify_out) == 0);
  json v = json::parse(verify_out);
  std::string newest = v["resume"]["path"];
  uint64_t newest_step = v["resume"]["step"];
  {
    std::fstream f(newest + "/model.pt", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('\x7f');
  }
  REQUIRE(run({binary("LIFELINE_BIN"), "verify", d / "ckpt", "--json"}, &verify_out) == 0);
  v = json::parse(verify_out);
  CHECK(v["resume"]["step"] < newest_step);
  REQUIRE(v["skipped"].size() == 1);
  CHECK(v["skipped"][0]["step"] == newest_step);
  CHECK(v["skipped"][0]["problem"].get<std::string>().find("model.pt") != std::string::npos);

  std::string out;
  CHECK(run(lifeline_run(d, train_cmd(d / "digest", 0)), &out) == 0);
  CHECK(resumed_step(out) == v["resume"]["step"].get<uint64_t>());
  CHECK(out.find("skipping checkpoint") != std::string::npos);
  CHECK(read_all(d / "digest") == reference_digest());
}

TEST_CASE("gc without --policy applies the retention rules the run recorded, not the built-in keep_last 3") {
  TempDir d;
  std::string out;
  // keep_last 10: the run keeps all of its 12 checkpoints (every 20 of 240 steps) but 2.
  REQUIRE(run(lifeline_run(d, train_cmd(d / "digest", 0), {}, "retention:\n  keep_last: 10\n  keep_best: 0\n"),
              &out) == 0);
  size_t before = 0;
  for (const auto& e : fs::directory_iterator(d / "ckpt")) before += e.path().filename().string().rfind("step-", 0) == 0;
  REQUIRE(before == 10);
  // The plan as JSON: every checkpoint kept, by the recorded rules.
  REQUIRE(run({binary("LIFELINE_BIN"), "gc", d / "ckpt", "--dry-run", "--json"}, &out) == 0);
  nlohmann::json plan = nlohmann::json::parse(out);
  CHECK(plan["rules_from"] == "supervisor.json");
  CHECK(plan["rules"]["keep_last"] == 10);
  REQUIRE(plan["checkpoints"].size() == 10);
  for (const auto& c : plan["checkpoints"]) CHECK(c["keep"] == true);
  CHECK(plan["bytes_freed"] == 0);
  CHECK(run({binary("LIFELINE_BIN"), "gc", d / "ckpt", "--yes"}, &out) == 0);
  CHECK(out.find("keep_last 10") != std::string::npos);
  CHECK(out.find("as the run recorded them in supervisor.json") != std::string::npos);
  size_t after = 0;
  for (const auto& e : fs::directory_iterator(d / "ckpt")) after += e.path().filename().string().rfind("step-", 0) == 0;
  CHECK(after == 10);
  // An explicit policy still wins.
  std::ofstream(d / "three.yaml") << "version: 1\nretention:\n  keep_last: 3\n  keep_best: 0\n";
  CHECK(run({binary("LIFELINE_BIN"), "gc", d / "ckpt", "--policy", d / "three.yaml", "--yes"}, &out) == 0);
  after = 0;
  for (const auto& e : fs::directory_iterator(d / "ckpt")) after += e.path().filename().string().rfind("step-", 0) == 0;
  CHECK(after == 3);
}

TEST_CASE("verify answers 1 when there is no valid checkpoint") {
  TempDir d;
  std::filesystem::create_directory(d / "nothing");  // a missing directory is an input error (2)
  std::string out;
  CHECK(run({binary("LIFELINE_BIN"), "verify", d / "nothing", "--json"}, &out) == 1);
  json v = json::parse(out);
  CHECK(v["resume"].is_null());
  CHECK(v["skipped"].empty());
}

TEST_CASE("a trainer that crashes once is restarted in place and completes bit-exact") {
  TempDir d;
  std::string out;
  int rc = run(lifeline_run(d, train_cmd(d / "digest", 0, {"--crash-at-step", "50", "--crash-once"}),
                            {"--requeue", "local"}), &out);
  CHECK_MESSAGE(rc == 0, out);
  CHECK(resumed_step(out) == 40);
  CHECK(read_all(d / "digest") == reference_digest());
}

TEST_CASE("a crash loop stops after max_failures attempts without a new checkpoint") {
  TempDir d;
  std::string out;
  // Crashes at step 10, before the first checkpoint at 20: no attempt makes progress.
  int rc = run(lifeline_run(d, train_cmd(d / "digest", 0, {"--crash-at-step", "10"}), {"--requeue", "local"}), &out);
  CHECK(rc == 128 + SIGABRT);
  CHECK(out.find("giving up: 3 failed attempts in a row") != std::string::npos);
}

TEST_CASE("a trainer that fails the same way twice before its first step is not retried again; a missing program not even once") {
  TempDir d;
  std::string out;
  // A Python trainer whose import fails (exit 1) before any step: two attempts, not max_failures (3).
  int rc = run(lifeline_run(d, {"/usr/bin/python3", "-c", "import no_such_module_for_lifeline"}, {"--requeue", "local"}),
               &out);
  CHECK(rc == 1);
  CHECK(out.find("No module named") != std::string::npos);
  CHECK(out.find("not restarting: it failed twice in a row with exit 1 before its first step") != std::string::npos);
  CHECK(out.find("giving up") == std::string::npos);
  // A wrapper whose program is missing (127): once.
  TempDir e;
  rc = run(lifeline_run(e, {"/bin/sh", "-c", "exec no-such-trainer-for-lifeline"}, {"--requeue", "local"}), &out);
  CHECK(rc == 127);
  CHECK(out.find("not restarting: the command or something it runs was not found (exit 127)") != std::string::npos);
  CHECK(out.find("attempt 1]") == std::string::npos);  // no second attempt
}

TEST_CASE("bad arguments and a bad policy exit 2 without starting the trainer") {
  TempDir d;
  std::string out;
  CHECK(run({binary("LIFELINE_BIN"), "run", "--requeue", "sideways", "--", "true"}, &out) == 2);
  std::ofstream(d / "bad.yaml") << "version: 1\ncheckpoint:\n  every_step: 5\n";
  CHECK(run({binary("LIFELINE_BIN"), "run", "--policy", d / "bad.yaml", "--ckpt-dir", d / "ckpt", "--",
             "touch", d / "started"}, &out) == 2);
  CHECK(out.find("bad.yaml:3:3") != std::string::npos);
  CHECK_FALSE(std::ifstream(d / "started").good());
  CHECK(run({binary("LIFELINE_BIN"), "run", "--ckpt-dir", d / "ckpt", "--", "/nonexistent/trainer"}, &out) == 2);
  CHECK(out.find("/nonexistent/trainer") != std::string::npos);
}

TEST_CASE("a trainer that ignores the stop request is escalated to SIGTERM then SIGKILL after the deadline") {
  TempDir d;
  // A trainer without the client that also ignores SIGTERM: only SIGKILL ends it.
  Process p(lifeline_run(d, {"/bin/bash", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"}, {"--grace", "1"}));
  REQUIRE(p.wait_for_line("ready") != "");
  p.signal(SIGUSR1);
  int rc = p.wait();
  CHECK(rc == 75);
  CHECK(p.output().find("no checkpoint committed in time") != std::string::npos);
  CHECK(p.output().find("sending SIGTERM to the trainer") != std::string::npos);
  CHECK(p.output().find("SIGKILL") != std::string::npos);
}

TEST_CASE("a trainer that stops reporting steps for hang_seconds is treated as hung and retried per budget") {
  TempDir d;
  std::string policy = d / "hang.yaml";
  std::ofstream(policy) << "version: 1\ncheckpoint:\n  every_steps: 20\n  every_seconds: 0\n"
                           "restart:\n  backoff_seconds: 0\n  max_failures: 2\nstop:\n  hang_seconds: 1\n";
  std::string out;
  // One step per minute: the trainer never reports a step within hang_seconds.
  int rc = run({binary("LIFELINE_BIN"), "run", "--policy", policy, "--ckpt-dir", d / "ckpt", "--requeue", "local", "--",
                binary("TRAIN_EXAMPLE_BIN"), "--steps", "10", "--step-delay-ms", "60000"},
               &out);
  CHECK(rc != 0);
  CHECK(out.find("treating it as hung") != std::string::npos);
  CHECK(out.find("giving up: 2 failed attempts in a row") != std::string::npos);
}

TEST_CASE("a second supervisor on the same directory refuses and names the holder") {
  TempDir d;
  Process first(lifeline_run(d, train_cmd(d / "digest", 20)));
  REQUIRE(first.wait_for_line("trainer started") != "");
  std::string out;
  CHECK(run(lifeline_run(d, train_cmd(d / "digest2", 0)), &out) == 2);
  CHECK(out.find("is in use by another lifeline") != std::string::npos);
  CHECK(out.find("pid " + std::to_string(first.pid())) != std::string::npos);
  first.signal(SIGUSR1);
  CHECK(first.wait() == 75);
}

TEST_CASE("SIGUSR2 to the supervisor asks for a checkpoint now and training goes on to completion") {
  TempDir d;
  Process p(lifeline_run(d, train_cmd(d / "digest", 10)));
  REQUIRE(p.wait_for_line("step 25 ") != "");
  p.signal(SIGUSR2);
  std::string committed = p.wait_for_line("checkpoint committed: step ");
  REQUIRE(committed != "");
  CHECK(committed.find("step 40,") == std::string::npos);  // the request's own, not the next periodic one
  CHECK(p.wait() == 0);
  CHECK(p.output().find("SIGUSR2: checkpoint requested") != std::string::npos);
  CHECK(read_all(d / "digest") == reference_digest());
}

TEST_CASE("requeue by scontrol where scontrol is missing exits 2 and suggests the exit-code mode") {
  TempDir d;
  std::string out;
  // Inside a "job" whose PATH has no Slurm commands, as in a container.
  int rc = run({binary("LIFELINE_BIN"), "run", "--ckpt-dir", d / "ckpt", "--requeue", "scontrol", "--", "/bin/true"}, &out,
               {{"PATH", d.path()}, {"SLURM_JOB_ID", "4242"}});
  CHECK(rc == 2);
  CHECK(out.find("scontrol is not available") != std::string::npos);
  CHECK(out.find("--requeue exit") != std::string::npos);
}

TEST_CASE("exit-code mode exits with the policy's code until max_requeues is spent, then 75") {
  TempDir d;
  std::string policy = d / "exit.yaml";
  std::ofstream(policy) << "version: 1\ncheckpoint:\n  every_steps: 20\n  every_seconds: 0\n"
                           "restart:\n  max_requeues: 1\nrequeue:\n  mode: exit\n  exit_code: 79\n";
  auto interrupted_run = [&] {
    Process p({binary("LIFELINE_BIN"), "run", "--policy", policy, "--ckpt-dir", d / "ckpt", "--",
               binary("TRAIN_EXAMPLE_BIN"), "--steps", "2000", "--step-delay-ms", "10", "--log-every", "1"});
    REQUIRE(p.wait_for_line("step 5 ") != "");
    p.signal(SIGUSR1);
    return p.wait();
  };
  CHECK(interrupted_run() == 79);
  CHECK(interrupted_run() == 75);
}

TEST_CASE("retention runs after each commit: the last N and the best survive, the rest is removed") {
  TempDir d;
  std::string out;
  int rc = run(lifeline_run(d, train_cmd(d / "digest", 0), {}, "retention:\n  keep_last: 2\n  keep_best: 1\n  metric: val_loss\n"), &out);
  REQUIRE_MESSAGE(rc == 0, out);
  std::string listing;
  REQUIRE(run({binary("LIFELINE_BIN"), "checkpoints", d / "ckpt", "--json"}, &listing) == 0);
  json list = json::parse(listing);
  std::vector<uint64_t> steps;
  for (auto& c : list) steps.push_back(c["step"]);
  REQUIRE(steps.size() >= 2);
  REQUIRE(steps.size() <= 3);
  CHECK(steps[steps.size() - 1] == 240);
  CHECK(steps[steps.size() - 2] == 220);
  CHECK(out.find("retention: removed step 20") != std::string::npos);
  CHECK(read_all(d / "digest") == reference_digest());
}

TEST_CASE("every_seconds goes on requesting checkpoints after a period that ended before its request was answered") {
  // Steps of 2.5 s against a period of 1 s: the request of t=1 s is answered at the end of step 1
  // (about 2.5 s), so the period ending at t=2 s finds it unanswered. That period is skipped; the
  // series goes on (requests at about 1, 3, 5-6, 8-9 s over the 12.5 s run).
  TempDir d;
  std::string policy = d / "seconds.yaml";
  std::ofstream(policy) << "version: 1\ncheckpoint:\n  every_steps: 0\n  every_seconds: 1\n"
                           "retention:\n  keep_last: 1000\n  keep_best: 0\n";
  std::string out;
  int rc = run({binary("LIFELINE_BIN"), "run", "--policy", policy, "--ckpt-dir", d / "ckpt", "--",
                binary("TRAIN_EXAMPLE_BIN"), "--steps", "5", "--step-delay-ms", "2500"},
               &out);
  REQUIRE_MESSAGE(rc == 0, out);
  size_t requests = 0;
  for (size_t at = 0; (at = out.find("periodic checkpoint requested", at)) != std::string::npos; ++at) ++requests;
  CHECK_MESSAGE(requests >= 3, out);
  std::string listing;
  REQUIRE(run({binary("LIFELINE_BIN"), "checkpoints", d / "ckpt", "--json"}, &listing) == 0);
  CHECK_MESSAGE(json::parse(listing).size() >= 4, listing);  // three periodic ones and the final one
}
