#include "supervisor/supervisor.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <boost/asio.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <future>
#include <cmath>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <algorithm>
#include <thread>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "common/clock.h"
#include "common/json_text.h"
#include "store/dir_safety.h"
#include "policy/units.h"
#include "control/control_block.h"
#include "history/history.h"
#include "store/checkpoint_store.h"
#include "store/dir_lock.h"
#include "store/retention.h"
#include "store/writers_lock.h"
#include "history/supervisor_record.h"
#include "slurm/slurm_client.h"
#include "slurm/slurm_job.h"
#include "supervisor/signal_relay.h"
#include "supervisor/trainer_process.h"

namespace lifeline {
namespace asio = boost::asio;
using namespace layout;
using std::chrono::milliseconds;
using json = nlohmann::json;

namespace {

std::string host_name() {
  char buf[256] = {};
  gethostname(buf, sizeof buf - 1);
  return buf;
}

std::optional<std::string> env_str(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return std::nullopt;
  return std::string(v);
}

std::string new_lineage_id() {
  std::random_device rd;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%08x%08x", rd(), rd());
  return buf;
}

}  // namespace

std::string effective_requeue_mode(const std::string& mode, bool in_slurm_job) {
  if (mode == "auto") return in_slurm_job ? "scontrol" : "local";
  return mode;
}

std::string preflight_error(const RunOptions& o) {
  try {
    TrainerProcess::resolve(o.command.empty() ? std::string() : o.command[0]);
  } catch (const std::exception& e) {
    return e.what();
  }
  if (!std::isfinite(o.grace_seconds) || o.grace_seconds < 0 || o.grace_seconds > kMaxDurationSeconds)
    return "--grace " + std::to_string(o.grace_seconds) + ": a stop grace period must be between 0 and " +
           format_duration(kMaxDurationSeconds);
  bool in_slurm = SlurmJob::from_env().has_value();
  std::string mode = effective_requeue_mode(o.requeue_mode, in_slurm);
  if ((mode == "scontrol" || mode == "sbatch") && !in_slurm)
    return "--requeue " + mode + " needs a Slurm batch job (SLURM_JOB_ID is unset); use local, exit or none";
  if (mode == "scontrol") {
    std::string hint = SlurmClient::scontrol_missing_hint();
    if (!hint.empty()) return hint;
  }
  if (mode == "sbatch" && !program_available("sbatch"))
    return "sbatch is not available here: use --requeue exit with the site's RequeueExit";
  return "";
}

namespace {

// What earlier attempts of this lineage left in the history.
struct LineageState {
  std::string lineage;
  uint64_t attempts = 0;            // attempt_start events so far
  uint64_t failures_in_row = 0;     // trailing failed attempts that committed nothing
  uint64_t requeues = 0;            // successful requeues and resubmissions
  std::vector<double> commit_seconds;  // every commit's duration, for time-limit leads
};

LineageState read_lineage(const std::string& dir) {
  LineageState s;
  for (const auto& e : read_history_events(dir)) {
    std::string ev = e.value("event", "");
    if (ev == "attempt_start") {
      ++s.attempts;
      if (s.lineage.empty()) s.lineage = e.value("lineage", "");
    } else if (ev == "attempt_end") {
      bool failed = e.value("end_reason", "") == "failed";
      uint64_t commits = e.value("checkpoints", uint64_t(0));
      s.failures_in_row = (failed && commits == 0) ? s.failures_in_row + 1 : 0;
    } else if (ev == "checkpoint_commit") {
      auto d = e.find("duration_s");
      if (d != e.end() && d->is_number()) s.commit_seconds.push_back(d->get<double>());
    } else if (ev == "requeue") {
      std::string result = e.value("result", "");
      if (result == "requeued" || result == "resubmitted" || result == "exit code") ++s.requeues;
    }
  }
  if (s.lineage.empty()) s.lineage = new_lineage_id();
  return s;
}

// The supervisor's states; events (signal, child exit, ack, timers) move between them.
enum class State { running, checkpointing, stopping, draining, backoff, done };

const char* state_name(State s) {
  switch (s) {
    case State::running: return "running";
    case State::checkpointing: return "checkpointing";
    case State::stopping: return "stopping";
    case State::draining: return "draining";
    case State::backoff: return "backoff";
    default: return "done";
  }
}

// One supervision of a lineage on this host: a loop over attempts until an outcome.
class Supervisor {
 public:
  explicit Supervisor(const RunOptions& o)
      : opt_(o), history_(o.ckpt_dir), signals_(io_), relay_(io_), tick_(io_), deadline_(io_), escalate_(io_),
        periodic_(io_), restart_(io_), end_timer_(io_), slurm_client_(runner_) {}
  // No signal handler may touch the control block once it is unmapped, however run() ended.
  ~Supervisor() { relay_.disarm(); }
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  int run() {
    if (std::string why = preflight_error(opt_); !why.empty()) {
      spdlog::error("{}", why);
      return kExitUsage;
    }
    if (std::string why = unsafe_dir_reason(opt_.ckpt_dir); !why.empty()) {
      spdlog::error("{}", why);
      return kExitUsage;
    }
    lock_.emplace(opt_.ckpt_dir);
    LineageState ls = read_lineage(opt_.ckpt_dir);
    lineage_ = ls.lineage;
    attempt_ = ls.attempts;
    failures_in_row_ = ls.failures_in_row;
    requeues_ = ls.requeues;
    commit_seconds_ = ls.commit_seconds;
    slurm_ = SlurmJob::from_env();
    if (slurm_) job_id_ = slurm_->display_id();
    mode_ = effective_requeue_mode(opt_.requeue_mode, slurm_.has_value());
    if (slurm_) read_slurm_config();

    signals_.add(SIGCHLD);
    signals_.add(SIGCONT);
    // Stop signals through the relay, which posts the stop request from the handler itself.
    // SIGTERM always: Slurm sends it to every process of the batch step at the end.
    relay_.add(SIGTERM);
    for (int s : opt_.policy.stop.signals)
      if (s != SIGTERM) relay_.add(s);
    // USR2, unless it is a stop signal, asks for a checkpoint now (`scancel --signal=USR2`);
    // HUP (a closed terminal) must not kill a training run.
    if (!is_stop_signal(SIGUSR2)) signals_.add(SIGUSR2);
    signals_.add(SIGHUP);
    wait_signal();
    wait_relay();
    if (!start_attempt()) return exit_status_;
    io_.run();
    settle_retention(/*wait=*/true);
    return exit_status_;
  }

