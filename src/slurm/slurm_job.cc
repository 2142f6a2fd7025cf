#include "slurm/slurm_job.h"

#include <cstdlib>

namespace lifeline {

static std::optional<std::string> get(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return std::nullopt;
  return std::string(v);
}

std::optional<SlurmJob> SlurmJob::from_env() {
  auto id = get("SLURM_JOB_ID");
  if (!id) return std::nullopt;
  SlurmJob j;
  j.job_id = *id;
  j.array_job_id = get("SLURM_ARRAY_JOB_ID");
  j.array_task_id = get("SLURM_ARRAY_TASK_ID");
  if (auto rc = get("SLURM_RESTART_COUNT")) j.restart_count = std::strtoull(rc->c_str(), nullptr, 10);
  j.submit_dir = get("SLURM_SUBMIT_DIR").value_or("");
  // SLURM_STEP_ID is unset in the batch step of 22.05's environment of the batch script;
  // an salloc shell has SLURM_JOB_ID without a batch host script.
  j.batch = get("SLURM_JOB_NAME").has_value() && get("ENVIRONMENT").value_or("BATCH") == "BATCH";
  return j;
}

std::string SlurmJob::display_id() const {
  if (array_job_id && array_task_id) return *array_job_id + "_" + *array_task_id;
  return job_id;
}

}  // namespace lifeline
