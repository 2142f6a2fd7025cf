// lifeline under a real Slurm 22.05 (munge + slurmctld + slurmd on loopback, started by
// tests/slurm/cluster.sh for each test): preemption, time limits, requeue modes and restart
// budgets, each ending with the digest of an uninterrupted run. meson runs each TEST_CASE
// as its own test (see tests/meson.build).
#include <doctest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "support/process.h"
#include "support/slurm_cluster.h"
#include "support/temp_dir.h"
#include "support/text_file.h"

using namespace lifeline::test;
using json = nlohmann::json;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

std::vector<json> history(const std::string& ckpt) {
  std::vector<json> v;
  std::istringstream in(slurp(ckpt + "/history.jsonl"));
  std::string line;
  while (std::getline(in, line))
    if (auto j = json::parse(line, nullptr, false); j.is_object()) v.push_back(j);
  return v;
}

std::vector<json> events(const std::string& ckpt, const std::string& name) {
  std::vector<json> v;
  for (auto& e : history(ckpt))
    if (e["event"] == name) v.push_back(e);
  return v;
}

// One test's world: a cluster, a checkpoint dir, a policy, the trainer command.
struct World {
  TempDir dir;
  SlurmCluster cluster;
  std::string ckpt = dir / "ckpt";
  std::string policy = dir / "policy.yaml";
  std::string digest = dir / "digest";

  explicit World(const std::vector<std::string>& cluster_options, const std::string& policy_extra = "")
      : cluster(dir / "slurm", cluster_options) {
    fs::permissions(dir.path(), fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                                    fs::perms::others_read | fs::perms::others_exec);
    std::ofstream(policy) << "version: 1\ncheckpoint:\n  every_steps: 20\n  every_seconds: 0\n"
                             "restart:\n  backoff_seconds: 0\n  max_failures: 3\n"
                          << policy_extra;
  }

  std::vector<std::string> cpp_trainer(int steps, int delay_ms, const std::vector<std::string>& extra = {}) const {
    std::vector<std::string> v = {binary("TRAIN_EXAMPLE_BIN"), "--steps", std::to_string(steps), "--seed", "7",
                                  "--step-delay-ms", std::to_string(delay_ms), "--log-every", "1",
                                  "--digest-out", digest};
    v.insert(v.end(), extra.begin(), extra.end());
    return v;
  }

  std::vector<std::string> python_trainer(int steps, int delay_ms) const {
    return {"/usr/bin/python3", std::string(LIFELINE_SOURCE_DIR) + "/examples/train_torch.py", "--steps",
            std::to_string(steps), "--seed", "7", "--step-delay-ms", std::to_string(delay_ms), "--log-every", "1",
            "--digest-out", digest};
  }

  std::string out_file() const { return dir / "job-%j.out"; }
  std::string out_of(const std::string& job) const { return dir / ("job-" + job + ".out"); }

  std::map<std::string, std::string> env(const std::string& requeue = "") const {
    std::map<std::string, std::string> e = {{"LIFELINE", binary("LIFELINE_BIN")},
                                            {"LIFELINE_CKPT_DIR", ckpt},
                                            {"LIFELINE_POLICY", policy}};
    if (!requeue.empty()) e["LIFELINE_REQUEUE"] = requeue;
    return e;
  }

  std::string submit(const std::string& jobscript, const std::vector<std::string>& opts,
                     const std::vector<std::string>& trainer, const std::string& requeue = "") {
    std::vector<std::string> o = {"--output=" + out_file()};
    o.insert(o.end(), opts.begin(), opts.end());
    return cluster.submit(o, std::string(LIFELINE_SOURCE_DIR) + "/jobscripts/" + jobscript, trainer, env(requeue));
  }

  // Waits until the job's output shows the trainer past `step`.
  bool wait_for_step(const std::string& job, int step, std::chrono::seconds timeout = 120s) const {
    std::string needle = "\nstep " + std::to_string(step) + " ";
    return SlurmCluster::wait_until([&] { return slurp(out_of(job)).find(needle) != std::string::npos; }, timeout);
  }

  // A job in the high partition that takes every CPU: it preempts whatever runs in low.
  std::string preempt_with_high_priority_job() {
    std::string script = dir / "high.sbatch";
    std::ofstream(script) << "#!/bin/bash\necho high-priority job ran\n";
    return cluster.submit({"-p", "high", "--exclusive", "--output=" + (dir / "high-%j.out")}, script);
  }
};

