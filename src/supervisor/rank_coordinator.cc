#include "supervisor/rank_coordinator.h"

#include <algorithm>
#include <vector>

#include "common/clock.h"
#include "store/file_system.h"
#include "store/sharded.h"

namespace lifeline {
using namespace layout;

RankCoordinator::RankCoordinator(const ControlBlock& block, std::string ckpt_dir, CheckpointMeta meta)
    : b_(block), dir_(std::move(ckpt_dir)), meta_(std::move(meta)) {}

namespace {

// One rank slot as read in one poll.
struct SlotView {
  size_t off = 0;
  uint32_t pid = 0, rank = 0, world = 0;
  ClientState state = ClientState::absent;
  uint64_t step = 0, seen_seq = 0, promised = 0, part_step = 0, part_bytes = 0, part_ns = 0, failed_step = 0,
           failed_saves = 0;
};

std::vector<SlotView> read_slots(const ControlBlock& b) {
  std::vector<SlotView> v;
  for (uint32_t i = 0; i < kMaxLocalRanks; ++i) {
    SlotView s;
    s.off = rank_slot(i);
    s.pid = b.u32(s.off + kSlotPidOff).load(std::memory_order_acquire);
    if (s.pid == 0) continue;
    s.rank = b.u32(s.off + kSlotRankOff).load();
    s.world = b.u32(s.off + kSlotWorldSizeOff).load();
    s.state = ClientState(b.u32(s.off + kSlotStateOff).load());
    s.step = b.u64(s.off + kSlotCurrentStepOff).load(std::memory_order_relaxed);
    s.seen_seq = b.u64(s.off + kSlotSeenSeqOff).load(std::memory_order_acquire);
    s.promised = b.u64(s.off + kSlotPromisedStepOff).load();
    s.part_step = b.u64(s.off + kSlotPartStepOff).load(std::memory_order_acquire);
    s.part_bytes = b.u64(s.off + kSlotPartBytesOff).load();
    s.part_ns = b.u64(s.off + kSlotPartNsOff).load();
    s.failed_step = b.u64(s.off + kSlotFailedStepOff).load(std::memory_order_acquire);
    s.failed_saves = b.u64(s.off + kSlotFailedSavesOff).load();
    v.push_back(s);
  }
  return v;
}

bool live(const SlotView& s) { return s.state == ClientState::attached || s.state == ClientState::saving; }

}  // namespace

RankCoordinator::Report RankCoordinator::poll() {
  Report r;
  std::vector<SlotView> slots = read_slots(b_);
  if (slots.empty()) return r;
  r.ranks = true;
  uint32_t world = slots.front().world;

  // The header as one trainer: the slowest live rank's step (a hung rank stalls it), the
  // busiest state, every failed part.
  uint64_t step = UINT64_MAX, rank_failures = 0;
  bool any_live = false, saving = false;
  uint32_t pid0 = slots.front().pid;
  for (const auto& s : slots) {
    if (live(s)) {
      any_live = true;
      step = std::min(step, s.step);
    }
    saving = saving || s.state == ClientState::saving;
    rank_failures += s.failed_saves;
    if (s.rank == 0) pid0 = s.pid;
  }
  if (!any_live)
    for (const auto& s : slots) step = std::min(step, s.step);
  b_.u64(kCurrentStepOff).store(step, std::memory_order_relaxed);
  b_.u32(kTrainerPidOff).store(pid0);
  b_.u32(kClientStateOff).store(uint32_t(saving ? ClientState::saving : any_live ? ClientState::attached : ClientState::exiting));

  // Agreement: once every live rank has seen the newest request, the step is the largest promise.
  uint64_t request = b_.u64(kRequestSeqOff).load(std::memory_order_acquire);
  if (request > b_.u64(kAgreementSeqOff).load()) {
    // Every rank of the world must have attached: one that attaches later takes the pending
    // request in itself, and an agreement without its promise could lie behind its step.
    bool all_seen = any_live && slots.size() >= world;
    uint64_t agreed = 0;
    for (const auto& s : slots) {
      if (!live(s)) continue;
      all_seen = all_seen && s.seen_seq >= request;
      agreed = std::max(agreed, s.promised);
    }
    if (all_seen) {
      b_.u64(kAgreedStepOff).store(agreed);
      // Whether the ranks leave after it: decided once, here, so that all of them decide alike.
      b_.u32(kAgreedStopOff).store((b_.u32(kRequestFlagsOff).load() & kFlagStop) ? 1 : 0);
      b_.u64(kAgreementSeqOff).store(request, std::memory_order_release);
      agreed_step_ = agreed;
      agreed_seq_ = request;
      r.agreed = agreed;
    } else {
      r.urgent = true;
    }
  }

  // A rank that failed its part gives the checkpoint up; every part durable commits it.
  for (const auto& s : slots)
    if (s.failed_step && !done(s.failed_step)) give_up(s.failed_step, "rank " + std::to_string(s.rank) + " failed its part", r);
  bool all_parts = slots.size() == world;
  uint64_t part = slots.front().part_step;
  for (const auto& s : slots) all_parts = all_parts && s.part_step == part && s.world == world;
  uint64_t slowest_part_ns = 0;
  for (const auto& s : slots) slowest_part_ns = std::max(slowest_part_ns, s.part_ns);
  if (all_parts && part && !done(part)) commit(part, world, slowest_part_ns, r);
  for (const auto& s : slots)
    if (s.state == ClientState::saving || (s.part_step && !done(s.part_step))) r.urgent = true;
  // Last: a commit that failed here counts too.
  b_.u64(kFailedSavesOff).store(rank_failures + own_failures_);
  return r;
}

void RankCoordinator::commit(uint64_t step, uint32_t world, uint64_t slowest_part_ns, Report& r) {
  std::string staging = shared_staging_name(step, b_.u32(kSupervisorPidOff).load(), b_.u64(kStagingTokenOff).load());
  CommitResult c;
  try {
    c = commit_sharded(default_file_system(), dir_, staging, step, world, meta_, mono_ns());
  } catch (const std::exception& e) {
    ++own_failures_;
    give_up(step, e.what(), r);
    return;
  }
  any_done_ = true;
  last_done_ = std::max(last_done_, step);
  // What a checkpoint costs: the slowest rank's part, then the leader's manifest and rename.
  c.duration_ns += slowest_part_ns;
  r.committed = c;
  r.committed_step = step;
  // As a single trainer's commit (docs/protocol.md §2): the record, then the count, then the ack
  // of every request the agreement answered.
  b_.u64(kLastCommitStepOff).store(step);
  b_.u64(kLastCommitNsOff).store(c.duration_ns);
  b_.u64(kLastCommitBytesOff).store(c.bytes);
  b_.u64(kAckStepOff).store(step);
  b_.u64(kCommitCountOff).fetch_add(1);
  if (agreed_seq_ && step >= agreed_step_) b_.u64(kAckSeqOff).store(agreed_seq_, std::memory_order_release);
}

void RankCoordinator::give_up(uint64_t step, const std::string& why, Report& r) {
  remove_staging(default_file_system(), dir_,
                 shared_staging_name(step, b_.u32(kSupervisorPidOff).load(), b_.u64(kStagingTokenOff).load()));
  any_done_ = true;
  last_done_ = std::max(last_done_, step);
  uint64_t prev = b_.u64(kAbandonedStepOff).load();
  if (step > prev) b_.u64(kAbandonedStepOff).store(step, std::memory_order_release);
  r.given_up = "checkpoint of step " + std::to_string(step) + " given up: " + why;
}

}  // namespace lifeline
