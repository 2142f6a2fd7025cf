// `lifeline run` with a node-local tier (storage.local, docs/storage.md): the trainer commits to
// the local directory, the supervisor drains each checkpoint to the checkpoint dir; resumes
// across both tiers; a supervisor killed mid-drain; a wiped local disk; full disks; a local tier
// on another file system (tmpfs) than the checkpoint dir. The real lifeline binary, the real
// example trainer (LibTorch), real mounts in a mount namespace of the test's own (root).
#include <doctest.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "support/process.h"
#include "support/temp_dir.h"
#include "support/history_file.h"

using namespace lifeline::test;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

std::string write_policy(const TempDir& d, const std::string& storage) {
  std::string path = d / "policy.yaml";
  std::ofstream(path) << "version: 1\n"
                         "checkpoint:\n  every_steps: 20\n  every_seconds: 0\n"
                         "restart:\n  backoff_seconds: 0\n"
                         "retention:\n  keep_last: 1000\n  keep_best: 0\n"
                         "storage:\n"
                      << storage;
  return path;
}

std::vector<std::string> tier_run(const TempDir& d, const std::string& storage, const std::vector<std::string>& train) {
  std::vector<std::string> v = {binary("LIFELINE_BIN"), "run", "--policy", write_policy(d, storage), "--ckpt-dir", d / "ckpt",
                                "--"};
  v.insert(v.end(), train.begin(), train.end());
  return v;
}

std::vector<std::string> train_cmd(const TempDir& d, int steps, int delay_ms, int state_mib = 0) {
  std::vector<std::string> v = {binary("TRAIN_EXAMPLE_BIN"), "--steps", std::to_string(steps), "--seed", "7",
                                "--step-delay-ms", std::to_string(delay_ms), "--log-every", "1", "--digest-out",
                                d / "digest"};
  if (state_mib) v.insert(v.end(), {"--state-mib", std::to_string(state_mib)});
  return v;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::string s;
  std::getline(in, s);
  return s;
}

// Committed step folders of `dir` (step-N), and whether any other entry than the known files is a
// partial checkpoint (a step-N without its MANIFEST).
std::vector<std::string> step_folders(const std::string& dir) {
  std::vector<std::string> out;
  if (!fs::exists(dir)) return out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind("step-", 0) == 0) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

int verify_all(const std::string& dir, std::string* out) {
  return run({binary("LIFELINE_BIN"), "checkpoints", dir, "--json"}, out);
}

// Runs argv with tmpfs mounts of the given sizes on the given paths, in a mount namespace of its
// own (the mounts go away with it); the output into `out`. The exit status.
int run_with_mounts(const std::vector<std::string>& argv, const std::vector<std::pair<std::string, std::string>>& mounts,
                    std::string* out) {
  return run_in_mount_namespace(
      argv,
      [&] {
        for (const auto& [path, size] : mounts) {
          std::error_code ec;
          fs::create_directories(path, ec);
          std::string opts = "size=" + size;
          if (::mount("tmpfs", path.c_str(), "tmpfs", 0, opts.c_str()) != 0)
            return "mount a tmpfs on " + path + ": " + std::strerror(errno);
        }
        return std::string();
      },
      out);
}