 private:
  // ---- attempt lifecycle -------------------------------------------------------------
  bool start_attempt() {
    settle_retention(/*wait=*/true);  // the resume choice sees a settled directory
    set_log_pattern();
    if (!settle_earlier_attempts()) {
      finish(kExitUsage);
      return false;
    }
    std::optional<CheckpointInfo> resume;
    json skipped = json::array();
    if (opt_.policy.restart.resume != Policy::Resume::off) {
      ResumeChoice choice = choose_resume(opt_.ckpt_dir);
      for (const auto& s : choice.skipped) {
        spdlog::warn("skipping checkpoint {} (step {}): {}", s.path, s.step, s.problem);
        skipped.push_back(checkpoint_object(s));
      }
      resume = choice.resume;
    }
    if (!resume && opt_.policy.restart.resume == Policy::Resume::required) {
      spdlog::error("no valid checkpoint in {} and the policy requires a resume (restart.resume: required)",
                    opt_.ckpt_dir);
      finish(kExitUsage);
      return false;
    }
    resumed_step_ = resume ? std::optional<uint64_t>(resume->step) : std::nullopt;
    if (resume)
      spdlog::info("resuming from step {} ({})", resume->step, resume->path);
    else
      spdlog::info("starting from scratch: no valid checkpoint in {}", opt_.ckpt_dir);

    drop_block();
    try {
      block_.emplace(ControlBlock::create(job_id_ ? *job_id_ : "local"));
    } catch (const std::exception& e) {
      spdlog::error("{}", e.what());
      finish(attempt_ == 0 ? kExitUsage : kExitStopped);
      return false;
    }
    block_->u64(kEveryStepsOff).store(opt_.policy.checkpoint.every_steps);
    block_->u64(kSkipFirstStepsOff).store(opt_.policy.checkpoint.skip_first_steps);
    seen_commits_ = 0;
    seen_failed_saves_ = 0;
    seen_request_seq_ = 0;
    pending_seq_ = 0;
    last_step_ = resumed_step_.value_or(0);
    last_progress_ns_ = mono_ns();
    stop_signal_ = 0;
    stop_reason_.clear();
    timed_out_ = false;

    std::map<std::string, std::string> env{
        {"LIFELINE_CONTROL", block_->name()},
        {"LIFELINE_CKPT_DIR", opt_.ckpt_dir},
        {"LIFELINE_RESUME_FROM", resume ? resume->path : ""},
        {"LIFELINE_RESUME_STEP", resume ? std::to_string(resume->step) : ""},
        {"LIFELINE_ATTEMPT", std::to_string(attempt_)},
        {"LIFELINE_LINEAGE", lineage_},
    };
    history_.append({{"event", "attempt_start"},
                     {"attempt", attempt_},
                     {"lineage", lineage_},
                     {"job_id", job_id_ ? json(*job_id_) : json(nullptr)},
                     {"host", host_name()},
                     {"pid", getpid()},
                     {"resumed_from_step", resumed_step_ ? json(*resumed_step_) : json(nullptr)},
                     {"resumed_from", resume ? json(resume->path) : json(nullptr)},
                     {"skipped", skipped},
                     {"requeue_mode", mode_}});
    attempt_started_ns_ = wall_ns();
    write_supervisor_record();
    try {
      trainer_ = std::make_unique<TrainerProcess>(opt_.command, env);
    } catch (const std::exception& e) {
      spdlog::error("{}", e.what());
      record_end("failed", std::nullopt);
      finish(attempt_ == 0 ? kExitUsage : 127);
      return false;
    }
    spdlog::info("trainer started, pid {}: {}", trainer_->pid(), command_text());
    state_ = State::running;
    if (opt_.policy.checkpoint.on_signal) {
      update_relay_budgets();
      relay_.arm(*block_);
    }
    schedule_tick();
    schedule_periodic();
    schedule_time_limit();
    return true;
  }

  // No process of an earlier attempt (ours, or a supervisor's that was killed) may still commit
  // when an attempt starts: the writers' lock, which every client holds while it lives, proves
  // it. Such processes get kWritersPatience to leave (a killed supervisor's trainer goes at once:
  // PR_SET_PDEATHSIG, the client's watchdog), then SIGKILL; one that cannot be seen or stopped
  // from here (another host) makes the start fail. Then the leftovers go at once: staging
  // folders of dead writers, the control block a killed supervisor left in /dev/shm.
  bool settle_earlier_attempts() {
    try {
      std::vector<LockHolder> holders;
      uint64_t give_up = mono_ns() + uint64_t(kWritersPatienceMs) * 1000000ull;
      bool warned = false, killed = false;
      while (!no_writers(opt_.ckpt_dir, &holders)) {
        if (!warned)
          spdlog::warn("waiting for {} of an earlier attempt to exit: it may still commit into {}",
                       holders.empty() ? std::string("a process on another host") : describe_holders(holders),
                       opt_.ckpt_dir);
        warned = true;
        if (mono_ns() > give_up) {
          if (killed || holders.empty()) {
            spdlog::error("{} still holds {}/{}: a process of an earlier attempt could still commit a "
                          "checkpoint; stop it and start again",
                          holders.empty() ? std::string("a process on another host") : describe_holders(holders),
                          opt_.ckpt_dir, kWritersLockName);
            return false;
          }
          spdlog::warn("stopping {} with SIGKILL", describe_holders(holders));
          for (const auto& h : holders)
            if (h.pid > 0 && h.pid != getpid()) ::kill(h.pid, SIGKILL);
          killed = true;
          give_up = mono_ns() + uint64_t(kKillAfterMs) * 1000000ull;
        }
        std::this_thread::sleep_for(milliseconds(20));
      }
    } catch (const std::exception& e) {
      spdlog::error("{}", e.what());
      return false;
    }
    std::vector<std::string> errors;
    for (const auto& r : remove_all_leftovers(default_file_system(), opt_.ckpt_dir, &errors))
      spdlog::info("removed {} ({})", r.name, r.why);
    for (const auto& e : errors) spdlog::warn("could not remove a leftover: {}", e);
    remove_leaked_block();
    return true;
  }

