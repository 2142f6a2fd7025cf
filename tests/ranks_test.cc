// Ranks of a distributed job on one node (docs/distributed.md): the launcher's variables, one
// agreed step that no rank has passed, parts committed as one checkpoint by the supervisor's
// coordinator, a failed part giving the checkpoint up, and resume from each rank's own part.
#include <doctest.h>
#include <stdlib.h>

#include <algorithm>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "client/rank_env.h"
#include "control/control_block.h"
#include "lifeline/client.h"
#include "store/checkpoint_store.h"
#include "supervisor/rank_coordinator.h"
#include "supervisor/supervisor.h"
#include "support/client_env.h"
#include "support/temp_dir.h"

using namespace lifeline;
using namespace lifeline::layout;
using lifeline::test::ClientEnv;
using lifeline::test::TempDir;

namespace {

EnvLookup env_of(std::map<std::string, std::string> vars) {
  return [vars](const char* name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

std::string error_of(const std::map<std::string, std::string>& vars) {
  try {
    rank_env(env_of(vars));
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// Sets the launcher's variables for one local rank while it lives.
struct RankVars {
  RankVars(uint32_t local_rank, uint32_t world) {
    setenv("LOCAL_RANK", std::to_string(local_rank).c_str(), 1);
    setenv("RANK", std::to_string(local_rank).c_str(), 1);
    setenv("LOCAL_WORLD_SIZE", std::to_string(world).c_str(), 1);
    setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
  }
  ~RankVars() {
    for (const char* v : {"LOCAL_RANK", "RANK", "LOCAL_WORLD_SIZE", "WORLD_SIZE", "LIFELINE_RESHARD"}) unsetenv(v);
  }
};

// `world` clients in this process, one per local rank, attached to `block`.
std::vector<Client> attach_ranks(uint32_t world) {
  std::vector<Client> ranks;
  for (uint32_t i = 0; i < world; ++i) {
    RankVars v(i, world);
    ranks.push_back(Client::from_env());
  }
  return ranks;
}

CheckpointMeta test_meta() {
  CheckpointMeta m;
  m.host = "test";
  return m;
}

}  // namespace

TEST_CASE("a local world of one, or no launcher variables, is a single trainer") {
  CHECK_FALSE(rank_env(env_of({})));
  CHECK_FALSE(rank_env(env_of({{"LOCAL_WORLD_SIZE", "1"}, {"LOCAL_RANK", "0"}})));
  auto r = rank_env(env_of({{"LOCAL_WORLD_SIZE", "4"}, {"LOCAL_RANK", "2"}, {"RANK", "2"}, {"WORLD_SIZE", "4"}}));
  REQUIRE(r);
  CHECK(r->local_rank == 2);
  CHECK(r->rank == 2);
  CHECK(r->world_size == 4);
  CHECK(r->agree_margin == 2);
  auto own = rank_env(env_of({{"LOCAL_WORLD_SIZE", "4"}, {"LOCAL_RANK", "2"}, {"LIFELINE_LOCAL_WORLD_SIZE", "2"},
                              {"LIFELINE_LOCAL_RANK", "1"}, {"LIFELINE_AGREE_MARGIN", "5"}}));
  REQUIRE(own);
  CHECK(own->local_rank == 1);
  CHECK(own->world_size == 2);
  CHECK(own->agree_margin == 5);
}

TEST_CASE("bad launcher variables are refused naming the variable") {
  CHECK(error_of({{"LOCAL_WORLD_SIZE", "two"}}).find("LOCAL_WORLD_SIZE='two'") != std::string::npos);
  CHECK(error_of({{"LOCAL_WORLD_SIZE", "3"}}).find("LOCAL_RANK") != std::string::npos);
  CHECK(error_of({{"LOCAL_WORLD_SIZE", "3"}, {"LOCAL_RANK", "3"}}).find("LOCAL_RANK='3'") != std::string::npos);
  CHECK(error_of({{"LOCAL_WORLD_SIZE", "65"}, {"LOCAL_RANK", "0"}}).find("64") != std::string::npos);
  CHECK(error_of({{"LOCAL_WORLD_SIZE", "2"}, {"LOCAL_RANK", "0"}, {"WORLD_SIZE", "4"}}).find("one per node with srun") !=
        std::string::npos);
}

TEST_CASE("under one of several supervisors (LIFELINE_PEERS) a rank may span nodes and a lone rank is a rank") {
  auto two = rank_env(env_of({{"LIFELINE_PEERS", "2"}, {"LOCAL_WORLD_SIZE", "2"}, {"LOCAL_RANK", "1"},
                              {"RANK", "3"}, {"WORLD_SIZE", "4"}}));
  REQUIRE(two);
  CHECK(two->local_world_size == 2);
  CHECK(two->rank == 3);
  CHECK(two->world_size == 4);
  auto lone = rank_env(env_of({{"LIFELINE_PEERS", "3"}, {"RANK", "2"}, {"WORLD_SIZE", "3"}}));
  REQUIRE(lone);
  CHECK(lone->local_world_size == 1);
  CHECK(lone->local_rank == 0);
  CHECK(lone->rank == 2);
  CHECK_FALSE(rank_env(env_of({{"LIFELINE_PEERS", "1"}, {"RANK", "0"}, {"WORLD_SIZE", "1"}})));
  CHECK(error_of({{"LIFELINE_PEERS", "2"}, {"LOCAL_WORLD_SIZE", "4"}, {"LOCAL_RANK", "0"}, {"WORLD_SIZE", "2"}})
            .find("smaller") != std::string::npos);
}

TEST_CASE("ranks checkpoint one agreed step that no rank had passed, and the coordinator commits their parts as one") {
  TempDir d;
  ControlBlock block = ControlBlock::create("test");
  ClientEnv env(block.name(), d.path());
  RankCoordinator coord(block, d.path(), test_meta());
  std::vector<Client> ranks = attach_ranks(3);
  // The ranks are not in step: 10, 12, 11.
  std::vector<uint64_t> step = {10, 12, 11};
  for (size_t i = 0; i < 3; ++i) CHECK_FALSE(ranks[i].should_checkpoint(step[i]));
  CHECK(coord.poll().ranks);
  CHECK(block.u64(kCurrentStepOff).load() == 10);  // the slowest rank's

  uint64_t seq = block.request(Reason::manual, false, 0);
  // Each rank sees it on its next step and promises; none may checkpoint yet.
  for (size_t i = 0; i < 3; ++i) CHECK_FALSE(ranks[i].should_checkpoint(++step[i]));
  // 11, 13, 12 seen: the promises are 13, 15, 14; the agreement is the largest.
  auto r = coord.poll();
  REQUIRE(r.agreed);
  CHECK(*r.agreed == 15);
  CHECK(block.u64(kAgreementSeqOff).load() == seq);
  // Every rank checkpoints exactly step 15, and none earlier.
  for (size_t i = 0; i < 3; ++i) {
    while (step[i] < 14) CHECK_FALSE(ranks[i].should_checkpoint(++step[i]));
    CHECK(ranks[i].should_checkpoint(15));
    auto ck = ranks[i].begin_checkpoint(15);
    CHECK(ck.path().find("/rank-0000" + std::to_string(i)) != std::string::npos);
    if (i == 0) ck.write_file("model.bin", "weights", 7);  // rank 0 alone saves, as in DDP
    CHECK(ck.commit());
    if (i < 2) {
      // Not committed while a part is missing.
      CHECK_FALSE(coord.poll().committed);
      CHECK(list_checkpoints(d.path(), VerifyMode::full).empty());
    }
  }
  r = coord.poll();
  REQUIRE(r.committed);
  CHECK(r.committed_step == 15);
  CHECK(block.u64(kAckSeqOff).load() == seq);
  CHECK(block.u64(kCommitCountOff).load() == 1);
  CHECK(block.u64(kLastCommitStepOff).load() == 15);
  // Its duration is what the checkpoint cost: the slowest rank's part and the leader's commit.
  uint64_t slowest = 0;
  for (uint32_t i = 0; i < 3; ++i) slowest = std::max(slowest, block.u64(rank_slot(i) + kSlotPartNsOff).load());
  CHECK(slowest > 0);
  CHECK(block.u64(kLastCommitNsOff).load() >= slowest);
  CheckpointInfo info = verify_checkpoint(d / "step-000000000015", VerifyMode::full);
  CHECK_MESSAGE(info.valid, info.problem);
  CHECK(info.world_size == 3);
  CHECK(info.bytes == 7);
  for (size_t i = 0; i < 3; ++i) CHECK_FALSE(ranks[i].should_checkpoint(16));
}

TEST_CASE("no step is agreed before every rank of the world has attached") {
  TempDir d;
  ControlBlock block = ControlBlock::create("test");
  ClientEnv env(block.name(), d.path());
  RankCoordinator coord(block, d.path(), test_meta());
  std::vector<Client> ranks;
  {
    RankVars v(0, 2);
    ranks.push_back(Client::from_env());
  }
  uint64_t seq = block.request(Reason::manual, false, 0);
  CHECK_FALSE(ranks[0].should_checkpoint(4));
  auto r = coord.poll();
  CHECK_FALSE(r.agreed);
  CHECK(r.urgent);
  {
    RankVars v(1, 2);
    ranks.push_back(Client::from_env());  // late: it takes the pending request in itself
  }
  CHECK_FALSE(ranks[1].should_checkpoint(3));
  r = coord.poll();
  REQUIRE(r.agreed);
  CHECK(*r.agreed == 6);  // rank 0's promise (4 + 2), the largest
  CHECK(block.u64(kAgreementSeqOff).load() == seq);
}

TEST_CASE("a stop lets every rank leave only after the agreed step") {
  TempDir d;
  ControlBlock block = ControlBlock::create("test");
  ClientEnv env(block.name(), d.path());
  RankCoordinator coord(block, d.path(), test_meta());
  std::vector<Client> ranks = attach_ranks(2);
  block.request(Reason::stop_signal, true, 0);
  for (auto& c : ranks) {
    CHECK_FALSE(c.should_checkpoint(5));
    CHECK_FALSE(c.should_exit());  // the flag is set, but the step is not agreed yet
  }
  REQUIRE(coord.poll().agreed == std::optional<uint64_t>(7));
  for (auto& c : ranks) {
    CHECK_FALSE(c.should_checkpoint(6));
    CHECK_FALSE(c.should_exit());
    CHECK(c.should_checkpoint(7));
    auto ck = c.begin_checkpoint(7);
    ck.write_file("x.bin", "x", 1);
    CHECK(ck.commit());
    CHECK(c.should_exit());
  }
  CHECK(coord.poll().committed);
}

TEST_CASE("a rank that fails its part gives the checkpoint up and the previous one stays the newest") {
  TempDir d;
  ControlBlock block = ControlBlock::create("test");
  ClientEnv env(block.name(), d.path());
  RankCoordinator coord(block, d.path(), test_meta());
  std::vector<Client> ranks = attach_ranks(2);
  auto checkpoint_all = [&](uint64_t step, bool rank1_fails) {
    for (size_t i = 0; i < 2; ++i) {
      auto ck = ranks[i].begin_checkpoint(step);
      ck.write_file("s.bin", "abc", 3);
      if (i == 1 && rank1_fails) {
        // The fault a full disk would cause: what the rank reports in its slot.
        size_t slot = rank_slot(1);
        block.u64(slot + kSlotFailedSavesOff).fetch_add(1);
        block.u64(slot + kSlotFailedStepOff).store(step);
        continue;  // its part is dropped uncommitted
      }
      CHECK(ck.commit());
    }
  };
  checkpoint_all(4, false);
  REQUIRE(coord.poll().committed);
  checkpoint_all(8, true);
  auto r = coord.poll();
  CHECK_FALSE(r.committed);
  REQUIRE(r.given_up);
  CHECK(r.given_up->find("step 8") != std::string::npos);
  CHECK(block.u64(kAbandonedStepOff).load() == 8);
  CHECK(block.u64(kFailedSavesOff).load() == 1);
  ResumeChoice choice = choose_resume(d.path());
  REQUIRE(choice.resume);
  CHECK(choice.resume->step == 4);
  // Nothing of step 8 is left behind: its shared staging folder is gone.
  for (const auto& e : std::filesystem::directory_iterator(d.path()))
    CHECK(e.path().filename().string().find("step-000000000008") == std::string::npos);
  // The next checkpoint is not held up by the given-up one.
  checkpoint_all(12, false);
  CHECK(coord.poll().committed);
}

TEST_CASE("each rank resumes from its own part, and a checkpoint of another world size is refused") {
  TempDir d;
  {
    ControlBlock block = ControlBlock::create("test");
    ClientEnv env(block.name(), d.path());
    RankCoordinator coord(block, d.path(), test_meta());
    std::vector<Client> ranks = attach_ranks(2);
    for (size_t i = 0; i < 2; ++i) {
      CHECK_FALSE(ranks[i].should_checkpoint(3));
      auto ck = ranks[i].begin_checkpoint(3);
      std::string mine = "rank" + std::to_string(i);
      ck.write_file("state.bin", mine.data(), mine.size());
      CHECK(ck.commit());
    }
    REQUIRE(coord.poll().committed);
  }
  ClientEnv env("", d.path());
  setenv("LIFELINE_RESUME_FROM", (d / "step-000000000003").c_str(), 1);
  setenv("LIFELINE_RESUME_STEP", "3", 1);
  {
    RankVars v(1, 2);
    Client c = Client::from_env();
    REQUIRE(c.resume());
    CHECK(c.resume()->path == d / "step-000000000003/rank-00001");
    CHECK(c.resume()->checkpoint == d / "step-000000000003");
    CHECK(c.resume()->step == 3);
  }
  {
    RankVars v(0, 3);
    std::string why;
    try {
      Client::from_env();
    } catch (const std::exception& e) {
      why = e.what();
    }
    CHECK(why.find("written by 2 rank(s), this job has 3") != std::string::npos);
    setenv("LIFELINE_RESHARD", "1", 1);
    Client c = Client::from_env();
    REQUIRE(c.resume());
    CHECK(c.resume()->path == d / "step-000000000003");
  }
}

// ---- several supervisors: the leader's decisions (JobCoordinator) ------------------------------

namespace {
NodeState node_state(uint32_t attached, uint32_t world, uint64_t request, uint64_t answered, bool all_seen,
                     uint64_t promised, bool stop = false) {
  NodeState s;
  s.attached = attached;
  s.world = world;
  s.request = request;
  s.answered = answered;
  s.all_seen = all_seen;
  s.promised = promised;
  s.stop = stop;
  return s;
}
}  // namespace

TEST_CASE("a request on one node is asked of the others once, then agreed at the largest promise of the whole world") {
  JobCoordinator job(3);
  job.update(0, node_state(2, 5, 0, 0, true, 0));
  job.update(1, node_state(2, 5, 4, 3, false, 0));  // node 1 got a request (its seq 4)
  CHECK(job.decide().ask.empty());                 // node 2 has not reported yet: nothing
  job.update(2, node_state(1, 5, 7, 7, true, 0));
  auto d = job.decide();
  CHECK(d.ask == std::vector<uint32_t>{0, 2});
  CHECK_FALSE(d.agreed);
  CHECK(job.decide().ask.empty());  // asked once
  job.update(0, node_state(2, 5, 1, 0, true, 12));
  job.update(1, node_state(2, 5, 4, 3, true, 15));
  CHECK_FALSE(job.decide().agreed);  // node 2 has not taken the request in yet
  job.update(2, node_state(1, 5, 8, 7, true, 11));
  d = job.decide();
  REQUIRE(d.agreed);
  CHECK(*d.agreed == 15);
  CHECK(d.agreed_seq == std::vector<uint64_t>{1, 4, 8});  // each node's own request_seq
  CHECK_FALSE(d.agreed_stop);
  CHECK_FALSE(job.decide().agreed);  // answered, even before the nodes report it
}

TEST_CASE("no agreement while a rank of the world is missing") {
  JobCoordinator job(2);
  job.update(0, node_state(2, 4, 1, 0, true, 9));
  job.update(1, node_state(1, 4, 1, 0, true, 9));  // 3 of 4 ranks attached
  CHECK_FALSE(job.decide().agreed);
  job.update(1, node_state(2, 4, 1, 0, true, 9));
  CHECK(job.decide().agreed);
}

TEST_CASE("a stop on one node makes every node stop: a node with a plain request is asked to stop, then all agree to stop") {
  JobCoordinator job(2);
  job.update(0, node_state(1, 2, 2, 1, true, 30, /*stop=*/true));
  job.update(1, node_state(1, 2, 5, 4, true, 31, /*stop=*/false));
  auto d = job.decide();
  CHECK(d.ask == std::vector<uint32_t>{1});
  CHECK(d.ask_stop);
  CHECK_FALSE(d.agreed);  // node 1's own supervisor must be stopping first
  job.update(1, node_state(1, 2, 6, 4, true, 31, true));
  d = job.decide();
  REQUIRE(d.agreed);
  CHECK(d.agreed_stop);
  CHECK(d.agreed_seq == std::vector<uint64_t>{2, 6});
}

TEST_CASE("the leader commits once every node's parts are durable, gives a failed part up, and neither twice") {
  JobCoordinator job(2);
  NodeState a = node_state(1, 2, 0, 0, true, 0), b = a;
  a.part = 40;
  a.part_ns = 5;
  job.update(0, a);
  job.update(1, b);
  CHECK_FALSE(job.decide().commit);
  b.part = 40;
  b.part_ns = 9;
  job.update(1, b);
  auto d = job.decide();
  REQUIRE(d.commit);
  CHECK(*d.commit == 40);
  CHECK(d.world == 2);
  CHECK(d.slowest_part_ns == 9);
  job.settled(40);
  CHECK_FALSE(job.decide().commit);
  b.failed = 60;
  a.part = 60;
  job.update(0, a);
  job.update(1, b);
  d = job.decide();
  REQUIRE(d.give_up);
  CHECK(*d.give_up == 60);
  CHECK(d.give_up_peer == 1);
  CHECK_FALSE(d.commit);
  job.settled(60);
  CHECK_FALSE(job.decide().give_up);
}

TEST_CASE("a node's state crosses the wire unchanged, and a malformed one is refused") {
  NodeState s = node_state(3, 9, 4, 2, true, 77, true);
  s.part = 70;
  s.part_ns = 123;
  s.failed = 50;
  CHECK(NodeState::from_json(nlohmann::json::parse(s.to_json().dump())) == s);
  CHECK_THROWS(NodeState::from_json(nlohmann::json{{"attached", 1}}));
}

// ---- several supervisors: who is who --------------------------------------------------------

namespace {
// Sets srun's task variables for one scope, and unsets them after.
struct SrunEnv {
  SrunEnv(const char* tasks, const char* procid, const char* nodes) {
    ::setenv("SLURM_STEP_ID", "0", 1);
    ::setenv("SLURM_STEP_NUM_TASKS", tasks, 1);
    ::setenv("SLURM_PROCID", procid, 1);
    ::setenv("SLURM_STEP_NUM_NODES", nodes, 1);
  }
  ~SrunEnv() {
    for (const char* v : {"SLURM_STEP_ID", "SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "SLURM_STEP_NUM_NODES"}) ::unsetenv(v);
  }
};
}  // namespace

TEST_CASE("who a supervisor is: srun's task count and rank, one per rank with more tasks than nodes, --peers wins") {
  RunOptions o;
  CHECK(peer_place(o).peers == 1);  // no srun step: the only one
  {
    SrunEnv env("3", "2", "3");
    PeerPlace p = peer_place(o);
    CHECK(p.peers == 3);
    CHECK(p.index == 2);
    CHECK_FALSE(p.per_rank);
  }
  {
    SrunEnv env("8", "5", "2");  // srun --ntasks-per-node=4 on 2 nodes: one supervisor per rank
    PeerPlace p = peer_place(o);
    CHECK(p.peers == 8);
    CHECK(p.index == 5);
    CHECK(p.per_rank);
  }
  {
    SrunEnv env("1", "0", "1");  // one task: the only one
    CHECK(peer_place(o).peers == 1);
  }
  o.peers = 2;
  CHECK_THROWS_WITH(peer_place(o), doctest::Contains("--peer-index"));
  o.peer_index = 1;
  CHECK(peer_place(o).index == 1);
  o.peer_index = 2;
  CHECK_THROWS_WITH(peer_place(o), doctest::Contains("not below --peers 2"));
  CHECK(preflight_error(o).find("--peer-index 2") != std::string::npos);
}
