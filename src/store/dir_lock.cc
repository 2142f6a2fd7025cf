#include "store/dir_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "common/errors.h"

namespace lifeline {

DirLock::DirLock(const std::string& dir) {
  std::string path = dir + "/lock";
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw_errno("open lock file", path);
  if (flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    char buf[512] = {};
    ssize_t n = pread(fd_, buf, sizeof buf - 1, 0);
    ::close(fd_);
    fd_ = -1;
    if (err != EWOULDBLOCK) throw SystemError("lock", path, err);
    std::string holder = n > 0 ? std::string(buf, size_t(n)) : std::string("unknown holder");
    while (!holder.empty() && (holder.back() == '\n')) holder.pop_back();
    throw std::runtime_error("checkpoint directory " + dir + " is in use by another lifeline supervisor (" +
                             holder + "); one writer per directory");
  }
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  const char* job = std::getenv("SLURM_JOB_ID");
  std::string who = "host " + std::string(host) + ", pid " + std::to_string(getpid()) + ", job " +
                    (job ? job : "none") + "\n";
  if (ftruncate(fd_, 0) == 0) (void)!pwrite(fd_, who.data(), who.size(), 0);
}

DirLock::~DirLock() {
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace lifeline
