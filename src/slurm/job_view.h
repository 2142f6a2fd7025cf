#pragma once
// What the supervisor reads out of Slurm's answers (scontrol show job / show config, the
// jobscript's environment): why a stop came, what to resubmit, how long a stop checkpoint may
// take. Pure functions: no process runs, no clock reads, no logging; the caller passes `now`.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "slurm/slurm_client.h"

namespace lifeline {

// Why a stop signal came: the job was taken back (preempted), its time limit is near, or neither.
enum class StopCause { stopped, preempted, time_limit };
const char* stop_cause_name(StopCause c);  // "stopped" | "preempted" | "time_limit" (history strings)

// Slurm's TimeLimit "[D-]HH:MM:SS", "MM:SS", "MM" as ns (also "D-HH", "D-HH:MM", Slurm's other
// input shapes); nullopt for UNLIMITED, Partition_Limit, garbage.
std::optional<uint64_t> parse_time_limit(const std::string& text);
// KillWait seconds from the output of `scontrol show config` ("KillWait                = 30 sec");
// nullopt when absent/unparsable.
std::optional<double> parse_kill_wait(const std::string& show_config_output);

// The job as Slurm shows it while our step still runs, read when a stop signal came.
struct RunningView {
  StopCause cause = StopCause::stopped;
  std::optional<uint64_t> end_ns;  // EndTime, when known (a preemption's grace cut shows here);
                                   // not read when the state alone says preempted (PENDING: a new run's)
};
inline constexpr double kTimeLimitWindowSeconds = 300;  // a stop this close to EndTime is the time limit
RunningView view_while_running(const JobFields& job, uint64_t now_wall_ns);
// After the trainer exited: PENDING/COMPLETING/REQUEUE*/PREEMPT* -> preempted, TIMEOUT -> time_limit,
// CANCELLED -> stopped; nullopt when the state tells nothing new.
std::optional<StopCause> cause_after_exit(const JobFields& job);
// A failed `scontrol requeue` is fine when Slurm takes the job back itself (preemption in REQUEUE mode).
bool requeued_by_slurm(const JobFields* job /* nullptr: unknown */, StopCause cause);

// The jobscript's own arguments from LIFELINE_SCRIPT_ARGS (one per line, empty lines dropped).
std::vector<std::string> split_script_args(const std::string& value);
// What `sbatch` needs to resubmit this job: Command= minus the trailing " arg1 arg2" that 22.05 appends.
struct Resubmission {
  std::string script;
  std::vector<std::string> args;
  std::string workdir;
};
// nullopt when Slurm does not know the script (missing, empty or "(null)"). Without `args`, a
// Command= with a space is cut at its first space (22.05 cannot tell a space in the path from
// appended arguments). `workdir` is WorkDir=, or `submit_dir` when Slurm shows none.
std::optional<Resubmission> resubmission(const std::optional<JobFields>& job, std::vector<std::string> args,
                                         const std::string& submit_dir);
// Seconds the stop checkpoint may take: `grace`, cut to KillWait - 2 (at least 1) after a SIGTERM from
// Slurm, and to the time left before `job_end_ns` minus 2 s when that is more than 1 s.
double stop_budget_seconds(double grace, bool sigterm_from_slurm, std::optional<double> kill_wait_s,
                           std::optional<uint64_t> job_end_ns, uint64_t now_wall_ns);

}  // namespace lifeline
