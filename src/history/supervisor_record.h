#pragma once
// SupervisorRecord is what <ckpt dir>/supervisor.json says about the supervisor of a directory
// (pid, host, control block, policy); the probes here judge whether it still runs, from any
// shell, without writing anything.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "common/host.h"  // this_host(), which supervisor_state compares with
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

// None when the file is missing or unusable; then `error` (when given) says why it is
// unusable: a link, a FIFO or anything but a regular file (never followed, never waited on),
// over 1 MiB, or not a JSON object. Missing leaves `error` empty. `policy` keeps only the
// scalar members of the recorded policy.
std::optional<SupervisorRecord> read_supervisor_record(const std::string& dir, std::string* error = nullptr);

// Replaces `dir`/supervisor.json with `record` (dump_json, indented) atomically and durably:
// a temporary file `.supervisor.json.tmp-<pid>-<random>` created with O_CREAT|O_EXCL|O_NOFOLLOW,
// written in full, fsynced and closed, renamed over supervisor.json, then the directory
// fsynced. On any failure before the rename the temporary file is removed and the old
// supervisor.json is untouched; false with the reason in `error` (when given). A failed
// directory fsync after the rename also gives false: the new record is in place but may not
// survive a crash. Never throws.
bool write_supervisor_record_file(const std::string& dir, const nlohmann::json& record, std::string* error);
// The same for any small status file `dir`/`name_in_dir` (the temporary file is
// `.<name>.tmp-<pid>-<random>`); `durable` false skips the fsyncs (a file rewritten every second).
bool write_status_file(const std::string& dir, const std::string& name_in_dir, const std::string& text,
                       std::string* error, bool durable = false);

// Written by the leader of several supervisors every second: every node's ranks
// ({supervisor_pid, updated, updated_ns, nodes: [{node, host, ranks: [...]}]}), for `status`.
constexpr const char* kRanksFileName = "ranks.json";

// alive: the pid runs on this host and is a lifeline process; dead: it does not;
// elsewhere: the supervisor runs on another host, so this host cannot tell.
Liveness::State supervisor_state(const SupervisorRecord& record);

// Everything fold_history needs beyond the history: the supervisor's state and, when it died
// without unlinking its control block (SIGKILL), the trainer's last step from that block. An
// unusable supervisor.json counts as none, its reason in `error` (read_supervisor_record).
Liveness probe_liveness(const std::string& dir, std::string* error = nullptr);

}  // namespace lifeline
