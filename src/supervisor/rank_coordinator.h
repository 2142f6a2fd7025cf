#pragma once
// The supervisor's side of a node's ranks (docs/distributed.md): agreement and collective commit.
#include <cstdint>
#include <optional>
#include <string>

#include "control/control_block.h"
#include "store/checkpoint_writer.h"

namespace lifeline {

// Leads the ranks attached to one control block: agrees on the step that answers each request,
// commits a checkpoint once every rank's part of it is durable (or gives it up when a rank
// failed its part), and keeps the header showing the ranks as one trainer (step = the slowest
// rank's, state, failed saves, the commit and its ack), so the supervisor's machine, history and
// `lifeline status` need not know about ranks. Does nothing while no rank slot is in use.
class RankCoordinator {
 public:
  RankCoordinator(const ControlBlock& block, std::string ckpt_dir, CheckpointMeta meta);

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
};

}  // namespace lifeline
