#pragma once
// BackgroundSave runs the client's asynchronous checkpoint jobs (persist, commit, ack) one at a
// time on a thread of their own, so at most one save is ever in flight.
#include <atomic>
#include <functional>
#include <thread>

namespace lifeline {

// One job slot and its thread. Used by one owning thread; busy() may be read at any time.
// The job thread keeps the training thread's priority on purpose: a lower one (nice) cannot be
// raised back without privileges, and a stop checkpoint must not starve while grace runs out.
class BackgroundSave {
 public:
  BackgroundSave() = default;
  BackgroundSave(const BackgroundSave&) = delete;
  BackgroundSave& operator=(const BackgroundSave&) = delete;
  // Waits for the job in flight.
  ~BackgroundSave();

  // Waits for the job in flight, then runs `job` on a new thread. `job` returns whether the
  // save succeeded and must not throw.
  void start(std::function<bool()> job);
  // Waits for the job in flight; returns the result of the last job (true when none ran).
  bool wait();
  // True from start() until the job has returned.
  bool busy() const { return busy_.load(std::memory_order_acquire); }

 private:
  std::thread thread_;
  std::atomic<bool> busy_{false};
  bool last_ok_ = true;  // written by the job thread, read after join()
};

}  // namespace lifeline