  // The control block of a supervisor of this directory that was killed (SIGKILL, OOM) stays
  // in /dev/shm: its record names it. What its trainer last reported goes into the history,
  // then the block is unlinked.
  void remove_leaked_block() {
    auto rec = read_supervisor_record(opt_.ckpt_dir);
    if (!rec || !rec->control || rec->pid == getpid()) return;
    if (supervisor_state(*rec) != Liveness::State::dead) return;
    const std::string& name = *rec->control;
    std::string ours = "/lifeline-" + std::to_string(getuid()) + "-";
    if (name.rfind(ours, 0) != 0 || name.find('/', 1) != std::string::npos) return;
    json event{{"event", "attempt_lost"}, {"attempt", rec->attempt}, {"control", name}, {"pid", rec->pid}};
    try {
      ControlBlock old = ControlBlock::attach(name);
      event["last_step"] = old.u64(kCurrentStepOff).load();
      if (old.u64(kCommitCountOff).load() > 0) event["last_checkpoint_step"] = old.u64(kLastCommitStepOff).load();
    } catch (const std::exception&) {
      return;  // already gone (or not a block of ours): nothing to clean
    }
    if (::shm_unlink(name.c_str()) == 0) {
      spdlog::info("removed the control block {} that supervisor pid {} left behind", name, rec->pid);
      history_.append(event);
    }
  }

  // <dir>/supervisor.json: who supervises this directory and where its control block is, for
  // `lifeline status` and `lifeline request` from another shell. Replaced atomically.
  void write_supervisor_record() {
    const Policy& p = opt_.policy;
    json j{{"pid", getpid()},
           {"host", host_name()},
           {"job_id", job_id_ ? json(*job_id_) : json(nullptr)},
           {"control", block_ ? json(block_->name()) : json(nullptr)},
           {"attempt", attempt_},
           {"lineage", lineage_},
           {"started", iso8601(attempt_started_ns_)},
           {"requeue_mode", mode_},
           {"grace_seconds", opt_.grace_seconds},
           {"policy",
            {{"source", p.source},
             {"every_steps", p.checkpoint.every_steps},
             {"every_seconds", p.checkpoint.every_seconds},
             {"keep_last", p.retention.keep_last},
             {"keep_best", p.retention.keep_best},
             {"metric", p.retention.metric},
             {"max_requeues", p.restart.max_requeues},
             {"max_failures", p.restart.max_failures},
             {"hang_seconds", p.stop.hang_seconds}}}};
    // Temp file, fsync, rename: a full disk keeps the previous record whole.
    std::string error;
    if (!write_supervisor_record_file(opt_.ckpt_dir, j, &error)) spdlog::warn("{}", error);
  }

  void finish(int status) {
    exit_status_ = status;
    state_ = State::done;
    io_.stop();
  }

  // ---- events ----------------------------------------------------------------------------
  void wait_signal() {
    signals_.async_wait([this](const boost::system::error_code& ec, int signo) {
      if (ec) return;
      on_signal(signo);
      if (state_ != State::done) wait_signal();
    });
  }

  void wait_relay() {
    relay_.async_wait([this](int signo) {
      on_signal(signo);
      if (state_ != State::done) wait_relay();
    });
  }

  // The deadlines the relay posts with a stop signal (the time left shrinks: refreshed each tick).
  void update_relay_budgets() {
    relay_.set_budget(SIGTERM, stop_budget_seconds(SIGTERM));
    for (int s : opt_.policy.stop.signals) relay_.set_budget(s, stop_budget_seconds(s));
  }

  // Ends the relay's fast path, then unmaps the control block.
  void drop_block() {
    relay_.disarm();
    block_.reset();
  }

  void on_signal(int signo) {
    if (signo == SIGCHLD) {
      check_child();
      return;
    }
    if (signo == SIGCONT) return;  // Slurm sends it before its signals; nothing to do
    if (signo == SIGHUP) {
      spdlog::info("SIGHUP ignored (lifeline keeps training when its terminal goes away)");
      return;
    }
    if (signo == SIGUSR2 && !is_stop_signal(SIGUSR2)) {
      request_checkpoint_now();
      return;
    }
    if (state_ == State::running || state_ == State::checkpointing) {
      // The relay knows which stop signal its handler posted, and which came at the same instant.
      RelayedStop relayed = relay_.disarm();
      int stop = relayed.seq && relayed.signo ? relayed.signo : signo;
      json event{{"event", "signal"}, {"attempt", attempt_}, {"signal", signal_name(stop)}, {"state", state_name(state_)}};
      if (relayed.together) {
        json together = json::array();
        for (int s = 1; s < 64; ++s)
          if (relayed.together & (1ull << s)) together.push_back(signal_name(s));
        event["together"] = together;
        spdlog::info("{} arrived at the same instant: the stop is taken as SIG{} (its deadline is the tightest)",
                     dump_json(together), signal_name(stop));
      }
      history_.append(event);
      begin_stop(stop, "stopped", relayed);
      return;
    }
    history_.append({{"event", "signal"}, {"attempt", attempt_}, {"signal", signal_name(signo)},
                     {"state", state_name(state_)}});
    switch (state_) {
      case State::running:
      case State::checkpointing:
        break;
      case State::stopping:
      case State::draining:
        spdlog::info("SIG{} while {}: already stopping, coalesced", signal_name(signo), state_name(state_));
        break;
      case State::backoff:
        spdlog::info("SIG{} between attempts: not restarting", signal_name(signo));
        restart_.cancel();
        finish(kExitStopped);
        break;
      case State::done:
        break;
    }
  }

  bool is_stop_signal(int signo) const {
    const auto& v = opt_.policy.stop.signals;
    return signo == SIGTERM || std::find(v.begin(), v.end(), signo) != v.end();
  }

  // A checkpoint without a stop (SIGUSR2), unless one is already pending.
  void request_checkpoint_now() {
    if (state_ != State::running || !block_) {
      spdlog::info("SIGUSR2 while {}: a checkpoint is already on its way", state_name(state_));
      return;
    }
    pending_seq_ = block_->request(Reason::manual, false, 0);
    state_ = State::checkpointing;
    spdlog::info("SIGUSR2: checkpoint requested");
    history_.append({{"event", "checkpoint_request"}, {"attempt", attempt_}, {"reason", "manual"}, {"seq", pending_seq_}});
    schedule_tick();
  }

