#include "history/supervisor_record.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "common/clock.h"
#include "common/host.h"
#include "common/json_text.h"
#include "common/random_hex.h"
#include "common/regular_file.h"
#include "control/control_block.h"

namespace lifeline {
using json = nlohmann::json;

namespace {
constexpr uint64_t kMaxRecordBytes = 1 << 20;  // a record is a few hundred bytes
}  // namespace

std::optional<SupervisorRecord> read_supervisor_record(const std::string& dir, std::string* error) {
  std::string path = dir + "/" + kSupervisorRecordName, text, why;
  if (error) error->clear();
  if (!read_regular_file(path, kMaxRecordBytes, text, why)) {
    if (error) *error = why;
    return std::nullopt;
  }
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) {
    if (error) *error = path + " is not a JSON object (damaged): remove it; the next lifeline run writes a new one";
    return std::nullopt;
  }
  SupervisorRecord r;
  r.raw = j;
  auto num = [&](const char* key, auto fallback) {
    auto it = j.find(key);
    return it != j.end() && it->is_number() ? it->get<decltype(fallback)>() : fallback;
  };
  auto str = [&](const char* key) {
    auto it = j.find(key);
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  r.pid = num("pid", int64_t(0));
  r.host = str("host");
  if (auto it = j.find("job_id"); it != j.end() && it->is_string()) r.job_id = it->get<std::string>();
  if (auto it = j.find("control"); it != j.end() && it->is_string()) r.control = it->get<std::string>();
  r.attempt = num("attempt", uint64_t(0));
  r.lineage = str("lineage");
  r.started_ns = parse_iso8601(str("started"));
  r.requeue_mode = str("requeue_mode");
  r.grace_seconds = num("grace_seconds", 0.0);
  if (auto it = j.find("policy"); it != j.end() && it->is_object())
    for (auto& [k, v] : it->items())
      if (v.is_primitive()) r.policy[k] = v;
  return r;
}

bool write_supervisor_record_file(const std::string& dir, const nlohmann::json& record, std::string* error) {
  return write_status_file(dir, kSupervisorRecordName, dump_json(record, 2) + "\n", error, /*durable=*/true);
}

bool write_status_file(const std::string& dir, const std::string& name_in_dir, const std::string& text,
                       std::string* error, bool durable) {
  std::string dst = dir + "/" + name_in_dir;
  std::string tmp;
  int fd = -1;
  auto fail = [&](const std::string& why) {
    if (fd >= 0) ::close(fd);
    if (!tmp.empty()) ::unlink(tmp.c_str());
    if (error) *error = "cannot write " + dst + ": " + why;
    return false;
  };
  try {
    std::string name = dir + "/." + name_in_dir + ".tmp-" + std::to_string(getpid()) + "-" + random_hex();
    fd = ::open(name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) return fail("create " + name + ": " + std::strerror(errno));
    tmp = name;
    for (size_t done = 0; done < text.size();) {
      ssize_t n = ::write(fd, text.data() + done, text.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return fail(std::string("write: ") + std::strerror(errno));
      done += size_t(n);
    }
    if (durable && ::fsync(fd) != 0) return fail(std::string("fsync: ") + std::strerror(errno));
    int rc = ::close(fd);
    fd = -1;
    if (rc != 0) return fail(std::string("close: ") + std::strerror(errno));
    if (::rename(tmp.c_str(), dst.c_str()) != 0) return fail(std::string("rename: ") + std::strerror(errno));
  } catch (const std::exception& e) {
    return fail(e.what());
  }
  tmp.clear();  // renamed: nothing to remove
  if (!durable) return true;
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int rc = dfd < 0 ? -1 : ::fsync(dfd);
  int err = errno;
  if (dfd >= 0) ::close(dfd);
  if (rc != 0) return fail(std::string("fsync of the directory after the rename: ") + std::strerror(err));
  return true;
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

Liveness probe_liveness(const std::string& dir, std::string* error) {
  Liveness live;
  auto record = read_supervisor_record(dir, error);
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
