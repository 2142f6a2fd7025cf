#include "client/supervisor_watch.h"

#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <system_error>

namespace lifeline {

namespace {

// pidfd_open(2) without requiring a glibc that wraps it; -1 with ENOSYS where the kernel or the
// headers lack it.
int open_pidfd(pid_t pid) {
#ifdef SYS_pidfd_open
  return int(::syscall(SYS_pidfd_open, pid, 0));
#else
  (void)pid;
  errno = ENOSYS;
  return -1;
#endif
}

// True when /proc says `pid` is a zombie (exited, not yet reaped: kill(pid, 0) still succeeds).
bool is_zombie(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(in, stat)) return false;
  size_t paren = stat.rfind(')');  // the command name may hold spaces and parentheses
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z';
}

}  // namespace

SupervisorWatch::SupervisorWatch(pid_t supervisor, OnGone on_gone, Mode mode)
    : supervisor_(supervisor), on_gone_(std::move(on_gone)), mode_(mode), owner_(::getpid()) {
  bool gone = false;
  if (mode_ == Mode::pidfd) {
    pidfd_ = open_pidfd(supervisor_);
    if (pidfd_ < 0) {
      if (errno == ESRCH)
        gone = true;
      else
        mode_ = Mode::polling;  // ENOSYS (kernel < 5.3), EPERM (a seccomp filter), ...
    }
  }
  if (gone || (mode_ == Mode::polling && supervisor_gone())) {
    if (pidfd_ >= 0) ::close(pidfd_);
    pidfd_ = -1;
    on_gone_(supervisor_);  // a trainer that attaches too late never starts training
    return;
  }
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) {
    int err = errno;
    if (pidfd_ >= 0) ::close(pidfd_);
    throw std::system_error(err, std::generic_category(), "eventfd for the supervisor watch");
  }
  // The thread starts with every signal blocked: the trainer's handlers run elsewhere.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int err = pthread_create(&thread_, nullptr, &SupervisorWatch::run, this);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (err != 0) {
    ::close(wake_fd_);
    if (pidfd_ >= 0) ::close(pidfd_);
    throw std::system_error(err, std::generic_category(), "thread for the supervisor watch");
  }
  started_ = true;
}

SupervisorWatch::~SupervisorWatch() {
  // In a forked child the thread does not exist and the eventfd is shared with the parent:
  // writing it would stop the parent's watch, joining would wait forever.
  if (started_ && ::getpid() == owner_) {
    uint64_t one = 1;
    ssize_t n = ::write(wake_fd_, &one, sizeof one);
    (void)n;  // EAGAIN only when already woken
    pthread_join(thread_, nullptr);
  }
  if (wake_fd_ >= 0) ::close(wake_fd_);
  if (pidfd_ >= 0) ::close(pidfd_);
}

bool SupervisorWatch::supervisor_gone() const noexcept {
  if (::kill(supervisor_, 0) != 0) return errno == ESRCH;  // EPERM: it exists
  try {
    return is_zombie(supervisor_);
  } catch (...) {
    return false;
  }
}

void* SupervisorWatch::run(void* arg) noexcept {
  auto* self = static_cast<SupervisorWatch*>(arg);
  bool gone = false;
  while (!gone) {
    struct pollfd fds[2] = {{self->wake_fd_, POLLIN, 0}, {self->pidfd_, POLLIN, 0}};
    nfds_t n = self->pidfd_ >= 0 ? 2 : 1;
    int rc = ::poll(fds, n, self->pidfd_ >= 0 ? -1 : 1000);
    if (rc < 0 && errno != EINTR) {
      std::fprintf(stderr, "lifeline: cannot watch supervisor pid %d any more (poll failed)\n", int(self->supervisor_));
      return nullptr;
    }
    if (rc > 0 && fds[0].revents) return nullptr;  // shutdown
    if (self->pidfd_ >= 0)
      gone = rc > 0 && fds[1].revents;  // readable once the process has exited
    else
      gone = self->supervisor_gone();
  }
  try {
    self->on_gone_(self->supervisor_);
  } catch (...) {
  }
  return nullptr;
}

void SupervisorWatch::stop_trainer(pid_t supervisor, bool whole_group) noexcept {
  char line[128];
  int n = std::snprintf(line, sizeof line, "lifeline: supervisor pid %d is gone: stopping this trainer\n", int(supervisor));
  // Only when the line cannot block: stderr may be a pipe that nobody reads any more.
  struct pollfd out = {STDERR_FILENO, POLLOUT, 0};
  if (n > 0 && ::poll(&out, 1, 100) == 1 && (out.revents & POLLOUT)) {
    ssize_t w = ::write(STDERR_FILENO, line, size_t(n));
    (void)w;
  }
  ::kill(whole_group ? 0 : ::getpid(), SIGKILL);
  for (;;) ::pause();  // SIGKILL is on its way
}

}  // namespace lifeline
