#include "history/supervisor_record.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>

#include "common/clock.h"
#include "control/control_block.h"

namespace lifeline {
using json = nlohmann::json;

std::optional<SupervisorRecord> read_supervisor_record(const std::string& dir) {
  std::ifstream in(dir + "/" + kSupervisorRecordName);
  if (!in) return std::nullopt;
  std::stringstream text;
  text << in.rdbuf();
  json j = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return std::nullopt;
  SupervisorRecord r;
  r.raw = j;
  r.pid = j.value("pid", int64_t(0));
  r.host = j.value("host", "");
  if (auto it = j.find("job_id"); it != j.end() && it->is_string()) r.job_id = it->get<std::string>();
  if (auto it = j.find("control"); it != j.end() && it->is_string()) r.control = it->get<std::string>();
  r.attempt = j.value("attempt", uint64_t(0));
  r.lineage = j.value("lineage", "");
  r.started_ns = parse_iso8601(j.value("started", ""));
  r.requeue_mode = j.value("requeue_mode", "");
  r.grace_seconds = j.value("grace_seconds", 0.0);
  if (auto it = j.find("policy"); it != j.end() && it->is_object()) r.policy = *it;
  return r;
}

std::string this_host() {
  char buf[256] = {};
  gethostname(buf, sizeof buf - 1);
  return buf;
}

namespace {

// True when `pid` runs and its argv[0] names lifeline (so a recycled pid does not count).
bool lifeline_pid_alive(int64_t pid) {
  if (pid <= 0 || ::kill(pid_t(pid), 0) != 0) return false;  // EPERM: not ours, so not our supervisor
  std::ifstream cmdline("/proc/" + std::to_string(pid) + "/cmdline");
  if (!cmdline) return true;  // no /proc: the signal probe is all there is
  std::string argv0;
  std::getline(cmdline, argv0, '\0');
  size_t slash = argv0.find_last_of('/');
  std::string base = slash == std::string::npos ? argv0 : argv0.substr(slash + 1);
  return base.find("lifeline") != std::string::npos;
}

}  // namespace

Liveness::State supervisor_state(const SupervisorRecord& record) {
  if (!record.host.empty() && record.host != this_host()) return Liveness::State::elsewhere;
  return lifeline_pid_alive(record.pid) ? Liveness::State::alive : Liveness::State::dead;
}

Liveness probe_liveness(const std::string& dir) {
  Liveness live;
  auto record = read_supervisor_record(dir);
  if (!record) return live;
  live.state = supervisor_state(*record);
  live.attempt = record->attempt;
  if (live.state == Liveness::State::dead && record->control) {
    try {
      ControlBlock block = ControlBlock::attach(*record->control);
      if (int64_t(block.u32(layout::kSupervisorPidOff).load()) == record->pid) {
        live.stale_block_step = block.u64(layout::kCurrentStepOff).load();
        if (block.u64(layout::kCommitCountOff).load() > 0)
          live.stale_block_commit_step = block.u64(layout::kLastCommitStepOff).load();
      }
    } catch (const std::exception&) {
      // Unlinked: the supervisor ended cleanly enough, or the node rebooted.
    }
  }
  return live;
}

}  // namespace lifeline
