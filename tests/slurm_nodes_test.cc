// lifeline across several nodes under a real Slurm 22.05: a 3-node cluster on this machine
// (tests/slurm/cluster.sh --nodes 3: one network namespace, /dev/shm and host name per node,
// one slurmd each) runs jobscripts/multi-node.sbatch: srun starts one `lifeline run` per node,
// each runs torchrun for examples/train_ddp.py (DDP over gloo, one rank per node). Preempted,
// stopped by the time limit, a follower's supervisor killed: one agreed step, one commit, one
// requeue per job, and the resumed run ends with the digest of an uninterrupted one.
// meson runs each TEST_CASE as its own test (tests/meson.build, suite slurm).
#include <doctest.h>
#include <signal.h>
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

constexpr int kNodes = 3;

std::vector<json> events(const std::string& ckpt, const std::string& name, const std::string& file = "history.jsonl") {
  std::vector<json> v;
  std::istringstream in(slurp(ckpt + "/" + file));
  for (std::string line; std::getline(in, line);)
    if (auto j = json::parse(line, nullptr, false); j.is_object() && j["event"] == name) v.push_back(j);
  return v;
}

std::string train_ddp() { return std::string(LIFELINE_SOURCE_DIR) + "/examples/train_ddp.py"; }

// The digest of an uninterrupted run of the same world size: torchrun, 3 local ranks, no lifeline.
std::string reference_digest(int steps) {
  TempDir d;
  std::string out;
  int rc = run({"/usr/bin/python3", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                std::to_string(kNodes), "--redirects", "1", "--tee", "1", train_ddp(), "--steps", std::to_string(steps),
                "--seed", "3", "--digest-out", d / "digest"},
               &out, {{"LIFELINE_CONTROL", ""}, {"LIFELINE_CKPT_DIR", ""}, {"LIFELINE_PEERS", ""}});
  REQUIRE_MESSAGE(rc == 0, out);
  return first_line(d / "digest");
}

// One test's world: a 3-node cluster, a shared checkpoint dir, a policy.
struct World {
  TempDir dir;
  SlurmCluster cluster;
  std::string ckpt = dir / "ckpt";
  std::string policy = dir / "policy.yaml";
  std::string digest = dir / "digest";

  explicit World(std::vector<std::string> cluster_options) : cluster(dir / "slurm", with_nodes(cluster_options)) {
    fs::permissions(dir.path(), fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                                    fs::perms::others_read | fs::perms::others_exec);
    std::ofstream(policy) << "version: 1\ncheckpoint:\n  every_steps: 25\n  every_seconds: 0\n"
                             "retention:\n  keep_last: 1000\n  keep_best: 0\n";
  }
  static std::vector<std::string> with_nodes(std::vector<std::string> o) {
    o.insert(o.begin(), {"--nodes", std::to_string(kNodes)});
    return o;
  }

  std::string out_of(const std::string& job) const { return dir / ("job-" + job + ".out"); }

  std::string submit(const std::vector<std::string>& opts, int steps, int delay_ms) {
    std::vector<std::string> o = {"--output=" + (dir / "job-%j.out"), "--nodes=" + std::to_string(kNodes)};
    o.insert(o.end(), opts.begin(), opts.end());
    std::vector<std::string> trainer = {train_ddp(),  "--steps", std::to_string(steps), "--seed", "3",
                                        "--step-delay-ms", std::to_string(delay_ms), "--log-every", "1",
                                        "--digest-out", digest};
    std::map<std::string, std::string> env = {{"LIFELINE", binary("LIFELINE_BIN")}, {"LIFELINE_CKPT_DIR", ckpt},
                                              {"LIFELINE_POLICY", policy}, {"GLOO_SOCKET_IFNAME", "eth0"},
                                              {"PYTHON", "/usr/bin/python3"}};
    return cluster.submit(o, std::string(LIFELINE_SOURCE_DIR) + "/jobscripts/multi-node.sbatch", trainer, env);
  }

