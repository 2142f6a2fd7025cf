#pragma once
// The supervisor's decisions as one table of states x events -> actions (docs/supervisor.md).
// Pure: no Asio, no processes, no clock reads. Every event carries the time it happened; every
// effect (a request to the trainer, a timer, a signal, history, a Slurm question, the exit) goes
// through the Effects interface, so each cell of the table is testable with a recording fake.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "history/attempt_log.h"
#include "history/names.h"
#include "lifeline/control_layout.h"
#include "policy/policy.h"
#include "slurm/job_view.h"
#include "slurm/slurm_client.h"
#include "supervisor/signal_relay.h"

namespace lifeline {

// Where one supervision stands. An attempt starts in `running`; `backoff` waits between attempts.
enum class SupervisorState { running, checkpointing, stopping, draining, backoff, done };
constexpr size_t kSupervisorStates = 6;

// What can happen to a supervision: signals, timers, what the trainer reported, Slurm's answers.
enum class SupervisorEvent {
  stop_signal,        // a stop signal (SIGTERM, the policy's stop.signals)
  checkpoint_signal,  // SIGUSR2 (not a stop signal): a checkpoint now
  hangup,             // SIGHUP
  tick,               // the control block was read (every 200 ms, 10 ms while a request is pending)
  acked,              // (from a tick) the trainer acked the pending request with a commit
  no_progress,        // (from a tick) no step for stop.hang_seconds (4 x that while the trainer saves)
  periodic_due,       // checkpoint.every_seconds elapsed
  job_end_known,      // Slurm answered the job's end time (asked when the attempt started)
  time_limit_due,     // the job's end minus the lead time
  stop_cause_known,   // Slurm answered why the stop signal came (asked when it came)
  stop_deadline,      // the stop checkpoint's deadline passed
  term_due,           // draining: the trainer had its time to exit by itself
  kill_due,           // draining: SIGTERM did not end it
  child_exit,         // the trainer's process group leader exited
  restart_due,        // backoff is over: the next attempt starts
  peer_request,       // the job's leader asks this node for a checkpoint (a request is pending on another node)
  peer_lost,          // another supervisor of the job stopped answering (several nodes)
};
constexpr size_t kSupervisorEvents = 17;

const char* state_name(SupervisorState s);
const char* event_name(SupervisorEvent e);

// The machine's timers: armed at absolute monotonic times, cancelled by name.
enum class Timer { tick, periodic, time_limit, stop_deadline, term, kill, restart };

// The control block as the adapter read it.
struct BlockView {
  uint64_t step = 0;
  uint64_t request_seq = 0;
  layout::Reason request_reason = layout::Reason::none;
  uint32_t request_flags = 0;
  uint32_t trainer_signal = 0;
  uint64_t ack_seq = 0;
  uint64_t commit_count = 0;
  uint64_t last_commit_step = 0;
  uint64_t last_commit_ns = 0;
  uint64_t last_commit_bytes = 0;
  uint64_t failed_saves = 0;
  layout::ClientState client_state = layout::ClientState::absent;
};

// One event with what came with it. `mono_ns`/`wall_ns`: when it happened (for a signal, when
// its callback ran: deadlines count from there, whatever the loop does next).
struct EventData {
  SupervisorEvent kind = SupervisorEvent::tick;
  uint64_t mono_ns = 0;
  uint64_t wall_ns = 0;
  int signo = 0;                     // stop_signal
  RelayedStop relayed;               // stop_signal: what the relay's handler already posted
  BlockView block;                   // tick, child_exit
  int status = 0;                    // child_exit: exit status (128 + signal when killed)
  uint64_t attempt = 0;              // job_end_known, stop_cause_known: the attempt that asked
  std::optional<JobFields> job;      // stop_cause_known: scontrol show job (nullopt: no answer)
  std::optional<uint64_t> end_ns;    // job_end_known
  bool peer_stop = false;            // peer_request: the job stops
  std::string peer_why;              // peer_lost: which peer, and how
};

// An attempt's start, as the effects did it.
struct StartOutcome {
  bool started = false;
  bool recorded = false;                   // attempt_start is in the history (an attempt_end must follow)
  int status = 0;                          // the run's exit status when not started
  std::optional<uint64_t> resumed_step;    // the checkpoint the trainer resumes from
};

// The answer to `scontrol requeue` or to a resubmission with sbatch.
struct RequeueAnswer {
  SlurmOutcome outcome;
  std::optional<JobFields> job;  // scontrol: the job as shown after a failed requeue
  std::optional<std::string> script;  // sbatch: the script resubmitted (nullopt: Slurm did not know it)
};

// A commit found in the directory (made between two reads of the block).
struct CommitSeen {
  uint64_t step = 0;
  uint64_t bytes = 0;
};

// Everything the machine does to the world.
class Effects {
 public:
  virtual ~Effects() = default;
  virtual AttemptLog& log() = 0;
  // Settles earlier attempts, picks the checkpoint to resume, creates the control block,
  // records attempt_start and starts the trainer.
  virtual StartOutcome start_attempt(uint64_t attempt) = 0;
  // The relay's fast path: its handler posts a stop request with now + budget.
  virtual void set_stop_budget(int signo, double seconds) = 0;
  virtual void arm_relay() = 0;
  virtual RelayedStop disarm_relay() = 0;
  virtual uint64_t post_request(layout::Reason reason, bool stop, uint64_t deadline_wall_ns) = 0;
  virtual void tighten_deadline(uint64_t deadline_wall_ns) = 0;
  virtual void signal_trainer(int signo) = 0;
  // The trainer exited: the relay ends, the control block is unmapped and unlinked.
  virtual void release_trainer() = 0;
  virtual void arm(Timer timer, uint64_t at_mono_ns) = 0;
  virtual void cancel(Timer timer) = 0;
  // Asynchronous Slurm questions: the answers come back as job_end_known and stop_cause_known.
  virtual void ask_job_end(uint64_t attempt) = 0;
  virtual void ask_stop_cause(uint64_t attempt) = 0;
  // Synchronous Slurm calls, only once the trainer is gone (nothing is left to watch).
  virtual std::optional<JobFields> show_job() = 0;
  virtual RequeueAnswer requeue() = 0;
  virtual RequeueAnswer resubmit() = 0;
  // Valid checkpoints in the directory with after < step < before (not older than `resumed`).
  virtual std::vector<CommitSeen> commits_between(std::optional<uint64_t> after, uint64_t before,
                                                  std::optional<uint64_t> resumed) = 0;
  virtual void start_retention() = 0;
  // The node-local tier (docs/storage.md); without one these do nothing. Every commit the block
  // reports, whatever the state (the stop checkpoint's too): its drain to shared storage starts.
  virtual void committed(uint64_t step, uint64_t bytes) {
    (void)step;
    (void)bytes;
  }
  // A stop began with this deadline: a drain that cannot fit is said at once.
  virtual void stop_begun(uint64_t deadline_wall_ns) { (void)deadline_wall_ns; }
  // The trainer is gone: waits for the drain of the newest checkpoint (a stop: until its
  // deadline). nullopt: no tier; else whether the newest checkpoint reached shared storage.
  virtual std::optional<bool> settle_drain(bool stop) {
    (void)stop;
    return std::nullopt;
  }
  // Added to the time-limit lead: a drain of the newest checkpoint at the measured speed.
  virtual double drain_lead_seconds() { return 0; }
  // Reports a finished retention run; `wait`: waits for the one in flight.
  virtual void settle_retention(bool wait) = 0;
  virtual void finish(int status) = 0;
};

// What the machine is configured with: the policy and what the environment says.
struct MachineConfig {
  Policy policy;
  double grace_seconds = 25;
  RequeueMode mode = RequeueMode::local;  // effective: never automatic
  bool in_slurm = false;
  std::optional<double> kill_wait_s;      // Slurm's KillWait
  // One of several supervisors of a job (docs/distributed.md): no restart in place (the other
  // nodes cannot restart with it); a follower never requeues (the leader does, once per job)
  // and leaves periodic checkpoints to the leader's timer.
  enum class Peer { none, leader, follower } peer = Peer::none;
};

// What earlier attempts left that the machine counts on.
struct MachineHistory {
  uint64_t attempts = 0;          // attempt number of the next attempt
  uint64_t failures_in_row = 0;
  uint64_t requeues = 0;
  std::vector<double> commit_seconds;
};

// The table and its state. Not thread-safe: one loop dispatches.
class SupervisorMachine {
 public:
  SupervisorMachine(MachineConfig config, MachineHistory history, Effects& effects);

