// run.json: a new `lifeline run` in a checkpoint dir compares itself with the run whose
// checkpoints are there, so another experiment never silently resumes from them. The real
// lifeline binary and example trainer.
#include <doctest.h>
#include <signal.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "support/process.h"
#include "support/temp_dir.h"
#include "support/history_file.h"

using namespace lifeline::test;
using json = nlohmann::json;

namespace {

std::vector<std::string> run_cmd(const TempDir& d, const std::vector<std::string>& opts, int steps, int seed,
                                 int delay_ms = 0) {
  std::vector<std::string> v = {binary("LIFELINE_BIN"), "run", "--ckpt-dir", d / "ckpt"};
  v.insert(v.end(), opts.begin(), opts.end());
  v.insert(v.end(), {"--", binary("TRAIN_EXAMPLE_BIN"), "--steps", std::to_string(steps), "--seed", std::to_string(seed),
                     "--step-delay-ms", std::to_string(delay_ms), "--log-every", "1"});
  return v;
}

// A run stopped with SIGUSR1 at about step 30 (its stop checkpoint is its only one).
void stopped_run(const TempDir& d, const std::vector<std::string>& opts, int seed) {
  Process p(run_cmd(d, opts, 100000, seed, 20));
  REQUIRE(p.wait_for_line("step 30 ") != "");
  p.signal(SIGUSR1);
  REQUIRE(p.wait() == 75);
}

}  // namespace

TEST_CASE("another command in the directory of a completed run is refused with exit 2; the same command is not") {
  TempDir d;
  std::string out;
  REQUIRE(run(run_cmd(d, {}, 50, 1), &out) == 0);
  out.clear();
  CHECK(run(run_cmd(d, {}, 80, 99), &out) == 2);
  CHECK_MESSAGE(out.find("holds the checkpoints of another run") != std::string::npos, out);
  CHECK_MESSAGE(out.find("--steps 50 --seed 1") != std::string::npos, out);
  CHECK_MESSAGE(out.find("--resume-anyway") != std::string::npos, out);
  CHECK_MESSAGE(out.find("nothing started") != std::string::npos, out);
  CHECK(events_named(d / "ckpt", "attempt_start").size() == 1);  // nothing started
  out.clear();
  CHECK_MESSAGE(run(run_cmd(d, {}, 50, 1), &out) == 0, out);  // the same run again: fine
}

TEST_CASE("--resume-anyway and LIFELINE_RESUME_ANYWAY=1 resume another run's checkpoints, recorded in history") {
  TempDir d;
  std::string out;
  REQUIRE(run(run_cmd(d, {}, 50, 1), &out) == 0);
  out.clear();
  CHECK_MESSAGE(run(run_cmd(d, {"--resume-anyway"}, 80, 99), &out) == 0, out);
  CHECK_MESSAGE(out.find("resuming from step 50") != std::string::npos, out);
  auto changed = events_named(d / "ckpt", "run_changed");
  REQUIRE(changed.size() == 1);
  CHECK(changed[0]["forced"] == true);
  CHECK(changed[0]["why"].get<std::string>().find("--seed 99") != std::string::npos);
  out.clear();
  CHECK_MESSAGE(run(run_cmd(d, {}, 90, 5), &out, {{"LIFELINE_RESUME_ANYWAY", "1"}}) == 0, out);
  CHECK(events_named(d / "ckpt", "run_changed").size() == 2);
}

TEST_CASE("a stopped run resumed with other flags is said and recorded, not refused") {
  TempDir d;
  stopped_run(d, {}, 7);
  std::string out;
  CHECK_MESSAGE(run(run_cmd(d, {}, 60, 7), &out) == 0, out);
  CHECK_MESSAGE(out.find("its run's command was") != std::string::npos, out);
  CHECK_MESSAGE(out.find("resuming from step") != std::string::npos, out);
  auto changed = events_named(d / "ckpt", "run_changed");
  REQUIRE(changed.size() == 1);
  CHECK(changed[0]["forced"] == false);
}

TEST_CASE("runs named by --run-id or LIFELINE_RUN_ID: another name is refused, the same name may change its command") {
  TempDir d;
  stopped_run(d, {"--run-id", "lr-3e-4"}, 7);
  std::string out;
  CHECK(run(run_cmd(d, {"--run-id", "lr-1e-3"}, 60, 7), &out) == 2);
  CHECK_MESSAGE(out.find("it holds run 'lr-3e-4', this is run 'lr-1e-3'") != std::string::npos, out);
  out.clear();
  CHECK_MESSAGE(run(run_cmd(d, {}, 60, 7), &out, {{"LIFELINE_RUN_ID", "lr-3e-4"}}) == 0, out);
  CHECK(events_named(d / "ckpt", "run_changed").empty());
  // Completed under its name: the same name with yet another command still resumes it.
  out.clear();
  CHECK_MESSAGE(run(run_cmd(d, {"--run-id", "lr-3e-4"}, 70, 7), &out) == 0, out);
  CHECK_MESSAGE(out.find("resuming from step 60") != std::string::npos, out);
}
