#include "supervisor/rank_coordinator.h"

#include <algorithm>
#include <vector>

#include "common/clock.h"
#include "store/file_system.h"
#include "store/sharded.h"

namespace lifeline {
using namespace layout;

RankCoordinator::RankCoordinator(const ControlBlock& block, std::string ckpt_dir, CheckpointMeta meta, bool collective)
    : b_(block), dir_(std::move(ckpt_dir)), meta_(std::move(meta)), collective_(collective) {}

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
  // Kept from earlier polls: attached, world, part, failed (ranks that left still count).
  node_.all_seen = false;
  node_.promised = 0;
  node_.request = b_.u64(kRequestSeqOff).load(std::memory_order_acquire);
  node_.answered = b_.u64(kAgreementSeqOff).load();
  node_.stop = (b_.u32(kRequestFlagsOff).load() & kFlagStop) != 0;
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

  // What the job's leader needs (several supervisors): this node's share of the decisions below.
  most_attached_ = std::max(most_attached_, uint32_t(slots.size()));
  node_.attached = most_attached_;
  node_.world = world;
  node_.all_seen = any_live;
  for (const auto& s : slots) {
    if (!live(s)) continue;
    node_.all_seen = node_.all_seen && s.seen_seq >= node_.request;
    node_.promised = std::max(node_.promised, s.promised);
  }
  // The node's part of a step: every rank that ever attached has it durable (kept once seen).
  uint64_t node_part = slots.size() == most_attached_ ? slots.front().part_step : 0;
  uint64_t part_ns = 0;
  for (const auto& s : slots) {
    if (s.part_step != node_part) node_part = 0;
    part_ns = std::max(part_ns, s.part_ns);
    node_.failed = std::max(node_.failed, s.failed_step);
  }
  if (node_part > durable_part_) {
    durable_part_ = node_part;
    durable_part_ns_ = part_ns;
  }
  node_.part = durable_part_;
  node_.part_ns = durable_part_ns_;
  if (collective_) {
    for (const auto& s : slots)
      if (s.state == ClientState::saving || (s.part_step && !done(s.part_step))) r.urgent = true;
    if (node_.request > node_.answered) r.urgent = true;
    b_.u64(kFailedSavesOff).store(rank_failures + own_failures_);
    return r;
  }

