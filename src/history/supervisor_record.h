#pragma once
// SupervisorRecord is what <ckpt dir>/supervisor.json says about the supervisor of a directory
// (pid, host, control block, policy); the probes here judge whether it still runs, from any
// shell, without writing anything.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "history/ledger.h"

namespace lifeline {

constexpr const char* kSupervisorRecordName = "supervisor.json";

// The fields of supervisor.json that readers use; `raw` keeps the whole object.
struct SupervisorRecord {
  int64_t pid = 0;
  std::string host;
  std::optional<std::string> job_id;
  std::optional<std::string> control;  // control block name
  uint64_t attempt = 0;
  std::string lineage;
  uint64_t started_ns = 0;  // start of `attempt`
  std::string requeue_mode;
  double grace_seconds = 0;
  nlohmann::json policy = nlohmann::json::object();
  nlohmann::json raw;
};

// None when the file is missing or is not a JSON object.
std::optional<SupervisorRecord> read_supervisor_record(const std::string& dir);

// gethostname(), as the supervisor records it.
std::string this_host();

// alive: the pid runs on this host and is a lifeline process; dead: it does not;
// elsewhere: the supervisor runs on another host, so this host cannot tell.
Liveness::State supervisor_state(const SupervisorRecord& record);

// Everything fold_history needs beyond the history: the supervisor's state and, when it died
// without unlinking its control block (SIGKILL), the trainer's last step from that block.
Liveness probe_liveness(const std::string& dir);

}  // namespace lifeline