  // Starts the first attempt (as restart_due does after a backoff).
  void begin(uint64_t mono_ns, uint64_t wall_ns);
  void dispatch(const EventData& event);

  SupervisorState state() const { return state_; }
  uint64_t attempt() const { return attempt_; }
  std::optional<uint64_t> resumed_step() const { return resumed_step_; }
  // The cell's action name, as docs/supervisor.md shows it ("-": ignored).
  static const char* cell_name(SupervisorState s, SupervisorEvent e);
  // The table as the markdown docs/supervisor.md embeds.
  static std::string table_markdown();

  static constexpr double kMinLeadS = 20;           // never stop later than this before the end
  static constexpr double kLeadSafety = 3;          // x p95 of the lineage's commit durations
  static constexpr double kRequeueAllowanceS = 10;  // trainer exit + scontrol requeue
  static constexpr uint64_t kExitPatienceMs = 10000;  // after the stop checkpoint, before SIGTERM
  static constexpr uint64_t kKillAfterMs = 5000;      // after SIGTERM, before SIGKILL
  static constexpr uint64_t kTickMs = 200, kUrgentTickMs = 10;
  static constexpr double kSaveHangFactor = 4;        // a save may take 4 x stop.hang_seconds

 private:
  using Action = void (SupervisorMachine::*)(const EventData&);
  struct Cell {
    Action action;
    const char* name;
  };
  static const std::array<std::array<Cell, kSupervisorStates>, kSupervisorEvents> kTable;

