#pragma once
// The ledger folds history events (history.jsonl) into attempts and a run summary: what each
// attempt did, how it ended, what it cost. Pure: liveness and the clock come in as arguments,
// so every shape of history (torn, unfinished, running) is testable from hand-written lines.
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "history/run_identity.h"

namespace lifeline {

// One committed checkpoint as the supervisor recorded it.
struct CommitRecord {
  uint64_t time_ns = 0;  // when the supervisor saw the commit
  uint64_t step = 0;
  double duration_s = 0;  // save + commit, as the trainer measured it
  bool duration_known = false;  // the event had a duration (none for a commit seen only in the directory)
  uint64_t bytes = 0;
};

// A stop signal, to the supervisor (`signal` event) or to the trainer (`trainer_signal`).
struct SignalRecord {
  uint64_t time_ns = 0;
  std::string name;    // "USR1", "TERM", ...
  std::string target;  // "supervisor" | "trainer"
};

// A checkpoint request: periodic, stop_signal, time_limit, manual.
struct RequestRecord {
  uint64_t time_ns = 0;
  std::string reason;
  uint64_t seq = 0;
};

// A checkpoint the supervisor skipped at resume (newer than the one it resumed from).
struct SkippedRecord {
  uint64_t step = 0;
  std::string problem;
};

// One attempt: from its attempt_start to its attempt_end (or to what is known of it).
struct Attempt {
  uint64_t attempt = 0;
  std::string lineage;
  std::optional<std::string> job_id;
  std::string host;
  std::optional<int64_t> pid;  // the supervisor's
  uint64_t started_ns = 0;
  std::optional<uint64_t> ended_ns;  // none while running
  bool running = false;
  bool end_estimated = false;        // lost: ended_ns is the last known activity, not a record
  std::string lost_estimate_from;    // lost: "last event" | "control block step"
  std::optional<uint64_t> resumed_from_step;  // none for a warm start (parent): its steps are the trainer's choice
  std::string resume_kind;                   // continue | warm | "" (from scratch, or not recorded)
  std::optional<RunParent> parent;           // a warm start (--init-from): the other run's checkpoint
  std::string init_from_ignored;             // --init-from's path, when the run's own checkpoint won
  std::vector<SkippedRecord> skipped;
  std::string requeue_mode;  // the mode the supervisor ran with (attempt_start)
  std::string end_reason;    // completed | failed | preempted | time_limit | stopped | lost; "" while running
  std::optional<int> exit_code;
  uint64_t checkpoints = 0;  // committed during the attempt
  std::optional<uint64_t> last_checkpoint_step;
  std::optional<uint64_t> last_step;  // trainer's last reported step (attempt_end / hang)
  std::string requeue = "none";       // scontrol | sbatch | exit | local | none
  std::string requeue_result;         // the requeue event's result: requeued, not requeued, failed, ...
  std::string requeue_detail;         // its detail, or the new job id of a resubmission
  std::string requeue_tried;          // the requeue event's mode, also when the requeue failed
  std::vector<CommitRecord> commits;
  std::vector<SignalRecord> signals;
  std::vector<RequestRecord> requests;
  uint64_t failed_checkpoints = 0;
  // The node-local tier (docs/storage.md): drains to shared storage, and checkpoints lost with a local disk.
  uint64_t drains = 0, drains_failed = 0, drained_bytes = 0, checkpoints_lost = 0;
  double drain_seconds = 0;
  uint64_t checkpoint_timeouts = 0;
  bool hang = false;
  uint64_t last_activity_ns = 0;  // newest event of this attempt
  // From the control block a dead supervisor left behind (probed now, or recorded by the next
  // supervisor in an attempt_lost event): the trainer's last step and last commit.
  std::optional<uint64_t> block_step, block_commit_step;
  // What the attempt's stop left (attempt_end.stop_checkpoint): "committed", "missing" (with
  // why, the step the next attempt resumes from, the steps lost), or "" (no stop, or unrecorded).
  std::string stop_checkpoint;
  std::string stop_checkpoint_why;
  std::optional<uint64_t> stop_resume_step;
  std::optional<uint64_t> stop_lost_steps;
  double lost_seconds = 0;        // work since the last checkpoint the attempt threw away
  double at_risk_seconds = 0;     // running: work since the last checkpoint, not yet lost

  double checkpoint_seconds() const;
  // Time the work that survives ends: the last commit, else the start.
  uint64_t last_safe_ns() const;
  // ended_ns, or `now_ns` while running.
  uint64_t end_or(uint64_t now_ns) const { return ended_ns.value_or(now_ns); }
};

// Totals over all attempts.
struct Summary {
  uint64_t attempts = 0;
  uint64_t first_start_ns = 0;
  uint64_t last_end_ns = 0;       // or now while running
  double wall_seconds = 0;        // sum of attempt durations (time under supervision)
  double span_seconds = 0;        // first start to last end, queue waits between attempts included
  double checkpoint_seconds = 0;  // sum of checkpoint save durations
  double lost_seconds = 0;
  double useful_seconds = 0;      // wall - checkpoint - lost
  std::optional<double> goodput_percent;  // useful / wall; none without any wall time
  uint64_t checkpoints = 0;
  std::optional<uint64_t> last_checkpoint_step;
  std::map<std::string, uint64_t> interruptions;  // end_reason -> count (completed excluded)
  uint64_t drains = 0, drains_failed = 0, drained_bytes = 0, checkpoints_lost = 0;  // node-local tier
  double drain_seconds = 0;
  std::string state;  // running | completed | failed | preempted | ... (last attempt) | empty
};

// What is known about the supervisor of the newest attempt, beyond the history file.
struct Liveness {
  enum class State { none, alive, dead, elsewhere };  // elsewhere: another host, cannot tell
  State state = State::none;
  std::optional<uint64_t> attempt;  // the attempt supervisor.json names
  // A dead supervisor's control block that was never unlinked (SIGKILL): the trainer's last step,
  // and its last commit, which may be newer than the history knows.
  std::optional<uint64_t> stale_block_step;
  std::optional<uint64_t> stale_block_commit_step;
};

// Attempts and summary of one checkpoint directory's history.
struct Ledger {
  std::vector<Attempt> attempts;
  Summary summary;
};

// Folds events (read_history_events order) into attempts. `now_ns` ends running attempts.
Ledger fold_history(const std::vector<nlohmann::json>& events, const Liveness& live, uint64_t now_ns);

// The REQUEUE column of `history` and the timeline's words: the mode when the requeue happened
// ("scontrol"), "scontrol failed" when it was tried and failed, "none (budget exhausted)" when
// the requeue budget was spent, else "none".
std::string requeue_text(const Attempt& a);

// Steps per second between the attempt's start and its last commit, when that tells anything.
std::optional<double> step_rate(const Attempt& a);

// The contract's JSON object for an attempt (docs/contract.md), plus the extra fields docs/history.md lists.
// Ordered: the contract's fields first, as documented.
nlohmann::ordered_json attempt_json(const Attempt& a);
nlohmann::ordered_json summary_json(const Summary& s);

// "2 preempted, 1 time_limit": the summary's interruptions by cause, or "" when there were none.
std::string interruptions_text(const Summary& s);

}  // namespace lifeline