  bool wait_for_step(const std::string& job, int step, std::chrono::seconds timeout = 180s) const {
    std::string needle = "step " + std::to_string(step) + " ";
    return SlurmCluster::wait_until([&] { return slurp(out_of(job)).find(needle) != std::string::npos; }, timeout);
  }

  std::string describe(const std::string& job) const {
    std::string s = "job output:\n" + slurp(out_of(job)) + "\nhistory:\n" + slurp(ckpt + "/history.jsonl");
    for (int k = 1; k < kNodes; ++k)
      s += "\nhistory of node " + std::to_string(k) + ":\n" + slurp(ckpt + "/history.node-" + std::to_string(k) + ".jsonl");
    return s;
  }

  // Every node took part in the attempt and saw it end as the leader did: the leader's
  // attempt_end lists all of them.
  static void check_nodes(const json& end) {
    REQUIRE(end["nodes"].size() == size_t(kNodes));
    for (int k = 1; k < kNodes; ++k) CHECK(end["nodes"][k]["end_reason"] == end["end_reason"]);
  }
};

// The pid of `lifeline run` for task `procid` of `job` (srun's task, on its node's namespace).
pid_t supervisor_of(const std::string& job, int procid) {
  for (const auto& p : fs::directory_iterator("/proc")) {
    std::string name = p.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmd = slurp(p.path() / "cmdline");
    if (cmd.find("lifeline") == std::string::npos || cmd.find(std::string("run") + '\0') == std::string::npos) continue;
    std::string env = slurp(p.path() / "environ");
    auto has = [&](const std::string& kv) { return env.find('\0' + kv + '\0') != std::string::npos || env.rfind(kv + '\0', 0) == 0; };
    if (has("SLURM_JOB_ID=" + job) && has("SLURM_PROCID=" + std::to_string(procid)) && cmd.rfind("bash", 0) != 0)
      return pid_t(std::stol(name));
  }
  return 0;
}

constexpr int kSteps = 600;

// A job for the high partition: it preempts whatever runs in low on its node.
std::string dir_script(const World& w) {
  std::string script = w.dir / "high.sbatch";
  std::ofstream(script) << "#!/bin/bash\necho high-priority job ran\n";
  return script;
}

// Runs the multi-node jobscript in the low partition, preempts it once rank 0 passed step 60
// with a one-node job in high, and checks the round trip: every node stopped at one agreed step
// whose checkpoint committed, one requeue (the leader's), the next run resumed from it and
// ended bit-exact.
// `tier`: every node has a node-local checkpoint tier (storage.local, one dir per node, named by
// the job's SLURMD_NODENAME as a site's $TMPDIR would be per node): each node drains its rank's
// part and the leader commits on shared storage (docs/storage.md, "Several supervisors per job").
void preemption_round_trip(const std::vector<std::string>& cluster_options, const std::vector<std::string>& job_options,
                           bool tier = false) {
  World w(cluster_options);
  if (tier)
    std::ofstream(w.policy, std::ios::app) << "storage:\n  local: " << (w.dir / "node-local")
                                           << "/${SLURMD_NODENAME}/lifeline-${SLURM_JOB_ID}\n  drain: async\n";
  std::vector<std::string> opts = {"-p", "low", "--exclusive", "--time=10"};
  opts.insert(opts.end(), job_options.begin(), job_options.end());
  std::string job = w.submit(opts, kSteps, 60);
  REQUIRE_MESSAGE(w.wait_for_step(job, 60), w.describe(job));
  w.cluster.submit({"-p", "high", "--exclusive", "-N", "1", "--output=" + (w.dir / "high-%j.out")}, dir_script(w));
  REQUIRE_MESSAGE(w.cluster.wait_for_end(job, 480s), w.describe(job));
  INFO(w.describe(job));
  CHECK(w.cluster.state(job) == "COMPLETED");
  CHECK(w.cluster.job(job)["Restarts"] == "1");
  CHECK(first_line(w.digest) == reference_digest(kSteps));
  auto ends = events(w.ckpt, "attempt_end");
  REQUIRE(ends.size() == 2);
  CHECK(ends[0]["end_reason"] == "preempted");
  CHECK(ends[0]["stop_checkpoint"]["state"] == "committed");
  World::check_nodes(ends[0]);
  if (tier) {
    CHECK(ends[0]["stop_checkpoint"]["drained"] == true);  // on shared storage before the requeue
    // Each node drained its own part: a drain in the leader's history and in each follower's.
    CHECK(!events(w.ckpt, "drain").empty());
    for (int k = 1; k < kNodes; ++k) CHECK(!events(w.ckpt, "drain", "history.node-" + std::to_string(k) + ".jsonl").empty());
    // Every node had its own local dir, and none keeps a checkpoint or a part.
    int nodes_seen = 0;
    for (const auto& node : fs::directory_iterator(w.dir / "node-local")) {
      ++nodes_seen;
      for (const auto& e : fs::recursive_directory_iterator(node.path())) {
        std::string name = e.path().filename().string();
        CAPTURE(e.path().string());
        CHECK(name.rfind("step-", 0) != 0);
        CHECK(name.rfind(".staging-", 0) != 0);
      }
    }
    CHECK(nodes_seen == kNodes);
  }
  CHECK(ends[1]["end_reason"] == "completed");
  auto starts = events(w.ckpt, "attempt_start");
  REQUIRE(starts.size() == 2);
  CHECK(starts[1]["resumed_from_step"] == ends[0]["last_checkpoint_step"]);
  CHECK(events(w.ckpt, "requeue").size() == 1);  // the leader's, once for the job
}

}  // namespace