// The digest of an uninterrupted run: the trainer alone, outside Slurm and lifeline.
std::string reference_digest(int steps) {
  TempDir d;
  std::vector<std::string> cmd = {binary("TRAIN_EXAMPLE_BIN"), "--steps", std::to_string(steps), "--seed", "7",
                                   "--digest-out", d / "digest"};
  std::string out;
  REQUIRE_MESSAGE(run(cmd, &out, {{"LIFELINE_CONTROL", ""}, {"LIFELINE_CKPT_DIR", ""}}) == 0, out);
  return first_line(d / "digest");
}

std::string describe(const World& w, const std::string& job) {
  return "job output:\n" + slurp(w.out_of(job)) + "\nhistory:\n" + slurp(w.ckpt + "/history.jsonl");
}

}  // namespace

// 60 s of training at 40 ms a step: it must outlast the trigger at step 60 (2.4 s), the
// grace time and the up to 30 s Slurm may add to it, or the job ends inside the grace
// period (Slurm then marks it TIMEOUT) and no preemption is seen.
constexpr int kPreemptedSteps = 1500;

// Submits `trainer` to the low partition, preempts it once it passed step 60 with a job in
// the high partition, and checks the round trip: one requeue, the second run resumed from
// the stop checkpoint, the first attempt ended `preempted` after `signal`, digest as
// `reference`.
void preemption_round_trip(World& w, const std::vector<std::string>& trainer, const std::string& reference,
                           const std::vector<std::string>& extra_options, const std::string& signal,
                           const std::string& jobscript = "single-node.sbatch") {
  std::vector<std::string> opts = {"-p", "low", "--exclusive", "--time=10"};
  opts.insert(opts.end(), extra_options.begin(), extra_options.end());
  std::string job = w.submit(jobscript, opts, trainer);
  REQUIRE_MESSAGE(w.wait_for_step(job, 60), describe(w, job));
  w.preempt_with_high_priority_job();
  REQUIRE_MESSAGE(w.cluster.wait_for_end(job, 300s), describe(w, job));
  INFO(describe(w, job));
  CHECK(w.cluster.state(job) == "COMPLETED");
  CHECK(w.cluster.job(job)["Restarts"] == "1");
  CHECK(first_line(w.digest) == reference);
  auto ends = events(w.ckpt, "attempt_end");
  REQUIRE(ends.size() == 2);
  CHECK(ends[0]["end_reason"] == "preempted");
  CHECK(ends[0]["signal"] == signal);
  CHECK(ends[1]["end_reason"] == "completed");
  // The second run resumed from the stop checkpoint of the first.
  auto starts = events(w.ckpt, "attempt_start");
  REQUIRE(starts.size() == 2);
  CHECK(starts[1]["resumed_from_step"] == ends[0]["last_checkpoint_step"]);
  CHECK(starts[1]["resumed_from_step"].get<int>() > 60);
}

// The plain single-node path under SIGTERM is the Python case's below; this one adds the tier.
TEST_CASE("preemption: SIGTERM at grace end reaches trainer and supervisor; with a node-local tier the stop checkpoint is drained before the requeue, and the job resumes bit-exact") {
  // local-tier.sbatch with storage.local under the test's own directory (a node's $TMPDIR).
  World w({"--grace", "15", "--kill-wait", "10"});
  std::ofstream(w.policy, std::ios::app) << "storage:\n  local: " << (w.dir / "node-tmp") << "/lifeline-${SLURM_JOB_ID}\n"
                                            "  keep_local: 1\n";
  preemption_round_trip(w, w.cpp_trainer(kPreemptedSteps, 40), reference_digest(kPreemptedSteps), {}, "TERM",
                        "local-tier.sbatch");
  auto ends = events(w.ckpt, "attempt_end");
  REQUIRE(ends.size() == 2);
  CHECK(ends[0]["stop_checkpoint"]["drained"] == true);
  uint64_t stop_step = ends[0]["last_checkpoint_step"].get<uint64_t>();
  bool drained = false;
  for (const auto& d : events(w.ckpt, "drain"))
    drained = drained || (d["step"] == stop_step && d["result"] == "drained" && d["attempt"] == 0);
  CHECK_MESSAGE(drained, slurp(w.ckpt + "/history.jsonl"));
  // The checkpoint dir holds the stop checkpoint itself, whole.
  std::string out;
  REQUIRE(run({binary("LIFELINE_BIN"), "verify", w.ckpt, "--json"}, &out) == 0);
  CHECK(json::parse(out)["resume"]["step"].get<uint64_t>() >= stop_step);
}