// Waits (at most 10 s) until a drain's staging folder appears in `dir`; true when it did.
bool wait_for_staging(const std::string& dir) {
  for (int i = 0; i < 1000; ++i) {
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().filename().string().rfind(".staging-", 0) == 0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

// The digest of an uninterrupted run of `steps` steps without any tier.
std::string reference_digest(int steps) {
  TempDir ref;
  std::string out;
  REQUIRE(run({binary("TRAIN_EXAMPLE_BIN"), "--steps", std::to_string(steps), "--seed", "7", "--digest-out", ref / "digest"},
              &out) == 0);
  return read_text(ref / "digest");
}

}  // namespace

TEST_CASE("a stopped run with a node-local tier drains its stop checkpoint and resumes bit-exact on a node whose local disk is gone") {
  TempDir d;
  const std::string storage = "  local: " + (d / "local") + "\n  keep_local: 1\n";
  {
    Process p(tier_run(d, storage, train_cmd(d, 100000, 20)));
    REQUIRE(p.wait_for_line("drained step 40") != "");
    p.signal(SIGUSR1);
    CHECK(p.wait() == 75);
  }
  // The trainer wrote into the local tier, the supervisor drained into the checkpoint dir.
  auto commits = events_named(d / "ckpt", "checkpoint_commit");
  REQUIRE(commits.size() >= 3);
  uint64_t stop_step = commits.back()["step"].get<uint64_t>();
  auto drains = events_named(d / "ckpt", "drain");
  REQUIRE_FALSE(drains.empty());
  CHECK(drains.back()["step"] == stop_step);
  CHECK(drains.back()["result"] == "drained");
  CHECK(drains.back()["bytes"].get<uint64_t>() > 0);
  CHECK(drains.back()["rate_bytes_per_s"].get<double>() > 0);
  auto end = events_named(d / "ckpt", "attempt_end").back();
  CHECK(end["stop_checkpoint"]["state"] == "committed");
  CHECK(end["stop_checkpoint"]["drained"] == true);
  CHECK(fs::exists(d / ("ckpt/" + step_folders(d / "ckpt").back() + "/MANIFEST")));
  CHECK(step_folders(d / "local").size() == 1);  // keep_local: 1
  std::string listed;
  REQUIRE(verify_all(d / "ckpt", &listed) == 0);
  for (const auto& c : json::parse(listed)) {
    CHECK(c["valid"] == true);
    CHECK(c["tier"] == (c["step"] == stop_step ? "both" : "shared"));
  }
  // status, with no supervisor running: the tier's newest local and drained step.
  std::string status;
  CHECK(run({binary("LIFELINE_BIN"), "status", d / "ckpt", "--json"}, &status) == 1);
  json tier = json::parse(status)["tier"];
  CHECK(tier["newest_local"] == stop_step);
  CHECK(tier["newest_drained"] == stop_step);
  CHECK(tier["draining"].is_null());

  // Another node: the local directory is not there.
  fs::remove_all(d / "local");
  std::string out;
  int rc = run(tier_run(d, storage, train_cmd(d, 120, 0)), &out);
  CHECK_MESSAGE(rc == 0, out);
  CHECK_MESSAGE(out.find("resuming from step " + std::to_string(stop_step)) != std::string::npos, out);
  CHECK(read_text(d / "digest") == reference_digest(120));
}

TEST_CASE("a Python trainer with a node-local tier is drained, stopped and resumed bit-exact from the checkpoint dir") {
  TempDir d;
  const std::string py = std::string(LIFELINE_SOURCE_DIR) + "/examples/train_torch.py";
  auto trainer = [&](int steps, int delay_ms) {
    return std::vector<std::string>{"/usr/bin/python3", py, "--steps", std::to_string(steps), "--seed", "7",
                                    "--step-delay-ms", std::to_string(delay_ms), "--log-every", "1", "--digest-out",
                                    d / "digest"};
  };
  const std::string storage = "  local: " + (d / "local") + "\n";
  {
    Process p(tier_run(d, storage, trainer(100000, 20)));
    REQUIRE(p.wait_for_line("drained step 20") != "");
    p.signal(SIGUSR1);
    CHECK(p.wait() == 75);
  }
  auto end = events_named(d / "ckpt", "attempt_end").back();
  CHECK(end["stop_checkpoint"]["drained"] == true);
  uint64_t stop_step = end["last_checkpoint_step"].get<uint64_t>();
  fs::remove_all(d / "local");
  std::string out;
  int rc = run(tier_run(d, storage, trainer(int(stop_step) + 20, 0)), &out);
  CHECK_MESSAGE(rc == 0, out);
  CHECK_MESSAGE(out.find("resuming from step " + std::to_string(stop_step)) != std::string::npos, out);
  TempDir ref;
  std::string alone;
  REQUIRE(run({"/usr/bin/python3", py, "--steps", std::to_string(stop_step + 20), "--seed", "7", "--digest-out",
               ref / "digest"},
              &alone, {{"LIFELINE_CONTROL", ""}, {"LIFELINE_CKPT_DIR", ""}}) == 0);
  CHECK(read_text(d / "digest") == read_text(ref / "digest"));
}

TEST_CASE("on the same node a local checkpoint newer than every drained one is drained first, then resumed from") {
  TempDir d;
  // drain: off makes local-only checkpoints, as a drain that had no time would.
  {
    Process p(tier_run(d, "  local: " + (d / "local") + "\n  drain: off\n", train_cmd(d, 100000, 20)));
    REQUIRE(p.wait_for_line("checkpoint committed: step 40") != "");
    p.signal(SIGUSR1);
    CHECK(p.wait() == 75);
  }
  CHECK(step_folders(d / "ckpt").empty());
  std::vector<std::string> local = step_folders(d / "local");
  REQUIRE_FALSE(local.empty());
  std::string out;
  int rc = run(tier_run(d, "  local: " + (d / "local") + "\n", train_cmd(d, 100, 0)), &out);
  CHECK_MESSAGE(rc == 0, out);
  auto first = events_named(d / "ckpt", "drain");
  REQUIRE_FALSE(first.empty());
  CHECK(first[0]["at_start"] == true);
  CHECK(first[0]["result"] == "drained");
  uint64_t step = first[0]["step"].get<uint64_t>();
  CHECK(local.back() == step_folders(d / "ckpt").front());
  CHECK_MESSAGE(out.find("resuming from step " + std::to_string(step)) != std::string::npos, out);
  CHECK(read_text(d / "digest") == reference_digest(100));
}

TEST_CASE("a checkpoint that was only on a wiped local disk is reported lost, and the run resumes from the newest drained one") {
  TempDir d;
  {
    Process p(tier_run(d, "  local: " + (d / "local") + "\n  drain: off\n", train_cmd(d, 100000, 20)));
    REQUIRE(p.wait_for_line("checkpoint committed: step 40") != "");
    p.signal(SIGUSR1);
    CHECK(p.wait() == 75);
  }
  uint64_t lost_step = events_named(d / "ckpt", "checkpoint_commit").back()["step"].get<uint64_t>();
  fs::remove_all(d / "local");
  std::string out;
  int rc = run(tier_run(d, "  local: " + (d / "local") + "\n", train_cmd(d, 30, 0)), &out);
  CHECK_MESSAGE(rc == 0, out);
  auto lost = events_named(d / "ckpt", "checkpoint_lost");
  REQUIRE(lost.size() == 1);
  CHECK(lost[0]["step"] == lost_step);
  CHECK(lost[0]["resume_step"].is_null());
  CHECK_MESSAGE(out.find("is lost") != std::string::npos, out);
  CHECK_MESSAGE(out.find("starting from scratch") != std::string::npos, out);
}

TEST_CASE("a supervisor killed mid-drain leaves no partial checkpoint in the checkpoint dir, and the next run resumes from a valid one") {
  TempDir d;
  // 1 MB/s and 16 MiB of state: a drain takes seconds, long enough to be killed in.
  const std::string storage = "  local: " + (d / "local") + "\n  drain_bandwidth: 1MB/s\n";
  {
    Process p(tier_run(d, storage, train_cmd(d, 100000, 20, 16)));
    REQUIRE(p.wait_for_line("checkpoint committed: step 20") != "");
    // The drain's staging folder appears in the checkpoint dir; kill the whole supervisor then.
    REQUIRE(wait_for_staging(d / "ckpt"));
    p.signal(SIGKILL);
    p.wait();
  }
  CHECK(step_folders(d / "ckpt").empty());  // nothing was published half-way
  std::vector<std::string> local = step_folders(d / "local");
  REQUIRE_FALSE(local.empty());
  uint64_t newest = std::stoull(local.back().substr(5));
  // Same node: the local checkpoint is drained first; the leftover staging folder is gone.
  std::string out;
  int rc = run(tier_run(d, "  local: " + (d / "local") + "\n", train_cmd(d, int(newest) + 20, 0, 16)), &out);
  CHECK_MESSAGE(rc == 0, out);
  CHECK_MESSAGE(out.find("resuming from step " + std::to_string(newest)) != std::string::npos, out);
  for (const auto& e : fs::directory_iterator(d / "ckpt"))
    CHECK_MESSAGE(e.path().filename().string().rfind(".staging-", 0) != 0, e.path());
  std::string listed;
  REQUIRE(verify_all(d / "ckpt", &listed) == 0);
  for (const auto& c : json::parse(listed)) CHECK(c["valid"] == true);
}

TEST_CASE("a node lost mid-drain (supervisor killed, local disk wiped): no partial checkpoint, the loss is reported, the run resumes from what was drained") {
  TempDir d;
  const std::string slow = "  local: " + (d / "local") + "\n  drain_bandwidth: 4MB/s\n";
  {
    // 8 MiB at 4 MB/s: step 20 drains in ~2 s; the next one is killed mid-copy.
    Process p(tier_run(d, slow, train_cmd(d, 100000, 20, 8)));
    REQUIRE(p.wait_for_line("drained step 20") != "");
    REQUIRE(wait_for_staging(d / "ckpt"));
    p.signal(SIGKILL);
    p.wait();
  }
  std::vector<std::string> shared = step_folders(d / "ckpt");
  REQUIRE(shared.size() == 1);  // step 20 only: the drain in flight published nothing
  CHECK(shared[0] == "step-000000000020");
  // What the supervisor knew of the local tier when it died (a commit in its last 200 ms may be
  // newer on the disk, unknown to anyone: nothing records it).
  json tier = json::parse(std::ifstream(d / "ckpt/tier.json"));
  uint64_t newest_local = tier["newest_local"].get<uint64_t>();
  REQUIRE(newest_local > 20);
  fs::remove_all(d / "local");  // the node is gone
  std::string out;
  int rc = run(tier_run(d, "  local: " + (d / "local") + "\n", train_cmd(d, 40, 0, 8)), &out);
  CHECK_MESSAGE(rc == 0, out);
  CHECK_MESSAGE(out.find("resuming from step 20") != std::string::npos, out);
  auto lost = events_named(d / "ckpt", "checkpoint_lost");
  REQUIRE(lost.size() == 1);
  CHECK(lost[0]["step"] == newest_local);
  CHECK(lost[0]["resume_step"] == 20);
  for (const auto& e : fs::directory_iterator(d / "ckpt"))
    CHECK_MESSAGE(e.path().filename().string().rfind(".staging-", 0) != 0, e.path());
}

TEST_CASE("a full checkpoint dir fails each drain with a clear error while training goes on; the local checkpoints stay valid") {
  TempDir d;
  std::string out;
  // A 2 MiB checkpoint dir (history and tier.json fit; a 4 MiB checkpoint does not); the local
  // tier on a tmpfs too: another file system than the checkpoint dir's.
  int rc = run_with_mounts(tier_run(d, "  local: " + (d / "local") + "\n  keep_local: 3\n", train_cmd(d, 60, 0, 4)),
                           {{d / "ckpt", "2m"}, {d / "local", "64m"}}, &out);
  CHECK_MESSAGE(rc == 0, out);
  CHECK_MESSAGE(out.find("drain of step ") != std::string::npos, out);
  CHECK_MESSAGE(out.find("No space left on device") != std::string::npos, out);
  CHECK_MESSAGE(out.find("training goes on") != std::string::npos, out);
  CHECK_MESSAGE(out.find("finished 60 steps") != std::string::npos, out);
}

TEST_CASE("a full local disk fails the saves with an error naming it; nothing half-written reaches the checkpoint dir") {
  TempDir d;
  std::string out;
  int rc = run_with_mounts(tier_run(d, "  local: " + (d / "local") + "\n", train_cmd(d, 60, 0, 4)),
                           {{d / "local", "1m"}}, &out);
  CHECK_MESSAGE(rc == 0, out);  // training goes on without checkpoints
  CHECK_MESSAGE(out.find("No space left on device") != std::string::npos, out);
  CHECK_MESSAGE(out.find(d / "local") != std::string::npos, out);
  CHECK(step_folders(d / "ckpt").empty());
  CHECK_FALSE(events_named(d / "ckpt", "checkpoint_failed").empty());
}

TEST_CASE("a local tier inside the checkpoint dir, or one that belongs to another run, is refused with exit 2") {
  TempDir d;
  std::string out;
  CHECK(run(tier_run(d, "  local: " + (d / "ckpt/local") + "\n", train_cmd(d, 10, 0)), &out) == 2);
  CHECK_MESSAGE(out.find("inside the checkpoint directory") != std::string::npos, out);

  TempDir other;
  REQUIRE(run(tier_run(other, "  local: " + (d / "shared-local") + "\n", train_cmd(other, 25, 0)), &out) == 0);
  out.clear();
  CHECK(run(tier_run(d, "  local: " + (d / "shared-local") + "\n", train_cmd(d, 10, 0)), &out) == 2);
  CHECK_MESSAGE(out.find("another run") != std::string::npos, out);
  CHECK_MESSAGE(out.find("nothing started") != std::string::npos, out);
}

TEST_CASE("a stop whose drain cannot fit its deadline at the measured speed says so when it begins, then drains uncapped") {
  TempDir d;
  // 2 MB/s and 16 MiB: the measured drain takes ~8 s, longer than a 3 s grace.
  const std::string storage = "  local: " + (d / "local") + "\n  drain_bandwidth: 2MB/s\n";
  std::vector<std::string> argv = tier_run(d, storage, train_cmd(d, 100000, 20, 16));
  argv.insert(argv.begin() + 2, {"--grace", "3"});
  Process p(argv);
  REQUIRE(p.wait_for_line("drained step 20") != "");
  p.signal(SIGUSR1);
  std::string said = p.wait_for_line("the stop checkpoint's drain");
  CHECK_MESSAGE(said.find("more than the") != std::string::npos, said);
  p.wait();
  auto late = events_named(d / "ckpt", "drain_late");
  REQUIRE(late.size() == 1);
  CHECK(late[0]["estimate_s"].get<double>() > late[0]["budget_s"].get<double>());
  CHECK(late[0]["resume_step"].get<uint64_t>() >= 20);
}

TEST_CASE("storage.drain off with several supervisors per job is refused with exit 2 before anything starts") {
  // With several supervisors a checkpoint commits only on shared storage, once every node's
  // parts are drained there: without a drain nothing would ever commit.
  TempDir d;
  std::vector<std::string> argv = tier_run(d, "  local: " + (d / "local") + "\n  drain: off\n", train_cmd(d, 10, 0));
  argv.insert(argv.begin() + 2, {"--peers", "2", "--peer-index", "0"});
  std::string out;
  CHECK(run(argv, &out) == 2);
  CHECK_MESSAGE(out.find("storage.drain: off with several supervisors") != std::string::npos, out);
  CHECK(!std::filesystem::exists(d / "local/.lifeline-tier.json"));  // the tier was never set up
  CHECK(step_folders(d / "ckpt").empty());
}

namespace {

// A tier run whose policy keeps one checkpoint on shared storage (retention.keep_last: 1).
std::vector<std::string> keep_one_run(const TempDir& d, int every_steps, const std::vector<std::string>& train) {
  std::string policy = d / "keep-one.yaml";
  std::ofstream(policy) << "version: 1\n"
                           "checkpoint:\n  every_steps: " << every_steps << "\n  every_seconds: 0\n"
                           "restart:\n  backoff_seconds: 0\n"
                           "retention:\n  keep_last: 1\n  keep_best: 0\n"
                           "storage:\n  local: " << (d / "local") << "\n  keep_local: 1\n";
  std::vector<std::string> v = {binary("LIFELINE_BIN"), "run", "--policy", policy, "--ckpt-dir", d / "ckpt", "--"};
  v.insert(v.end(), train.begin(), train.end());
  return v;
}

}  // namespace

TEST_CASE("with a node-local tier no retention runs on shared storage during a stop; the next attempt's first drain runs it") {
  // Retention's full verify reads the newest checkpoint back from shared storage: inside a stop's
  // grace period that held the exit up (found by bench/tier_bench.sh).
  TempDir d;
  {
    Process p(keep_one_run(d, 20, train_cmd(d, 100000, 20)));
    REQUIRE(p.wait_for_line("retention: removed step 20") != "");  // retention runs between stops
    p.signal(SIGUSR1);
    CHECK(p.wait() == 75);
  }
  auto end = events_named(d / "ckpt", "attempt_end").back();
  REQUIRE(end["stop_checkpoint"]["drained"] == true);
  uint64_t stop_step = end["stop_checkpoint"]["step"].get<uint64_t>();
  // The stop checkpoint was drained, and nothing was removed after the stop began: the newest
  // periodic checkpoint is still there beside it, over keep_last: 1.
  std::vector<std::string> left = step_folders(d / "ckpt");
  REQUIRE(left.size() == 2);
  CHECK(std::stoull(left.back().substr(5)) == stop_step);
  // In history: no retention event between the stop's signal and the attempt's end.
  bool stopping = false, retention_in_stop = false, any_retention = false;
  std::ifstream in(d / "ckpt/history.jsonl");
  for (std::string line; std::getline(in, line);) {
    json e = json::parse(line, nullptr, false);
    std::string name = e.is_object() ? e.value("event", "") : "";
    if (name == "signal") stopping = true;
    if (name == "attempt_end") break;
    if (name == "retention") (stopping ? retention_in_stop : any_retention) = true;
  }
  CHECK(stopping);
  CHECK(any_retention);
  CHECK_FALSE(retention_in_stop);
  // The next attempt: its first drain runs retention, which keeps one.
  std::string out;
  int rc = run(keep_one_run(d, 20, train_cmd(d, int(stop_step) + 30, 0)), &out);
  CHECK_MESSAGE(rc == 0, out);
  CHECK_MESSAGE(step_folders(d / "ckpt").size() == 1, out);
}
