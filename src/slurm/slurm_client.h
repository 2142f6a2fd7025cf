#pragma once
// SlurmClient asks Slurm about the job and acts on it (requeue, resubmit) through
// scontrol/sbatch as argv, each call with a timeout and bounded retries.
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "slurm/command_runner.h"

namespace lifeline {

// `scontrol show job -o` as key/value pairs (JobState, EndTime, TimeLimit, Command, ...).
using JobFields = std::map<std::string, std::string>;

// Parses one line of `scontrol show job -o`. Values may contain spaces (Command=...).
JobFields parse_job_fields(const std::string& line);
// Slurm's local-time stamps ("2026-11-21T23:55:00") as wall-clock ns; nullopt for "Unknown".
std::optional<uint64_t> parse_slurm_time(const std::string& text);

// What came of an action on the job.
struct SlurmOutcome {
  bool ok = false;
  std::string detail;  // the command and its answer, for logs and history
};

class SlurmClient {
 public:
  explicit SlurmClient(CommandRunner& runner, int tries = 3,
                       std::chrono::milliseconds timeout = std::chrono::seconds(20));

  std::optional<JobFields> show_job(const std::string& job_id);
  // The job's end as Slurm sees it now (reflects a preemption grace cut); nullopt if unknown.
  std::optional<uint64_t> end_time_ns(const std::string& job_id);
  // `scontrol requeue JOB`.
  SlurmOutcome requeue(const std::string& job_id);
  // `sbatch --parsable SCRIPT ARGS...` from `workdir` with extra environment; detail is the new job id.
  SlurmOutcome resubmit(const std::string& script, const std::vector<std::string>& args,
                        const std::string& workdir);

  // Explains why scontrol is unusable here, or "" when it is usable.
  static std::string scontrol_missing_hint();

 private:
  CommandResult run_with_retries(const std::vector<std::string>& argv);
  CommandRunner& runner_;
  int tries_;
  std::chrono::milliseconds timeout_;
};

}  // namespace lifeline