  // `relayed`: what the relay posted, when the caller already disarmed it.
  void begin_stop(int signo, const std::string& reason, std::optional<RelayedStop> relayed_now = std::nullopt) {
    stop_signal_ = signo;
    stop_reason_ = reason;
    end_timer_.cancel();
    periodic_.cancel();
    if (!opt_.policy.checkpoint.on_signal && signo != 0) {
      spdlog::info("SIG{}: stopping the trainer without a checkpoint (checkpoint.on_signal: false)",
                   signal_name(signo));
      begin_drain(0);
      return;
    }
    double budget = stop_budget_seconds(signo);
    auto grace = milliseconds(int64_t(budget * 1000));
    uint64_t deadline_wall = wall_ns() + uint64_t(grace.count()) * 1000000ull;
    Reason why = reason == "time_limit" ? Reason::time_limit : Reason::stop_signal;
    RelayedStop relayed = relayed_now ? *relayed_now : relay_.disarm();
    if (relayed.seq && signo != 0) {
      // The signal handler already posted this stop to the trainer; keep the tighter deadline.
      pending_seq_ = relayed.seq;
      block_->tighten_deadline(deadline_wall);
    } else {
      pending_seq_ = block_->request(why, true, deadline_wall);
    }
    spdlog::info("{} at step {}: checkpoint requested, deadline in {:.1f} s",
                 signo ? "SIG" + signal_name(signo) : std::string("job end approaching"),
                 block_->u64(kCurrentStepOff).load(), budget);
    history_.append({{"event", "checkpoint_request"}, {"attempt", attempt_},
                     {"reason", why == Reason::time_limit ? "time_limit" : "stop_signal"},
                     {"seq", pending_seq_}, {"deadline", iso8601(deadline_wall)}});
    state_ = State::stopping;
    if (slurm_ && signo != 0) {
      // Now that the trainer is at work, ask Slurm why (a query takes milliseconds).
      stop_reason_ = classify_stop(signo);
      spdlog::info("cause: {}", stop_reason_);
    }
    deadline_.expires_after(grace);
    deadline_.async_wait([this](const boost::system::error_code& ec) {
      if (ec || state_ != State::stopping) return;
      spdlog::warn("no checkpoint committed in time: stopping the trainer; resume will use the newest valid checkpoint");
      history_.append({{"event", "checkpoint_timeout"}, {"attempt", attempt_}, {"seq", pending_seq_}});
      timed_out_ = true;
      begin_drain(0);
    });
    schedule_tick();
  }

  // Waits `patience` for the trainer to leave by itself, then SIGTERM, then SIGKILL.
  void begin_drain(int64_t patience_ms) {
    relay_.disarm();
    state_ = State::draining;
    deadline_.cancel();
    escalate_.expires_after(milliseconds(patience_ms));
    escalate_.async_wait([this](const boost::system::error_code& ec) {
      if (ec || !trainer_ || state_ != State::draining) return;
      if (sent_term_) return;
      spdlog::info("sending SIGTERM to the trainer");
      sent_term_ = true;
      trainer_->signal_group(SIGTERM);
      escalate_.expires_after(milliseconds(kKillAfterMs));
      escalate_.async_wait([this](const boost::system::error_code& ec2) {
        if (ec2 || !trainer_ || state_ != State::draining) return;
        spdlog::warn("trainer still running {} ms after SIGTERM: SIGKILL", kKillAfterMs);
        trainer_->signal_group(SIGKILL);
      });
    });
  }

  void schedule_tick() {
    bool urgent = state_ == State::stopping || state_ == State::checkpointing || state_ == State::draining;
    tick_.expires_after(milliseconds(urgent ? 10 : 200));
    tick_.async_wait([this](const boost::system::error_code& ec) {
      if (ec || state_ == State::done || state_ == State::backoff) return;
      on_tick();
      if (state_ != State::done && state_ != State::backoff) schedule_tick();
    });
  }

  // every_seconds: a request each period. A period that ends while the last request is still
  // unanswered (a save or a step longer than the period) is skipped, and the next one comes as
  // usual; only stopping, draining and restarts end the series (the next attempt starts anew).
  void schedule_periodic() {
    double every = opt_.policy.checkpoint.every_seconds;
    if (every <= 0) return;
    periodic_.expires_after(milliseconds(int64_t(every * 1000)));
    periodic_.async_wait([this](const boost::system::error_code& ec) {
      if (ec) return;
      if (state_ == State::checkpointing) {
        spdlog::debug("periodic checkpoint skipped: the last request is not answered yet");
        schedule_periodic();
        return;
      }
      if (state_ != State::running) return;
      pending_seq_ = block_->request(Reason::periodic, false, 0);
      state_ = State::checkpointing;
      spdlog::info("periodic checkpoint requested ({} s since the last)", opt_.policy.checkpoint.every_seconds);
      history_.append({{"event", "checkpoint_request"}, {"attempt", attempt_}, {"reason", "periodic"}, {"seq", pending_seq_}});
      schedule_periodic();
    });
  }