  // ---- actions (the cells) ----
  void ignore(const EventData&) {}
  void stop_with_checkpoint(const EventData& e);
  void coalesce_stop(const EventData& e);
  void stop_between_attempts(const EventData& e);
  void request_now(const EventData& e);
  void request_pending(const EventData& e);
  void ignore_hangup(const EventData& e);
  void observe(const EventData& e);
  void resume_running(const EventData& e);
  void drain_after_ack(const EventData& e);
  void stop_hung(const EventData& e);
  void request_periodic(const EventData& e);
  void skip_periodic(const EventData& e);
  void arm_time_limit(const EventData& e);
  void note_job_end(const EventData& e);
  void stop_for_time_limit(const EventData& e);
  void note_cause(const EventData& e);
  void stop_timed_out(const EventData& e);
  void send_term(const EventData& e);
  void send_kill(const EventData& e);
  void end_attempt(const EventData& e);
  void start_attempt(const EventData& e);
  void follow_peer(const EventData& e);
  void stop_peer_lost(const EventData& e);

  // ---- helpers ----
  void begin_stop(const EventData& e, int signo, EndReason reason, RelayedStop relayed);
  void begin_drain(const EventData& e, uint64_t patience_ms);
  void arm_tick(const EventData& e);
  void arm_periodic(const EventData& e);
  void update_budgets(const EventData& e);
  void read_block(const EventData& e);
  double stop_budget_seconds(int signo, uint64_t wall_ns) const;
  double time_limit_lead_seconds() const;
  void refine_cause(uint64_t wall_ns);
  void apply_cause(const std::optional<JobFields>& job, uint64_t wall_ns);
  void on_stopped();
  void on_failure(const EventData& e, int status);
  void record_end(EndReason reason, std::optional<int> status, nlohmann::json stop = nullptr);
  nlohmann::json stop_checkpoint_report(bool committed, int status);
  void finish(int status);

  MachineConfig cfg_;
  Effects& fx_;
  SupervisorState state_ = SupervisorState::backoff;
  // Over the supervision.
  uint64_t attempt_ = 0;
  uint64_t failures_in_row_ = 0;
  uint64_t requeues_ = 0;
  uint64_t restarts_ = 0;
  std::vector<double> commit_seconds_;
  std::optional<uint64_t> job_end_ns_;
  // Over one attempt.
  std::optional<uint64_t> resumed_step_;
  std::optional<uint64_t> last_commit_step_;
  uint64_t seen_commits_ = 0, seen_failed_saves_ = 0, seen_request_seq_ = 0, pending_seq_ = 0;
  uint64_t last_step_ = 0, last_progress_ns_ = 0;
  layout::ClientState last_client_state_ = layout::ClientState::absent;
  int stop_signal_ = 0;
  EndReason stop_reason_ = EndReason::stopped;
  bool cause_pending_ = false;   // Slurm was asked why the stop came and has not answered
  bool own_time_limit_ = false;  // our own timer decided the stop (no Slurm view refines it)
  bool hung_ = false;
  bool timed_out_ = false;  // the stop deadline passed without a commit
  bool sent_term_ = false;
  bool stepped_ = false;  // the trainer reported a step past the start (or a commit)
  // The exit status of the last failed attempt when it failed before its first step: the same
  // failure twice in a row will not change by retrying.
  std::optional<int> unprogressed_failure_;
};

}  // namespace lifeline