TEST_CASE("preemption with preempt_send_user_signal: B:USR1 at grace start and the requeued job resumes bit-exact") {
  World w({"--grace", "30", "--kill-wait", "10", "--send-user-signal"});
  preemption_round_trip(w, w.cpp_trainer(kPreemptedSteps, 40), reference_digest(kPreemptedSteps), {"--signal=B:USR1@5"},
                        "USR1");
}

TEST_CASE("time limit: B:USR1 before the limit checkpoints and requeues until the run completes bit-exact") {
  World w({"--kill-wait", "10"});
  const int steps = 1400;  // 70 s of training in jobs limited to one minute
  std::string job = w.submit("single-node.sbatch", {"--time=1", "--signal=B:USR1@30"}, w.cpp_trainer(steps, 50));
  REQUIRE_MESSAGE(w.cluster.wait_for_end(job, 480s), describe(w, job));
  INFO(describe(w, job));
  CHECK(w.cluster.state(job) == "COMPLETED");
  CHECK(first_line(w.digest) == reference_digest(steps));
  auto ends = events(w.ckpt, "attempt_end");
  REQUIRE(ends.size() >= 2);
  for (size_t i = 0; i + 1 < ends.size(); ++i) CHECK(ends[i]["end_reason"] == "time_limit");
  CHECK(ends.back()["end_reason"] == "completed");
  // `lifeline history --json` tells the same story: interrupted attempts by the time limit,
  // each requeued in place, the last one completed.
  std::string hist;
  REQUIRE(run({binary("LIFELINE_BIN"), "history", w.ckpt, "--json"}, &hist) == 0);
  json attempts = json::parse(hist.substr(hist.find('[')));
  REQUIRE(attempts.size() == ends.size());
  for (size_t i = 0; i + 1 < attempts.size(); ++i) {
    CHECK(attempts[i]["end_reason"] == "time_limit");
    CHECK(attempts[i]["requeue"] == "scontrol");
    CHECK(attempts[i]["job_id"] == job);
    CHECK(attempts[i + 1]["resumed_from_step"] == attempts[i]["last_checkpoint_step"]);
  }
  CHECK(attempts.back()["end_reason"] == "completed");
  // The picture of this run, kept in the build folder (docs/history.md shows how to view it).
  std::string svg = std::string(LIFELINE_BUILD_DIR) + "/time-limit-timeline.svg";
  std::string out;
  CHECK(run({binary("LIFELINE_BIN"), "history", w.ckpt, "--timeline", svg}, &out) == 0);
  CHECK(slurp(svg).find("time limit") != std::string::npos);
}

TEST_CASE("sbatch mode: a stopped job resubmits its own script and the new job completes bit-exact") {
  World w({});
  const int steps = 400;
  std::string job = w.submit("single-node.sbatch", {"--time=10"}, w.cpp_trainer(steps, 30), "sbatch");
  REQUIRE_MESSAGE(w.wait_for_step(job, 50), describe(w, job));
  REQUIRE(w.cluster.scancel({"--signal=USR1", "--batch", job}) == 0);
  REQUIRE_MESSAGE(w.cluster.wait_for_end(job, 120s), describe(w, job));
  auto requeues = events(w.ckpt, "requeue");
  INFO(describe(w, job));
  REQUIRE(requeues.size() == 1);
  CHECK(requeues[0]["result"] == "resubmitted");
  std::string next = requeues[0]["new_job_id"];
  CHECK(next != job);
  REQUIRE_MESSAGE(w.cluster.wait_for_end(next, 180s), describe(w, next));
  INFO(describe(w, next));
  CHECK(w.cluster.state(next) == "COMPLETED");
  CHECK(first_line(w.digest) == reference_digest(steps));
  auto starts = events(w.ckpt, "attempt_start");
  REQUIRE(starts.size() == 2);
  CHECK(starts[0]["job_id"] == job);
  CHECK(starts[1]["job_id"] == next);
  CHECK(starts[1]["lineage"] == starts[0]["lineage"]);
}

