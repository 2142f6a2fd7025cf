#include "history/attempt_log.h"

#include "common/clock.h"
#include "policy/policy.h"

namespace lifeline {
using json = nlohmann::json;

namespace {

template <typename T>
json or_null(const std::optional<T>& v) {
  return v ? json(*v) : json(nullptr);
}

std::string text(std::string_view s) { return std::string(s); }

}  // namespace

AttemptLog::AttemptLog(HistoryLog& log, uint64_t attempt) : log_(&log), attempt_(attempt) {}

void AttemptLog::set_attempt(uint64_t attempt) { attempt_ = attempt; }

json AttemptLog::event(const char* name) const { return {{"event", name}, {"attempt", attempt_}}; }

void AttemptLog::attempt_start(const Start& s) {
  json e = event("attempt_start");
  e["lineage"] = s.lineage;
  e["job_id"] = or_null(s.job_id);
  e["host"] = s.host;
  e["pid"] = s.pid;
  e["resumed_from_step"] = or_null(s.resumed_from_step);
  e["resumed_from"] = or_null(s.resumed_from);
  e["skipped"] = s.skipped.is_null() ? json::array() : s.skipped;
  e["requeue_mode"] = text(name(s.mode));
  if (!s.resume_kind.empty()) e["resume_kind"] = s.resume_kind;
  if (s.parent) e["parent"] = parent_json(s.parent);
  if (s.init_from_ignored) e["init_from_ignored"] = text(*s.init_from_ignored);
  log_->append(std::move(e));
}

void AttemptLog::signal(int signo, std::string_view state, uint64_t together_mask) {
  json e = event("signal");
  e["signal"] = signal_name(signo);
  e["state"] = text(state);
  if (together_mask) {
    json together = json::array();
    for (int s = 1; s < 64; ++s)
      if (together_mask & (1ull << s)) together.push_back(signal_name(s));
    e["together"] = std::move(together);
  }
  log_->append(std::move(e));
}

void AttemptLog::trainer_signal(int signo) {
  json e = event("trainer_signal");
  e["signal"] = signal_name(signo);
  log_->append(std::move(e));
}

void AttemptLog::checkpoint_request(RequestReason reason, uint64_t seq, std::optional<uint64_t> deadline_wall_ns) {
  json e = event("checkpoint_request");
  e["reason"] = text(name(reason));
  e["seq"] = seq;
  if (deadline_wall_ns) e["deadline"] = iso8601(*deadline_wall_ns);
  log_->append(std::move(e));
}

void AttemptLog::checkpoint_commit(uint64_t step, uint64_t bytes, std::optional<double> duration_s) {
  json e = event("checkpoint_commit");
  e["step"] = step;
  e["bytes"] = bytes;
  e["duration_s"] = or_null(duration_s);
  log_->append(std::move(e));
}

void AttemptLog::checkpoint_failed(uint64_t count) {
  json e = event("checkpoint_failed");
  e["count"] = count;
  log_->append(std::move(e));
}

void AttemptLog::checkpoint_timeout(uint64_t seq) {
  json e = event("checkpoint_timeout");
  e["seq"] = seq;
  log_->append(std::move(e));
}

void AttemptLog::hang(uint64_t step, std::optional<std::string_view> client_state) {
  json e = event("hang");
  e["step"] = step;
  if (client_state) e["client_state"] = text(*client_state);
  log_->append(std::move(e));
}

void AttemptLog::time_limit_near() { log_->append(event("time_limit_near")); }

void AttemptLog::slurm_view(const std::string& job_state, const std::string& reason, std::optional<std::string> end_time,
                            std::optional<std::string> time_limit, std::optional<std::string> cause) {
  json e = event("slurm_view");
  e["job_state"] = job_state;
  e["reason"] = reason;
  if (end_time) e["end_time"] = std::move(*end_time);
  if (time_limit) e["time_limit"] = std::move(*time_limit);
  if (cause) e["cause"] = std::move(*cause);
  log_->append(std::move(e));
}

void AttemptLog::retention(const std::vector<uint64_t>& removed_steps, uint64_t bytes_freed) {
  json e = event("retention");
  e["removed_steps"] = removed_steps;
  e["bytes_freed"] = bytes_freed;
  log_->append(std::move(e));
}

void AttemptLog::drain(const Drain& d) {
  json e = event("drain");
  e["step"] = d.step;
  e["result"] = text(d.result);
  if (d.result == "drained") {
    e["bytes"] = d.bytes;
    e["duration_s"] = d.duration_s;
    e["rate_bytes_per_s"] = d.duration_s > 0 ? json(double(d.bytes) / d.duration_s) : json(nullptr);
  }
  if (d.error) e["error"] = text(*d.error);
  if (d.at_start) e["at_start"] = true;
  if (d.stop) e["stop"] = true;
  log_->append(std::move(e));
}

void AttemptLog::drain_late(uint64_t step, double estimate_s, double budget_s, std::optional<uint64_t> resume_step) {
  json e = event("drain_late");
  e["step"] = step;
  e["estimate_s"] = estimate_s;
  e["budget_s"] = budget_s;
  e["resume_step"] = resume_step ? json(*resume_step) : json(nullptr);
  log_->append(std::move(e));
}

void AttemptLog::checkpoint_lost(uint64_t step, const std::string& host, const std::string& local_dir,
                                 std::optional<uint64_t> resume_step) {
  json e = event("checkpoint_lost");
  e["step"] = step;
  e["host"] = text(host);
  e["local_dir"] = text(local_dir);
  e["resume_step"] = resume_step ? json(*resume_step) : json(nullptr);
  log_->append(std::move(e));
}

void AttemptLog::run_changed(const std::string& why, bool forced) {
  json e = event("run_changed");
  e["why"] = text(why);
  e["forced"] = forced;
  log_->append(std::move(e));
}

void AttemptLog::requeue(const Requeue& r) {
  json e = event("requeue");
  e["mode"] = text(name(r.mode));
  e["result"] = text(name(r.result));
  if (r.detail) e["detail"] = *r.detail;
  if (r.new_job_id) e["new_job_id"] = *r.new_job_id;
  if (r.exit_code) e["exit_code"] = *r.exit_code;
  if (r.backoff_s) e["backoff_s"] = *r.backoff_s;
  log_->append(std::move(e));
}

void AttemptLog::attempt_end(const End& end) {
  json e = event("attempt_end");
  e["end_reason"] = text(name(end.reason));
  e["exit_code"] = or_null(end.exit_code);
  e["checkpoints"] = end.checkpoints;
  e["last_checkpoint_step"] = or_null(end.last_checkpoint_step);
  e["last_step"] = end.last_step;
  e["signal"] = end.signo ? json(signal_name(end.signo)) : json(nullptr);
  if (!end.stop_checkpoint.is_null()) e["stop_checkpoint"] = end.stop_checkpoint;
  if (!nodes_.is_null()) e["nodes"] = nodes_;
  last_end_ = end;
  log_->append(std::move(e));
}

void AttemptLog::attempt_lost(uint64_t attempt, const std::string& control, int64_t pid,
                              std::optional<uint64_t> last_step, std::optional<uint64_t> last_checkpoint_step) {
  json e{{"event", "attempt_lost"}, {"attempt", attempt}, {"control", control}, {"pid", pid}};
  if (last_step) e["last_step"] = *last_step;
  if (last_checkpoint_step) e["last_checkpoint_step"] = *last_checkpoint_step;
  log_->append(std::move(e));
}

}  // namespace lifeline
