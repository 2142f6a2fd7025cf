#include "history/ledger.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "common/clock.h"
#include "common/format.h"
#include "history/names.h"

namespace lifeline {
using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;

namespace {

std::optional<uint64_t> opt_u64(const json& e, const char* key) {
  auto it = e.find(key);
  if (it == e.end()) return std::nullopt;
  if (it->is_number_unsigned()) return it->get<uint64_t>();
  if (it->is_number_integer() && it->get<int64_t>() >= 0) return uint64_t(it->get<int64_t>());
  return std::nullopt;
}

uint64_t event_time(const json& e) {
  if (auto t = opt_u64(e, "time_ns")) return *t;
  auto t = e.find("time");
  if (t != e.end() && t->is_string()) return parse_iso8601(t->get<std::string>());
  return 0;
}

std::optional<std::string> opt_str(const json& e, const char* key) {
  auto it = e.find(key);
  if (it == e.end() || !it->is_string()) return std::nullopt;
  return it->get<std::string>();
}

std::string str(const json& e, const char* key) { return opt_str(e, key).value_or(""); }

double seconds_between(uint64_t from_ns, uint64_t to_ns) {
  return to_ns > from_ns ? double(to_ns - from_ns) / 1e9 : 0.0;
}

bool is_completed(const Attempt& a) { return parse_end_reason(a.end_reason) == EndReason::completed; }

// An attempt that never recorded its end and is not running: its end is estimated from the
// last event, or further from a leftover control block's step count at the attempt's rate.
void mark_lost(Attempt& a) {
  a.running = false;
  a.end_reason = name(EndReason::lost);
  a.end_estimated = true;
  a.ended_ns = std::max(a.last_activity_ns, a.started_ns);
  a.lost_estimate_from = "last event";
  a.lost_seconds = seconds_between(a.last_safe_ns(), *a.ended_ns);
  if (!a.block_step) return;
  uint64_t step = *a.block_step;
  uint64_t recorded = a.last_checkpoint_step.value_or(a.resumed_from_step.value_or(0));
  // Commits the supervisor died before recording: the work up to them is kept.
  uint64_t kept = recorded;
  if (a.block_commit_step && *a.block_commit_step > kept) {
    kept = *a.block_commit_step;
    a.last_checkpoint_step = kept;
  }
  if (!a.last_step || *a.last_step < step) a.last_step = step;
  auto rate = step_rate(a);
  if (!rate || step <= recorded) return;
  uint64_t end = a.last_safe_ns() + uint64_t(double(step - recorded) / *rate * 1e9);
  if (end <= *a.ended_ns) return;
  a.ended_ns = end;
  a.lost_seconds = step > kept ? double(step - kept) / *rate : 0.0;
  a.lost_estimate_from = "control block step";
}

}  // namespace

std::string requeue_text(const Attempt& a) {
  auto result = parse_requeue_result(a.requeue_result);
  if (result == RequeueResult::failed) {
    std::string mode = !a.requeue_tried.empty() ? a.requeue_tried : a.requeue_mode;
    return (mode.empty() || mode == name(RequeueMode::none) ? std::string("requeue") : mode) + " failed";
  }
  if (result == RequeueResult::budget_exhausted) return std::string(name(RequeueMode::none)) + " (budget exhausted)";
  return a.requeue;
}

std::optional<double> step_rate(const Attempt& a) {
  if (a.commits.empty()) return std::nullopt;
  const CommitRecord& last = a.commits.back();
  uint64_t base = a.resumed_from_step.value_or(0);
  double secs = seconds_between(a.started_ns, last.time_ns);
  if (last.step <= base || secs <= 0) return std::nullopt;
  return double(last.step - base) / secs;
}

double Attempt::checkpoint_seconds() const {
  double s = 0;
  for (const auto& c : commits) s += c.duration_s;
  return s;
}

uint64_t Attempt::last_safe_ns() const {
  return commits.empty() ? started_ns : std::max(commits.back().time_ns, started_ns);
}

Ledger fold_history(const std::vector<json>& events, const Liveness& live, uint64_t now_ns) {
  Ledger ledger;
  std::vector<Attempt>& attempts = ledger.attempts;
  std::map<uint64_t, size_t> by_number;  // attempt number -> newest record with it

  auto record_for = [&](const json& e, uint64_t t) -> Attempt& {
    auto n = opt_u64(e, "attempt");
    if (!n && !attempts.empty()) return attempts.back();
    auto it = n ? by_number.find(*n) : by_number.end();
    if (it != by_number.end()) return attempts[it->second];
    // An event of an attempt whose start line is missing (torn, or an older log).
    Attempt a;
    a.attempt = n.value_or(0);
    a.started_ns = t;
    attempts.push_back(a);
    by_number[a.attempt] = attempts.size() - 1;
    return attempts.back();
  };

  for (const json& e : events) {
    std::string ev = str(e, "event");
    if (ev.empty()) continue;
    uint64_t t = event_time(e);
    if (ev == "attempt_start") {
      Attempt a;
      a.attempt = opt_u64(e, "attempt").value_or(attempts.empty() ? 0 : attempts.back().attempt + 1);
      a.lineage = str(e, "lineage");
      a.job_id = opt_str(e, "job_id");
      a.host = str(e, "host");
      if (auto it = e.find("pid"); it != e.end() && it->is_number_integer()) a.pid = it->get<int64_t>();
      a.started_ns = t;
      a.resumed_from_step = opt_u64(e, "resumed_from_step");
      a.resume_kind = str(e, "resume_kind");
      if (auto p = e.find("parent"); p != e.end()) a.parent = parent_from_json(*p);
      a.init_from_ignored = str(e, "init_from_ignored");
      if (auto sk = e.find("skipped"); sk != e.end() && sk->is_array())
        for (const auto& s : *sk)
          if (s.is_object()) a.skipped.push_back({opt_u64(s, "step").value_or(0), str(s, "problem")});
      a.requeue_mode = str(e, "requeue_mode");
      a.last_activity_ns = t;
      attempts.push_back(std::move(a));
      by_number[attempts.back().attempt] = attempts.size() - 1;
      continue;
    }
    Attempt& a = record_for(e, t);
    if (ev == "attempt_lost") {
      // Written later, by the next supervisor: its time says nothing about this attempt.
      a.block_step = opt_u64(e, "last_step");
      a.block_commit_step = opt_u64(e, "last_checkpoint_step");
      continue;
    }
    a.last_activity_ns = std::max(a.last_activity_ns, t);
    if (ev == "checkpoint_commit") {
      CommitRecord c;
      c.time_ns = t;
      c.step = opt_u64(e, "step").value_or(0);
      if (auto d = e.find("duration_s"); d != e.end() && d->is_number()) {
        c.duration_s = d->get<double>();
        c.duration_known = true;
      }
      c.bytes = opt_u64(e, "bytes").value_or(0);
      a.commits.push_back(c);
      a.last_checkpoint_step = c.step;
    } else if (ev == "checkpoint_request") {
      a.requests.push_back({t, str(e, "reason"), opt_u64(e, "seq").value_or(0)});
    } else if (ev == "signal") {
      a.signals.push_back({t, str(e, "signal"), "supervisor"});
    } else if (ev == "trainer_signal") {
      a.signals.push_back({t, str(e, "signal"), "trainer"});
    } else if (ev == "checkpoint_failed") {
      a.failed_checkpoints += opt_u64(e, "count").value_or(1);  // older histories: one per event
    } else if (ev == "drain") {
      std::string result = str(e, "result");
      if (result == "drained") {
        ++a.drains;
        a.drained_bytes += opt_u64(e, "bytes").value_or(0);
        if (auto d = e.find("duration_s"); d != e.end() && d->is_number()) a.drain_seconds += d->get<double>();
      } else if (result == "failed") {
        ++a.drains_failed;
      }
    } else if (ev == "checkpoint_lost") {
      ++a.checkpoints_lost;
    } else if (ev == "checkpoint_timeout") {
      ++a.checkpoint_timeouts;
    } else if (ev == "progress") {
      if (auto s = opt_u64(e, "step")) a.last_step = s;
    } else if (ev == "hang") {
      a.hang = true;
      if (auto s = opt_u64(e, "step")) a.last_step = s;
    } else if (ev == "attempt_end") {
      a.ended_ns = t;
      a.end_reason = str(e, "end_reason");
      if (a.end_reason.empty()) a.end_reason = name(EndReason::failed);
      if (auto it = e.find("exit_code"); it != e.end() && it->is_number_integer()) a.exit_code = it->get<int>();
      if (auto s = opt_u64(e, "last_checkpoint_step")) a.last_checkpoint_step = s;
      if (auto s = opt_u64(e, "last_step")) a.last_step = s;
      if (auto n = opt_u64(e, "checkpoints")) a.checkpoints = *n;
      if (auto sc = e.find("stop_checkpoint"); sc != e.end() && sc->is_object()) {
        a.stop_checkpoint = str(*sc, "state");
        a.stop_checkpoint_why = str(*sc, "why");
        a.stop_resume_step = opt_u64(*sc, "resume_step");
        a.stop_lost_steps = opt_u64(*sc, "lost_steps");
      }
    } else if (ev == "requeue") {
      // Only a requeue that happened counts; "not requeued", "failed", "budget exhausted" do not.
      std::string result = str(e, "result");
      auto known = parse_requeue_result(result);
      bool done = known && requeue_happened(*known);
      std::string mode = str(e, "mode");
      a.requeue = done && !mode.empty() ? mode : std::string(name(RequeueMode::none));
      a.requeue_result = result;
      a.requeue_tried = mode;
      a.requeue_detail = opt_str(e, "new_job_id") ? "new job " + str(e, "new_job_id") : str(e, "detail");
    }
  }

  // Ends: recorded, running, or lost.
  for (size_t i = 0; i < attempts.size(); ++i) {
    Attempt& a = attempts[i];
    a.checkpoints = std::max<uint64_t>(a.checkpoints, a.commits.size());
    if (a.ended_ns) {
      a.lost_seconds = is_completed(a) ? 0.0 : seconds_between(a.last_safe_ns(), *a.ended_ns);
      continue;
    }
    bool newest = i + 1 == attempts.size();
    // supervisor.json is rewritten just after attempt_start: it may still name the previous attempt.
    bool named = !live.attempt || *live.attempt == a.attempt;
    bool alive = live.state == Liveness::State::alive || live.state == Liveness::State::elsewhere;
    if (newest && alive && (named || *live.attempt < a.attempt)) {
      a.running = true;
      a.at_risk_seconds = seconds_between(a.last_safe_ns(), now_ns);
    } else {
      if (newest && named && live.state == Liveness::State::dead && live.stale_block_step) {
        a.block_step = live.stale_block_step;
        a.block_commit_step = live.stale_block_commit_step;
      }
      mark_lost(a);
      // It cannot have lasted past the start of the next attempt.
      if (!newest && *a.ended_ns > attempts[i + 1].started_ns && attempts[i + 1].started_ns >= a.last_safe_ns()) {
        a.ended_ns = attempts[i + 1].started_ns;
        a.lost_seconds = std::min(a.lost_seconds, seconds_between(a.last_safe_ns(), *a.ended_ns));
      }
    }
  }

  Summary& s = ledger.summary;
  s.attempts = attempts.size();
  for (const Attempt& a : attempts) {
    uint64_t end = a.end_or(now_ns);
    if (s.first_start_ns == 0 || a.started_ns < s.first_start_ns) s.first_start_ns = a.started_ns;
    s.last_end_ns = std::max(s.last_end_ns, end);
    s.wall_seconds += seconds_between(a.started_ns, end);
    s.checkpoint_seconds += a.checkpoint_seconds();
    s.lost_seconds += a.lost_seconds;
    s.checkpoints += a.checkpoints;
    s.drains += a.drains;
    s.drains_failed += a.drains_failed;
    s.drained_bytes += a.drained_bytes;
    s.drain_seconds += a.drain_seconds;
    s.checkpoints_lost += a.checkpoints_lost;
    if (a.last_checkpoint_step && (!s.last_checkpoint_step || *a.last_checkpoint_step > *s.last_checkpoint_step))
      s.last_checkpoint_step = a.last_checkpoint_step;
    if (!a.running && !is_completed(a)) ++s.interruptions[a.end_reason];
  }
  s.span_seconds = seconds_between(s.first_start_ns, s.last_end_ns);
  s.useful_seconds = std::max(0.0, s.wall_seconds - s.checkpoint_seconds - s.lost_seconds);
  if (s.wall_seconds > 0) s.goodput_percent = 100.0 * s.useful_seconds / s.wall_seconds;
  if (!attempts.empty()) s.state = attempts.back().running ? "running" : attempts.back().end_reason;
  return ledger;
}

ordered_json attempt_json(const Attempt& a) {
  auto opt = [](const auto& o) { return o ? ordered_json(*o) : ordered_json(nullptr); };
  ordered_json signals = ordered_json::array();
  for (const auto& sig : a.signals)
    signals.push_back({{"signal", sig.name}, {"to", sig.target}, {"time", iso8601(sig.time_ns)}});
  ordered_json skipped = ordered_json::array();
  for (const auto& sk : a.skipped) skipped.push_back({{"step", sk.step}, {"problem", sk.problem}});
  ordered_json requests = ordered_json::object();
  for (const auto& r : a.requests) {
    std::string key = r.reason.empty() ? "unknown" : r.reason;
    requests[key] = requests.value(key, 0) + 1;
  }
  uint64_t bytes = 0;
  for (const auto& c : a.commits) bytes += c.bytes;
  ordered_json j{
      {"attempt", a.attempt},
      {"job_id", opt(a.job_id)},
      {"host", a.host},
      {"started", iso8601(a.started_ns)},
      {"ended", a.ended_ns ? ordered_json(iso8601(*a.ended_ns)) : ordered_json(nullptr)},
      {"resumed_from_step", opt(a.resumed_from_step)},
      {"end_reason", a.running ? ordered_json(nullptr) : ordered_json(a.end_reason)},
      {"exit_code", opt(a.exit_code)},
      {"checkpoints", a.checkpoints},
      {"last_checkpoint_step", opt(a.last_checkpoint_step)},
      {"requeue", a.requeue},
      {"lost_seconds", round3(a.lost_seconds)},
      // Beyond the contract: docs/history.md.
      {"running", a.running},
      {"lineage", a.lineage},
      {"pid", opt(a.pid)},
      {"duration_seconds", a.ended_ns ? ordered_json(round3(seconds_between(a.started_ns, *a.ended_ns))) : ordered_json(nullptr)},
      {"ended_estimated", a.end_estimated},
      {"last_step", opt(a.last_step)},
      {"checkpoint_seconds", round3(a.checkpoint_seconds())},
      {"checkpoint_bytes", bytes},
      {"failed_checkpoints", a.failed_checkpoints},

      {"checkpoint_timeouts", a.checkpoint_timeouts},
      {"checkpoint_requests", requests},
      {"signals", signals},
      {"skipped_at_resume", skipped},
      {"stop_checkpoint", a.stop_checkpoint.empty()
                              ? ordered_json(nullptr)
                              : ordered_json{{"state", a.stop_checkpoint},
                                             {"why", a.stop_checkpoint_why.empty() ? ordered_json(nullptr)
                                                                                   : ordered_json(a.stop_checkpoint_why)},
                                             {"resume_step", opt(a.stop_resume_step)},
                                             {"lost_steps", opt(a.stop_lost_steps)}}},
      {"hang", a.hang},
      {"requeue_result", a.requeue_result.empty() ? ordered_json(nullptr) : ordered_json(a.requeue_result)},
      {"requeue_detail", a.requeue_detail.empty() ? ordered_json(nullptr) : ordered_json(a.requeue_detail)},
      {"last_activity", iso8601(a.last_activity_ns)},
      {"resume_kind", a.resume_kind.empty() ? ordered_json(nullptr) : ordered_json(a.resume_kind)},
      {"parent", a.parent ? ordered_json{{"dir", a.parent->dir},
                                         {"lineage", a.parent->lineage.empty() ? ordered_json(nullptr)
                                                                               : ordered_json(a.parent->lineage)},
                                         {"step", a.parent->step},
                                         {"checkpoint", a.parent->checkpoint}}
                          : ordered_json(nullptr)},
      {"init_from_ignored", a.init_from_ignored.empty() ? ordered_json(nullptr) : ordered_json(a.init_from_ignored)},
  };
  if (a.running) j["at_risk_seconds"] = round3(a.at_risk_seconds);
  if (a.drains + a.drains_failed + a.checkpoints_lost > 0)
    j["drains"] = {{"drained", a.drains}, {"failed", a.drains_failed}, {"bytes", a.drained_bytes},
                   {"seconds", round3(a.drain_seconds)}, {"checkpoints_lost", a.checkpoints_lost}};
  if (a.end_estimated) j["lost_estimate_from"] = a.lost_estimate_from;
  return j;
}

ordered_json summary_json(const Summary& s) {
  ordered_json j = {{"attempts", s.attempts},
          {"state", s.state.empty() ? ordered_json(nullptr) : ordered_json(s.state)},
          {"first_start", s.attempts ? ordered_json(iso8601(s.first_start_ns)) : ordered_json(nullptr)},
          {"last_end", s.attempts ? ordered_json(iso8601(s.last_end_ns)) : ordered_json(nullptr)},
          {"wall_seconds", round3(s.wall_seconds)},
          {"span_seconds", round3(s.span_seconds)},
          {"useful_seconds", round3(s.useful_seconds)},
          {"checkpoint_seconds", round3(s.checkpoint_seconds)},
          {"lost_seconds", round3(s.lost_seconds)},
          {"goodput_percent", s.goodput_percent ? ordered_json(std::round(*s.goodput_percent * 10) / 10) : ordered_json(nullptr)},
          {"checkpoints", s.checkpoints},
          {"last_checkpoint_step", s.last_checkpoint_step ? ordered_json(*s.last_checkpoint_step) : ordered_json(nullptr)},
          {"interruptions", s.interruptions}};
  if (s.drains + s.drains_failed + s.checkpoints_lost > 0)
    j["drains"] = {{"drained", s.drains}, {"failed", s.drains_failed}, {"bytes", s.drained_bytes},
                   {"seconds", round3(s.drain_seconds)}, {"checkpoints_lost", s.checkpoints_lost}};
  return j;
}

std::string interruptions_text(const Summary& s) {
  std::vector<std::string> causes;
  for (const auto& [reason, n] : s.interruptions) causes.push_back(std::to_string(n) + " " + reason);
  return fmt::format("{}", fmt::join(causes, ", "));
}

}  // namespace lifeline