  // Reads what the trainer reported through the control block and records it.
  void read_block() {
    if (!block_) return;
    uint64_t step = block_->u64(kCurrentStepOff).load(std::memory_order_relaxed);
    if (step != last_step_) {
      last_step_ = step;
      last_progress_ns_ = mono_ns();
    }
    uint64_t seq = block_->u64(kRequestSeqOff).load(std::memory_order_acquire);
    if (seq != seen_request_seq_) {
      auto reason = Reason(block_->u32(kRequestReasonOff).load());
      if (reason == Reason::trainer_signal && seen_request_seq_ < seq) {
        int sig = int(block_->u32(kTrainerSignalOff).load());
        spdlog::info("the trainer received SIG{} itself: it checkpoints and stops", signal_name(sig));
        history_.append({{"event", "trainer_signal"}, {"attempt", attempt_}, {"signal", signal_name(sig)}});
      }
      seen_request_seq_ = seq;
    }
    uint64_t commits = block_->u64(kCommitCountOff).load(std::memory_order_acquire);
    if (commits != seen_commits_) {
      uint64_t cstep = block_->u64(kLastCommitStepOff).load();
      if (commits - seen_commits_ > 1) record_commits_between(last_commit_step_, cstep);
      seen_commits_ = commits;
      double secs = double(block_->u64(kLastCommitNsOff).load()) / 1e9;
      uint64_t bytes = block_->u64(kLastCommitBytesOff).load();
      last_commit_step_ = cstep;
      commit_seconds_.push_back(secs);
      spdlog::info("checkpoint committed: step {}, {} bytes in {:.3f} s", cstep, bytes, secs);
      history_.append({{"event", "checkpoint_commit"}, {"attempt", attempt_}, {"step", cstep},
                       {"bytes", bytes}, {"duration_s", secs}});
      if (state_ == State::running || state_ == State::checkpointing) start_retention();
    }
    uint64_t failed = block_->u64(kFailedSavesOff).load();
    if (failed != seen_failed_saves_) {
      // Several saves may have failed between two polls: the event counts them all.
      uint64_t count = failed > seen_failed_saves_ ? failed - seen_failed_saves_ : 1;
      seen_failed_saves_ = failed;
      spdlog::error("the trainer could not save {} checkpoint(s) (see its output); older checkpoints are intact", count);
      history_.append({{"event", "checkpoint_failed"}, {"attempt", attempt_}, {"count", count}});
    }
  }

  // Commits the trainer made faster than we polled: the block holds only the newest, so the
  // ones in between are read from the directory (their duration is unknown).
  void record_commits_between(std::optional<uint64_t> after, uint64_t before) {
    for (const auto& [step, name] : checkpoint_folders(opt_.ckpt_dir)) {
      if ((after && step <= *after) || step >= before) continue;
      if (resumed_step_ && step <= *resumed_step_) continue;
      CheckpointInfo info = verify_checkpoint(opt_.ckpt_dir + "/" + name, VerifyMode::quick);
      if (!info.valid) continue;
      spdlog::info("checkpoint committed: step {}, {} bytes", step, info.bytes);
      history_.append({{"event", "checkpoint_commit"}, {"attempt", attempt_}, {"step", step},
                       {"bytes", info.bytes}, {"duration_s", nullptr}});
    }
  }

  // Retention after each commit (not while stopping: the stop checkpoint comes first), on a
  // thread of its own: its full verify of the newest checkpoint reads the whole checkpoint
  // (from the disk: big files bypass the page cache), which must not hold up the loop. One run
  // at a time; a commit during a run asks for one more.
  void start_retention() {
    if (retention_.valid()) {
      retention_again_ = true;
      return;
    }
    retention_ = std::async(std::launch::async, [dir = opt_.ckpt_dir, policy = opt_.policy.retention,
                                                 resumed = resumed_step_] {
      return apply_retention(default_file_system(), dir, policy, resumed, /*dry_run=*/false);
    });
  }

  // Reports a finished retention run (history, log) and starts the one asked for meanwhile.
  void settle_retention(bool wait) {
    while (retention_.valid()) {
      if (!wait && retention_.wait_for(std::chrono::seconds(0)) != std::future_status::ready) return;
      RetentionReport r;
      try {
        r = retention_.get();
      } catch (const std::exception& e) {
        spdlog::warn("retention: {}", e.what());
      }
      report_retention(r);
      if (!retention_again_) return;
      retention_again_ = false;
      start_retention();
    }
  }

  void report_retention(const RetentionReport& r) {
    json removed = json::array();
    for (const auto& d : r.decisions) {
      if (d.keep) continue;
      std::string why;
      for (const auto& w : d.reasons) why += (why.empty() ? "" : "; ") + w;
      spdlog::info("retention: removed step {} ({})", d.checkpoint.step, why);
      removed.push_back(d.checkpoint.step);
    }
    for (const auto& e : r.errors) spdlog::warn("retention: {}", e);
    if (!removed.empty())
      history_.append({{"event", "retention"}, {"attempt", attempt_}, {"removed_steps", removed}, {"bytes_freed", r.bytes_freed}});
  }

  void on_tick() {
    settle_retention(/*wait=*/false);
    read_block();
    if (!block_) return;
    if (state_ == State::running || state_ == State::checkpointing) update_relay_budgets();
    uint64_t ack = block_->u64(kAckSeqOff).load(std::memory_order_acquire);
    if (state_ == State::checkpointing && ack >= pending_seq_) state_ = State::running;
    if (state_ == State::stopping && ack >= pending_seq_) {
      spdlog::info("stop checkpoint done; waiting for the trainer to exit");
      begin_drain(kExitPatienceMs);
    }
    double hang = opt_.policy.stop.hang_seconds;
    if (hang > 0 && state_ == State::running && double(mono_ns() - last_progress_ns_) / 1e9 > hang) {
      spdlog::error("trainer reported no step for {:.0f} s (stop.hang_seconds): treating it as hung", hang);
      history_.append({{"event", "hang"}, {"attempt", attempt_}, {"step", last_step_}});
      hung_ = true;
      begin_drain(0);
    }
    check_child();
  }

  void check_child() {
    if (!trainer_) return;
    auto status = trainer_->poll_exit();
    if (!status) return;
    read_block();
    on_child_exit(*status);
  }

  void on_child_exit(int status) {
    settle_retention(/*wait=*/true);  // requeue, restart or exit with the directory settled
    tick_.cancel();
    deadline_.cancel();
    escalate_.cancel();
    periodic_.cancel();
    sent_term_ = false;
    trainer_.reset();
    bool trainer_stopped = (block_->u32(kRequestFlagsOff).load() & kFlagStop) != 0 &&
                           block_->u64(kAckSeqOff).load() >= block_->u64(kRequestSeqOff).load() &&
                           seen_commits_ > 0;
    bool we_stopped = state_ == State::stopping || state_ == State::draining;
    // The stop's checkpoint exists when a commit acked the stop request (the supervisor's, or
    // the one the trainer posted on its own signal).
    uint64_t stop_seq = pending_seq_ ? pending_seq_ : block_->u64(kRequestSeqOff).load();
    bool stop_committed = stop_seq > 0 && seen_commits_ > 0 && block_->u64(kAckSeqOff).load() >= stop_seq;
    drop_block();

    if (hung_) {
      hung_ = false;
      spdlog::error("hung trainer stopped (status {})", status);
      on_failure(status);
      return;
    }
    if (we_stopped || (status == 0 && trainer_stopped)) {
      if (slurm_) refine_cause();
      std::string reason = stop_reason_.empty() ? "stopped" : stop_reason_;
      json stop = stop_checkpoint_report(stop_committed, status);
      record_end(reason, status, stop);
      spdlog::info("attempt {} {}: last checkpoint at step {}", attempt_, reason,
                   last_commit_step_ ? std::to_string(*last_commit_step_) : std::string("none"));
      on_stopped();
      return;
    }
    if (status == 0) {
      record_end("completed", status);
      spdlog::info("training completed (attempt {})", attempt_);
      finish(0);
      return;
    }
    on_failure(status);
  }

