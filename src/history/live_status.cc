#include "history/live_status.h"

#include "common/regular_file.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <thread>

#include "common/clock.h"
#include "common/format.h"
#include "common/host.h"
#include "history/history.h"
#include "store/checkpoint_store.h"

namespace lifeline {

namespace {
using json = nlohmann::ordered_json;  // fields in the order written
using namespace layout;

// The newest checkpoint on disk that passes the quick check (manifest and sizes).
std::optional<CheckpointInfo> newest_valid_checkpoint(const std::string& dir) {
  auto list = list_checkpoints(dir, VerifyMode::quick);
  for (auto it = list.rbegin(); it != list.rend(); ++it)
    if (it->valid) return *it;
  return std::nullopt;
}

json policy_summary(const SupervisorRecord& r) {
  json p = r.policy;
  p["requeue_mode"] = r.requeue_mode;
  p["grace_seconds"] = r.grace_seconds;
  return p;
}

// Why `record` does not describe a supervisor that runs now, or "" when it may.
std::string not_running_reason(const std::optional<SupervisorRecord>& record, Liveness::State state) {
  if (!record) return "no supervisor.json: no supervisor has run here";
  if (state == Liveness::State::dead)
    return "supervisor pid " + std::to_string(record->pid) + " on " + record->host + " has exited";
  return "";
}

}  // namespace

std::optional<LiveSupervisor> attach_supervisor(const std::string& dir, std::string& why) {
  auto record = read_supervisor_record(dir, &why);
  if (!record) {
    if (why.empty()) why = "no supervisor.json in " + dir + ": no supervisor has run here";
    return std::nullopt;
  }
  auto state = supervisor_state(*record);
  if (state == Liveness::State::elsewhere) {
    why = "the supervisor runs on " + record->host + " (this is " + this_host() + "): run this there";
    return std::nullopt;
  }
  if (state == Liveness::State::dead) {
    why = "no supervisor is running (pid " + std::to_string(record->pid) + " has exited)";
    return std::nullopt;
  }
  if (!record->control) {
    why = "supervisor.json names no control block";
    return std::nullopt;
  }
  try {
    ControlBlock block = ControlBlock::attach(*record->control);
    if (int64_t(block.u32(kSupervisorPidOff).load()) != record->pid) {
      why = "control block " + *record->control + " belongs to another supervisor";
      return std::nullopt;
    }
    return LiveSupervisor{*record, std::move(block)};
  } catch (const std::exception& e) {
    why = "the supervisor (pid " + std::to_string(record->pid) + ") is between attempts: " + e.what();
    return std::nullopt;
  }
}

json live_status(const std::string& dir, const SupervisorRecord& rec, const ControlBlock* block, const Ledger& ledger,
                 double sample_seconds) {
  uint64_t now = wall_ns();
  const Attempt* current = nullptr;
  for (const Attempt& a : ledger.attempts)
    if (a.attempt == rec.attempt) current = &a;

  json j{{"running", true},
         {"reachable", block != nullptr},
         {"dir", dir},
         {"supervisor",
          {{"pid", rec.pid},
           {"host", rec.host},
           {"job_id", rec.job_id ? json(*rec.job_id) : json(nullptr)},
           {"attempt", rec.attempt},
           {"lineage", rec.lineage},
           {"started", rec.started_ns ? json(iso8601(rec.started_ns)) : json(nullptr)},
           {"control", rec.control ? json(*rec.control) : json(nullptr)}}},
         {"policy", policy_summary(rec)}};

  // Last checkpoint: the history's newest commit, unless the block already knows a newer one.
  std::optional<uint64_t> ck_step, ck_time;
  for (const Attempt& a : ledger.attempts)
    if (!a.commits.empty()) ck_step = a.commits.back().step, ck_time = a.commits.back().time_ns;

  if (!block) {
    j["trainer"] = nullptr;
    j["note"] = "between attempts: the supervisor is restarting the trainer";
  } else {
    uint64_t step0 = block->u64(kCurrentStepOff).load();
    uint64_t t0 = mono_ns();
    std::optional<double> rate;
    std::string rate_from;
    if (sample_seconds > 0) {
      std::this_thread::sleep_for(std::chrono::microseconds(int64_t(sample_seconds * 1e6)));
      uint64_t step1 = block->u64(kCurrentStepOff).load();
      double dt = double(mono_ns() - t0) / 1e9;
      if (step1 > step0 && dt > 0) rate = double(step1 - step0) / dt, rate_from = "sample";
      step0 = std::max(step0, step1);
    }
    if (!rate && current) {
      if (auto r = step_rate(*current)) rate = *r, rate_from = "history";
    }
    uint32_t tpid = block->u32(kTrainerPidOff).load();
    j["trainer"] = {{"pid", tpid ? json(tpid) : json(nullptr)},
                    {"state", client_state_name(ClientState(block->u32(kClientStateOff).load()))},
                    {"step", step0},
                    {"steps_per_second", rate ? json(round3(*rate)) : json(nullptr)},
                    {"rate_from", rate ? json(rate_from) : json(nullptr)}};
    // A distributed job's ranks on this node (docs/distributed.md); "trainer" is the slowest.
    json ranks = json::array();
    for (uint32_t i = 0; i < kMaxLocalRanks; ++i) {
      size_t slot = rank_slot(i);
      uint32_t pid = block->u32(slot + kSlotPidOff).load(std::memory_order_acquire);
      if (!pid) continue;
      uint64_t part = block->u64(slot + kSlotPartStepOff).load();
      ranks.push_back({{"local_rank", i},
                       {"rank", block->u32(slot + kSlotRankOff).load()},
                       {"world_size", block->u32(slot + kSlotWorldSizeOff).load()},
                       {"pid", pid},
                       {"state", client_state_name(ClientState(block->u32(slot + kSlotStateOff).load()))},
                       {"step", block->u64(slot + kSlotCurrentStepOff).load()},
                       {"part_step", part ? json(part) : json(nullptr)}});
    }
    j["ranks"] = ranks.empty() ? json(nullptr) : json(ranks);
    // Several supervisors: every node's ranks, as the leader wrote them (at most 10 s old).
    j["nodes"] = nullptr;
    std::ifstream in(dir + "/" + kRanksFileName);
    json nodes = json::parse(in, nullptr, false);
    if (nodes.is_object() && nodes.value("supervisor_pid", int64_t(0)) == rec.pid &&
        now - std::min<uint64_t>(now, nodes.value("updated_ns", uint64_t(0))) < 10ull * 1000000000ull &&
        nodes["nodes"].is_array())
      j["nodes"] = nodes["nodes"];
    uint64_t commits = block->u64(kCommitCountOff).load();
    uint64_t block_ck = block->u64(kLastCommitStepOff).load();
    if (commits > 0 && (!ck_step || block_ck > *ck_step)) ck_step = block_ck, ck_time = now;

    uint64_t seq = block->u64(kRequestSeqOff).load(), ack = block->u64(kAckSeqOff).load();
    if (seq > ack) {
      uint64_t deadline = block->u64(kDeadlineOff).load();
      j["pending_request"] = {
          {"seq", seq},
          {"ack_seq", ack},
          {"reason", reason_name(Reason(block->u32(kRequestReasonOff).load()))},
          {"stop", (block->u32(kRequestFlagsOff).load() & kFlagStop) != 0},
          {"deadline", deadline ? json(iso8601(deadline)) : json(nullptr)},
          {"deadline_in_seconds", deadline ? json(round3((double(deadline) - double(now)) / 1e9)) : json(nullptr)}};
    } else {
      j["pending_request"] = nullptr;
    }

    json next = json::object();
    uint64_t every = block->u64(kEveryStepsOff).load(), skip = block->u64(kSkipFirstStepsOff).load();
    next["every_steps"] = every;
    if (every > 0) {
      uint64_t at = next_periodic_step(step0, every, skip);
      next["step"] = at;
      next["step_in_seconds"] = rate ? json(round3(double(at - step0) / *rate)) : json(nullptr);
    } else {
      next["step"] = nullptr;
      next["step_in_seconds"] = nullptr;
    }
    double every_s = rec.policy.value("every_seconds", 0.0);
    next["every_seconds"] = every_s;
    if (every_s > 0) {
      uint64_t base = rec.started_ns;
      if (current)
        for (const auto& r : current->requests)
          if (r.reason == "periodic") base = std::max(base, r.time_ns);
      uint64_t at = base + uint64_t(every_s * 1e9);
      next["periodic_at"] = iso8601(at);
      next["periodic_in_seconds"] = round3(std::max(0.0, (double(at) - double(now)) / 1e9));
    } else {
      next["periodic_at"] = nullptr;
      next["periodic_in_seconds"] = nullptr;
    }
    j["next_checkpoint"] = next;
  }
  j["last_checkpoint"] = ck_step ? json{{"step", *ck_step},
                                        {"time", iso8601(*ck_time)},
                                        {"age_seconds", round3(double(now - std::min(now, *ck_time)) / 1e9)}}
                                 : json(nullptr);
  j["attempt"] = current ? attempt_json(*current) : json(nullptr);
  j["tier"] = tier_status(dir);
  return j;
}

json tier_status(const std::string& dir) {
  std::string text, error;
  if (!read_regular_file(dir + "/tier.json", 1 << 20, text, error)) return nullptr;
  json t = json::parse(text, nullptr, false);
  return t.is_object() ? t : json(nullptr);
}

json status_report(const std::string& dir, const std::optional<SupervisorRecord>& record, const Liveness& live,
                   const Ledger& ledger, double sample_seconds) {
  bool last_open = !ledger.attempts.empty() && ledger.attempts.back().running;
  if (record && live.state == Liveness::State::alive) {
    std::string why;
    auto sup = attach_supervisor(dir, why);
    json j = live_status(dir, *record, sup ? &sup->block : nullptr, ledger, sample_seconds);
    if (!sup) j["note"] = why;
    return j;
  }
  if (record && live.state == Liveness::State::elsewhere && last_open) {
    json j = live_status(dir, *record, nullptr, ledger, 0);
    j["reachable"] = false;
    j["note"] = "the supervisor runs on " + record->host + ": its pid and control block cannot be read from " +
                this_host() + "; this is the history's view";
    return j;
  }
  std::string why = not_running_reason(record, live.state);
  if (why.empty()) why = "the supervisor on " + record->host + " has recorded the end of its last attempt";
  auto newest = newest_valid_checkpoint(dir);
  return {{"running", false},
          {"dir", dir},
          {"reason", why},
          {"last_attempt", ledger.attempts.empty() ? json(nullptr) : attempt_json(ledger.attempts.back())},
          {"summary", summary_json(ledger.summary)},
          {"newest_checkpoint", newest ? json(checkpoint_object(*newest)) : json(nullptr)},
          {"tier", tier_status(dir)}};
}

uint64_t post_checkpoint_request(const std::string& dir, const LiveSupervisor& sup, const std::string& by) {
  uint64_t seq = sup.block.request(Reason::manual, false, 0);
  HistoryLog(dir).append({{"event", "checkpoint_request"},
                          {"attempt", sup.record.attempt},
                          {"reason", "manual"},
                          {"seq", seq},
                          {"by", by},
                          {"pid", getpid()}});
  return seq;
}

CommitWait wait_for_commit(const std::string& dir, const LiveSupervisor& sup, uint64_t seq, double timeout_seconds) {
  CommitWait result;
  uint64_t start = mono_ns();
  while (sup.block.u64(kAckSeqOff).load(std::memory_order_acquire) < seq) {
    if (double(mono_ns() - start) / 1e9 > timeout_seconds) {
      result.failure = "no checkpoint committed within " + human_duration(timeout_seconds);
      break;
    }
    if (supervisor_state(sup.record) != Liveness::State::alive) {
      result.failure = "the supervisor exited before a checkpoint answered the request";
      break;
    }
    auto now_rec = read_supervisor_record(dir);
    if (now_rec && now_rec->attempt != sup.record.attempt) {
      result.failure = "the attempt ended before a checkpoint answered the request";
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (result.failure.empty()) result.committed_step = sup.block.u64(kAckStepOff).load();
  result.waited_seconds = double(mono_ns() - start) / 1e9;
  return result;
}

}  // namespace lifeline
