#pragma once
// The supervisor's side of a node's ranks (docs/distributed.md): agreement and collective commit.
#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>
#include <vector>

#include "control/control_block.h"
#include "store/checkpoint_writer.h"

namespace lifeline {

// One node's ranks as the job's leader needs them to agree and commit (docs/distributed.md,
// "Several nodes"): what a follower sends whenever it changes.
struct NodeState {
  uint32_t attached = 0;      // rank slots in use
  uint32_t world = 0;         // the ranks' world size (0: none attached)
  uint64_t request = 0;       // the block's request_seq
  uint64_t answered = 0;      // the block's agreement_seq
  bool all_seen = false;      // every live rank has seen `request`
  uint64_t promised = 0;      // the largest promise of the live ranks
  bool stop = false;          // the block's request carries the stop flag
  uint64_t part = 0;          // the step every rank of the node has made its part durable for (0: none)
  uint64_t part_ns = 0;       // the slowest of those parts
  uint64_t failed = 0;        // newest step a rank failed its part of (0: none)
  nlohmann::json to_json() const;
  static NodeState from_json(const nlohmann::json& j);  // throws on a malformed message
  bool operator==(const NodeState& o) const;
  bool operator!=(const NodeState& o) const { return !(*this == o); }
};

// Leads the ranks attached to one control block: agrees on the step that answers each request,
// commits a checkpoint once every rank's part of it is durable (or gives it up when a rank
// failed its part), and keeps the header showing the ranks as one trainer (step = the slowest
// rank's, state, failed saves, the commit and its ack), so the supervisor's machine, history and
// `lifeline status` need not know about ranks. Does nothing while no rank slot is in use.
class RankCoordinator {
 public:
  // `collective`: one of several supervisors of a job; then poll() only reports the node's
  // state, and the leader's decisions come back through agree/committed/abandon.
  RankCoordinator(const ControlBlock& block, std::string ckpt_dir, CheckpointMeta meta, bool collective = false);

  // What one poll did.
  struct Report {
    bool ranks = false;                  // rank slots are in use
    bool urgent = false;                 // an agreement or a part is outstanding: poll again soon
    std::optional<uint64_t> agreed;      // the step just agreed on
    std::optional<CommitResult> committed;
    uint64_t committed_step = 0;
    std::optional<std::string> given_up;  // why a collective checkpoint was given up
  };
  // Reads the slots and acts; call it on every tick and before the trainer's exit is handled.
  Report poll();
  // The node as the last poll saw it.
  const NodeState& node() const { return node_; }
  // Several supervisors: a part this node made durable whose checkpoint the leader has neither
  // committed nor given up yet (the trainer may exit before the leader hears from every node).
  bool part_outstanding() const { return node_.part && !done(node_.part); }
  // Every rank attached now: [{rank, world_size, pid, state, step, part_step}] (for `status`
  // across nodes, docs/distributed.md).
  nlohmann::json ranks_json() const;

  // Several supervisors: the leader's decisions, applied to this node's block.
  void agree(uint64_t seq, uint64_t step, bool stop);
  void committed(uint64_t step, uint64_t bytes, uint64_t duration_ns);
  // `remove`: the staging folder goes too (the leader's give-up; followers leave it to the leader).
  void abandon(uint64_t step, bool remove);
  // The leader's commit of `step` (every node's parts are durable); throws on failure.
  CommitResult commit_collective(uint64_t step, uint32_t world, uint64_t slowest_part_ns);

 private:
  void commit(uint64_t step, uint32_t world, uint64_t slowest_part_ns, Report& r);
  void give_up(uint64_t step, const std::string& why, Report& r);
  bool done(uint64_t step) const { return any_done_ && step <= last_done_; }

  const ControlBlock& b_;
  std::string dir_;
  CheckpointMeta meta_;
  bool any_done_ = false;
  uint64_t last_done_ = 0;       // newest step committed or given up
  uint64_t own_failures_ = 0;    // collective commits that failed here (not a rank's part)
  uint64_t agreed_step_ = 0, agreed_seq_ = 0;
  bool collective_ = false;
  NodeState node_;
  // What the node's ranks said before they left: ranks detach when they exit, and the leader
  // must still count them and their last durable part.
  uint32_t most_attached_ = 0;
  uint64_t durable_part_ = 0, durable_part_ns_ = 0;
};

// The job's leader's half of several supervisors: from every node's state, which nodes must be
// asked for a checkpoint (a request is pending elsewhere), the agreed step once every rank of the
// world has seen the requests, and the checkpoint to commit or give up. Pure: no I/O.
class JobCoordinator {
 public:
  explicit JobCoordinator(uint32_t peers);
  void update(uint32_t peer, const NodeState& s);
  struct Decision {
    std::vector<uint32_t> ask;           // peers with nothing pending while another has a request
    bool ask_stop = false;               // ... and whether that request stops the job
    std::optional<uint64_t> agreed;      // the step every rank checkpoints
    bool agreed_stop = false;
    std::vector<uint64_t> agreed_seq;    // per peer: the request_seq the agreement answers there
    std::optional<uint64_t> commit;      // every rank's part of this step is durable
    uint32_t world = 0;
    uint64_t slowest_part_ns = 0;
    std::optional<uint64_t> give_up;     // a rank failed its part of this step
    uint32_t give_up_peer = 0;
  };
  Decision decide();
  // The commit of `step` was done or given up: never again.
  void settled(uint64_t step);

 private:
  std::vector<NodeState> nodes_;
  std::vector<bool> known_, asked_;
  std::vector<uint64_t> answered_;  // per peer: the newest request_seq an agreement answered
  std::vector<bool> asked_stop_;    // per peer: asked to stop (once per job: a stop is final)
  uint64_t last_settled_ = 0;
  bool any_settled_ = false;
};

}  // namespace lifeline