  void on_stopped() {
    const auto& r = opt_.policy.restart;
    bool requeueing = mode_ == "scontrol" || mode_ == "sbatch" || mode_ == "exit";
    if (requeueing && requeues_ >= r.max_requeues) {
      spdlog::error("not requeueing: {} requeues so far (restart.max_requeues: {})", requeues_, r.max_requeues);
      history_.append({{"event", "requeue"}, {"attempt", attempt_}, {"mode", mode_}, {"result", "budget exhausted"}});
      finish(kExitStopped);
      return;
    }
    if (mode_ == "exit") {
      history_.append({{"event", "requeue"}, {"attempt", attempt_}, {"mode", "exit"}, {"result", "exit code"},
                       {"exit_code", opt_.policy.requeue.exit_code}});
      spdlog::info("exiting with {} for the site's RequeueExit", opt_.policy.requeue.exit_code);
      finish(opt_.policy.requeue.exit_code);
      return;
    }
    if (mode_ == "scontrol") {
      requeue_with_scontrol();
      return;
    }
    if (mode_ == "sbatch") {
      resubmit_with_sbatch();
      return;
    }
    // local / none: nothing can bring the job back but the user: say so with 75.
    history_.append({{"event", "requeue"}, {"attempt", attempt_}, {"mode", mode_}, {"result", "not requeued"}});
    finish(kExitStopped);
  }

  void requeue_with_scontrol() {
    SlurmOutcome o = slurm_client_.requeue(slurm_->display_id());
    if (!o.ok) {
      // Preemption in REQUEUE mode requeues the job by itself; then our request is redundant.
      auto f = slurm_client_.show_job(slurm_->display_id());
      std::string state = f ? (*f)["JobState"] : "";
      if (stop_reason_ == "preempted" || state.find("PREEMPT") != std::string::npos ||
          state.find("REQUEUE") != std::string::npos || state == "PENDING") {
        spdlog::info("Slurm requeues this preempted job itself ({})", o.detail);
        history_.append({{"event", "requeue"}, {"attempt", attempt_}, {"mode", "scontrol"}, {"result", "requeued"},
                         {"detail", "by Slurm (preemption): " + o.detail}});
        finish(0);
        return;
      }
      spdlog::error("requeue failed: {}", o.detail);
      history_.append({{"event", "requeue"}, {"attempt", attempt_}, {"mode", "scontrol"}, {"result", "failed"},
                       {"detail", o.detail}});
      finish(kExitStopped);
      return;
    }
    spdlog::info("job {} requeued (requeue {} of at most {})", slurm_->display_id(), requeues_ + 1,
                 opt_.policy.restart.max_requeues);
    history_.append({{"event", "requeue"}, {"attempt", attempt_}, {"mode", "scontrol"}, {"result", "requeued"},
                     {"detail", o.detail}});
    finish(0);
  }

  void resubmit_with_sbatch() {
    auto f = slurm_client_.show_job(slurm_->display_id());
    std::string script = f ? (*f)["Command"] : "";
    std::string workdir = f ? (*f)["WorkDir"] : slurm_->submit_dir;
    if (script.empty() || script == "(null)") {
      spdlog::error("cannot resubmit: Slurm does not know this job's script");
      history_.append({{"event", "requeue"}, {"attempt", attempt_}, {"mode", "sbatch"}, {"result", "failed"}});
      finish(kExitStopped);
      return;
    }
    std::vector<std::string> args = resubmit_args();
    // 22.05 shows Command as the script path and its arguments joined by spaces.
    std::string joined;
    for (const auto& a : args) joined += " " + a;
    if (!joined.empty() && script.size() > joined.size() &&
        script.compare(script.size() - joined.size(), joined.size(), joined) == 0)
      script.resize(script.size() - joined.size());
    else if (args.empty() && script.find(' ') != std::string::npos)
      script = script.substr(0, script.find(' '));
    SlurmOutcome o = slurm_client_.resubmit(script, args, workdir);
    if (!o.ok) {
      spdlog::error("resubmission failed: {}", o.detail);
      history_.append({{"event", "requeue"}, {"attempt", attempt_}, {"mode", "sbatch"}, {"result", "failed"},
                       {"detail", o.detail}});
      finish(kExitStopped);
      return;
    }
    spdlog::info("resubmitted {} as job {}", script, o.detail);
    history_.append({{"event", "requeue"}, {"attempt", attempt_}, {"mode", "sbatch"}, {"result", "resubmitted"},
                     {"new_job_id", o.detail}});
    finish(0);
  }

  // The jobscript's own arguments, passed on by the jobscript in LIFELINE_SCRIPT_ARGS (one
  // per line): Slurm 22.05 shows them only joined by spaces after the script in Command=.
  std::vector<std::string> resubmit_args() const {
    std::vector<std::string> args;
    if (auto v = env_str("LIFELINE_SCRIPT_ARGS")) {
      size_t start = 0;
      while (start <= v->size()) {
        size_t end = v->find('\n', start);
        if (end == std::string::npos) end = v->size();
        if (end > start) args.push_back(v->substr(start, end - start));
        start = end + 1;
      }
    }
    return args;
  }

