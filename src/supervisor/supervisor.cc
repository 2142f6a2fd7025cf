#include "supervisor/supervisor.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <boost/asio.hpp>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <future>
#include <memory>
#include <optional>
#include <set>
#include <thread>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "common/clock.h"
#include "common/format.h"
#include "common/host.h"
#include "common/json_text.h"
#include "control/control_block.h"
#include "history/attempt_log.h"
#include "history/history.h"
#include "history/lineage.h"
#include "history/names.h"
#include "history/run_identity.h"
#include "history/supervisor_record.h"
#include "policy/units.h"
#include "slurm/job_view.h"
#include "slurm/slurm_client.h"
#include "slurm/slurm_job.h"
#include "store/checkpoint_store.h"
#include "store/dir_lock.h"
#include "store/dir_safety.h"
#include "store/retention.h"
#include "store/writers_lock.h"
#include "supervisor/local_tier.h"
#include "supervisor/machine.h"
#include "supervisor/peer_link.h"
#include "supervisor/rank_coordinator.h"
#include "supervisor/trainer_process.h"

namespace lifeline {
namespace asio = boost::asio;
using namespace layout;
using std::chrono::milliseconds;
using json = nlohmann::json;

std::string effective_requeue_mode(const std::string& mode, bool in_slurm_job) {
  if (mode == "auto") return in_slurm_job ? "scontrol" : "local";
  return mode;
}

namespace {
// A decimal environment variable, or nullopt when unset.
std::optional<uint64_t> env_number(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return std::nullopt;
  std::string s(v);
  if (s.size() > 9 || s.find_first_not_of("0123456789") != std::string::npos)
    throw std::runtime_error(std::string(name) + "='" + s + "' is not a number");
  return std::stoull(s);
}
}  // namespace

PeerPlace peer_place(const RunOptions& o) {
  PeerPlace p;
  // srun starts one task per supervisor: its task count and rank say who is who.
  std::optional<uint64_t> tasks = env_number("SLURM_STEP_NUM_TASKS");
  std::optional<uint64_t> procid = env_number("SLURM_PROCID");
  std::optional<uint64_t> nodes = env_number("SLURM_STEP_NUM_NODES");
  if (o.peers > 0) {
    p.peers = o.peers;
  } else if (tasks && *tasks > 1 && procid && std::getenv("SLURM_STEP_ID")) {
    p.peers = uint32_t(*tasks);
  }
  if (p.peers == 1) return p;
  if (o.peer_index >= 0) {
    p.index = uint32_t(o.peer_index);
  } else if (procid) {
    p.index = uint32_t(*procid);
  } else {
    throw std::runtime_error("--peers " + std::to_string(p.peers) + " needs --peer-index (or srun's SLURM_PROCID)");
  }
  if (p.index >= p.peers)
    throw std::runtime_error("--peer-index " + std::to_string(p.index) + " is not below --peers " + std::to_string(p.peers));
  p.per_rank = o.peers == 0 && nodes && *nodes < p.peers;
  return p;
}

std::string preflight_error(const RunOptions& o) {
  try {
    peer_place(o);
  } catch (const std::exception& e) {
    return e.what();
  }
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

// The Asio adapter of the supervisor's machine: every callback (signal, timer, Slurm's answer)
// becomes one dispatch, and it is the machine's Effects on the real world.
class Supervisor final : public Effects {
 public:
  explicit Supervisor(const RunOptions& o)
      : opt_(o), peer_(safe_place(o)),
        history_(o.ckpt_dir, peer_.index > 0 ? "history.node-" + std::to_string(peer_.index) + ".jsonl" : ""),
        log_(history_, 0), signals_(io_), relay_(io_),
        timers_{asio::steady_timer(io_), asio::steady_timer(io_), asio::steady_timer(io_), asio::steady_timer(io_),
                asio::steady_timer(io_), asio::steady_timer(io_), asio::steady_timer(io_)},
        slurm_client_(runner_) {}
  // No signal handler may touch the control block once it is unmapped, however run() ended;
  // Slurm questions still out end (their own timeouts) before the loop they answer to goes.
  ~Supervisor() override {
    relay_.disarm();
    for (auto& q : questions_) q.wait();
    link_.reset();  // before the loop its callbacks post to
  }
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  int run() {
    spdlog::set_pattern(kLogTime + " lifeline %l: %v");  // until the attempt is known
    if (std::string why = preflight_error(opt_); !why.empty()) {
      spdlog::error("{}", why);
      return kExitUsage;
    }
    if (std::string why = unsafe_dir_reason(opt_.ckpt_dir); !why.empty()) {
      spdlog::error("{}", why);
      return kExitUsage;
    }
    // One lock per directory: several supervisors of one job share it through their leader.
    if (!follower()) lock_.emplace(opt_.ckpt_dir);
    if (!follower() && !check_identity()) return kExitUsage;
    if (!opt_.local_dir.empty()) {
      if (peers() && !opt_.policy.storage.drain) {
        spdlog::error("storage.drain: off with several supervisors per job: a collective checkpoint is committed on "
                      "{} only once every node's parts are there, so without a drain nothing would ever commit; "
                      "set storage.drain: async (nothing started)",
                      opt_.ckpt_dir);
        return kExitUsage;
      }
      if (std::string why = local_tier_problem(opt_.local_dir, opt_.ckpt_dir); !why.empty()) {
        spdlog::error("{} (nothing started)", why);
        return kExitUsage;
      }
      try {
        local_lock_.emplace(opt_.local_dir);
        const auto& st = opt_.policy.storage;
        LocalTier::Options to;
        to.local_dir = opt_.local_dir;
        to.shared_dir = opt_.ckpt_dir;
        to.drain = st.drain;
        to.keep_local = st.keep_local;
        to.drain_bandwidth = st.drain_bandwidth;
        to.host = this_host();
        // Several supervisors: each node drains its ranks' parts; the leader commits on shared storage.
        to.parts = peers();
        to.status_file = !follower();
        // A drain that ended reaches the loop at once (the leader waits on it to commit).
        to.wake = [this] {
          asio::post(io_, [this] {
            if (!finished_) poll_tier();
          });
        };
        tier_ = std::make_unique<LocalTier>(std::move(to));
      } catch (const std::exception& e) {
        spdlog::error("storage.local {}: {} (nothing started)", opt_.local_dir, e.what());
        return kExitUsage;
      }
    }
    if (!follower()) {  // this run's identity, once nothing else can refuse it
      if (const auto& src = opt_.init_source)
        identity_.parent = RunParent{src->dir, src->lineage, src->checkpoint.step, src->checkpoint.path};
      std::string error;
      if (!write_run_identity(opt_.ckpt_dir, identity_, &error)) spdlog::warn("{}", error);
    }
    LineageState ls = read_lineage(opt_.ckpt_dir);
    lineage_ = ls.lineage;
    slurm_ = SlurmJob::from_env();
    if (slurm_) job_id_ = slurm_->display_id();
    MachineConfig config;
    config.policy = opt_.policy;
    config.grace_seconds = opt_.grace_seconds;
    config.mode = parse_requeue_mode(effective_requeue_mode(opt_.requeue_mode, slurm_.has_value())).value_or(RequeueMode::local);
    config.in_slurm = slurm_.has_value();
    config.peer = !peers() ? MachineConfig::Peer::none : leader() ? MachineConfig::Peer::leader : MachineConfig::Peer::follower;
    if (peers()) {
      job_tag_ = (job_id_ ? *job_id_ : std::string("local")) + "-" + std::to_string(slurm_ ? slurm_->restart_count : 0);
      rendezvous_path_ = opt_.ckpt_dir + "/.peers-" + job_tag_ + ".json";
      spdlog::info("supervisor {} of {} of this job ({})", peer_.index, peer_.peers,
                   leader() ? "the leader" : "a follower");
      if (leader()) job_.emplace(peer_.peers);
    }
    if (slurm_) {
      // Before any trainer runs: nothing to watch yet, so this query may take its time.
      CommandResult r = runner_.run({"scontrol", "show", "config"}, std::chrono::seconds(20));
      if (r.ok()) config.kill_wait_s = parse_kill_wait(r.out);
    }
    mode_ = config.mode;
    machine_.emplace(config, MachineHistory{ls.attempts, ls.failures_in_row, ls.requeues, ls.commit_seconds}, *this);

    signals_.add(SIGCHLD);
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
    machine_->begin(mono_ns(), wall_ns());
    if (!finished_) io_.run();
    poll_tier();
    settle_retention(/*wait=*/true);
    return exit_status_;
  }

  // ---- Effects ------------------------------------------------------------------------------
  AttemptLog& log() override { return log_; }

  StartOutcome start_attempt(uint64_t attempt) override {
    attempt_ = attempt;
    set_log_pattern();
    if (tier_ && !said_tier_) {
      said_tier_ = true;
      spdlog::info("node-local tier: the trainer commits to {}; {}", opt_.local_dir, st_drain_words());
    }
    StartOutcome out;
    if (!settle_earlier_attempts()) {
      out.status = kExitUsage;
      return out;
    }
    std::optional<CheckpointInfo> resume;
    std::string kind;  // LIFELINE_RESUME_KIND: "continue" (this run's own checkpoint), "warm" (--init-from), "" (none)
    std::optional<RunParent> fork;
    std::optional<std::string> init_ignored;
    json skipped = json::array();
    // A follower joins its leader before anything else: the leader's choice of checkpoint is
    // every node's (the directory is shared), and no trainer starts before every node is there.
    if (follower()) {
      if (!join_leader()) {
        out.status = kExitUsage;
        return out;
      }
      if (welcome_.contains("resume_path") && welcome_["resume_path"].is_string()) {
        CheckpointInfo info;
        info.path = welcome_["resume_path"].get<std::string>();
        info.step = welcome_.at("resume_step").get<uint64_t>();
        resume = info;
        kind = welcome_.contains("resume_kind") && welcome_["resume_kind"].is_string()
                   ? welcome_["resume_kind"].get<std::string>()
                   : std::string("continue");
      }
    } else if (opt_.policy.restart.resume != Policy::Resume::off) {
      ResumeChoice choice = tier_ ? start_tiers() : choose_resume(opt_.ckpt_dir);
      for (const auto& s : choice.skipped) {
        spdlog::warn("skipping checkpoint {} (step {}): {}", s.path, s.step, s.problem);
        skipped.push_back(checkpoint_object(s));
      }
      resume = choice.resume;
    }
    if (!follower()) {
      if (resume) kind = "continue";
      if (!opt_.init_from.empty() && !fork_init_from(resume, kind, fork, init_ignored)) {
        out.status = kExitUsage;
        return out;
      }
    }
    if (!resume && opt_.policy.restart.resume == Policy::Resume::required) {
      spdlog::error("no valid checkpoint in {} and the policy requires a resume (restart.resume: required)",
                    opt_.ckpt_dir);
      out.status = kExitUsage;
      return out;
    }
    if (resume && kind == "warm") {  // the trainer decides what it loads and where its steps start
      spdlog::info("a warm start from step {} of another run ({}, lineage {}): LIFELINE_RESUME_KIND=warm", resume->step,
                   resume->path, fork && !fork->lineage.empty() ? fork->lineage : std::string("unknown"));
    } else if (resume) {
      out.resumed_step = resume->step;
      spdlog::info("resuming from step {} ({})", resume->step, resume->path);
    } else {
      spdlog::info("starting from scratch: no valid checkpoint in {}", opt_.ckpt_dir);
    }
    drop_block();
    try {
      block_.emplace(ControlBlock::create(job_id_ ? *job_id_ : "local"));
    } catch (const std::exception& e) {
      spdlog::error("{}", e.what());
      out.status = attempt_ == 0 ? kExitUsage : kExitStopped;
      return out;
    }
    CheckpointMeta meta;
    meta.job_id = job_id_;
    meta.attempt = attempt_;
    meta.lineage = lineage_;
    meta.host = this_host();
    if (follower()) block_->u64(kStagingTokenOff).store(welcome_.at("token").get<uint64_t>());
    if (leader() && !gather_followers(resume, kind)) {
      out.status = kExitUsage;
      return out;
    }
    // The collective commit: in the local tier with one supervisor (then drained whole), on
    // shared storage with several (each node drains its parts into the shared staging folder).
    if (parts_tier()) tier_->set_parts_token(block_->u64(kStagingTokenOff).load());
    ranks_.emplace(*block_, parts_tier() ? opt_.ckpt_dir : work_dir(), meta, peers());
    block_->u64(kEveryStepsOff).store(opt_.policy.checkpoint.every_steps);
    block_->u64(kSkipFirstStepsOff).store(opt_.policy.checkpoint.skip_first_steps);
    std::map<std::string, std::string> env{
        {"LIFELINE_CONTROL", block_->name()},
        {"LIFELINE_CKPT_DIR", work_dir()},
        {"LIFELINE_RESUME_FROM", resume ? resume->path : ""},
        {"LIFELINE_RESUME_STEP", resume ? std::to_string(resume->step) : ""},
        {"LIFELINE_RESUME_KIND", resume ? kind : ""},
        {"LIFELINE_ATTEMPT", std::to_string(attempt_)},
        {"LIFELINE_LINEAGE", lineage_},
    };
    if (peers()) {
      env["LIFELINE_PEERS"] = std::to_string(peer_.peers);
      env["LIFELINE_PEER_INDEX"] = std::to_string(peer_.index);
      if (peer_.per_rank) {  // srun -n: each supervisor's trainer is one rank of the job
        env["LIFELINE_RANK"] = std::to_string(peer_.index);
        env["LIFELINE_WORLD_SIZE"] = std::to_string(peer_.peers);
        env["LIFELINE_LOCAL_RANK"] = "0";
        env["LIFELINE_LOCAL_WORLD_SIZE"] = "1";
        // And for torch.distributed (env://), unless the job set them: srun sets none of these.
        auto set_default = [&](const char* name, std::string value) {
          if (!std::getenv(name)) env[name] = std::move(value);
        };
        set_default("RANK", std::to_string(peer_.index));
        set_default("WORLD_SIZE", std::to_string(peer_.peers));
        if (const char* local = std::getenv("SLURM_LOCALID")) set_default("LOCAL_RANK", local);
      }
    }
    log_.attempt_start({lineage_, job_id_, this_host(), int64_t(getpid()), out.resumed_step,
                        out.resumed_step ? std::optional<std::string>(resume->path) : std::nullopt, skipped, mode_,
                        resume ? kind : "", fork, init_ignored});
    out.recorded = true;
    if (!identity_note_.empty()) {
      log_.run_changed(identity_note_, identity_forced_);
      identity_note_.clear();
    }
    attempt_started_ns_ = wall_ns();
    if (!follower()) write_supervisor_record();
    try {
      trainer_ = std::make_unique<TrainerProcess>(opt_.command, env, /*ignore_user_signals=*/peers());
    } catch (const std::exception& e) {
      spdlog::error("{}", e.what());
      out.status = attempt_ == 0 ? kExitUsage : 127;
      return out;
    }
    spdlog::info("trainer started, pid {}: {}", trainer_->pid(), fmt::format("{}", fmt::join(opt_.command, " ")));
    out.started = true;
    if (peers()) share_ranks_soon();
    return out;
  }

  void set_stop_budget(int signo, double seconds) override { relay_.set_budget(signo, seconds); }
  void arm_relay() override {
    if (block_) relay_.arm(*block_);
  }
  RelayedStop disarm_relay() override { return relay_.disarm(); }
  uint64_t post_request(Reason reason, bool stop, uint64_t deadline_wall_ns) override {
    return block_ ? block_->request(reason, stop, deadline_wall_ns) : 0;
  }
  void tighten_deadline(uint64_t deadline_wall_ns) override {
    if (block_) block_->tighten_deadline(deadline_wall_ns);
  }
  void signal_trainer(int signo) override {
    if (trainer_) trainer_->signal_group(signo);
  }
  void release_trainer() override {
    trainer_.reset();
    drop_block();
  }

  void arm(Timer timer, uint64_t at_mono_ns) override {
    auto& t = timers_[size_t(timer)];
    uint64_t now = mono_ns();
    t.expires_after(std::chrono::nanoseconds(at_mono_ns > now ? at_mono_ns - now : 0));
    t.async_wait([this, timer](const boost::system::error_code& ec) {
      if (!ec) on_timer(timer);
    });
  }
  void cancel(Timer timer) override { timers_[size_t(timer)].cancel(); }

  void ask_job_end(uint64_t attempt) override {
    ask([attempt, id = slurm_->display_id()](SlurmClient& c) {
      EventData e;
      e.kind = SupervisorEvent::job_end_known;
      e.attempt = attempt;
      e.end_ns = c.end_time_ns(id);
      return e;
    });
  }
  void ask_stop_cause(uint64_t attempt) override {
    ask([attempt, id = slurm_->display_id()](SlurmClient& c) {
      EventData e;
      e.kind = SupervisorEvent::stop_cause_known;
      e.attempt = attempt;
      e.job = c.show_job(id);
      return e;
    });
  }
  std::optional<JobFields> show_job() override { return slurm_client_.show_job(slurm_->display_id()); }
  RequeueAnswer requeue() override {
    RequeueAnswer a;
    a.outcome = slurm_client_.requeue(slurm_->display_id());
    if (!a.outcome.ok) a.job = show_job();
    return a;
  }
  RequeueAnswer resubmit() override {
    RequeueAnswer a;
    const char* args = std::getenv("LIFELINE_SCRIPT_ARGS");
    auto sub = resubmission(show_job(), split_script_args(args ? args : ""), slurm_->submit_dir);
    if (!sub) return a;
    a.script = sub->script;
    a.outcome = slurm_client_.resubmit(sub->script, sub->args, sub->workdir);
    return a;
  }

  std::vector<CommitSeen> commits_between(std::optional<uint64_t> after, uint64_t before,
                                          std::optional<uint64_t> resumed) override {
    std::vector<CommitSeen> seen;
    for (const auto& [step, name] : checkpoint_folders(work_dir())) {
      if ((after && step <= *after) || step >= before) continue;
      if (resumed && step <= *resumed) continue;
      CheckpointInfo info = verify_checkpoint(work_dir() + "/" + name, VerifyMode::quick);
      if (info.valid) seen.push_back({step, info.bytes});
    }
    return seen;
  }

  // Retention after each commit, on a thread of its own: its full verify of the newest
  // checkpoint reads the whole checkpoint (from the disk: big files bypass the page cache),
  // which must not hold up the loop. One run at a time; a commit during a run asks for one more.
  void start_retention() override {
    if (tier_) return;  // on shared storage after each drain instead (poll_tier)
    start_shared_retention();
  }

  // ---- the node-local tier (docs/storage.md) ----
  void committed(uint64_t step, uint64_t bytes) override {
    if (!tier_) return;
    tier_local_bytes_ = bytes;
    tier_->committed(step, bytes);
  }

  void stop_begun(uint64_t deadline_wall_ns) override {
    stop_deadline_wall_ = deadline_wall_ns;
    if (!tier_ || !opt_.policy.storage.drain) return;
    if (parts_tier()) tier_->lift_cap();  // (one supervisor: settle_drain lifts it)
    auto est = tier_->drain_seconds(tier_local_bytes());
    uint64_t now = wall_ns();
    double budget = deadline_wall_ns > now ? double(deadline_wall_ns - now) / 1e9 : 0;
    if (est && *est > budget) {
      auto resume = tier_->newest_drained();
      spdlog::warn("the stop checkpoint's drain to {} takes about {:.1f} s at the measured speed, more than the {:.1f} s "
                   "left: if it does not finish, a job that comes back on another node resumes from {}",
                   opt_.ckpt_dir, *est, budget, resume ? "step " + std::to_string(*resume) : std::string("scratch"));
      log_.drain_late(tier_->newest_local().value_or(0), *est, budget, resume);
    }
  }

  std::optional<bool> settle_drain(bool stop) override {
    if (!tier_) return std::nullopt;
    if (!opt_.policy.storage.drain) return false;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::hours(24 * 365);
    if (stop) {
      // The stop checkpoint's deadline; a stop without one (checkpoint.on_signal: false) gets the grace period.
      uint64_t now = wall_ns();
      uint64_t until = stop_deadline_wall_ ? stop_deadline_wall_ : now + uint64_t(opt_.grace_seconds * 1e9);
      deadline = std::chrono::steady_clock::now() + std::chrono::nanoseconds(until > now ? until - now : 0);
    }
    auto local = tier_->newest_local();
    if (local && local != tier_->newest_drained())
      spdlog::info("draining step {} to {} before {}", *local, opt_.ckpt_dir, stop ? "the requeue" : "the exit");
    bool drained = tier_->settle(deadline);
    poll_tier(stop);
    if (!drained && local) {
      auto resume = tier_->newest_drained();
      spdlog::error("step {} is on {} only: its drain did not {}; a job that comes back on another node "
                    "resumes from {}",
                    *local, opt_.local_dir, stop ? "finish before the stop's deadline" : "succeed",
                    resume ? "step " + std::to_string(*resume) : std::string("scratch"));
    }
    return drained;
  }

  double drain_lead_seconds() override {
    if (!tier_ || !opt_.policy.storage.drain) return 0;
    return tier_->drain_seconds(tier_local_bytes()).value_or(0) * SupervisorMachine::kLeadSafety;
  }

  // Drains that ended since the last look: history, the log, and retention on shared storage.
  void poll_tier(bool stop = false) {
    if (!tier_) return;
    bool any_drained = false, parts_changed = false;
    bool stopping = stop || (machine_ && (machine_->state() == SupervisorState::stopping ||
                                          machine_->state() == SupervisorState::draining));
    for (const auto& e : tier_->take_events()) {
      AttemptLog::Drain d;
      d.step = e.step;
      d.stop = stopping;
      using K = LocalTier::Event::Kind;
      if (e.kind == K::drained && parts_tier()) {
        d.result = "drained";
        d.bytes = e.result.bytes;
        d.duration_s = double(e.result.duration_ns) / 1e9;
        parts_drained_ = std::max(parts_drained_, e.step);
        parts_changed = true;
        spdlog::info("drained this node's parts of step {} to {}: {} bytes in {:.3f} s", e.step, opt_.ckpt_dir, d.bytes,
                     d.duration_s);
      } else if (e.kind == K::drained) {
        d.result = "drained";
        d.bytes = e.result.bytes;
        d.duration_s = double(e.result.duration_ns) / 1e9;
        any_drained = true;
        spdlog::info("drained step {} to {}: {} bytes in {:.3f} s", e.step, opt_.ckpt_dir, d.bytes, d.duration_s);
      } else if (e.kind == K::skipped) {
        d.result = "skipped";
        spdlog::debug("drain of step {} skipped: a newer checkpoint came first", e.step);
      } else if (parts_tier()) {
        d.result = "failed";
        d.error = e.error;
        parts_failed_ = std::max(parts_failed_, e.step);
        parts_changed = true;
        spdlog::error("drain of this node's parts of step {} to {} failed: {}; the job gives that checkpoint up, "
                      "training goes on", e.step, opt_.ckpt_dir, e.error);
      } else {
        d.result = "failed";
        d.error = e.error;
        spdlog::error("drain of step {} to {} failed: {}; it stays on {}, training goes on", e.step, opt_.ckpt_dir,
                      e.error, opt_.local_dir);
      }
      log_.drain(d);
    }
    if (parts_changed) share_state();  // the leader commits (or gives up) once every node's are there
    // Not during a stop: its full verify would read the checkpoint back from shared storage
    // inside the grace period and hold up the exit; the next attempt's first drain runs it.
    if (any_drained && !stopping) start_shared_retention();
    uint64_t now = mono_ns();
    if (tier_->busy() && now - tier_status_ns_ >= 1000000000ull) {
      tier_->write_status(/*durable=*/false);
      tier_status_ns_ = now;
    }
  }

  uint64_t tier_local_bytes() const { return tier_local_bytes_; }
  // Several supervisors with a node-local tier: parts drain, the leader commits on shared storage.
  bool parts_tier() const { return tier_ && peers(); }

  std::string st_drain_words() const {
    const auto& st = opt_.policy.storage;
    if (!st.drain) return "no drain (storage.drain: off): checkpoints stay on this node";
    return "each commit drains to " + opt_.ckpt_dir + " in the background" +
           (st.drain_bandwidth ? " (at most " + format_size(double(st.drain_bandwidth)) + "/s)" : std::string());
  }

  // The resume point across the tiers, with what the start found on the way (history, log).
  ResumeChoice start_tiers() {
    LocalTier::Start st = tier_->start();
    if (st.lost) {
      const auto& l = *st.lost;
      uint64_t step = l["step"].get<uint64_t>();
      std::optional<uint64_t> resume;
      if (l["resume_step"].is_number_unsigned()) resume = l["resume_step"].get<uint64_t>();
      spdlog::error("checkpoint step {} was committed on {}:{} and never reached {}: it is lost; resuming from {}", step,
                    l.value("host", std::string("?")), l.value("local_dir", std::string("?")), opt_.ckpt_dir,
                    resume ? "step " + std::to_string(*resume) : std::string("scratch"));
      log_.checkpoint_lost(step, l.value("host", std::string()), l.value("local_dir", std::string()), resume);
    }
    if (st.drained_first) {
      const auto& e = *st.drained_first;
      AttemptLog::Drain d;
      d.step = e.step;
      d.at_start = true;
      if (e.kind == LocalTier::Event::Kind::drained) {
        d.result = "drained";
        d.bytes = e.result.bytes;
        d.duration_s = double(e.result.duration_ns) / 1e9;
        spdlog::info("step {} was on {} only: drained it to {} first ({} bytes in {:.3f} s)", e.step, opt_.local_dir,
                     opt_.ckpt_dir, d.bytes, d.duration_s);
      } else {
        d.result = "failed";
        d.error = e.error;
        spdlog::error("step {} is on {} only and could not be drained to {}: {}", e.step, opt_.local_dir, opt_.ckpt_dir,
                      e.error);
      }
      log_.drain(d);
    }
    if (st.choice.resume) tier_local_bytes_ = st.choice.resume->bytes;
    return st.choice;
  }

  // The checkpoint dir's retention, on a thread of its own.
  void start_shared_retention() {
    if (follower()) return;  // the leader's, once per job
    if (retention_.valid()) {
      retention_again_ = true;
      return;
    }
    retention_ = std::async(std::launch::async, [dir = opt_.ckpt_dir, policy = opt_.policy.retention,
                                                 resumed = resumed_step()] {
      return apply_retention(default_file_system(), dir, policy, resumed, /*dry_run=*/false);
    });
  }

  // Reports a finished retention run (history, log) and starts the one asked for meanwhile.
  void settle_retention(bool wait) override {
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
      start_shared_retention();  // (start_retention() is a no-op with a tier: drains start it)
    }
  }

  // --init-from at an attempt's start (the leader's or a lone supervisor's choice): with a
  // checkpoint of the run's own, it is ignored (said once per supervisor that never forked);
  // without one, the attempt starts from the source (verified before the start for the first
  // attempt, again for later ones). False: no valid source (nothing started).
  bool fork_init_from(std::optional<CheckpointInfo>& resume, std::string& kind, std::optional<RunParent>& fork,
                      std::optional<std::string>& ignored) {
    if (resume) {
      if (!forked_ && !said_init_ignored_) {
        said_init_ignored_ = true;
        spdlog::info("--init-from {} is ignored: this run already has its own checkpoints in {}; resuming from them",
                     opt_.init_from, opt_.ckpt_dir);
        ignored = opt_.init_from;
      }
      return true;
    }
    std::optional<InitSource> src;
    if (opt_.init_source && !forked_) {
      src = opt_.init_source;
    } else {
      std::string error;
      src = resolve_init_from(opt_.init_from, &error);
      if (!src) {
        spdlog::error("{} (nothing started)", error);
        return false;
      }
    }
    forked_ = true;
    for (const auto& s : src->skipped)
      spdlog::warn("--init-from: skipping checkpoint {} (step {}): {}", s.path, s.step, s.problem);
    fork = RunParent{src->dir, src->lineage, src->checkpoint.step, src->checkpoint.path};
    resume = src->checkpoint;
    kind = "warm";
    return true;
  }

  // run.json: this run against the one whose checkpoints the directory holds. False: refused.
  bool check_identity() {
    identity_.run_id = opt_.run_id;
    identity_.command = opt_.command;
    identity_.policy = opt_.policy.source;
    std::string error;
    auto was = read_run_identity(opt_.ckpt_dir, &error);
    if (!was && !error.empty()) spdlog::warn("{} (replaced)", error);
    if (was) {
      IdentityCheck c = check_run_identity(*was, identity_);
      if (c.verdict == IdentityCheck::Verdict::refuse && !opt_.resume_anyway) {
        spdlog::error("{} holds the checkpoints of another run: {}. Resuming would continue that run's training. "
                      "Use another --ckpt-dir for a new run, or pass --resume-anyway to resume from its checkpoints "
                      "anyway{} (nothing started)",
                      opt_.ckpt_dir, c.why,
                      was->run_id || opt_.run_id ? "" : "; --run-id NAME names a run so that it may change its command");
        return false;
      }
      if (c.verdict != IdentityCheck::Verdict::same) {
        spdlog::warn("{}: {}; resuming from its checkpoints{}", opt_.ckpt_dir, c.why,
                     c.verdict == IdentityCheck::Verdict::refuse ? " (--resume-anyway)" : "");
        identity_note_ = c.why;
        identity_forced_ = c.verdict == IdentityCheck::Verdict::refuse;
      }
      if (!identity_.run_id && was->run_id) identity_.run_id = was->run_id;  // keeps its name
      if (!identity_.parent && was->parent) identity_.parent = was->parent;  // and its parent
    }
    return true;
  }

  // Where the trainer commits: the node-local tier when there is one.
  const std::string& work_dir() const { return tier_ ? opt_.local_dir : opt_.ckpt_dir; }

  void finish(int status) override {
    if (!follower() && log_.last_end() && log_.last_end()->reason == EndReason::completed) {
      identity_.completed = true;
      std::string error;
      if (!write_run_identity(opt_.ckpt_dir, identity_, &error)) spdlog::warn("{}", error);
    }
    say_end(status);
    exit_status_ = status;
    finished_ = true;
    io_.stop();
  }

 private:
  // ---- callbacks: one dispatch each -----------------------------------------------------------
  void dispatch(EventData e) {
    e.mono_ns = mono_ns();
    e.wall_ns = wall_ns();
    if (e.kind == SupervisorEvent::child_exit && leader()) collect_node_views(e.status);
    machine_->dispatch(e);
    // Several supervisors: what the event did to the block (a request) reaches the leader now.
    if (peers() && ranks_ && !finished_) poll_ranks();
  }

  void dispatch(SupervisorEvent kind) {
    EventData e;
    e.kind = kind;
    dispatch(e);
  }

  void on_timer(Timer timer) {
    switch (timer) {
      case Timer::tick: return on_tick_or_exit();
      case Timer::periodic: return dispatch(SupervisorEvent::periodic_due);
      case Timer::time_limit: return dispatch(SupervisorEvent::time_limit_due);
      case Timer::stop_deadline: return dispatch(SupervisorEvent::stop_deadline);
      case Timer::term: return dispatch(SupervisorEvent::term_due);
      case Timer::kill: return dispatch(SupervisorEvent::kill_due);
      case Timer::restart: return dispatch(SupervisorEvent::restart_due);
    }
  }

  // A tick, or the trainer's exit when it has exited (SIGCHLD may come late or coalesced).
  void on_tick_or_exit() {
    EventData e;
    e.kind = SupervisorEvent::tick;
    if (trainer_) {
      if (auto status = trainer_->poll_exit()) {
        e.kind = SupervisorEvent::child_exit;
        e.status = *status;
      }
    }
    poll_ranks();
    // Several supervisors: a rank may leave once its part is durable, before the leader has heard
    // from every node. The exit waits (up to kExitForCommitMs) for the leader's commit or give-up,
    // so every node's machine sees whether its stop checkpoint committed.
    if (e.kind == SupervisorEvent::child_exit && peers() && ranks_ && ranks_->part_outstanding()) {
      uint64_t now = mono_ns();
      // This node's parts still draining to shared storage: the wait runs from the drain's end.
      if (!exit_wait_until_ || (tier_ && tier_->busy())) exit_wait_until_ = now + uint64_t(kExitForCommitMs) * 1000000ull;
      if (now < exit_wait_until_) {
        exit_timer_.expires_after(std::chrono::milliseconds(5));
        exit_timer_.async_wait([this](const boost::system::error_code& ec) {
          if (!ec && !finished_ && trainer_) on_tick_or_exit();
        });
        return;
      }
      spdlog::warn("the job's leader did not commit or give up this node's part in {} ms", kExitForCommitMs);
    }
    exit_wait_until_ = 0;
    if (block_) e.block = read_view(*block_);
    poll_tier();
    dispatch(e);
  }

  // The ranks' agreement and collective commit (docs/distributed.md), before the machine reads
  // the block: polled every 5 ms while something is outstanding, else every 20 ms while ranks
  // are attached (a rank's own signal is agreed on without waiting for the 200 ms tick); a
  // commit or a given-up checkpoint reaches the machine at once.
  bool poll_ranks() {
    if (!ranks_) return false;
    RankCoordinator::Report r = ranks_->poll();
    if (parts_tier() && ranks_->node().part > parts_queued_) {  // this node's parts: to shared storage
      parts_queued_ = ranks_->node().part;
      tier_->parts_durable(parts_queued_);
    }
    if (r.agreed) spdlog::info("ranks agreed to checkpoint step {}", *r.agreed);
    if (r.given_up) spdlog::warn("{}", *r.given_up);
    if (peers()) share_state();
    if (r.ranks || peers()) {
      rank_timer_.expires_after(std::chrono::milliseconds(r.urgent ? kRankPollMs : kRankIdlePollMs));
      rank_timer_.async_wait([this](const boost::system::error_code& ec) {
        if (ec || !ranks_) return;
        if (poll_ranks()) on_tick_or_exit();
      });
    }
    return r.committed.has_value() || r.given_up.has_value();
  }

  void wait_signal() {
    signals_.async_wait([this](const boost::system::error_code& ec, int signo) {
      if (ec) return;
      if (signo == SIGCHLD) {
        if (trainer_) on_tick_or_exit();  // a tick too when it has not exited: harmless
      } else {
        dispatch(signo == SIGHUP ? SupervisorEvent::hangup : SupervisorEvent::checkpoint_signal);
      }
      if (!finished_) wait_signal();
    });
  }

  void wait_relay() {
    relay_.async_wait([this](int signo) {
      EventData e;
      e.kind = SupervisorEvent::stop_signal;
      e.signo = signo;
      e.relayed = relay_.disarm();  // what the handler posted, and what came at the same instant
      dispatch(e);
      if (!finished_) wait_relay();
    });
  }

  // Runs a Slurm question on a thread of its own (scontrol may take seconds, retried); its
  // answer comes back to the loop as an event. Each thread has its own runner.
  template <class Question>
  void ask(Question question) {
    questions_.push_back(std::async(std::launch::async, [this, question] {
      ProcessCommandRunner runner;
      SlurmClient client(runner);
      EventData e = question(client);
      asio::post(io_, [this, e] {
        if (!finished_) dispatch(e);
      });
    }));
  }

  static BlockView read_view(const ControlBlock& b) {
    BlockView v;
    v.step = b.u64(kCurrentStepOff).load(std::memory_order_relaxed);
    v.request_seq = b.u64(kRequestSeqOff).load(std::memory_order_acquire);
    v.request_reason = Reason(b.u32(kRequestReasonOff).load());
    v.request_flags = b.u32(kRequestFlagsOff).load();
    v.trainer_signal = b.u32(kTrainerSignalOff).load();
    v.ack_seq = b.u64(kAckSeqOff).load(std::memory_order_acquire);
    v.commit_count = b.u64(kCommitCountOff).load(std::memory_order_acquire);
    v.last_commit_step = b.u64(kLastCommitStepOff).load();
    v.last_commit_ns = b.u64(kLastCommitNsOff).load();
    v.last_commit_bytes = b.u64(kLastCommitBytesOff).load();
    v.failed_saves = b.u64(kFailedSavesOff).load();
    v.client_state = ClientState(b.u32(kClientStateOff).load());
    return v;
  }

  // ---- several supervisors of one job (docs/distributed.md, "Several nodes") --------------------
  static PeerPlace safe_place(const RunOptions& o) {
    try {
      return peer_place(o);
    } catch (const std::exception&) {
      return PeerPlace{};  // preflight_error reports it
    }
  }
  bool peers() const { return peer_.peers > 1; }
  bool leader() const { return peers() && peer_.index == 0; }
  bool follower() const { return peers() && peer_.index > 0; }

  static double peer_timeout_s() {
    const char* v = std::getenv("LIFELINE_PEER_TIMEOUT");
    double t = v ? std::atof(v) : 0;
    return t > 0 ? t : 120;
  }
  double peer_silence_s() const {
    const char* v = std::getenv("LIFELINE_PEER_SILENCE");
    double t = v ? std::atof(v) : 0;
    return t > 0 ? t : 10;
  }

  PeerLink::Handlers peer_handlers() {
    PeerLink::Handlers h;
    h.on_message = [this](uint32_t peer, const json& m) {
      if (m.value("t", "") == "end") {  // kept aside: the leader waits for these off the loop
        std::lock_guard<std::mutex> l(ends_mu_);
        ends_[peer] = m;
        ends_cv_.notify_all();
        return;
      }
      asio::post(io_, [this, peer, m] {
        if (!finished_) on_peer_message(peer, m);
      });
    };
    h.on_lost = [this](uint32_t peer, const std::string& why) {
      {
        std::lock_guard<std::mutex> l(ends_mu_);
        lost_.insert(peer);
        ends_cv_.notify_all();
        if (ends_.count(peer)) return;  // it said goodbye first
      }
      std::string who = peer == 0 ? std::string("the job's leader (supervisor 0)") : "supervisor " + std::to_string(peer);
      // Every node stops, not only the one that noticed: the leader tells the others.
      if (leader() && link_) link_->broadcast(json{{"t", "lost"}, {"peer", peer}, {"why", why}});
      asio::post(io_, [this, who, why] {
        if (finished_) return;
        EventData e;
        e.kind = SupervisorEvent::peer_lost;
        e.peer_why = who + " is lost (" + why + ")";
        dispatch(e);
      });
    };
    return h;
  }

  // Follower: connects to the leader (through the rendezvous file it writes) and waits for its
  // welcome: the staging token and the checkpoint every node resumes from.
  bool join_leader() {
    json hello{{"t", "hello"}, {"index", peer_.index}, {"host", this_host()}, {"pid", getpid()}};
    try {
      spdlog::info("joining the job's leader through {}", rendezvous_path_);
      link_ = PeerLink::follow(peer_.index, peer_.peers, rendezvous_path_, hello, peer_timeout_s(), peer_silence_s(),
                               peer_handlers(), &welcome_);
    } catch (const std::exception& e) {
      spdlog::error("cannot join the job's leader: {}", e.what());
      return false;
    }
    spdlog::info("joined the job's leader");
    return true;
  }

  // Leader: waits for every follower, then welcomes each.
  bool gather_followers(const std::optional<CheckpointInfo>& resume, const std::string& kind) {
    std::vector<json> hellos;
    try {
      spdlog::info("waiting for {} other supervisor(s) of this job", peer_.peers - 1);
      link_ = PeerLink::lead(peer_.peers, rendezvous_path_, peer_timeout_s(), peer_silence_s(), peer_handlers(), &hellos);
    } catch (const std::exception& e) {
      spdlog::error("the job's other supervisors did not all come: {}", e.what());
      return false;
    }
    json welcome{{"t", "welcome"},
                 {"token", block_->u64(kStagingTokenOff).load()},
                 {"attempt", attempt_},
                 {"resume_path", resume ? json(resume->path) : json(nullptr)},
                 {"resume_step", resume ? json(resume->step) : json(nullptr)},
                 {"resume_kind", resume ? json(kind) : json(nullptr)}};
    for (uint32_t p = 1; p < peer_.peers; ++p) {
      if (p < hellos.size()) hello_of_[p] = hellos[p];
      link_->send(p, welcome);
    }
    spdlog::info("all {} supervisors of this job are here", peer_.peers);
    return true;
  }

  // This node's ranks, as the leader needs them: sent when they change (the leader decides at once).
  void share_state() {
    if (!ranks_ || !link_) return;
    NodeState s = ranks_->node();
    if (parts_tier()) {
      // With a node-local tier a part counts once it is on shared storage, where the leader commits.
      if (s.part > parts_drained_) s.part = parts_drained_;
      s.failed = std::max(s.failed, parts_failed_);
    }
    if (leader()) {
      job_->update(0, s);
      run_job();
      return;
    }
    if (sent_any_ && s == sent_state_) return;
    sent_state_ = s;
    sent_any_ = true;
    link_->send(0, json{{"t", "state"}, {"s", s.to_json()}});
  }

  void on_peer_message(uint32_t peer, const json& m) {
    try {
      std::string t = m.value("t", "");
      if (leader() && t == "ranks") {
        node_views_[peer] = m;
      } else if (leader() && t == "state") {
        job_->update(peer, NodeState::from_json(m.at("s")));
        run_job();
      } else if (follower() && t == "request") {
        EventData e;
        e.kind = SupervisorEvent::peer_request;
        e.peer_stop = m.value("stop", false);
        dispatch(e);
      } else if (follower() && t == "lost") {
        EventData e;
        e.kind = SupervisorEvent::peer_lost;
        e.peer_why = "supervisor " + std::to_string(m.at("peer").get<uint32_t>()) + " is lost (" +
                     m.value("why", std::string("?")) + ", said the job's leader)";
        dispatch(e);
      } else if (follower() && t == "agreed" && ranks_) {
        ranks_->agree(m.at("seq").get<uint64_t>(), m.at("step").get<uint64_t>(), m.at("stop").get<bool>());
        spdlog::info("the job's ranks agreed to checkpoint step {}", m.at("step").get<uint64_t>());
      } else if (follower() && t == "committed" && ranks_) {
        ranks_->committed(m.at("step").get<uint64_t>(), m.at("bytes").get<uint64_t>(), m.at("ns").get<uint64_t>());
        on_tick_or_exit();
      } else if (follower() && t == "abandoned" && ranks_) {
        ranks_->abandon(m.at("step").get<uint64_t>(), /*remove=*/false);
        if (parts_tier()) tier_->parts_abandoned(m.at("step").get<uint64_t>());
        spdlog::warn("the job's leader gave the checkpoint of step {} up", m.at("step").get<uint64_t>());
      }
    } catch (const std::exception& e) {
      spdlog::warn("a malformed message from supervisor {}: {}", peer, e.what());
    }
  }

  // Every second: a follower sends its ranks' steps to the leader, which writes every node's to
  // <dir>/ranks.json for `lifeline status` (docs/distributed.md).
  void share_ranks_soon() {
    ranks_timer_.expires_after(std::chrono::seconds(1));
    ranks_timer_.async_wait([this](const boost::system::error_code& ec) {
      if (ec || finished_ || !ranks_ || !link_) return;
      json mine{{"t", "ranks"}, {"host", this_host()}, {"ranks", ranks_->ranks_json()}};
      if (follower()) {
        link_->send(0, mine);
      } else {
        node_views_[0] = mine;
        write_ranks_file();
      }
      share_ranks_soon();
    });
  }

  void write_ranks_file() {
    json nodes = json::array();
    for (const auto& [peer, view] : node_views_)
      nodes.push_back({{"node", peer}, {"host", view.value("host", "")}, {"ranks", view.value("ranks", json::array())}});
    json j{{"supervisor_pid", getpid()}, {"updated", iso8601(wall_ns())}, {"updated_ns", wall_ns()}, {"nodes", nodes}};
    std::string error;
    if (!write_status_file(opt_.ckpt_dir, kRanksFileName, dump_json(j, 2), &error)) spdlog::debug("{}", error);
  }

  // Leader: acts on the job's decisions (docs/distributed.md, "Several nodes").
  void run_job() {
    if (deciding_ || !job_ || !ranks_ || !link_) return;
    deciding_ = true;
    JobCoordinator::Decision d = job_->decide();
    bool settled = false;
    for (uint32_t p : d.ask) {
      if (p != 0) {
        link_->send(p, json{{"t", "request"}, {"stop", d.ask_stop}});
        continue;
      }
      EventData e;
      e.kind = SupervisorEvent::peer_request;
      e.peer_stop = d.ask_stop;
      dispatch(e);
    }
    if (d.agreed) {
      spdlog::info("the job's ranks agreed to checkpoint step {}", *d.agreed);
      ranks_->agree(d.agreed_seq[0], *d.agreed, d.agreed_stop);
      for (uint32_t p = 1; p < peer_.peers; ++p)
        link_->send(p, json{{"t", "agreed"}, {"seq", d.agreed_seq[p]}, {"step", *d.agreed}, {"stop", d.agreed_stop}});
    }
    if (d.give_up) {
      spdlog::warn("checkpoint of step {} given up: a rank of supervisor {} failed its part", *d.give_up, d.give_up_peer);
      ranks_->abandon(*d.give_up, /*remove=*/true);
      if (parts_tier()) tier_->parts_abandoned(*d.give_up);
      link_->broadcast(json{{"t", "abandoned"}, {"step", *d.give_up}});
      job_->settled(*d.give_up);
    }
    if (d.commit) {
      try {
        CommitResult c = ranks_->commit_collective(*d.commit, d.world, d.slowest_part_ns);
        ranks_->committed(*d.commit, c.bytes, c.duration_ns);
        link_->broadcast(json{{"t", "committed"}, {"step", *d.commit}, {"bytes", c.bytes}, {"ns", c.duration_ns}});
      } catch (const std::exception& e) {
        spdlog::warn("checkpoint of step {} given up: {}", *d.commit, e.what());
        ranks_->abandon(*d.commit, /*remove=*/true);
        if (parts_tier()) tier_->parts_abandoned(*d.commit);
        link_->broadcast(json{{"t", "abandoned"}, {"step", *d.commit}});
      }
      job_->settled(*d.commit);
      settled = true;
    }
    deciding_ = false;
    if (settled) on_tick_or_exit();
  }

  // Leader, when its trainer exited: every node's view of the attempt for its attempt_end
  // (followers say goodbye when theirs ends; a lost one is marked so). Waits at most 10 s.
  void collect_node_views(int status) {
    json nodes = json::array();
    nodes.push_back(json{{"node", 0},
                         {"host", this_host()},
                         {"pid", getpid()},
                         {"ranks", ranks_ ? ranks_->node().attached : node_ranks_},
                         {"exit_code", status}});
    std::unique_lock<std::mutex> l(ends_mu_);
    ends_cv_.wait_for(l, std::chrono::seconds(10), [&] {
      for (uint32_t p = 1; p < peer_.peers; ++p)
        if (!ends_.count(p) && !lost_.count(p)) return false;
      return true;
    });
    for (uint32_t p = 1; p < peer_.peers; ++p) {
      json v{{"node", p}};
      if (auto h = hello_of_.find(p); h != hello_of_.end()) {
        v["host"] = h->second.value("host", "");
        v["pid"] = h->second.value("pid", 0);
      }
      if (auto it = ends_.find(p); it != ends_.end()) {
        for (const char* k : {"ranks", "exit_code", "end_reason", "last_step"})
          if (it->second.contains(k)) v[k] = it->second[k];
      } else {
        v["end_reason"] = lost_.count(p) ? "peer_lost" : "unknown";
      }
      nodes.push_back(v);
    }
    log_.set_nodes(nodes);
  }

  // Goodbye to the other supervisors, so that closing the channel is not taken for a loss.
  void say_end(int status) {
    if (!link_) return;
    json m{{"t", "end"}, {"exit_code", status}, {"ranks", ranks_ ? ranks_->node().attached : node_ranks_}};
    if (const auto& end = log_.last_end()) {
      m["end_reason"] = std::string(name(end->reason));
      m["last_step"] = end->last_step;
    }
    if (leader()) {
      link_->broadcast(m);
      ::unlink(rendezvous_path_.c_str());
      ::unlink((opt_.ckpt_dir + "/" + kRanksFileName).c_str());
    } else {
      link_->send(0, m);
    }
  }

  bool is_stop_signal(int signo) const {
    const auto& v = opt_.policy.stop.signals;
    return signo == SIGTERM || std::find(v.begin(), v.end(), signo) != v.end();
  }

  std::optional<uint64_t> resumed_step() const { return machine_ ? machine_->resumed_step() : std::nullopt; }

  // Ends the relay's fast path, then unmaps the control block.
  void drop_block() {
    relay_.disarm();
    rank_timer_.cancel();
    if (ranks_) node_ranks_ = ranks_->node().attached;
    ranks_.reset();
    block_.reset();
  }

  void report_retention(const RetentionReport& r) {
    // keep_best ranks by a metric: say once when no valid checkpoint carries it (it keeps none).
    const auto& rules = opt_.policy.retention;
    if (rules.keep_best > 0 && !warned_metric_) {
      bool any_valid = false, carried = false;
      for (const auto& d : r.decisions) {
        any_valid = any_valid || d.checkpoint.valid;
        carried = carried || (d.checkpoint.valid && d.checkpoint.metrics.count(rules.metric));
      }
      if (any_valid && !carried) {
        warned_metric_ = true;
        spdlog::warn("retention.keep_best ranks checkpoints by {}, which no checkpoint carries: pass it with the "
                     "commit (commit({{\"{}\": value}}) / the metrics of lifeline_torch.checkpoint), or set "
                     "retention.metric to one the trainer reports",
                     rules.metric, rules.metric);
      }
    }
    std::vector<uint64_t> removed;
    for (const auto& d : r.decisions) {
      if (d.keep) continue;
      std::string why;
      for (const auto& w : d.reasons) why += (why.empty() ? "" : "; ") + w;
      spdlog::info("retention: removed step {} ({})", d.checkpoint.step, why);
      removed.push_back(d.checkpoint.step);
    }
    for (const auto& e : r.errors) spdlog::warn("retention: {}", e);
    if (!removed.empty()) log_.retention(removed, r.bytes_freed);
  }

  // No process of an earlier attempt (ours, or a supervisor's that was killed) may still commit
  // when an attempt starts: the writers' lock, which every client holds while it lives, proves
  // it. Such processes get kWritersPatience to leave (a killed supervisor's trainer goes at once:
  // PR_SET_PDEATHSIG, the client's watchdog), then SIGKILL; one that cannot be seen or stopped
  // from here (another host) makes the start fail. Then the leftovers go at once: staging
  // folders of dead writers, the control block a killed supervisor left in /dev/shm.
  bool settle_earlier_attempts() {
    for (const std::string& dir : {opt_.ckpt_dir, opt_.local_dir})
      if (!dir.empty() && !settle_dir(dir)) return false;
    remove_leaked_block();
    return true;
  }

  bool settle_dir(const std::string& dir) {
    try {
      std::vector<LockHolder> holders;
      uint64_t give_up = mono_ns() + uint64_t(kWritersPatienceMs) * 1000000ull;
      bool warned = false, killed = false;
      while (!no_writers(dir, &holders)) {
        if (!warned)
          spdlog::warn("waiting for {} of an earlier attempt to exit: it may still commit into {}",
                       holders.empty() ? std::string("a process on another host") : describe_holders(holders),
                       dir);
        warned = true;
        if (mono_ns() > give_up) {
          if (killed || holders.empty()) {
            spdlog::error("{} still holds {}/{}: a process of an earlier attempt could still commit a "
                          "checkpoint; stop it and start again",
                          holders.empty() ? std::string("a process on another host") : describe_holders(holders),
                          dir, kWritersLockName);
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
    for (const auto& r : remove_all_leftovers(default_file_system(), dir, &errors))
      spdlog::info("removed {} ({})", r.name, r.why);
    for (const auto& e : errors) spdlog::warn("could not remove a leftover: {}", e);
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
    std::optional<uint64_t> last_step, last_checkpoint_step;
    try {
      ControlBlock old = ControlBlock::attach(name);
      last_step = old.u64(kCurrentStepOff).load();
      if (old.u64(kCommitCountOff).load() > 0) last_checkpoint_step = old.u64(kLastCommitStepOff).load();
    } catch (const std::exception&) {
      return;  // already gone (or not a block of ours): nothing to clean
    }
    if (::shm_unlink(name.c_str()) == 0) {
      spdlog::info("removed the control block {} that supervisor pid {} left behind", name, rec->pid);
      log_.attempt_lost(rec->attempt, name, rec->pid, last_step, last_checkpoint_step);
    }
  }

  // <dir>/supervisor.json: who supervises this directory and where its control block is, for
  // `lifeline status` and `lifeline request` from another shell. Replaced atomically.
  void write_supervisor_record() {
    const Policy& p = opt_.policy;
    json j{{"pid", getpid()},
           {"host", this_host()},
           {"job_id", job_id_ ? json(*job_id_) : json(nullptr)},
           {"control", block_ ? json(block_->name()) : json(nullptr)},
           {"attempt", attempt_},
           {"lineage", lineage_},
           {"started", iso8601(attempt_started_ns_)},
           {"requeue_mode", std::string(name(mode_))},
           {"grace_seconds", opt_.grace_seconds},
           {"policy",
            {{"source", p.source},
             {"every_steps", p.checkpoint.every_steps},
             {"every_seconds", p.checkpoint.every_seconds},
             {"keep_last", p.retention.keep_last},
             {"keep_best", p.retention.keep_best},
             {"metric", p.retention.metric},
             {"metric_mode", to_string(p.retention.mode)},
             {"keep_every_steps", p.retention.keep_every_steps},
             {"max_total_bytes", p.retention.max_total_bytes},
             {"max_requeues", p.restart.max_requeues},
             {"max_failures", p.restart.max_failures},
             {"hang_seconds", p.stop.hang_seconds},
             {"storage_local", opt_.local_dir},
             {"storage_drain", p.storage.drain ? "async" : "off"}}}};
    // Temp file, fsync, rename: a full disk keeps the previous record whole.
    std::string error;
    if (!write_supervisor_record_file(opt_.ckpt_dir, j, &error)) spdlog::warn("{}", error);
  }

  // ISO 8601 with the local zone's offset ("2026-12-06T20:57:53.016+00:00"), as everywhere.
  static inline const std::string kLogTime = "%Y-%m-%dT%H:%M:%S.%e%z";

  void set_log_pattern() {
    std::string who = "lifeline[" + (job_id_ ? "job " + *job_id_ + " " : std::string()) + "attempt " +
                      std::to_string(attempt_) + "]";
    spdlog::set_pattern(kLogTime + " " + who + " %l: %v");
  }


  static constexpr int64_t kKillAfterMs = 5000;         // writers of an earlier attempt: after SIGKILL
  static constexpr int64_t kWritersPatienceMs = 10000;  // for an earlier attempt's writers to leave

  const RunOptions& opt_;
  PeerPlace peer_;
  HistoryLog history_;
  AttemptLog log_;
  asio::io_context io_;
  asio::signal_set signals_;
  SignalRelay relay_;
  std::array<asio::steady_timer, 7> timers_;  // by Timer
  ProcessCommandRunner runner_;
  SlurmClient slurm_client_;
  std::optional<SlurmJob> slurm_;
  std::optional<std::string> job_id_;
  RequeueMode mode_ = RequeueMode::local;
  std::string lineage_;
  uint64_t attempt_ = 0;
  uint64_t attempt_started_ns_ = 0;
  std::optional<DirLock> lock_;
  std::optional<DirLock> local_lock_;    // storage.local's
  std::unique_ptr<LocalTier> tier_;      // the node-local tier, when storage.local is set
  uint64_t stop_deadline_wall_ = 0;      // the stop's, for its drain
  uint64_t tier_local_bytes_ = 0;        // the newest local checkpoint's size
  uint64_t tier_status_ns_ = 0;          // tier.json last rewritten during a drain
  bool said_tier_ = false;
  uint64_t parts_queued_ = 0, parts_drained_ = 0, parts_failed_ = 0;  // parts_tier(): this node's newest
  bool forked_ = false;             // an attempt of this supervisor started from --init-from
  bool said_init_ignored_ = false;  // "--init-from is ignored" was said
  RunIdentity identity_;                 // this run, as run.json will say
  std::string identity_note_;            // a difference from the directory's run, for history
  bool identity_forced_ = false;
  std::optional<ControlBlock> block_;
  std::optional<RankCoordinator> ranks_;  // the block's ranks, if any attach
  asio::steady_timer rank_timer_{io_};
  static constexpr int64_t kRankPollMs = 5, kRankIdlePollMs = 20;
  std::future<RetentionReport> retention_;  // the retention run in flight
  bool retention_again_ = false;            // a commit came during that run
  bool warned_metric_ = false;              // the keep_best metric is missing: said once
  std::unique_ptr<TrainerProcess> trainer_;
  std::optional<SupervisorMachine> machine_;
  bool finished_ = false;
  int exit_status_ = 0;
  std::vector<std::future<void>> questions_;  // Slurm questions in flight (after io_: they post to it)
  // Several supervisors (peers() true).
  std::string job_tag_, rendezvous_path_;
  std::unique_ptr<PeerLink> link_;             // after io_: its callbacks post to it
  std::optional<JobCoordinator> job_;          // the leader's
  json welcome_;                               // the follower's, from the leader
  std::map<uint32_t, json> hello_of_;          // the leader's: each follower's hello
  NodeState sent_state_;
  bool sent_any_ = false, deciding_ = false;
  std::mutex ends_mu_;                         // guards ends_ and lost_ (the link's thread writes them)
  std::condition_variable ends_cv_;
  std::map<uint32_t, json> ends_;              // goodbyes received
  std::set<uint32_t> lost_;                    // peers lost
  asio::steady_timer exit_timer_{io_};         // the trainer's exit, waiting for the leader's commit
  asio::steady_timer ranks_timer_{io_};        // every node's ranks, once a second
  std::map<uint32_t, json> node_views_;        // the leader's: each node's ranks as last sent
  uint64_t exit_wait_until_ = 0;
  uint32_t node_ranks_ = 0;                    // this node's ranks in the attempt just ended
  static constexpr int64_t kExitForCommitMs = 10000;
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