TEST_CASE("exit-code mode: exit 75 with RequeueExit requeues the job and it completes bit-exact") {
  World w({"--requeue-exit", "75"});
  const int steps = 400;
  std::string job = w.submit("requeue-exit.sbatch", {"--time=10"}, w.cpp_trainer(steps, 30));
  REQUIRE_MESSAGE(w.wait_for_step(job, 50), describe(w, job));
  REQUIRE(w.cluster.scancel({"--signal=USR1", "--batch", job}) == 0);
  REQUIRE_MESSAGE(SlurmCluster::wait_until([&] { return w.cluster.job(job)["Restarts"] == "1"; }, 60s),
                  describe(w, job));
  REQUIRE_MESSAGE(w.cluster.wait_for_end(job, 180s), describe(w, job));
  INFO(describe(w, job));
  CHECK(w.cluster.state(job) == "COMPLETED");
  CHECK(first_line(w.digest) == reference_digest(steps));
  auto requeues = events(w.ckpt, "requeue");
  REQUIRE(requeues.size() == 1);
  CHECK(requeues[0]["result"] == "exit code");
}

TEST_CASE("a crash loop under Slurm stops after max_failures with a non-zero exit and a clear message") {
  World w({});
  std::string job = w.submit("single-node.sbatch", {"--time=10"}, w.cpp_trainer(200, 0, {"--crash-at-step", "10"}));
  REQUIRE(w.cluster.wait_for_end(job, 120s));
  INFO(describe(w, job));
  CHECK(w.cluster.state(job) == "FAILED");
  CHECK(slurp(w.out_of(job)).find("giving up: 3 failed attempts in a row without a new checkpoint") != std::string::npos);
  CHECK(events(w.ckpt, "attempt_end").size() == 3);
}

TEST_CASE("a trainer that crashes once under Slurm is restarted and completes bit-exact") {
  World w({});
  const int steps = 200;
  std::string job = w.submit("single-node.sbatch", {"--time=10"},
                             w.cpp_trainer(steps, 0, {"--crash-at-step", "50", "--crash-once"}));
  REQUIRE(w.cluster.wait_for_end(job, 120s));
  INFO(describe(w, job));
  CHECK(w.cluster.state(job) == "COMPLETED");
  CHECK(first_line(w.digest) == reference_digest(steps));
  auto ends = events(w.ckpt, "attempt_end");
  REQUIRE(ends.size() == 2);
  CHECK(ends[0]["end_reason"] == "failed");
  CHECK(ends[1]["end_reason"] == "completed");
}

TEST_CASE("a Python trainer survives a preemption round trip and resumes bit-exact") {
  World w({"--grace", "10", "--kill-wait", "10"});
  // The uninterrupted digest of the same Python trainer, run alone.
  TempDir ref;
  std::vector<std::string> alone = {"/usr/bin/python3", std::string(LIFELINE_SOURCE_DIR) + "/examples/train_torch.py",
                                    "--steps", std::to_string(kPreemptedSteps), "--seed", "7", "--digest-out", ref / "digest"};
  std::string out;
  REQUIRE_MESSAGE(run(alone, &out, {{"LIFELINE_CONTROL", ""}, {"LIFELINE_CKPT_DIR", ""}}) == 0, out);
  preemption_round_trip(w, w.python_trainer(kPreemptedSteps, 40), first_line(ref / "digest"), {}, "TERM");
}

TEST_CASE("time limit without --signal: lifeline stops ahead of the job's end by itself and completes bit-exact") {
  World w({"--kill-wait", "10"});
  // The single-node jobscript without its --signal line: no warning will ever come.
  std::string script = w.dir / "no-signal.sbatch";
  {
    std::ifstream in(std::string(LIFELINE_SOURCE_DIR) + "/jobscripts/single-node.sbatch");
    std::ofstream out(script);
    std::string line;
    while (std::getline(in, line))
      if (line.rfind("#SBATCH --signal", 0) != 0) out << line << "\n";
  }
  const int steps = 1200;  // 60 s of training in jobs limited to one minute
  std::vector<std::string> o = {"--output=" + w.out_file(), "--time=1"};
  std::string job = w.cluster.submit(o, script, w.cpp_trainer(steps, 50), w.env());
  REQUIRE_MESSAGE(w.cluster.wait_for_end(job, 480s), describe(w, job));
  INFO(describe(w, job));
  CHECK(w.cluster.state(job) == "COMPLETED");
  CHECK(first_line(w.digest) == reference_digest(steps));
  auto ends = events(w.ckpt, "attempt_end");
  REQUIRE(ends.size() >= 2);
  for (size_t i = 0; i + 1 < ends.size(); ++i) {
    CHECK(ends[i]["end_reason"] == "time_limit");
    CHECK(ends[i]["signal"].is_null());  // no signal: lifeline's own timer
  }
  CHECK(events(w.ckpt, "time_limit_near").size() == ends.size() - 1);
}
