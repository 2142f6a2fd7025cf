#include "supervisor/machine.h"

#include "common/clock.h"
#include "control/control_block.h"
#include "supervisor/supervisor.h"

#include <signal.h>

#include <algorithm>
#include <cmath>

#include <spdlog/spdlog.h>

namespace lifeline {
using namespace layout;
using json = nlohmann::json;
using S = SupervisorState;
using E = SupervisorEvent;

namespace {

constexpr uint64_t kNsPerMs = 1000000ull;

uint64_t seconds_ns(double s) { return uint64_t(std::max(0.0, s) * 1e9); }

EndReason end_reason_of(StopCause c) {
  switch (c) {
    case StopCause::preempted: return EndReason::preempted;
    case StopCause::time_limit: return EndReason::time_limit;
    default: return EndReason::stopped;
  }
}

StopCause stop_cause_of(EndReason r) {
  switch (r) {
    case EndReason::preempted: return StopCause::preempted;
    case EndReason::time_limit: return StopCause::time_limit;
    default: return StopCause::stopped;
  }
}

}  // namespace

const char* state_name(SupervisorState s) {
  static constexpr const char* kNames[kSupervisorStates] = {"running", "checkpointing", "stopping",
                                                            "draining", "backoff", "done"};
  return kNames[size_t(s)];
}

const char* event_name(SupervisorEvent e) {
  static constexpr const char* kNames[kSupervisorEvents] = {
      "stop_signal",    "checkpoint_signal", "hangup",           "tick",          "acked",
      "no_progress",    "periodic_due",      "job_end_known",    "time_limit_due", "stop_cause_known",
      "stop_deadline",  "term_due",          "kill_due",         "child_exit",    "restart_due",
      "peer_request",   "peer_lost"};
  return kNames[size_t(e)];
}

// The table. Rows: events (SupervisorEvent order); columns: running, checkpointing, stopping,
// draining, backoff, done. docs/supervisor.md shows the same table (a test compares them).
#define CELL(action) Cell{&SupervisorMachine::action, #action}
#define NONE Cell{&SupervisorMachine::ignore, "-"}
const std::array<std::array<SupervisorMachine::Cell, kSupervisorStates>, kSupervisorEvents> SupervisorMachine::kTable{{
    /* stop_signal */ {CELL(stop_with_checkpoint), CELL(stop_with_checkpoint), CELL(coalesce_stop),
                       CELL(coalesce_stop), CELL(stop_between_attempts), NONE},
    /* checkpoint_signal */ {CELL(request_now), CELL(request_pending), CELL(request_pending),
                             CELL(request_pending), CELL(request_pending), NONE},
    /* hangup */ {CELL(ignore_hangup), CELL(ignore_hangup), CELL(ignore_hangup), CELL(ignore_hangup),
                  CELL(ignore_hangup), NONE},
    /* tick */ {CELL(observe), CELL(observe), CELL(observe), CELL(observe), NONE, NONE},
    /* acked */ {NONE, CELL(resume_running), CELL(drain_after_ack), NONE, NONE, NONE},
    /* no_progress */ {CELL(stop_hung), CELL(stop_hung), NONE, NONE, NONE, NONE},
    /* periodic_due */ {CELL(request_periodic), CELL(skip_periodic), NONE, NONE, NONE, NONE},
    /* job_end_known */ {CELL(arm_time_limit), CELL(arm_time_limit), CELL(note_job_end), CELL(note_job_end), NONE,
                         NONE},
    /* time_limit_due */ {CELL(stop_for_time_limit), CELL(stop_for_time_limit), NONE, NONE, NONE, NONE},
    /* stop_cause_known */ {NONE, NONE, CELL(note_cause), CELL(note_cause), NONE, NONE},
    /* stop_deadline */ {NONE, NONE, CELL(stop_timed_out), NONE, NONE, NONE},
    /* term_due */ {NONE, NONE, NONE, CELL(send_term), NONE, NONE},
    /* kill_due */ {NONE, NONE, NONE, CELL(send_kill), NONE, NONE},
    /* child_exit */ {CELL(end_attempt), CELL(end_attempt), CELL(end_attempt), CELL(end_attempt), NONE, NONE},
    /* restart_due */ {NONE, NONE, NONE, NONE, CELL(start_attempt), NONE},
    /* peer_request */ {CELL(follow_peer), CELL(follow_peer), NONE, NONE, NONE, NONE},
    /* peer_lost */ {CELL(stop_peer_lost), CELL(stop_peer_lost), CELL(stop_peer_lost), NONE, NONE, NONE},
}};
#undef CELL
#undef NONE

const char* SupervisorMachine::cell_name(SupervisorState s, SupervisorEvent e) {
  return kTable[size_t(e)][size_t(s)].name;
}

std::string SupervisorMachine::table_markdown() {
  std::string md = "| event |";
  for (size_t s = 0; s < kSupervisorStates; ++s) md += std::string(" ") + state_name(SupervisorState(s)) + " |";
  md += "\n|---|";
  for (size_t s = 0; s < kSupervisorStates; ++s) md += "---|";
  md += "\n";
  for (size_t e = 0; e < kSupervisorEvents; ++e) {
    md += std::string("| ") + event_name(SupervisorEvent(e)) + " |";
    for (size_t s = 0; s < kSupervisorStates; ++s) md += std::string(" ") + kTable[e][s].name + " |";
    md += "\n";
  }
  return md;
}

SupervisorMachine::SupervisorMachine(MachineConfig config, MachineHistory history, Effects& effects)
    : cfg_(std::move(config)),
      fx_(effects),
      attempt_(history.attempts),
      failures_in_row_(history.failures_in_row),
      requeues_(history.requeues),
      commit_seconds_(std::move(history.commit_seconds)) {}

void SupervisorMachine::begin(uint64_t mono_ns, uint64_t wall_ns) {
  EventData e;
  e.kind = E::restart_due;
  e.mono_ns = mono_ns;
  e.wall_ns = wall_ns;
  dispatch(e);
}

void SupervisorMachine::dispatch(const EventData& e) {
  const Cell& cell = kTable[size_t(e.kind)][size_t(state_)];
  (this->*cell.action)(e);
}

// ---- signals ------------------------------------------------------------------------------

void SupervisorMachine::stop_with_checkpoint(const EventData& e) {
  // The relay knows which stop signal its handler posted, and which came at the same instant.
  int stop = e.relayed.seq && e.relayed.signo ? e.relayed.signo : e.signo;
  fx_.log().signal(stop, state_name(state_), e.relayed.together);
  if (e.relayed.together) {
    std::string together;
    for (int s = 1; s < 64; ++s)
      if (e.relayed.together & (1ull << s)) together += (together.empty() ? "SIG" : ", SIG") + signal_name(s);
    spdlog::info("{} arrived at the same instant: the stop is taken as SIG{} (its deadline is the tightest)",
                 together, signal_name(stop));
  }
  begin_stop(e, stop, EndReason::stopped, e.relayed);
}

void SupervisorMachine::coalesce_stop(const EventData& e) {
  fx_.log().signal(e.signo, state_name(state_), 0);
  if (stop_signal_ == 0 && !own_time_limit_) stop_signal_ = e.signo;  // the stop came first from the leader
  // A second Ctrl-C means now, as in most supervisors (the first one said so).
  if (e.signo == SIGINT && stop_signal_ == SIGINT && state_ == S::stopping) {
    spdlog::warn("second SIGINT: stopping the trainer now, without waiting for its checkpoint");
    begin_drain(e, 0);
    return;
  }
  spdlog::info("SIG{} while {}: already stopping, coalesced", signal_name(e.signo), state_name(state_));
}

void SupervisorMachine::stop_between_attempts(const EventData& e) {
  fx_.log().signal(e.signo, state_name(state_), 0);
  spdlog::info("SIG{} between attempts: not restarting", signal_name(e.signo));
  fx_.cancel(Timer::restart);
  finish(kExitStopped);
}

void SupervisorMachine::request_now(const EventData& e) {
  pending_seq_ = fx_.post_request(Reason::manual, false, 0);
  state_ = S::checkpointing;
  spdlog::info("SIGUSR2: checkpoint requested");
  fx_.log().checkpoint_request(RequestReason::manual, pending_seq_, std::nullopt);
  arm_tick(e);
}

void SupervisorMachine::request_pending(const EventData&) {
  spdlog::info("SIGUSR2 while {}: a checkpoint is already on its way", state_name(state_));
}

void SupervisorMachine::ignore_hangup(const EventData&) {
  spdlog::info("SIGHUP ignored (lifeline keeps training when its terminal goes away)");
}

// ---- the control block ----------------------------------------------------------------------

void SupervisorMachine::observe(const EventData& e) {
  fx_.settle_retention(/*wait=*/false);
  read_block(e);
  if (state_ == S::running || state_ == S::checkpointing) update_budgets(e);
  EventData derived = e;
  if ((state_ == S::checkpointing || state_ == S::stopping) && e.block.ack_seq >= pending_seq_) {
    derived.kind = E::acked;
    dispatch(derived);
  }
  // A save in progress (the trainer says so in its client state) may take kSaveHangFactor
  // times as long as a step before it counts as a hang.
  double hang = cfg_.policy.stop.hang_seconds;
  if (e.block.client_state == ClientState::saving) hang *= kSaveHangFactor;
  if (hang > 0 && e.mono_ns > last_progress_ns_ && double(e.mono_ns - last_progress_ns_) / 1e9 > hang) {
    derived.kind = E::no_progress;
    dispatch(derived);
  }
  if (state_ != S::done && state_ != S::backoff) arm_tick(e);
}

// Reads what the trainer reported and records it.
void SupervisorMachine::read_block(const EventData& e) {
  const BlockView& b = e.block;
  if (b.step > resumed_step_.value_or(0) || b.commit_count > 0) stepped_ = true;
  if (b.step != last_step_ || b.client_state != last_client_state_) {
    last_step_ = b.step;
    last_client_state_ = b.client_state;
    last_progress_ns_ = e.mono_ns;
  }
  if (b.request_seq != seen_request_seq_) {
    if (b.request_reason == Reason::trainer_signal && seen_request_seq_ < b.request_seq) {
      int sig = int(b.trainer_signal);
      spdlog::info("the trainer received SIG{} itself: it checkpoints and stops", signal_name(sig));
      fx_.log().trainer_signal(sig);
    }
    seen_request_seq_ = b.request_seq;
  }
  if (b.commit_count != seen_commits_) {
    // Commits faster than the polls: the block holds only the newest; the others are in the directory.
    if (b.commit_count - seen_commits_ > 1)
      for (const auto& c : fx_.commits_between(last_commit_step_, b.last_commit_step, resumed_step_)) {
        spdlog::info("checkpoint committed: step {}, {} bytes", c.step, c.bytes);
        fx_.log().checkpoint_commit(c.step, c.bytes, std::nullopt);
      }
    seen_commits_ = b.commit_count;
    double secs = double(b.last_commit_ns) / 1e9;
    last_commit_step_ = b.last_commit_step;
    commit_seconds_.push_back(secs);
    spdlog::info("checkpoint committed: step {}, {} bytes in {:.3f} s", b.last_commit_step, b.last_commit_bytes, secs);
    fx_.log().checkpoint_commit(b.last_commit_step, b.last_commit_bytes, secs);
    fx_.committed(b.last_commit_step, b.last_commit_bytes);
    // Not while stopping: the stop checkpoint and the exit come first.
    if (state_ == S::running || state_ == S::checkpointing) fx_.start_retention();
  }
  if (b.failed_saves != seen_failed_saves_) {
    // Several saves may have failed between two polls: the event counts them all.
    uint64_t count = b.failed_saves > seen_failed_saves_ ? b.failed_saves - seen_failed_saves_ : 1;
    seen_failed_saves_ = b.failed_saves;
    spdlog::error("the trainer could not save {} checkpoint(s) (see its output); older checkpoints are intact", count);
    fx_.log().checkpoint_failed(count);
  }
}

void SupervisorMachine::resume_running(const EventData&) { state_ = S::running; }

void SupervisorMachine::drain_after_ack(const EventData& e) {
  spdlog::info("stop checkpoint done; waiting for the trainer to exit");
  begin_drain(e, kExitPatienceMs);
}

void SupervisorMachine::stop_hung(const EventData& e) {
  spdlog::error("trainer reported no step for {:.0f} s (stop.hang_seconds) while {}: treating it as hung",
                cfg_.policy.stop.hang_seconds, state_name(state_));
  fx_.log().hang(last_step_, client_state_name(e.block.client_state));
  hung_ = true;
  begin_drain(e, 0);
}

// ---- several supervisors of one job (docs/distributed.md) -------------------------------------

// The leader asks: a request is pending on another node, so every node's ranks take it.
void SupervisorMachine::follow_peer(const EventData& e) {
  if (e.peer_stop) {
    spdlog::info("the job's leader asks for a stop checkpoint (another node is stopping)");
    begin_stop(e, 0, EndReason::stopped, fx_.disarm_relay());
    return;
  }
  if (state_ == S::checkpointing) spdlog::info("the job's leader asks for another checkpoint");
  pending_seq_ = fx_.post_request(Reason::manual, false, 0);
  state_ = S::checkpointing;
  spdlog::info("checkpoint requested by the job's leader (a request is pending on another node)");
  fx_.log().checkpoint_request(RequestReason::manual, pending_seq_, std::nullopt);
  arm_tick(e);
}

// A node is gone: no collective checkpoint can commit any more. The trainer stops now and the
// job ends with the newest committed checkpoint (the leader requeues it as any stop).
void SupervisorMachine::stop_peer_lost(const EventData& e) {
  spdlog::error("{}: stopping the trainer; the next attempt resumes from the newest committed checkpoint",
                e.peer_why);
  stop_reason_ = EndReason::peer_lost;
  fx_.cancel(Timer::time_limit);
  fx_.cancel(Timer::periodic);
  begin_drain(e, 0);
}

// ---- timers and Slurm's answers --------------------------------------------------------------

void SupervisorMachine::request_periodic(const EventData& e) {
  pending_seq_ = fx_.post_request(Reason::periodic, false, 0);
  state_ = S::checkpointing;
  spdlog::info("periodic checkpoint requested ({} s since the last)", cfg_.policy.checkpoint.every_seconds);
  fx_.log().checkpoint_request(RequestReason::periodic, pending_seq_, std::nullopt);
  arm_periodic(e);
}

// A period that ends while the last request is unanswered is skipped; the next comes as usual.
void SupervisorMachine::skip_periodic(const EventData& e) {
  spdlog::debug("periodic checkpoint skipped: the last request is not answered yet");
  arm_periodic(e);
}

void SupervisorMachine::note_job_end(const EventData& e) {
  if (e.attempt == attempt_ && e.end_ns) job_end_ns_ = e.end_ns;
}

// Our own stop ahead of the job's end, so the checkpoint and the requeue happen even without
// --signal: lead = p95 of this lineage's commit times x safety + requeue time.
void SupervisorMachine::arm_time_limit(const EventData& e) {
  if (e.attempt != attempt_ || !e.end_ns) return;
  job_end_ns_ = e.end_ns;
  double lead = time_limit_lead_seconds();
  double in_s = (double(*e.end_ns) - double(e.wall_ns)) / 1e9 - lead;
  spdlog::info("job ends at {}; lifeline stops it {:.0f} s before (checkpoint p95 x {} + {} s for the requeue)",
               iso8601(*e.end_ns), lead, kLeadSafety, kRequeueAllowanceS);
  fx_.arm(Timer::time_limit, e.mono_ns + seconds_ns(in_s));
}

void SupervisorMachine::stop_for_time_limit(const EventData& e) {
  fx_.log().time_limit_near();
  own_time_limit_ = true;
  begin_stop(e, 0, EndReason::time_limit, fx_.disarm_relay());
}

void SupervisorMachine::note_cause(const EventData& e) {
  if (e.attempt != attempt_ || !cause_pending_) return;
  apply_cause(e.job, e.wall_ns);
}

// Why the stop signal came, from the job as Slurm showed it while our step still ran.
void SupervisorMachine::apply_cause(const std::optional<JobFields>& job, uint64_t wall_ns) {
  cause_pending_ = false;
  if (!job) return;  // no answer: a plain stop
  auto field = [&](const char* k) {
    auto it = job->find(k);
    return it == job->end() ? std::string() : it->second;
  };
  fx_.log().slurm_view(field("JobState"), field("Reason"), field("EndTime"), field("TimeLimit"), std::nullopt);
  RunningView v = view_while_running(*job, wall_ns);
  if (v.end_ns) job_end_ns_ = v.end_ns;
  stop_reason_ = end_reason_of(v.cause);
  spdlog::info("cause: {}", name(stop_reason_));
}

void SupervisorMachine::stop_timed_out(const EventData& e) {
  spdlog::warn("no checkpoint committed in time: stopping the trainer; resume will use the newest valid checkpoint");
  fx_.log().checkpoint_timeout(pending_seq_);
  timed_out_ = true;
  begin_drain(e, 0);
}

void SupervisorMachine::send_term(const EventData& e) {
  if (sent_term_) return;
  spdlog::info("sending SIGTERM to the trainer");
  sent_term_ = true;
  fx_.signal_trainer(SIGTERM);
  fx_.arm(Timer::kill, e.mono_ns + kKillAfterMs * kNsPerMs);
}

void SupervisorMachine::send_kill(const EventData&) {
  spdlog::warn("trainer still running {} ms after SIGTERM: SIGKILL", kKillAfterMs);
  fx_.signal_trainer(SIGKILL);
}

// ---- stops --------------------------------------------------------------------------------

// The stop's deadline counts from `e` (when the signal or the timer came), never from later.
void SupervisorMachine::begin_stop(const EventData& e, int signo, EndReason reason, RelayedStop relayed) {
  stop_signal_ = signo;
  stop_reason_ = reason;
  fx_.cancel(Timer::time_limit);
  fx_.cancel(Timer::periodic);
  if (!cfg_.policy.checkpoint.on_signal && signo != 0) {
    spdlog::info("SIG{}: stopping the trainer without a checkpoint (checkpoint.on_signal: false)", signal_name(signo));
    begin_drain(e, 0);
    return;
  }
  double budget = stop_budget_seconds(signo, e.wall_ns);
  uint64_t budget_ns = uint64_t(int64_t(budget * 1000)) * kNsPerMs;
  uint64_t deadline_wall = e.wall_ns + budget_ns;
  Reason why = reason == EndReason::time_limit ? Reason::time_limit : Reason::stop_signal;
  if (relayed.seq && signo != 0) {
    // The signal handler already posted this stop to the trainer; keep the tighter deadline.
    pending_seq_ = relayed.seq;
    fx_.tighten_deadline(deadline_wall);
  } else {
    pending_seq_ = fx_.post_request(why, true, deadline_wall);
  }
  if (signo == SIGINT) spdlog::info("SIGINT: checkpointing before the stop; press Ctrl-C again to stop at once");
  spdlog::info("{} at step {}: checkpoint requested, deadline in {:.1f} s",
               signo                                ? "SIG" + signal_name(signo)
               : reason == EndReason::time_limit ? std::string("job end approaching")
                                                   : std::string("stop asked by the job's leader"),
               last_step_, budget);
  fx_.log().checkpoint_request(why == Reason::time_limit ? RequestReason::time_limit : RequestReason::stop_signal,
                               pending_seq_, deadline_wall);
  fx_.stop_begun(deadline_wall);
  state_ = S::stopping;
  fx_.arm(Timer::stop_deadline, e.mono_ns + budget_ns);
  // A stop the job's leader asked for (signo 0, not our time limit) has a cause Slurm knows too:
  // the signal may reach this node a moment after the leader's word.
  if (cfg_.in_slurm && (signo != 0 || reason == EndReason::stopped)) {
    // The trainer is at work; Slurm says why meanwhile (stop_cause_known), never holding the loop.
    cause_pending_ = true;
    fx_.ask_stop_cause(attempt_);
  }
  arm_tick(e);
}

// Waits `patience_ms` for the trainer to leave by itself, then SIGTERM, then SIGKILL.
void SupervisorMachine::begin_drain(const EventData& e, uint64_t patience_ms) {
  fx_.disarm_relay();
  state_ = S::draining;
  fx_.cancel(Timer::stop_deadline);
  fx_.arm(Timer::term, e.mono_ns + patience_ms * kNsPerMs);
}

// ---- the end of an attempt ------------------------------------------------------------------

void SupervisorMachine::end_attempt(const EventData& e) {
  fx_.settle_retention(/*wait=*/true);  // requeue, restart or exit with the directory settled
  for (Timer t : {Timer::tick, Timer::stop_deadline, Timer::term, Timer::kill, Timer::periodic}) fx_.cancel(t);
  sent_term_ = false;
  read_block(e);
  const BlockView& b = e.block;
  bool trainer_stopped = (b.request_flags & kFlagStop) != 0 && b.ack_seq >= b.request_seq && seen_commits_ > 0;
  bool we_stopped = state_ == S::stopping || state_ == S::draining;
  // The stop's checkpoint exists when a commit acked the stop request (the supervisor's, or the
  // one the trainer posted on its own signal).
  uint64_t stop_seq = pending_seq_ ? pending_seq_ : b.request_seq;
  bool stop_committed = stop_seq > 0 && seen_commits_ > 0 && b.ack_seq >= stop_seq;
  fx_.release_trainer();
  int status = e.status;
  if (hung_) {
    hung_ = false;
    spdlog::error("hung trainer stopped (status {})", status);
    on_failure(e, status);
    return;
  }
  if (we_stopped || (status == 0 && trainer_stopped)) {
    if (cfg_.in_slurm) refine_cause(e.wall_ns);
    std::optional<bool> drained = fx_.settle_drain(/*stop=*/true);
    json stop = stop_checkpoint_report(stop_committed, status);
    if (drained) stop["drained"] = *drained;
    record_end(stop_reason_, status, stop);
    spdlog::info("attempt {} {}: last checkpoint at step {}", attempt_, name(stop_reason_),
                 last_commit_step_ ? std::to_string(*last_commit_step_) : std::string("none"));
    on_stopped();
    return;
  }
  if (status == 0) {
    fx_.settle_drain(/*stop=*/false);
    record_end(EndReason::completed, status);
    spdlog::info("training completed (attempt {})", attempt_);
    finish(0);
    return;
  }
  on_failure(e, status);
}

// Once the trainer is gone, Slurm's view of the job settles: a job it already requeued (PENDING
// while we still run) was preempted; TIMEOUT is the time limit; CANCELLED is a stop.
void SupervisorMachine::refine_cause(uint64_t wall_ns) {
  if (own_time_limit_) return;  // our own timer decided
  if (cause_pending_) apply_cause(fx_.show_job(), wall_ns);  // the answer did not come before the exit
  auto job = fx_.show_job();
  if (!job) return;
  auto cause = cause_after_exit(*job);
  if (!cause || end_reason_of(*cause) == stop_reason_) return;
  stop_reason_ = end_reason_of(*cause);
  fx_.log().slurm_view((*job)["JobState"], (*job)["Reason"], std::nullopt, std::nullopt,
                       std::string(name(stop_reason_)));
}

void SupervisorMachine::on_stopped() {
  const auto& r = cfg_.policy.restart;
  RequeueMode mode = cfg_.mode;
  if (cfg_.peer == MachineConfig::Peer::follower) {
    // The leader requeues the job, once; this node leaves with the status the leader's node takes
    // when that works, so srun's step status is the job's.
    // With the leader lost nobody requeues: 75 says the job stopped with work left.
    bool leader_lost = stop_reason_ == EndReason::peer_lost;
    int status = mode == RequeueMode::exit ? cfg_.policy.requeue.exit_code
                 : (mode == RequeueMode::scontrol || mode == RequeueMode::sbatch) && !leader_lost ? 0
                                                                                                  : kExitStopped;
    spdlog::info(leader_lost ? "stopped" : "stopped; the job's leader (node 0) requeues the job");
    finish(status);
    return;
  }
  bool requeueing = mode == RequeueMode::scontrol || mode == RequeueMode::sbatch || mode == RequeueMode::exit;
  if (requeueing && requeues_ >= r.max_requeues) {
    spdlog::error("not requeueing: {} requeues so far (restart.max_requeues: {})", requeues_, r.max_requeues);
    fx_.log().requeue({mode, RequeueResult::budget_exhausted, {}, {}, {}, {}});
    finish(kExitStopped);
    return;
  }
  if (mode == RequeueMode::exit) {
    int code = cfg_.policy.requeue.exit_code;
    fx_.log().requeue({mode, RequeueResult::exit_code, {}, {}, code, {}});
    spdlog::info("exiting with {} for the site's RequeueExit", code);
    finish(code);
    return;
  }
  if (mode == RequeueMode::scontrol) {
    RequeueAnswer a = fx_.requeue();
    if (a.outcome.ok) {
      spdlog::info("job requeued (requeue {} of at most {})", requeues_ + 1, r.max_requeues);
      fx_.log().requeue({mode, RequeueResult::requeued, a.outcome.detail, {}, {}, {}});
      finish(0);
    } else if (requeued_by_slurm(a.job ? &*a.job : nullptr, stop_cause_of(stop_reason_))) {
      // Preemption in REQUEUE mode requeues the job by itself; then our request is redundant.
      spdlog::info("Slurm requeues this preempted job itself ({})", a.outcome.detail);
      fx_.log().requeue({mode, RequeueResult::requeued, "by Slurm (preemption): " + a.outcome.detail, {}, {}, {}});
      finish(0);
    } else {
      spdlog::error("requeue failed: {}", a.outcome.detail);
      fx_.log().requeue({mode, RequeueResult::failed, a.outcome.detail, {}, {}, {}});
      finish(kExitStopped);
    }
    return;
  }
  if (mode == RequeueMode::sbatch) {
    RequeueAnswer a = fx_.resubmit();
    if (!a.script) {
      spdlog::error("cannot resubmit: Slurm does not know this job's script");
      fx_.log().requeue({mode, RequeueResult::failed, {}, {}, {}, {}});
      finish(kExitStopped);
    } else if (!a.outcome.ok) {
      spdlog::error("resubmission failed: {}", a.outcome.detail);
      fx_.log().requeue({mode, RequeueResult::failed, a.outcome.detail, {}, {}, {}});
      finish(kExitStopped);
    } else {
      spdlog::info("resubmitted {} as job {}", *a.script, a.outcome.detail);
      fx_.log().requeue({mode, RequeueResult::resubmitted, {}, a.outcome.detail, {}, {}});
      finish(0);
    }
    return;
  }
  // local / none: nothing can bring the job back but the user: say so with 75.
  fx_.log().requeue({mode, RequeueResult::not_requeued, {}, {}, {}, {}});
  finish(kExitStopped);
}

void SupervisorMachine::on_failure(const EventData& e, int status) {
  fx_.cancel(Timer::time_limit);
  failures_in_row_ = seen_commits_ > 0 ? 0 : failures_in_row_ + 1;
  record_end(EndReason::failed, status);
  spdlog::error("trainer failed with status {} ({} failed attempt(s) in a row without a new checkpoint)", status,
                failures_in_row_);
  const auto& r = cfg_.policy.restart;
  // Every mode but none restarts in place: the allocation is still ours, a queue is slower.
  // Not with several supervisors: the other nodes' trainers cannot restart with this one.
  if (cfg_.peer != MachineConfig::Peer::none) {
    spdlog::error("no restart in place: this is one of several supervisors of the job");
    finish(status);
    return;
  }
  if (cfg_.mode == RequeueMode::none) {
    finish(status);
    return;
  }
  if (failures_in_row_ >= r.max_failures) {
    spdlog::error("giving up: {} failed attempts in a row without a new checkpoint (restart.max_failures: {})",
                  failures_in_row_, r.max_failures);
    finish(status);
    return;
  }
  // A failure before the first step that retrying cannot change: a command that is not there or
  // cannot run (126, 127), or the same exit twice in a row (an import error, a bad flag).
  std::string permanent;
  if (!stepped_) {
    if (status == 127 || status == 126)
      permanent = status == 127 ? "the command or something it runs was not found (exit 127)"
                                : "the command could not be executed (exit 126)";
    else if (unprogressed_failure_ == status)
      permanent = "it failed twice in a row with exit " + std::to_string(status) + " before its first step";
    unprogressed_failure_ = status;
  } else {
    unprogressed_failure_.reset();
  }
  if (!permanent.empty() && cfg_.mode != RequeueMode::none) {
    spdlog::error("not restarting: {}; retrying will not change that (fix the command or its environment)", permanent);
    fx_.log().requeue({RequeueMode::local, RequeueResult::not_requeued, "permanent failure: " + permanent, {}, {}, {}});
    finish(status);
    return;
  }
  if (restarts_ >= r.max_requeues) {
    spdlog::error("giving up: restart budget exhausted (restart.max_requeues: {})", r.max_requeues);
    finish(status);
    return;
  }
  ++restarts_;
  double wait = std::min(r.max_backoff_seconds,
                         r.backoff_seconds * std::pow(2.0, double(failures_in_row_ ? failures_in_row_ - 1 : 0)));
  spdlog::info("restarting in {:.1f} s", wait);
  fx_.log().requeue({RequeueMode::local, RequeueResult::restart, {}, {}, {}, wait});
  state_ = S::backoff;
  ++attempt_;
  fx_.arm(Timer::restart, e.mono_ns + uint64_t(int64_t(wait * 1000)) * kNsPerMs);
}

void SupervisorMachine::start_attempt(const EventData& e) {
  fx_.settle_retention(/*wait=*/true);  // the resume choice sees a settled directory
  fx_.log().set_attempt(attempt_);
  seen_commits_ = seen_failed_saves_ = seen_request_seq_ = pending_seq_ = 0;
  last_commit_step_.reset();
  stop_signal_ = 0;
  stop_reason_ = EndReason::stopped;
  cause_pending_ = own_time_limit_ = hung_ = timed_out_ = sent_term_ = stepped_ = false;
  last_client_state_ = ClientState::absent;
  last_progress_ns_ = e.mono_ns;
  last_step_ = 0;
  StartOutcome out = fx_.start_attempt(attempt_);
  resumed_step_ = out.resumed_step;
  last_step_ = resumed_step_.value_or(0);
  if (!out.started) {
    if (out.recorded) record_end(EndReason::failed, std::nullopt);
    finish(out.status);
    return;
  }
  state_ = S::running;
  if (cfg_.policy.checkpoint.on_signal) {
    update_budgets(e);
    fx_.arm_relay();
  }
  arm_tick(e);
  arm_periodic(e);
  if (cfg_.in_slurm) fx_.ask_job_end(attempt_);
}

// ---- helpers ------------------------------------------------------------------------------

void SupervisorMachine::arm_tick(const EventData& e) {
  bool urgent = state_ == S::stopping || state_ == S::checkpointing || state_ == S::draining;
  fx_.arm(Timer::tick, e.mono_ns + (urgent ? kUrgentTickMs : kTickMs) * kNsPerMs);
}

void SupervisorMachine::arm_periodic(const EventData& e) {
  double every = cfg_.policy.checkpoint.every_seconds;
  if (cfg_.peer == MachineConfig::Peer::follower) return;  // the leader's timer asks every node
  if (every > 0) fx_.arm(Timer::periodic, e.mono_ns + uint64_t(int64_t(every * 1000)) * kNsPerMs);
}

// The deadlines the relay posts with a stop signal (the time left shrinks: refreshed each tick).
void SupervisorMachine::update_budgets(const EventData& e) {
  fx_.set_stop_budget(SIGTERM, stop_budget_seconds(SIGTERM, e.wall_ns));
  for (int s : cfg_.policy.stop.signals)
    if (s != SIGTERM) fx_.set_stop_budget(s, stop_budget_seconds(s, e.wall_ns));
}

double SupervisorMachine::stop_budget_seconds(int signo, uint64_t wall_ns) const {
  return lifeline::stop_budget_seconds(cfg_.grace_seconds, signo == SIGTERM && cfg_.in_slurm, cfg_.kill_wait_s,
                                       job_end_ns_, wall_ns);
}

double SupervisorMachine::time_limit_lead_seconds() const {
  double p95 = 0;
  if (!commit_seconds_.empty()) {
    std::vector<double> v = commit_seconds_;
    std::sort(v.begin(), v.end());
    p95 = v[std::min(v.size() - 1, size_t(double(v.size()) * 0.95))];
  }
  return std::max(kMinLeadS, p95 * kLeadSafety + kRequeueAllowanceS) + fx_.drain_lead_seconds();
}

// What a stop left: "committed", or "missing" with why, the step the next attempt resumes from
// (the newest checkpoint this lineage committed, as far as the supervisor saw) and the steps lost.
json SupervisorMachine::stop_checkpoint_report(bool committed, int status) {
  if (committed) return {{"state", "committed"}, {"step", last_commit_step_ ? json(*last_commit_step_) : json(nullptr)}};
  std::string why;
  if (!cfg_.policy.checkpoint.on_signal && stop_signal_ != 0)
    why = "not requested (checkpoint.on_signal: false)";
  else if (timed_out_)
    why = "the trainer did not commit it before the deadline and was stopped";
  else
    why = "the trainer exited (status " + std::to_string(status) + ") before committing it";
  std::optional<uint64_t> resume = last_commit_step_ ? last_commit_step_ : resumed_step_;
  uint64_t lost = last_step_ > resume.value_or(0) ? last_step_ - resume.value_or(0) : 0;
  spdlog::warn("no stop checkpoint: {}; the next attempt resumes from {}; {} step(s) of work are lost (steps {}..{})",
               why, resume ? "step " + std::to_string(*resume) : std::string("scratch"), lost,
               resume.value_or(0) + (lost ? 1 : 0), last_step_);
  return {{"state", "missing"},
          {"why", why},
          {"resume_step", resume ? json(*resume) : json(nullptr)},
          {"lost_steps", lost}};
}

void SupervisorMachine::record_end(EndReason reason, std::optional<int> status, json stop) {
  fx_.log().attempt_end({reason, status, seen_commits_, last_commit_step_, last_step_, stop_signal_, std::move(stop)});
}

void SupervisorMachine::finish(int status) {
  state_ = S::done;
  fx_.finish(status);
}

}  // namespace lifeline
