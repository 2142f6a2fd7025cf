#pragma once
// SignalRelay delivers the supervisor's stop signals twice: from the signal handler itself it
// posts the stop request into the trainer's control block (lock-free atomics only), so the
// trainer learns of a stop within microseconds whatever the supervisor's loop is busy with (a
// Slurm query, retention's verify of a big checkpoint); then, through a pipe, it hands the
// signal to the loop, which does the rest (history, cause, deadline timer) as before.
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include <atomic>
#include <cstdint>
#include <functional>
#include <vector>

#include "control/control_block.h"

namespace lifeline {

// What the handler posted while armed.
struct RelayedStop {
  uint64_t seq = 0;  // request sequence number (0: nothing posted)
  int signo = 0;     // the stop's signal; of several that arrived together, the one that ranks first
  uint64_t together = 0;  // bit s set for each signal s that was pending with it (0: it came alone)
};

// Process-wide (signal dispositions are): at most one SignalRelay exists at a time.
class SignalRelay {
 public:
  explicit SignalRelay(boost::asio::io_context& io);
  ~SignalRelay();  // restores the previous dispositions
  SignalRelay(const SignalRelay&) = delete;
  SignalRelay& operator=(const SignalRelay&) = delete;

  // Catches `signo` (SA_RESTART). Call before arm().
  void add(int signo);
  // Calls `handler(signo)` on the loop for the next caught signal (one call per async_wait).
  void async_wait(std::function<void(int)> handler);

  // From now on the first caught signal posts request(stop_signal, stop, now + budget) into
  // `block`; `block` must outlive disarm().
  void arm(const ControlBlock& block);
  // The stop budget of `signo` in seconds, for the deadline the handler posts.
  void set_budget(int signo, double seconds);
  // Ends the fast path and returns what it posted, if anything. After it returns, no handler
  // touches the block any more.
  RelayedStop disarm();

 private:
  void read_next();
  boost::asio::posix::stream_descriptor reader_;
  std::function<void(int)> handler_;
  std::vector<int> added_;
  unsigned char byte_ = 0;
};

}  // namespace lifeline
