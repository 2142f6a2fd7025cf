#include "store/dir_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "common/errors.h"

namespace lifeline {

// The holder record written into the lock file, without its trailing newline.
static std::string read_holder(int fd) {
  char buf[512] = {};
  ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  std::string holder = n > 0 ? std::string(buf, size_t(n)) : std::string("unknown holder");
  while (!holder.empty() && holder.back() == '\n') holder.pop_back();
  return holder;
}

DirLock::DirLock(const std::string& dir) : DirLock(dir, "supervisor") {}

DirLock::DirLock(const std::string& dir, const std::string& role) {
  std::string path = dir + "/lock";
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd_ < 0) throw_errno("open lock file", path);
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
    std::string holder = read_holder(fd_);
    ::close(fd_);
    fd_ = -1;
    if (err != EWOULDBLOCK) throw SystemError("lock", path, err);
    throw std::runtime_error("checkpoint directory " + dir + " is in use by another lifeline process (" +
                             holder + "); one writer per directory");
  }
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  const char* job = std::getenv("SLURM_JOB_ID");
  std::string who = "lifeline " + role + ", host " + std::string(host) + ", pid " + std::to_string(getpid()) +
                    ", job " + (job && *job ? job : "none") + "\n";
  if (ftruncate(fd_, 0) == 0) (void)!pwrite(fd_, who.data(), who.size(), 0);
}

DirLock::~DirLock() {
  if (fd_ >= 0) ::close(fd_);
}

std::optional<std::string> lock_holder(const std::string& dir) {
  std::string path = dir + "/lock";
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) return std::nullopt;  // no lock file: nobody ever locked it
  std::optional<std::string> holder;
  if (flock(fd, LOCK_SH | LOCK_NB) != 0)
    holder = errno == EWOULDBLOCK ? read_holder(fd) : std::string("unknown holder");
  ::close(fd);  // releases the shared lock if we got it
  return holder;
}

}  // namespace lifeline