  // Agreement: once every live rank has seen the newest request, the step is the largest promise.
  uint64_t request = node_.request;
  if (request > node_.answered) {
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
      // Whether the ranks leave after it: decided once, here, so that all of them decide alike.
      agree(request, agreed, node_.stop);
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

nlohmann::json RankCoordinator::ranks_json() const {
  nlohmann::json ranks = nlohmann::json::array();
  for (const auto& s : read_slots(b_))
    ranks.push_back({{"rank", s.rank},
                     {"world_size", s.world},
                     {"pid", s.pid},
                     {"state", client_state_name(s.state)},
                     {"step", s.step},
                     {"part_step", s.part_step ? nlohmann::json(s.part_step) : nlohmann::json(nullptr)}});
  return ranks;
}

void RankCoordinator::commit(uint64_t step, uint32_t world, uint64_t slowest_part_ns, Report& r) {
  CommitResult c;
  try {
    c = commit_collective(step, world, slowest_part_ns);
  } catch (const std::exception& e) {
    give_up(step, e.what(), r);
    return;
  }
  r.committed = c;
  r.committed_step = step;
  committed(step, c.bytes, c.duration_ns);
}

CommitResult RankCoordinator::commit_collective(uint64_t step, uint32_t world, uint64_t slowest_part_ns) {
  std::string staging = shared_staging_name(step, b_.u64(kStagingTokenOff).load());
  CommitResult c;
  try {
    c = commit_sharded(default_file_system(), dir_, staging, step, world, meta_, mono_ns());
  } catch (const std::exception&) {
    ++own_failures_;  // counted in the header by the next poll
    throw;
  }
  // What a checkpoint costs: the slowest rank's part, then the leader's manifest and rename.
  c.duration_ns += slowest_part_ns;
  return c;
}

void RankCoordinator::agree(uint64_t seq, uint64_t step, bool stop) {
  b_.u64(kAgreedStepOff).store(step);
  b_.u32(kAgreedStopOff).store(stop ? 1 : 0);
  b_.u64(kAgreementSeqOff).store(seq, std::memory_order_release);
  agreed_step_ = step;
  agreed_seq_ = seq;
}

void RankCoordinator::committed(uint64_t step, uint64_t bytes, uint64_t duration_ns) {
  any_done_ = true;
  last_done_ = std::max(last_done_, step);
  // As a single trainer's commit (docs/protocol.md §2): the record, then the count, then the ack
  // of every request the agreement answered.
  b_.u64(kLastCommitStepOff).store(step);
  b_.u64(kLastCommitNsOff).store(duration_ns);
  b_.u64(kLastCommitBytesOff).store(bytes);
  b_.u64(kAckStepOff).store(step);
  b_.u64(kCommitCountOff).fetch_add(1);
  if (agreed_seq_ && step >= agreed_step_) b_.u64(kAckSeqOff).store(agreed_seq_, std::memory_order_release);
}

void RankCoordinator::abandon(uint64_t step, bool remove) {
  if (remove) remove_staging(default_file_system(), dir_, shared_staging_name(step, b_.u64(kStagingTokenOff).load()));
  any_done_ = true;
  last_done_ = std::max(last_done_, step);
  uint64_t prev = b_.u64(kAbandonedStepOff).load();
  if (step > prev) b_.u64(kAbandonedStepOff).store(step, std::memory_order_release);
}

void RankCoordinator::give_up(uint64_t step, const std::string& why, Report& r) {
  abandon(step, /*remove=*/true);
  r.given_up = "checkpoint of step " + std::to_string(step) + " given up: " + why;
}

}  // namespace lifeline

namespace lifeline {

nlohmann::json NodeState::to_json() const {
  return {{"attached", attached}, {"world", world},     {"request", request}, {"answered", answered},
          {"all_seen", all_seen}, {"promised", promised}, {"stop", stop},     {"part", part},
          {"part_ns", part_ns},   {"failed", failed}};
}

NodeState NodeState::from_json(const nlohmann::json& j) {
  NodeState s;
  s.attached = j.at("attached").get<uint32_t>();
  s.world = j.at("world").get<uint32_t>();
  s.request = j.at("request").get<uint64_t>();
  s.answered = j.at("answered").get<uint64_t>();
  s.all_seen = j.at("all_seen").get<bool>();
  s.promised = j.at("promised").get<uint64_t>();
  s.stop = j.at("stop").get<bool>();
  s.part = j.at("part").get<uint64_t>();
  s.part_ns = j.at("part_ns").get<uint64_t>();
  s.failed = j.at("failed").get<uint64_t>();
  return s;
}

bool NodeState::operator==(const NodeState& o) const {
  return attached == o.attached && world == o.world && request == o.request && answered == o.answered &&
         all_seen == o.all_seen && promised == o.promised && stop == o.stop && part == o.part &&
         part_ns == o.part_ns && failed == o.failed;
}

JobCoordinator::JobCoordinator(uint32_t peers)
    : nodes_(peers), known_(peers, false), asked_(peers, false), answered_(peers, 0), asked_stop_(peers, false) {}

void JobCoordinator::update(uint32_t peer, const NodeState& s) {
  if (peer >= nodes_.size()) return;
  nodes_[peer] = s;
  known_[peer] = true;
}

void JobCoordinator::settled(uint64_t step) {
  any_settled_ = true;
  last_settled_ = std::max(last_settled_, step);
}

JobCoordinator::Decision JobCoordinator::decide() {
  Decision d;
  const size_t n = nodes_.size();
  for (size_t p = 0; p < n; ++p)
    if (!known_[p]) return d;
  uint32_t world = nodes_[0].world, attached = 0;
  bool whole = world > 0;
  for (const auto& s : nodes_) {
    attached += s.attached;
    whole = whole && s.world == world;
  }
  whole = whole && attached == world;
  d.world = world;

  // Requests: one pending anywhere is asked of every node, then agreed on by all.
  auto pending = [&](size_t p) { return nodes_[p].request > std::max(nodes_[p].answered, answered_[p]); };
  bool any = false, stop = false;
  for (size_t p = 0; p < n; ++p)
    if (pending(p)) {
      any = true;
      stop = stop || nodes_[p].stop;
    }
  if (any) {
    for (size_t p = 0; p < n; ++p) {
      // A node with nothing pending is asked once; a node whose request does not stop, when
      // the job stops, is asked to stop (its own supervisor must stop too, not see a completion).
      bool ask = (!pending(p) && !asked_[p]) || (stop && !nodes_[p].stop && !asked_stop_[p]);
      if (!ask) continue;
      d.ask.push_back(uint32_t(p));
      asked_[p] = true;
      if (stop) asked_stop_[p] = true;
    }
    d.ask_stop = stop;
    bool ready = whole;
    uint64_t step = 0;
    for (size_t p = 0; p < n; ++p) {
      ready = ready && pending(p) && nodes_[p].all_seen && (!stop || nodes_[p].stop);
      step = std::max(step, nodes_[p].promised);
    }
    if (ready) {
      d.agreed = step;
      d.agreed_stop = stop;
      d.agreed_seq.resize(n);
      for (size_t p = 0; p < n; ++p) {
        d.agreed_seq[p] = nodes_[p].request;
        answered_[p] = nodes_[p].request;
        asked_[p] = false;
      }
    }
  }

  // The commit: every rank's part durable; a failed part gives the checkpoint up.
  auto settled_already = [&](uint64_t step) { return any_settled_ && step <= last_settled_; };
  for (size_t p = 0; p < n; ++p)
    if (nodes_[p].failed && !settled_already(nodes_[p].failed) && (!d.give_up || nodes_[p].failed > *d.give_up)) {
      d.give_up = nodes_[p].failed;
      d.give_up_peer = uint32_t(p);
    }
  uint64_t part = nodes_[0].part;
  bool all_parts = whole && part > 0 && !settled_already(part);
  for (const auto& s : nodes_) {
    all_parts = all_parts && s.part == part;
    d.slowest_part_ns = std::max(d.slowest_part_ns, s.part_ns);
  }
  if (all_parts && (!d.give_up || *d.give_up != part)) d.commit = part;
  return d;
}

}  // namespace lifeline
