#pragma once
// SlurmJob: what the environment of a Slurm batch job says about it.
#include <cstdint>
#include <optional>
#include <string>

namespace lifeline {

struct SlurmJob {
  std::string job_id;                       // SLURM_JOB_ID (for one task of an array it equals the array id!)
  std::optional<std::string> array_job_id;  // SLURM_ARRAY_JOB_ID
  std::optional<std::string> array_task_id; // SLURM_ARRAY_TASK_ID
  uint64_t restart_count = 0;               // SLURM_RESTART_COUNT, unset on the first run
  std::string submit_dir;                   // SLURM_SUBMIT_DIR
  bool batch = false;                       // inside a batch script (not an salloc shell)

  // nullopt outside Slurm (no SLURM_JOB_ID).
  static std::optional<SlurmJob> from_env();
  // "1234" or, for an array task, "1200_7": the id to give scontrol (the bare id of the
  // task whose SLURM_JOB_ID equals SLURM_ARRAY_JOB_ID would requeue the whole array).
  std::string display_id() const;
};

}  // namespace lifeline
