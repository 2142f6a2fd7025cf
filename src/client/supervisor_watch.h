#pragma once
// SupervisorWatch stops a trainer whose supervisor is gone, so that no trainer outlives its
// supervisor (kill -9 of `lifeline run`, a node agent that killed only the supervisor): a trainer
// left running would go on writing into a checkpoint directory that the next attempt owns.
#include <pthread.h>
#include <sys/types.h>

#include <functional>

namespace lifeline {

// A thread of its own blocked in poll() on a pidfd of the supervisor (Linux >= 5.3) and on an
// eventfd that wakes it for shutdown; where pidfd_open is unavailable it checks the supervisor
// once a second instead. It costs the training thread nothing. When the supervisor is gone it
// calls `on_gone` on that thread (by default stop_trainer()).
//
// Signals are blocked on the watch thread, so it never runs the trainer's handlers. A forked
// child (a data-loader worker) inherits no thread: its copy neither wakes nor joins the parent's.
class SupervisorWatch {
 public:
  // How the supervisor is watched.
  enum class Mode { pidfd, polling };
  using OnGone = std::function<void(pid_t supervisor)>;

  // Starts watching `supervisor` (> 0). A supervisor that is already gone is reported at once,
  // on this thread, before the constructor returns (and no thread is started). `mode` pidfd
  // falls back to polling when pidfd_open is unavailable.
  // Throws std::system_error when no thread or eventfd can be had.
  SupervisorWatch(pid_t supervisor, OnGone on_gone, Mode mode = Mode::pidfd);
  // Wakes the thread and joins it (in the process that started it only).
  ~SupervisorWatch();
  SupervisorWatch(const SupervisorWatch&) = delete;
  SupervisorWatch& operator=(const SupervisorWatch&) = delete;

  // The mode actually in use.
  Mode mode() const { return mode_; }

  // What a trainer does when its supervisor is gone: one line on stderr, then SIGKILL to its own
  // process group, or to itself alone when `whole_group` is false (a trainer that shares its
  // supervisor's group, say the jobscript's, must not take the rest of it along).
  [[noreturn]] static void stop_trainer(pid_t supervisor, bool whole_group) noexcept;

 private:
  static void* run(void* self) noexcept;
  // True once the supervisor is gone (polling mode).
  bool supervisor_gone() const noexcept;

  pid_t supervisor_;
  OnGone on_gone_;
  Mode mode_;
  pid_t owner_;         // the process that started the thread
  int pidfd_ = -1;      // -1 in polling mode
  int wake_fd_ = -1;    // eventfd
  bool started_ = false;
  pthread_t thread_{};
};

}  // namespace lifeline
