// Saves into a full disk under the real `lifeline run`: the example trainers (C++ and Python,
// synchronous and --async) report each failed save and train on to the end, exit 0, leave no
// staging folder, keep the older checkpoint valid, and `--requeue local` does not crash-loop.
// The checkpoint directory is a small tmpfs (a real ENOSPC), so these tests need root.
#include <doctest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "support/process.h"
#include "support/temp_dir.h"
#include "support/tmpfs_mount.h"

using namespace lifeline::test;
using json = nlohmann::json;

namespace {

// A trainer command line without its --steps.
using Trainer = std::vector<std::string>;

Trainer cpp_trainer(bool async) {
  Trainer t = {binary("TRAIN_EXAMPLE_BIN"), "--state-mib", "1", "--seed", "3"};
  if (async) t.push_back("--async");
  return t;
}

Trainer python_trainer(bool async) {
  Trainer t = {binary("PYTHON"), std::string(LIFELINE_SOURCE_DIR) + "/examples/train_torch.py", "--state-mib", "1",
               "--seed", "3"};
  if (async) t.push_back("--async");
  return t;
}

std::vector<json> history(const std::string& dir) {
  std::vector<json> events;
  std::ifstream in(dir + "/history.jsonl");
  for (std::string line; std::getline(in, line);) {
    json j = json::parse(line, nullptr, false);
    if (j.is_object()) events.push_back(j);
  }
  return events;
}

size_t count_events(const std::vector<json>& events, const std::string& name) {
  size_t n = 0;
  for (const auto& e : events) n += e.value("event", "") == name;
  return n;
}

// Step 20 committed on an empty disk; then the disk is filled to 256 KiB of a 1 MiB checkpoint,
// and a second run under --requeue local trains from 20 to 60 with every save failing.
void saves_fail_on_a_full_disk(const Trainer& trainer) {
  TmpfsMount disk("size=8m");
  if (!disk.mounted()) {
    MESSAGE("skipped: cannot mount a tmpfs (" << disk.why() << "); run as root");
    return;
  }
  TempDir d;
  std::string ckpt = disk / "ckpt", policy = d / "policy.yaml";
  std::ofstream(policy) << "version: 1\ncheckpoint:\n  every_steps: 20\n  every_seconds: 0\n"
                           "restart:\n  backoff_seconds: 0\n  max_failures: 2\n"
                           "retention:\n  keep_last: 1000\n  keep_best: 0\n";
  auto run_steps = [&](int steps) {
    // One named run, continued with more steps once it completed (run.json: the name identifies it).
    std::vector<std::string> argv = {binary("LIFELINE_BIN"), "run", "--policy", policy, "--ckpt-dir", ckpt,
                                     "--requeue", "local", "--run-id", "full-disk", "--"};
    argv.insert(argv.end(), trainer.begin(), trainer.end());
    argv.insert(argv.end(), {"--steps", std::to_string(steps)});
    std::string out;
    int rc = run(argv, &out);
    return std::make_pair(rc, out);
  };

  auto [rc1, out1] = run_steps(20);
  REQUIRE_MESSAGE(rc1 == 0, out1);
  std::string listing;
  REQUIRE(run({binary("LIFELINE_BIN"), "checkpoints", ckpt, "--json"}, &listing) == 0);
  json first = json::parse(listing);
  REQUIRE(first.size() == 1);
  REQUIRE(first[0]["valid"] == true);
  uint64_t checkpoint_bytes = first[0]["bytes"];
  REQUIRE(checkpoint_bytes > (512u << 10));
  REQUIRE(disk.fill("filler", 256u << 10));  // room for the history, not for a checkpoint

  auto [rc2, out2] = run_steps(60);
  CHECK_MESSAGE(rc2 == 0, out2);
  CHECK_MESSAGE(out2.find("finished 60 steps") != std::string::npos, out2);
  CHECK_MESSAGE(out2.find("No space left on device") != std::string::npos, out2);
  CHECK(out2.find("terminate called") == std::string::npos);
  std::vector<json> events = history(ckpt);
  CHECK(count_events(events, "attempt_start") == 2);  // one per run: no restart, no crash loop
  CHECK(count_events(events, "checkpoint_failed") >= 1);
  REQUIRE(!events.empty());
  for (auto it = events.rbegin(); it != events.rend(); ++it) {
    if (it->value("event", "") != "attempt_end") continue;
    CHECK((*it)["end_reason"] == "completed");
    CHECK((*it)["exit_code"] == 0);
    break;
  }
  for (const auto& e : std::filesystem::directory_iterator(ckpt))
    CHECK_MESSAGE(e.path().filename().string().rfind(".staging-", 0) != 0, e.path());
  std::string verify;
  CHECK(run({binary("LIFELINE_BIN"), "verify", ckpt, "--json"}, &verify) == 0);
  json v = json::parse(verify);
  REQUIRE(v["resume"].is_object());
  CHECK(v["resume"]["step"] == 20);
  CHECK(v["resume"]["valid"] == true);
}

bool python_with_torch() {
  const char* p = std::getenv("PYTHON");
  if (!p || !*p) {
    MESSAGE("skipped: PYTHON (an interpreter with torch) is not set");
    return false;
  }
  return true;
}

}  // namespace

TEST_CASE("on a full disk the C++ example trainer reports each failed save, trains to the end and exits 0, no crash loop") {
  saves_fail_on_a_full_disk(cpp_trainer(false));
}

TEST_CASE("on a full disk the C++ example trainer with --async reports each failed save, trains to the end and exits 0") {
  saves_fail_on_a_full_disk(cpp_trainer(true));
}

TEST_CASE("on a full disk the Python example trainer reports each failed save, trains to the end and exits 0") {
  if (python_with_torch()) saves_fail_on_a_full_disk(python_trainer(false));
}

TEST_CASE("on a full disk the Python example trainer with --async reports each failed save, trains to the end and exits 0") {
  if (python_with_torch()) saves_fail_on_a_full_disk(python_trainer(true));
}