TEST_CASE("3 nodes: a preemption (user signal at grace start) stops every node at one agreed step; requeued once, resumed bit-exact") {
  preemption_round_trip({"--grace", "40", "--kill-wait", "10", "--send-user-signal"}, {"--signal=USR1@5"});
}

TEST_CASE("3 nodes: a preemption without a user signal (SIGTERM to every process of the step at grace start) still stops every node at one agreed step") {
  // With a node-local tier on every node: the stop checkpoint's parts are drained by each node
  // and committed on shared storage before the requeue.
  preemption_round_trip({"--grace", "40", "--kill-wait", "10"}, {}, /*tier=*/true);
}

TEST_CASE("3 nodes: the time limit's USR1 checkpoints every node and requeues until the run completes bit-exact") {
  World w({"--kill-wait", "10"});
  const int steps = 450;  // ~45 s of training at 100 ms a step in jobs limited to one minute
  std::string job = w.submit({"--time=1", "--signal=USR1@25"}, steps, 100);
  REQUIRE_MESSAGE(w.cluster.wait_for_end(job, 600s), w.describe(job));
  INFO(w.describe(job));
  CHECK(w.cluster.state(job) == "COMPLETED");
  CHECK(first_line(w.digest) == reference_digest(steps));
  auto ends = events(w.ckpt, "attempt_end");
  REQUIRE(ends.size() >= 2);
  for (size_t i = 0; i + 1 < ends.size(); ++i) {
    CHECK(ends[i]["end_reason"] == "time_limit");
    World::check_nodes(ends[i]);
  }
  CHECK(ends.back()["end_reason"] == "completed");
  CHECK(w.cluster.job(job)["Restarts"] == std::to_string(ends.size() - 1));
}

