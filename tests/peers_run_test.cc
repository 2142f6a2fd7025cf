// Several supervisors of one job end to end, without Slurm (docs/distributed.md, "Several
// nodes"): three `lifeline run --peers 3 --peer-index K` on this machine, one per "node", each
// with one rank of the real LibTorch example trainer (RANK/WORLD_SIZE as a launcher sets them),
// talking over the authenticated channel on loopback. The real multi-node case, on a 3-node
// Slurm cluster of network namespaces, is in slurm_nodes_test.cc.
#include <doctest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "support/process.h"
#include "support/temp_dir.h"
#include "support/text_file.h"

using namespace lifeline::test;
using json = nlohmann::json;

namespace {

constexpr int kPeers = 3;
constexpr int kSteps = 150;

std::vector<std::string> train_cmd(const std::string& digest, int delay_ms) {
  return {binary("TRAIN_EXAMPLE_BIN"), "--steps", std::to_string(kSteps), "--seed", "5", "--step-delay-ms",
          std::to_string(delay_ms), "--log-every", "1", "--digest-out", digest};
}

// Supervisor `k` of three, its trainer rank k of the world. `tier`: each "node" has a node-local
// checkpoint tier of its own, <d>/node-K/lifeline (storage.local: $NODE_TMP/lifeline).
std::unique_ptr<Process> supervisor(const TempDir& d, int k, int delay_ms, bool tier = false) {
  std::string policy = d / "policy.yaml";
  if (!std::filesystem::exists(policy))  // once: the others read it while later ones start
    std::ofstream(policy) << "version: 1\n"
                             "checkpoint:\n  every_steps: 25\n  every_seconds: 0\n"
                             "retention:\n  keep_last: 1000\n  keep_best: 0\n"
                          << (tier ? "storage:\n  local: $NODE_TMP/lifeline\n  drain: async\n" : "");
  std::vector<std::string> argv = {binary("LIFELINE_BIN"), "run", "--policy", policy, "--ckpt-dir", d / "ckpt",
                                   "--requeue", "none", "--peers", std::to_string(kPeers), "--peer-index",
                                   std::to_string(k), "--"};
  for (const auto& a : train_cmd(d / ("digest" + std::to_string(k)), delay_ms)) argv.push_back(a);
  return std::make_unique<Process>(argv, std::map<std::string, std::string>{
                                             {"RANK", std::to_string(k)}, {"WORLD_SIZE", std::to_string(kPeers)},
                                             {"LIFELINE_PEER_SILENCE", "3"},
                                             {"NODE_TMP", d / ("node-" + std::to_string(k))}});
}

const std::string& reference_digest() {
  static std::string digest = [] {
    TempDir d;
    std::string out;
    int rc = run(train_cmd(d / "digest", 0), &out, {{"LIFELINE_CONTROL", ""}, {"LIFELINE_CKPT_DIR", ""}});
    REQUIRE_MESSAGE(rc == 0, out);
    return first_line(d / "digest");
  }();
  return digest;
}

std::vector<json> events(const TempDir& d, const std::string& file, const std::string& name) {
  std::vector<json> v;
  std::ifstream in(d / ("ckpt/" + file));
  for (std::string line; std::getline(in, line);) {
    json e = json::parse(line, nullptr, false);
    if (!e.is_discarded() && e.value("event", "") == name) v.push_back(e);
  }
  return v;
}

json checkpoints(const TempDir& d) {
  std::string listing;
  REQUIRE(run({binary("LIFELINE_BIN"), "checkpoints", d / "ckpt", "--json"}, &listing) == 0);
  return json::parse(listing);
}

uint64_t agreed_step(const std::string& output) {
  std::smatch m;
  REQUIRE_MESSAGE(std::regex_search(output, m, std::regex("ranks agreed to checkpoint step ([0-9]+)")), output);
  return std::stoull(m[1]);
}

// Every supervisor exits 75 (stopped, --requeue none) having agreed on one step, which it returns.
uint64_t stopped_at_one_step(std::vector<std::unique_ptr<Process>>& sup) {
  uint64_t agreed = 0;
  for (int k = 0; k < kPeers; ++k) {
    int rc = sup[k]->wait();
    CAPTURE(k);
    REQUIRE_MESSAGE(rc == 75, sup[k]->output());
    uint64_t a = agreed_step(sup[k]->output());
    if (k == 0) agreed = a;
    CHECK(a == agreed);  // one step, the same on every node
  }
  return agreed;
}

// Whether the newest checkpoint reaches `step` within 30 s (polling the listing every 100 ms).
bool committed_by(const TempDir& d, uint64_t step) {
  for (int i = 0; i < 300; ++i) {
    json list = checkpoints(d);
    if (!list.empty() && list.back()["step"].get<uint64_t>() >= step) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

// All three resumed: every one's trainer ends with the uninterrupted digest.
void resume_all(const TempDir& d, uint64_t from, bool tier = false) {
  std::vector<std::unique_ptr<Process>> again;
  for (int k = 0; k < kPeers; ++k) again.push_back(supervisor(d, k, 0, tier));
  for (int k = 0; k < kPeers; ++k) {
    int rc = again[k]->wait();
    CAPTURE(k);
    REQUIRE_MESSAGE(rc == 0, again[k]->output());
    CHECK(again[k]->output().find("resumed from step " + std::to_string(from)) != std::string::npos);
    CHECK(first_line(d / ("digest" + std::to_string(k))) == reference_digest());
  }
}

}  // namespace

TEST_CASE("three supervisors of one job: a stop signal to one follower stops all three at one agreed step; resumed, bit-exact") {
  TempDir d;
  std::vector<std::unique_ptr<Process>> sup;
  for (int k = 0; k < kPeers; ++k) sup.push_back(supervisor(d, k, 20));
  REQUIRE(sup[2]->wait_for_line("step 40 ") != "");
  // `lifeline status` on the leader's directory shows every node's rank (ranks.json, once a second).
  json status;
  for (int i = 0; i < 100; ++i) {
    std::string out;
    if (run({binary("LIFELINE_BIN"), "status", d / "ckpt", "--json"}, &out) == 0) {
      status = json::parse(out, nullptr, false);
      // Every node listed, each with its rank attached (a node's trainer may attach a moment later).
      bool all = status.is_object() && status["nodes"].is_array() && status["nodes"].size() == size_t(kPeers);
      for (size_t n = 0; all && n < status["nodes"].size(); ++n)
        all = status["nodes"][n]["ranks"].is_array() && status["nodes"][n]["ranks"].size() == 1;
      if (all) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // polling the file the leader rewrites each second
  }
  REQUIRE_MESSAGE(status["nodes"].size() == size_t(kPeers), status.dump());
  for (const auto& node : status["nodes"]) {
    REQUIRE(node["ranks"].size() == 1);
    CHECK(node["ranks"][0]["rank"] == node["node"]);  // rank k is supervisor k's trainer here
    CHECK(node["ranks"][0]["world_size"] == kPeers);
  }
  sup[2]->signal(SIGUSR1);  // Slurm's signal reached one node first (or only)
  uint64_t agreed = stopped_at_one_step(sup);
  for (int k = 0; k < kPeers; ++k)
    CHECK(sup[k]->output().find("stopping at step " + std::to_string(agreed)) != std::string::npos);
  CHECK(agreed > 40);
  json list = checkpoints(d);
  REQUIRE(!list.empty());
  CHECK(list.back()["step"] == agreed);
  CHECK(list.back()["world_size"] == kPeers);
  CHECK(list.back()["valid"] == true);
  // One attempt per job in history.jsonl, with every node's view; followers keep their own.
  auto ends = events(d, "history.jsonl", "attempt_end");
  REQUIRE(ends.size() == 1);
  REQUIRE(ends[0]["nodes"].size() == size_t(kPeers));
  for (int k = 0; k < kPeers; ++k) CHECK(ends[0]["nodes"][k]["ranks"] == 1);
  for (int k = 1; k < kPeers; ++k) {
    CHECK(ends[0]["nodes"][k]["end_reason"] == "stopped");
    CHECK(events(d, "history.node-" + std::to_string(k) + ".jsonl", "attempt_end").size() == 1);
  }
  CHECK(events(d, "history.jsonl", "attempt_start").size() == 1);
  resume_all(d, agreed);
}

TEST_CASE("a follower's supervisor killed with SIGKILL: the others stop as peer_lost, and the next run resumes from the newest commit") {
  TempDir d;
  std::vector<std::unique_ptr<Process>> sup;
  for (int k = 0; k < kPeers; ++k) sup.push_back(supervisor(d, k, 20));
  REQUIRE(sup[1]->wait_for_line("step 60 ") != "");
  // The collective commit of step 50 is the leader's: under load it may come after a rank's step 60.
  REQUIRE(committed_by(d, 50));
  auto killed_at = std::chrono::steady_clock::now();
  sup[1]->signal(SIGKILL);
  CHECK(sup[1]->wait() == 128 + SIGKILL);
  for (int k : {0, 2}) {
    int rc = sup[k]->wait();
    CAPTURE(k);
    CHECK_MESSAGE(rc == 75, sup[k]->output());
    bool said = sup[k]->output().find("supervisor 1 is lost") != std::string::npos;
    CHECK(said);
  }
  // Never a hang: the trainers get SIGTERM at once, SIGKILL 5 s later.
  bool in_time = std::chrono::steady_clock::now() - killed_at < std::chrono::seconds(30);
  CHECK(in_time);
  auto ends = events(d, "history.jsonl", "attempt_end");
  REQUIRE(ends.size() == 1);
  CHECK(ends[0]["end_reason"] == "peer_lost");
  json list = checkpoints(d);
  REQUIRE(!list.empty());
  uint64_t newest = list.back()["step"];
  CHECK(newest >= 50);
  resume_all(d, newest);
}

TEST_CASE("three supervisors with node-local tiers: each node drains its part and the leader commits on shared storage; stopped and resumed bit-exact with the local dirs gone") {
  TempDir d;
  std::vector<std::unique_ptr<Process>> sup;
  for (int k = 0; k < kPeers; ++k) sup.push_back(supervisor(d, k, 20, /*tier=*/true));
  REQUIRE(sup[1]->wait_for_line("step 60 ") != "");
  // The periodic checkpoint of step 50 reaches shared storage whole: every node's part drained,
  // then the leader's commit.
  REQUIRE(committed_by(d, 50));
  sup[2]->signal(SIGUSR1);
  uint64_t agreed = stopped_at_one_step(sup);
  for (int k = 0; k < kPeers; ++k)  // each node drained its own rank's part of the stop checkpoint
    CHECK(sup[k]->output().find("drained this node's parts of step " + std::to_string(agreed)) != std::string::npos);
  // The stop checkpoint is committed on shared storage before the requeue: every part, valid.
  json list = checkpoints(d);
  REQUIRE(!list.empty());
  CHECK(list.back()["step"] == agreed);
  CHECK(list.back()["world_size"] == kPeers);
  CHECK(list.back()["valid"] == true);
  CHECK(list.back()["tier"] == "shared");
  auto ends = events(d, "history.jsonl", "attempt_end");
  REQUIRE(ends.size() == 1);
  CHECK(ends[0]["stop_checkpoint"]["step"] == agreed);
  CHECK(ends[0]["stop_checkpoint"]["drained"] == true);
  // Drains are in each node's history: the leader's and the followers' own files.
  CHECK(!events(d, "history.jsonl", "drain").empty());
  for (int k = 1; k < kPeers; ++k) CHECK(!events(d, "history.node-" + std::to_string(k) + ".jsonl", "drain").empty());
  // Nothing committed stays on a node: no checkpoint folder and no staging folder in any local dir.
  for (int k = 0; k < kPeers; ++k) {
    for (const auto& e : std::filesystem::directory_iterator(d / ("node-" + std::to_string(k) + "/lifeline"))) {
      std::string name = e.path().filename().string();
      CAPTURE(name);
      CHECK(name.rfind("step-", 0) != 0);
      CHECK(name.rfind(".staging-", 0) != 0);
    }
    std::filesystem::remove_all(d / ("node-" + std::to_string(k)));  // the nodes are gone
  }
  resume_all(d, agreed, /*tier=*/true);
}
