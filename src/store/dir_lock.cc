#include "store/dir_lock.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "common/errors.h"
#include "common/host.h"
#include "common/regular_file.h"
#include "store/writers_lock.h"

namespace lifeline {

namespace {

// The holder record written into the lock file, without its trailing newline.
std::string read_holder(int fd) {
  char buf[512] = {};
  ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  std::string holder = n > 0 ? std::string(buf, size_t(n)) : std::string();
  while (!holder.empty() && holder.back() == '\n') holder.pop_back();
  return holder;
}

// The pid a lock record ("lifeline supervisor, host h, pid p, job j") names, or 0.
pid_t recorded_pid(const std::string& record) {
  size_t at = record.find(", pid ");
  if (at == std::string::npos) return 0;
  long pid = std::strtol(record.c_str() + at + 6, nullptr, 10);
  return pid > 0 ? pid_t(pid) : 0;
}

// ", which is not running" when the record names a pid on this host that has exited.
std::string recorded_pid_state(const std::string& record) {
  size_t host_at = record.find("host ");
  pid_t pid = recorded_pid(record);
  if (host_at == std::string::npos || pid == 0) return "";
  size_t host_end = record.find(',', host_at);
  if (record.substr(host_at + 5, host_end - host_at - 5) != this_host()) return "";
  bool running = ::kill(pid, 0) == 0 || errno == EPERM;
  return running ? "" : ", which is not running";
}

// Who holds `path` and what the lock file records, for a refusal: this host's /proc/locks
// names the real holders (any process that could open the file can hold a flock on it); the
// record written by the last lifeline holder is all there is when the holder runs on another
// host of a shared file system. "in use by another lifeline process (...)" or "in use: ...".
std::string holder_text(const std::string& path, const std::string& record) {
  std::vector<LockHolder> holders = flock_holders(path);
  std::string recorded = record.empty() ? "unknown holder" : record;
  if (holders.empty()) return "in use by another lifeline process (" + recorded + ")";
  if (holders.size() == 1 && holders[0].pid == recorded_pid(record))
    return "in use by another lifeline process (" + recorded + ")";
  std::string text = "in use: " + path + " is held by " + describe_holders(holders);
  if (!record.empty())
    text += "; the last lifeline process recorded in it is " + record + recorded_pid_state(record) +
            "; a holder that is not lifeline blocks the directory until it exits";
  return text;
}

}  // namespace

DirLock::DirLock(const std::string& dir) : DirLock(dir, "supervisor") {}

DirLock::DirLock(const std::string& dir, const std::string& role) {
  std::string path = dir + "/lock";
  std::string error;
  // 0600: whoever can open the lock file can take a shared flock on it and block every run.
  fd_ = open_regular_file(path, O_RDWR | O_CREAT, 0600, error);
  if (fd_ < 0) throw std::runtime_error("cannot take the lock of " + dir + ": " + error);
  struct stat st {};
  if (fstat(fd_, &st) == 0 && st.st_uid == geteuid() && (st.st_mode & 077) != 0) (void)fchmod(fd_, 0600);
  int rc = flock(fd_, LOCK_EX | LOCK_NB);
  // lock_holder() probes with a shared lock for an instant: a few short retries make sure such
  // a probe never turns into a refusal.
  for (int retry = 0; rc != 0 && errno == EWOULDBLOCK && retry < 5; ++retry) {
    struct timespec pause {0, 2'000'000};
    nanosleep(&pause, nullptr);
    rc = flock(fd_, LOCK_EX | LOCK_NB);
  }
  if (rc != 0) {
    int err = errno;
    std::string record = read_holder(fd_);
    ::close(fd_);
    fd_ = -1;
    if (err != EWOULDBLOCK) throw SystemError("lock", path, err);
    throw DirInUse("checkpoint directory " + dir + " is " + holder_text(path, record) + "; one writer per directory");
  }
  const char* job = std::getenv("SLURM_JOB_ID");
  std::string who = "lifeline " + role + ", host " + this_host() + ", pid " + std::to_string(getpid()) +
                    ", job " + (job && *job ? job : "none") + "\n";
  if (ftruncate(fd_, 0) == 0) (void)!pwrite(fd_, who.data(), who.size(), 0);
}

DirLock::~DirLock() {
  if (fd_ >= 0) ::close(fd_);
}

std::optional<std::string> lock_holder(const std::string& dir) {
  std::string path = dir + "/lock";
  std::string error;
  int fd = open_regular_file(path, O_RDONLY, 0, error);
  if (fd < 0) {
    // Not ours to read (0600): this host's /proc/locks still names the holders.
    std::string holders = describe_holders(flock_holders(path));
    if (!holders.empty()) return "held by " + holders;
    return std::nullopt;  // no lock file: nobody ever locked it
  }
  std::optional<std::string> holder;
  if (flock(fd, LOCK_SH | LOCK_NB) != 0)
    holder = errno == EWOULDBLOCK ? read_holder(fd) : std::string();
  if (holder && holder->empty()) holder = "unknown holder";
  ::close(fd);  // releases the shared lock if we got it
  return holder;
}

}  // namespace lifeline