TEST_CASE("3 nodes: a follower's supervisor killed with SIGKILL ends the attempt cleanly; the requeued job resumes bit-exact") {
  World w({"--kill-wait", "10"});
  std::string job = w.submit({"--time=10"}, kSteps, 40);
  REQUIRE_MESSAGE(w.wait_for_step(job, 80), w.describe(job));
  pid_t victim = supervisor_of(job, 2);
  REQUIRE_MESSAGE(victim > 0, w.describe(job));
  REQUIRE(::kill(victim, SIGKILL) == 0);
  REQUIRE_MESSAGE(w.cluster.wait_for_end(job, 480s), w.describe(job));
  INFO(w.describe(job));
  CHECK(w.cluster.state(job) == "COMPLETED");
  CHECK(w.cluster.job(job)["Restarts"] == "1");
  CHECK(first_line(w.digest) == reference_digest(kSteps));
  auto ends = events(w.ckpt, "attempt_end");
  REQUIRE(ends.size() == 2);
  CHECK(ends[0]["end_reason"] == "peer_lost");
  REQUIRE(ends[0]["nodes"].size() == size_t(kNodes));
  CHECK(ends[0]["nodes"][2]["end_reason"] == "peer_lost");
  auto starts = events(w.ckpt, "attempt_start");
  REQUIRE(starts.size() == 2);
  CHECK(starts[1]["resumed_from_step"] == ends[0]["last_checkpoint_step"]);
  CHECK(ends[1]["end_reason"] == "completed");
}

TEST_CASE("3 nodes with 2 supervisors per node (one per rank): a USR1 to the step stops all six at one agreed step and the requeued job resumes bit-exact") {
  World w({"--kill-wait", "10"});
  // The per-rank form: srun starts lifeline once per rank; each trainer is rank SLURM_PROCID.
  std::string script = w.dir / "per-rank.sbatch";
  std::ofstream(script) << "#!/bin/bash\n"
                           "#SBATCH --requeue\n#SBATCH --open-mode=append\n"
                           "exec srun --ntasks-per-node=2 --kill-on-bad-exit=0 \"$LIFELINE\" run --policy "
                           "\"$LIFELINE_POLICY\" --ckpt-dir \"$LIFELINE_CKPT_DIR\" -- \"$@\"\n";
  const int steps = 400;
  std::vector<std::string> trainer = {binary("TRAIN_EXAMPLE_BIN"), "--steps", std::to_string(steps), "--seed", "7",
                                      "--step-delay-ms", "40", "--log-every", "1", "--digest-out", w.digest};
  std::string job = w.cluster.submit({"--output=" + (w.dir / "job-%j.out"), "--nodes=3", "--ntasks-per-node=2", "--time=10"},
                                     script, trainer,
                                     {{"LIFELINE", binary("LIFELINE_BIN")}, {"LIFELINE_CKPT_DIR", w.ckpt},
                                      {"LIFELINE_POLICY", w.policy}});
  REQUIRE_MESSAGE(w.wait_for_step(job, 60), w.describe(job));
  REQUIRE(w.cluster.scancel({"--signal=USR1", job}) == 0);
  REQUIRE_MESSAGE(w.cluster.wait_for_end(job, 480s), w.describe(job));
  INFO(w.describe(job));
  CHECK(w.cluster.state(job) == "COMPLETED");
  CHECK(w.cluster.job(job)["Restarts"] == "1");
  TempDir ref;
  std::string out;
  REQUIRE(run({binary("TRAIN_EXAMPLE_BIN"), "--steps", std::to_string(steps), "--seed", "7", "--digest-out",
               ref / "digest"},
              &out, {{"LIFELINE_CONTROL", ""}, {"LIFELINE_CKPT_DIR", ""}}) == 0);
  CHECK(first_line(w.digest) == first_line(ref / "digest"));
  auto ends = events(w.ckpt, "attempt_end");
  REQUIRE(ends.size() == 2);
  CHECK(ends[0]["stop_checkpoint"]["state"] == "committed");
  REQUIRE(ends[0]["nodes"].size() == 6);
  // The stop checkpoint has every rank's part.
  std::string listing;
  REQUIRE(run({binary("LIFELINE_BIN"), "checkpoints", w.ckpt, "--json"}, &listing) == 0);
  bool found = false;
  for (const auto& c : json::parse(listing))
    if (c["step"] == ends[0]["last_checkpoint_step"]) {
      found = true;
      CHECK(c["world_size"] == 6);
      CHECK(c["valid"] == true);
    }
  CHECK(found);
}