  // ---- Slurm: time left, causes ------------------------------------------------------
  void read_slurm_config() {
    CommandResult r = runner_.run({"scontrol", "show", "config"}, std::chrono::seconds(20));
    if (!r.ok()) return;
    std::istringstream in(r.out);
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("KillWait", 0) == 0) {
        auto eq = line.find('=');
        if (eq != std::string::npos) kill_wait_s_ = std::atof(line.c_str() + eq + 1);
      }
    }
  }

  // Seconds the stop checkpoint may take: the grace setting, cut by what Slurm leaves.
  double stop_budget_seconds(int signo) const {
    double budget = opt_.grace_seconds;
    if (signo == SIGTERM && slurm_ && kill_wait_s_ > 0) {
      // After a SIGTERM from Slurm, SIGKILL follows KillWait seconds later.
      budget = std::min(budget, std::max(1.0, kill_wait_s_ - 2.0));
    }
    if (job_end_ns_) {
      double left = (double(*job_end_ns_) - double(wall_ns())) / 1e9 - 2.0;
      if (left > 1) budget = std::min(budget, left);
    }
    return budget;
  }

  // Why a stop signal came: the job's end was cut short (preempted), is near (time_limit),
  // or neither (stopped: scancel, an operator).
  std::string classify_stop(int signo) {
    auto f = slurm_client_.show_job(slurm_->display_id());
    if (!f) return "stopped";
    std::string state = (*f)["JobState"];
    history_.append({{"event", "slurm_view"}, {"attempt", attempt_}, {"job_state", state},
                     {"reason", (*f)["Reason"]}, {"end_time", (*f)["EndTime"]}, {"time_limit", (*f)["TimeLimit"]}});
    // While we still run, a job Slurm shows as preempted, pending or requeued was taken back.
    if (state.find("PREEMPT") != std::string::npos || state == "PENDING" ||
        state.find("REQUEUE") != std::string::npos)
      return "preempted";
    auto end = parse_slurm_time((*f)["EndTime"]);
    auto start = parse_slurm_time((*f)["StartTime"]);
    auto limit = parse_time_limit((*f)["TimeLimit"]);
    if (end) job_end_ns_ = end;
    if (end && start && limit && *end + 5'000'000'000ull < *start + *limit) return "preempted";
    if (end && double(*end) - double(wall_ns()) < kTimeLimitWindowS * 1e9) return "time_limit";
    (void)signo;
    return "stopped";
  }

  // Once the trainer is gone, Slurm's view of the job settles: a job it already requeued
  // (PENDING while we still run) was preempted; TIMEOUT is the time limit; CANCELLED is a stop.
  void refine_cause() {
    if (stop_reason_ == "time_limit" && stop_signal_ == 0) return;  // our own timer decided
    auto f = slurm_client_.show_job(slurm_->display_id());
    if (!f) return;
    std::string state = (*f)["JobState"];
    std::string before = stop_reason_;
    // COMPLETING while our batch step still runs: Slurm itself is ending the job to take it
    // back (preemption in REQUEUE mode; `scancel` shows CANCELLED, the limit TIMEOUT).
    if (state == "PENDING" || state == "COMPLETING" || state.find("REQUEUE") != std::string::npos ||
        state.find("PREEMPT") != std::string::npos)
      stop_reason_ = "preempted";
    else if (state == "TIMEOUT")
      stop_reason_ = "time_limit";
    else if (state == "CANCELLED")
      stop_reason_ = "stopped";
    if (stop_reason_ != before)
      history_.append({{"event", "slurm_view"}, {"attempt", attempt_}, {"job_state", state}, {"reason", (*f)["Reason"]},
                       {"cause", stop_reason_}});
  }

  // "[D-]HH:MM:SS", "MM:SS", "MM" as ns; nullopt for UNLIMITED or garbage.
  static std::optional<uint64_t> parse_time_limit(const std::string& t) {
    if (t.empty() || t == "UNLIMITED" || t == "Partition_Limit") return std::nullopt;
    uint64_t days = 0;
    std::string rest = t;
    auto dash = t.find('-');
    if (dash != std::string::npos) {
      days = std::strtoull(t.substr(0, dash).c_str(), nullptr, 10);
      rest = t.substr(dash + 1);
    }
    std::vector<uint64_t> parts;
    std::istringstream in(rest);
    std::string p;
    while (std::getline(in, p, ':')) parts.push_back(std::strtoull(p.c_str(), nullptr, 10));
    uint64_t secs = 0;
    if (parts.size() == 3) secs = parts[0] * 3600 + parts[1] * 60 + parts[2];
    else if (parts.size() == 2) secs = parts[0] * 60 + parts[1];
    else if (parts.size() == 1) secs = parts[0] * 60;
    else return std::nullopt;
    return (days * 86400 + secs) * 1000000000ull;
  }

  // Schedules our own stop ahead of the job's end, so the checkpoint and the requeue happen
  // even without --signal: lead = p95 of this lineage's commit times x safety + requeue time.
  void schedule_time_limit() {
    if (!slurm_) return;
    auto end = slurm_client_.end_time_ns(slurm_->display_id());
    if (!end) return;
    job_end_ns_ = end;
    double lead = time_limit_lead_seconds();
    double in_s = (double(*end) - double(wall_ns())) / 1e9 - lead;
    spdlog::info("job ends at {}; lifeline stops it {:.0f} s before (checkpoint p95 x {} + {} s for the requeue)",
                 iso8601(*end), lead, kLeadSafety, kRequeueAllowanceS);
    end_timer_.expires_after(milliseconds(int64_t(std::max(0.0, in_s) * 1000)));
    end_timer_.async_wait([this](const boost::system::error_code& ec) {
      if (ec || (state_ != State::running && state_ != State::checkpointing)) return;
      history_.append({{"event", "time_limit_near"}, {"attempt", attempt_}});
      begin_stop(0, "time_limit");
    });
  }

  double time_limit_lead_seconds() const {
    double p95 = 0;
    if (!commit_seconds_.empty()) {
      std::vector<double> v = commit_seconds_;
      std::sort(v.begin(), v.end());
      p95 = v[std::min(v.size() - 1, size_t(double(v.size()) * 0.95))];
    }
    return std::max(kMinLeadS, p95 * kLeadSafety + kRequeueAllowanceS);
  }

  void on_failure(int status) {
    end_timer_.cancel();
    bool progress = seen_commits_ > 0;
    failures_in_row_ = progress ? 0 : failures_in_row_ + 1;
    record_end("failed", status);
    spdlog::error("trainer failed with status {} ({} failed attempt(s) in a row without a new checkpoint)",
                  status, failures_in_row_);
    const auto& r = opt_.policy.restart;
    // Every mode but none restarts in place: the allocation is still ours, a queue is slower.
    if (mode_ == "none") {
      finish(status);
      return;
    }
    if (failures_in_row_ >= r.max_failures) {
      spdlog::error("giving up: {} failed attempts in a row without a new checkpoint (restart.max_failures: {})",
                    failures_in_row_, r.max_failures);
      finish(status);
      return;
    }
    if (restarts_ >= r.max_requeues) {
      spdlog::error("giving up: restart budget exhausted (restart.max_requeues: {})", r.max_requeues);
      finish(status);
      return;
    }
    ++restarts_;
    double wait = std::min(r.max_backoff_seconds, r.backoff_seconds * std::pow(2.0, double(failures_in_row_ ? failures_in_row_ - 1 : 0)));
    spdlog::info("restarting in {:.1f} s", wait);
    history_.append({{"event", "requeue"}, {"attempt", attempt_}, {"mode", "local"}, {"result", "restart"},
                     {"backoff_s", wait}});
    state_ = State::backoff;
    ++attempt_;
    restart_.expires_after(milliseconds(int64_t(wait * 1000)));
    restart_.async_wait([this](const boost::system::error_code& ec) {
      if (ec || state_ != State::backoff) return;
      start_attempt();
    });
  }

  // What a stop left: "committed", or "missing" with why, the step the next attempt resumes
  // from (the newest checkpoint this lineage committed, as far as the supervisor saw) and the
  // steps lost; logged, and recorded in attempt_end as `stop_checkpoint`.
  json stop_checkpoint_report(bool committed, int status) {
    if (committed) return {{"state", "committed"}, {"step", last_commit_step_ ? json(*last_commit_step_) : json(nullptr)}};
    std::string why;
    if (!opt_.policy.checkpoint.on_signal && stop_signal_ != 0)
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

  void record_end(const std::string& reason, std::optional<int> status, json stop = nullptr) {
    json event{{"event", "attempt_end"},
               {"attempt", attempt_},
               {"end_reason", reason},
               {"exit_code", status ? json(*status) : json(nullptr)},
               {"checkpoints", seen_commits_},
               {"last_checkpoint_step", last_commit_step_ ? json(*last_commit_step_) : json(nullptr)},
               {"last_step", last_step_},
               {"signal", stop_signal_ ? json(signal_name(stop_signal_)) : json(nullptr)}};
    if (!stop.is_null()) event["stop_checkpoint"] = std::move(stop);
    history_.append(event);
  }

  void set_log_pattern() {
    std::string who = "lifeline[" + (job_id_ ? "job " + *job_id_ + " " : std::string()) + "attempt " +
                      std::to_string(attempt_) + "]";
    spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e " + who + " %l: %v");
  }

  std::string command_text() const {
    std::string s;
    for (const auto& a : opt_.command) s += (s.empty() ? "" : " ") + a;
    return s;
  }

  static constexpr double kMinLeadS = 20;           // never stop later than this before the end
  static constexpr double kLeadSafety = 3;          // x p95 of the lineage's commit durations
  static constexpr double kRequeueAllowanceS = 10;  // trainer exit + scontrol requeue
  static constexpr double kTimeLimitWindowS = 300;  // a stop this close to EndTime is the time limit
  static constexpr int64_t kExitPatienceMs = 10000;  // after the stop checkpoint, before SIGTERM
  static constexpr int64_t kKillAfterMs = 5000;      // after SIGTERM, before SIGKILL
  static constexpr int64_t kWritersPatienceMs = 10000;  // for an earlier attempt's writers to leave

  const RunOptions& opt_;
  HistoryLog history_;
  asio::io_context io_;
  asio::signal_set signals_;
  SignalRelay relay_;
  asio::steady_timer tick_, deadline_, escalate_, periodic_, restart_;
  asio::steady_timer end_timer_;
  ProcessCommandRunner runner_;
  SlurmClient slurm_client_;
  std::optional<SlurmJob> slurm_;
  std::optional<uint64_t> job_end_ns_;
  double kill_wait_s_ = 0;
  uint64_t requeues_ = 0;
  std::vector<double> commit_seconds_;
  std::optional<DirLock> lock_;
  std::optional<ControlBlock> block_;
  std::future<RetentionReport> retention_;  // the retention run in flight
  bool retention_again_ = false;            // a commit came during that run
  std::unique_ptr<TrainerProcess> trainer_;
  State state_ = State::running;
  std::string mode_;
  std::string lineage_;
  std::optional<std::string> job_id_;
  uint64_t attempt_ = 0;
  uint64_t failures_in_row_ = 0;
  uint64_t restarts_ = 0;
  uint64_t attempt_started_ns_ = 0;
  std::optional<uint64_t> resumed_step_;
  std::optional<uint64_t> last_commit_step_;
  uint64_t seen_commits_ = 0, seen_failed_saves_ = 0, seen_request_seq_ = 0, pending_seq_ = 0;
  uint64_t last_step_ = 0, last_progress_ns_ = 0;
  int stop_signal_ = 0;
  std::string stop_reason_;
  bool hung_ = false;
  bool timed_out_ = false;  // the stop deadline passed without a commit
  bool sent_term_ = false;
  int exit_status_ = 0;
};

}  // namespace

int run_supervisor(const RunOptions& options) {
  spdlog::set_default_logger(spdlog::stderr_color_st("lifeline"));
  if (const char* lvl = std::getenv("LIFELINE_LOG_LEVEL")) spdlog::set_level(spdlog::level::from_str(lvl));
  if (!options.log_level.empty()) spdlog::set_level(spdlog::level::from_str(options.log_level));
  int status;
  {
    Supervisor s(options);
    status = s.run();
  }
  // Slurm may SIGTERM the whole batch step while we leave (after a requeue): leave cleanly.
  if (std::getenv("SLURM_JOB_ID")) {
    ::signal(SIGTERM, SIG_IGN);
    ::signal(SIGCONT, SIG_IGN);
  }
  return status;
}

}  // namespace lifeline
