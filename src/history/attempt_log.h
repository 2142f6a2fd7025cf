#pragma once
// AttemptLog writes one attempt's events to the history (history.jsonl): one typed method per
// event kind the supervisor records, so no caller builds an event's JSON by hand. Field names
// and values are the history's contract (docs/history.md); the ledger folds them back.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "history/history.h"
#include "history/names.h"
#include "history/run_identity.h"

namespace lifeline {

class AttemptLog {
 public:
  // `log` must outlive this AttemptLog. Every event carries `attempt`, except attempt_lost,
  // which names the lost attempt.
  AttemptLog(HistoryLog& log, uint64_t attempt);
  void set_attempt(uint64_t attempt);
  uint64_t attempt() const { return attempt_; }

  struct Start {
    std::string lineage;
    std::optional<std::string> job_id;  // null outside Slurm
    std::string host;
    int64_t pid = 0;  // the supervisor's
    std::optional<uint64_t> resumed_from_step;
    std::optional<std::string> resumed_from;  // the checkpoint's path
    nlohmann::json skipped = nlohmann::json::array();  // checkpoint objects newer than the resume (null: [])
    RequeueMode mode = RequeueMode::none;
    std::string resume_kind{};  // LIFELINE_RESUME_KIND: continue | warm | "" (left out)
    std::optional<RunParent> parent{};  // a warm start (--init-from): the other run's checkpoint (left out when none)
    std::optional<std::string> init_from_ignored{};  // --init-from's path when the run's own checkpoint won (left out when none)
  };
  void attempt_start(const Start& start);

  // A signal to the supervisor while in `state`; `together_mask`: bit s set = signal s came at
  // the same instant (written as "together": ["USR1", ...]); 0 leaves "together" out.
  void signal(int signo, std::string_view state, uint64_t together_mask = 0);
  // A stop signal the trainer received itself (the client posted it in the control block).
  void trainer_signal(int signo);
  // `deadline_wall_ns` (stop requests) is written as "deadline", ISO 8601; none leaves it out.
  void checkpoint_request(RequestReason reason, uint64_t seq, std::optional<uint64_t> deadline_wall_ns = std::nullopt);
  // `duration_s` none (a commit seen only in the directory) is written as null.
  void checkpoint_commit(uint64_t step, uint64_t bytes, std::optional<double> duration_s);
  // `count` saves failed since the last checkpoint_failed event.
  void checkpoint_failed(uint64_t count);
  void checkpoint_timeout(uint64_t seq);
  // The trainer reported no step for stop.hang_seconds; `client_state`, when known, is what
  // the client said it was doing.
  void hang(uint64_t step, std::optional<std::string_view> client_state = std::nullopt);
  void time_limit_near();
  // Slurm's view of the job at a stop: the fields left out when none.
  void slurm_view(const std::string& job_state, const std::string& reason, std::optional<std::string> end_time,
                  std::optional<std::string> time_limit, std::optional<std::string> cause);
  // One retention run that removed `removed_steps` (the supervisor writes none for a run that removed nothing).
  void retention(const std::vector<uint64_t>& removed_steps, uint64_t bytes_freed);

  // The node-local tier (docs/storage.md). One checkpoint's drain to shared storage: `result`
  // drained | skipped (superseded before it started) | failed (with `error`); bytes, duration and
  // rate when drained; `at_start`: drained before the trainer started (a local checkpoint newer
  // than every shared one); `stop`: the stop's own drain.
  struct Drain {
    uint64_t step = 0;
    std::string result;
    uint64_t bytes = 0;
    double duration_s = 0;
    std::optional<std::string> error;
    bool at_start = false, stop = false;
  };
  void drain(const Drain& d);
  // A stop whose checkpoint cannot be drained before its deadline (said when the stop begins):
  // the estimate at the measured drain speed, the time left, and the checkpoint a job that comes
  // back on another node resumes from.
  void drain_late(uint64_t step, double estimate_s, double budget_s, std::optional<uint64_t> resume_step);
  // A checkpoint committed on a node-local disk that no tier here holds (another node, a wiped
  // $TMPDIR): it never reached shared storage.
  void checkpoint_lost(uint64_t step, const std::string& host, const std::string& local_dir,
                       std::optional<uint64_t> resume_step);

  // This run is not the one whose checkpoints the directory holds (run.json): `why`; `forced`:
  // --resume-anyway accepted a difference that is otherwise refused.
  void run_changed(const std::string& why, bool forced);

  struct Requeue {
    RequeueMode mode = RequeueMode::none;
    RequeueResult result = RequeueResult::not_requeued;
    std::optional<std::string> detail;      // why it failed, or who requeued
    std::optional<std::string> new_job_id;  // sbatch: the resubmitted job
    std::optional<int> exit_code;           // exit: the code the site's RequeueExit takes
    std::optional<double> backoff_s;        // local restart: the wait before it
  };
  // Optional fields are left out when none.
  void requeue(const Requeue& requeue);

  struct End {
    EndReason reason = EndReason::failed;
    std::optional<int> exit_code;  // null when none
    uint64_t checkpoints = 0;      // committed during the attempt
    std::optional<uint64_t> last_checkpoint_step;  // null when none
    uint64_t last_step = 0;
    int signo = 0;  // the stop signal; 0: null
    nlohmann::json stop_checkpoint;  // {"state": "committed"|"missing", ...}; null: left out
  };
  void attempt_end(const End& end);
  // Several supervisors: every node's view of the attempt, written into the next attempt_end as
  // "nodes" (docs/history.md); null leaves it out.
  void set_nodes(nlohmann::json nodes) { nodes_ = std::move(nodes); }
  // The newest attempt_end written, if any.
  const std::optional<End>& last_end() const { return last_end_; }

  // A supervisor of attempt `attempt` that was killed left its control block `control`: what
  // its trainer last reported (none: left out). Written by the next supervisor.
  void attempt_lost(uint64_t attempt, const std::string& control, int64_t pid, std::optional<uint64_t> last_step,
                    std::optional<uint64_t> last_checkpoint_step);

 private:
  // {"event": event, "attempt": attempt_}.
  nlohmann::json event(const char* name) const;

  HistoryLog* log_;
  uint64_t attempt_;
  nlohmann::json nodes_;
  std::optional<End> last_end_;
};

}  // namespace lifeline
