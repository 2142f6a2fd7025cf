#include "store/writers_lock.h"

#include <fcntl.h>
#include <dirent.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "common/errors.h"

namespace lifeline {

namespace {

// Opens (or creates, 0600) a lock file without following a link or blocking on a FIFO, and
// refuses anything but a regular file.
int open_lock_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0600);
  if (fd < 0) {
    if (errno == ELOOP) throw std::runtime_error(path + " is a symbolic link: lifeline never follows one; remove it");
    throw_errno("open lock file", path);
  }
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw std::runtime_error(path + " is not a regular file: remove it");
  }
  return fd;
}

// Processes of this host that have `st`'s file open: a flock lives as long as any descriptor
// of the open file description that took it, and /proc/locks names only the process that took
// it, which may be gone while a forked child still holds it.
std::vector<pid_t> processes_with_open(const struct stat& target) {
  std::vector<pid_t> out;
  DIR* proc = ::opendir("/proc");
  if (!proc) return out;
  while (dirent* e = ::readdir(proc)) {
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    if (pid <= 0 || *end != '\0') continue;
    std::string fds = std::string("/proc/") + e->d_name + "/fd";
    DIR* d = ::opendir(fds.c_str());
    if (!d) continue;  // gone, or not ours to look at
    while (dirent* f = ::readdir(d)) {
      if (f->d_name[0] == '.') continue;
      struct stat st {};
      if (::stat((fds + "/" + f->d_name).c_str(), &st) == 0 && st.st_dev == target.st_dev &&
          st.st_ino == target.st_ino) {
        out.push_back(pid_t(pid));
        break;
      }
    }
    ::closedir(d);
  }
  ::closedir(proc);
  return out;
}

std::string command_of(pid_t pid) {
  std::ifstream comm("/proc/" + std::to_string(pid) + "/comm");
  std::string name;
  std::getline(comm, name);
  return name;
}

}  // namespace

std::vector<LockHolder> flock_holders(const std::string& path) {
  std::vector<LockHolder> out;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return out;
  char want[64];
  std::snprintf(want, sizeof want, "%02x:%02x:%llu", major(st.st_dev), minor(st.st_dev),
                static_cast<unsigned long long>(st.st_ino));
  std::ifstream in("/proc/locks");
  std::string line;
  // "1: FLOCK  ADVISORY  READ 5430 fe:00:10953095 0 EOF"; waiters carry "->" after the number.
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string ordinal, kind, advisory, mode, id;
    long pid = 0;
    words >> ordinal >> kind;
    if (kind == "->") continue;  // waiting, not holding
    if (kind != "FLOCK") continue;
    words >> advisory >> mode >> pid >> id;
    if (id != want) continue;
    LockHolder h;
    h.pid = pid_t(pid);
    h.exclusive = mode == "WRITE";
    h.command = command_of(h.pid);
    out.push_back(h);
  }
  // A holder that is gone passed its descriptor on (fork): name who has the file open now.
  bool gone = false;
  for (const auto& h : out) gone = gone || h.command.empty();
  if (gone) {
    for (pid_t pid : processes_with_open(st)) {
      bool known = false;
      for (const auto& h : out) known = known || h.pid == pid;
      if (known || pid == ::getpid()) continue;
      LockHolder h;
      h.pid = pid;
      h.command = command_of(pid);
      out.push_back(h);
    }
  }
  return out;
}

std::string describe_holders(const std::vector<LockHolder>& holders) {
  std::string s;
  for (const auto& h : holders) {
    if (!s.empty()) s += ", ";
    s += "pid " + std::to_string(h.pid) + " (" + (h.command.empty() ? "gone" : h.command) + ", " +
         (h.exclusive ? "exclusive" : "shared") + ")";
  }
  return s;
}

WriterRegistration::WriterRegistration(const std::string& dir, std::chrono::milliseconds patience) {
  std::string path = dir + "/" + kWritersLockName;
  fd_ = open_lock_file(path);
  auto until = std::chrono::steady_clock::now() + patience;
  while (flock(fd_, LOCK_SH | LOCK_NB) != 0) {
    int err = errno;
    if (err != EWOULDBLOCK || std::chrono::steady_clock::now() >= until) {
      ::close(fd_);
      fd_ = -1;
      if (err != EWOULDBLOCK) throw SystemError("lock", path, err);
      throw std::runtime_error("cannot register as a writer of " + dir + ": " + path + " is held exclusively by " +
                               describe_holders(flock_holders(path)));
    }
    struct timespec pause {0, 5'000'000};
    nanosleep(&pause, nullptr);
  }
}

WriterRegistration::WriterRegistration(WriterRegistration&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }

WriterRegistration& WriterRegistration::operator=(WriterRegistration&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

WriterRegistration::~WriterRegistration() {
  if (fd_ >= 0) ::close(fd_);
}

bool no_writers(const std::string& dir, std::vector<LockHolder>* holders) {
  std::string path = dir + "/" + kWritersLockName;
  int fd = open_lock_file(path);
  bool free = flock(fd, LOCK_EX | LOCK_NB) == 0;
  int err = errno;
  if (free) flock(fd, LOCK_UN);
  ::close(fd);
  if (!free && err != EWOULDBLOCK) throw SystemError("lock", path, err);
  if (!free && holders) *holders = flock_holders(path);
  return free;
}

}  // namespace lifeline
