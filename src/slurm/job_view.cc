#include "slurm/job_view.h"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <limits>
#include <sstream>

namespace lifeline {

namespace {

constexpr uint64_t kNsPerSecond = 1000000000ull;
// A preemption cuts EndTime short of StartTime + TimeLimit; less than this is rounding.
constexpr uint64_t kGraceCutSlackNs = 5 * kNsPerSecond;

std::string field(const JobFields& job, const char* key) {
  auto it = job.find(key);
  return it == job.end() ? std::string() : it->second;
}

// States in which Slurm has taken (or is taking) the job back while our step still runs.
bool taken_back(const std::string& state) {
  return state.find("PREEMPT") != std::string::npos || state == "PENDING" ||
         state.find("REQUEUE") != std::string::npos;
}

// A non-empty run of decimal digits (at most 9, so that sums of them cannot overflow).
std::optional<uint64_t> number(const std::string& s) {
  if (s.empty() || s.size() > 9) return std::nullopt;
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

std::optional<std::vector<uint64_t>> numbers(const std::string& text, char sep) {
  std::vector<uint64_t> out;
  size_t start = 0;
  while (true) {
    size_t end = text.find(sep, start);
    auto n = number(text.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (!n) return std::nullopt;
    out.push_back(*n);
    if (end == std::string::npos) return out;
    start = end + 1;
  }
}

}  // namespace

const char* stop_cause_name(StopCause c) {
  switch (c) {
    case StopCause::preempted:
      return "preempted";
    case StopCause::time_limit:
      return "time_limit";
    case StopCause::stopped:
      break;
  }
  return "stopped";
}

std::optional<uint64_t> parse_time_limit(const std::string& text) {
  if (text.empty() || text == "UNLIMITED" || text == "Partition_Limit") return std::nullopt;
  uint64_t days = 0;
  std::string rest = text;
  size_t dash = text.find('-');
  if (dash != std::string::npos) {
    auto d = number(text.substr(0, dash));
    if (!d) return std::nullopt;
    days = *d;
    rest = text.substr(dash + 1);
  }
  auto parts = numbers(rest, ':');
  if (!parts || parts->size() > 3) return std::nullopt;
  const auto& p = *parts;
  uint64_t secs = 0;
  if (dash != std::string::npos) {
    // "D-HH", "D-HH:MM", "D-HH:MM:SS"
    secs = p[0] * 3600 + (p.size() > 1 ? p[1] * 60 : 0) + (p.size() > 2 ? p[2] : 0);
  } else if (p.size() == 3) {
    secs = p[0] * 3600 + p[1] * 60 + p[2];  // "HH:MM:SS"
  } else if (p.size() == 2) {
    secs = p[0] * 60 + p[1];  // "MM:SS"
  } else {
    secs = p[0] * 60;  // "MM"
  }
  secs += days * 86400;
  if (secs > std::numeric_limits<uint64_t>::max() / kNsPerSecond) return std::nullopt;
  return secs * kNsPerSecond;
}

std::optional<double> parse_kill_wait(const std::string& show_config_output) {
  std::optional<double> found;
  std::istringstream in(show_config_output);
  std::string line;
  while (std::getline(in, line)) {
    size_t key = line.find_first_not_of(" \t");
    if (key == std::string::npos || line.compare(key, 8, "KillWait") != 0) continue;
    size_t after = key + 8;
    size_t eq = line.find_first_not_of(" \t", after);
    if (eq == std::string::npos || line[eq] != '=') continue;  // another key that starts with KillWait
    const char* value = line.c_str() + eq + 1;
    char* end = nullptr;
    double v = std::strtod(value, &end);
    if (end != value) found = v;  // "30 sec": the unit follows the number
  }
  return found;
}

RunningView view_while_running(const JobFields& job, uint64_t now_wall_ns) {
  RunningView v;
  // While we still run, a job Slurm shows as preempted, pending or requeued was taken back.
  if (taken_back(field(job, "JobState"))) {
    v.cause = StopCause::preempted;
    return v;
  }
  auto end = parse_slurm_time(field(job, "EndTime"));
  auto start = parse_slurm_time(field(job, "StartTime"));
  auto limit = parse_time_limit(field(job, "TimeLimit"));
  v.end_ns = end;
  if (end && start && limit && *end + kGraceCutSlackNs < *start + *limit) {
    v.cause = StopCause::preempted;  // EndTime cut short of the limit: a preemption's grace
  } else if (end && double(*end) - double(now_wall_ns) < kTimeLimitWindowSeconds * 1e9) {
    v.cause = StopCause::time_limit;
  }
  return v;
}

std::optional<StopCause> cause_after_exit(const JobFields& job) {
  std::string state = field(job, "JobState");
  // COMPLETING while our batch step still runs: Slurm itself is ending the job to take it
  // back (preemption in REQUEUE mode; `scancel` shows CANCELLED, the limit TIMEOUT).
  if (state == "COMPLETING" || taken_back(state)) return StopCause::preempted;
  if (state == "TIMEOUT") return StopCause::time_limit;
  if (state == "CANCELLED") return StopCause::stopped;
  return std::nullopt;
}

bool requeued_by_slurm(const JobFields* job, StopCause cause) {
  return cause == StopCause::preempted || (job && taken_back(field(*job, "JobState")));
}

std::vector<std::string> split_script_args(const std::string& value) {
  std::vector<std::string> args;
  size_t start = 0;
  while (start < value.size()) {
    size_t end = value.find('\n', start);
    if (end == std::string::npos) end = value.size();
    if (end > start) args.push_back(value.substr(start, end - start));
    start = end + 1;
  }
  return args;
}

std::optional<Resubmission> resubmission(const std::optional<JobFields>& job, std::vector<std::string> args,
                                         const std::string& submit_dir) {
  std::string script = job ? field(*job, "Command") : "";
  if (script.empty() || script == "(null)") return std::nullopt;
  // 22.05 shows Command as the script path and its arguments joined by spaces.
  std::string joined;
  for (const auto& a : args) joined += " " + a;
  if (!joined.empty() && script.size() > joined.size() &&
      script.compare(script.size() - joined.size(), joined.size(), joined) == 0)
    script.resize(script.size() - joined.size());
  else if (args.empty() && script.find(' ') != std::string::npos)
    script.resize(script.find(' '));
  std::string workdir = field(*job, "WorkDir");
  return Resubmission{script, std::move(args), workdir.empty() ? submit_dir : workdir};
}

double stop_budget_seconds(double grace, bool sigterm_from_slurm, std::optional<double> kill_wait_s,
                           std::optional<uint64_t> job_end_ns, uint64_t now_wall_ns) {
  double budget = grace;
  if (sigterm_from_slurm && kill_wait_s && *kill_wait_s > 0) {
    // After a SIGTERM from Slurm, SIGKILL follows KillWait seconds later.
    budget = std::min(budget, std::max(1.0, *kill_wait_s - 2.0));
  }
  if (job_end_ns) {
    double left = (double(*job_end_ns) - double(now_wall_ns)) / 1e9 - 2.0;
    if (left > 1) budget = std::min(budget, left);
  }
  return budget;
}

}  // namespace lifeline
