#include "supervisor/signal_relay.h"

#include <fcntl.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <boost/asio/read.hpp>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

namespace lifeline {
namespace {

constexpr int kMaxSignal = 65;

// Shared with the handler: only lock-free atomics and plain ints written before sigaction.
std::atomic<const ControlBlock*> g_block{nullptr};
std::atomic<int> g_in_handler{0};
std::atomic<uint64_t> g_posted_seq{0};
std::atomic<int> g_posted_signo{0};
std::atomic<uint64_t> g_posted_together{0};
std::atomic<uint64_t> g_added_mask{0};
std::atomic<int64_t> g_budget_ns[kMaxSignal];
int g_write_fd = -1;
struct sigaction g_previous[kMaxSignal];

uint64_t wall_now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

// Which of several stop signals that arrived together names the stop: the scheduler's
// SIGTERM (SIGKILL follows it after KillWait), then SIGUSR1, then the others, SIGINT last.
int stop_rank(int signo) {
  if (signo == SIGTERM) return 0;
  if (signo == SIGUSR1) return 1;
  if (signo == SIGINT) return 3;
  return 2;
}

extern "C" void relay_handler(int signo) {
  int saved_errno = errno;
  g_in_handler.fetch_add(1);
  // exchange: only the first stop signal posts; the loop coalesces later ones.
  if (const ControlBlock* block = g_block.exchange(nullptr)) {
    // The kernel delivers standard signals that are pending at once lowest number first, so
    // the first handler to run is not always the first signal sent. Those still pending now
    // (every signal is blocked while this handler runs) came together with it: take the one
    // that ranks first, and the tightest deadline among them.
    sigset_t pending;
    sigemptyset(&pending);
    sigpending(&pending);
    uint64_t added = g_added_mask.load();
    int chosen = signo;
    uint64_t together = 0;
    int64_t budget = (signo > 0 && signo < kMaxSignal) ? g_budget_ns[signo].load() : 0;
    for (int s = 1; s < 64; ++s) {
      if (s == signo || !(added & (1ull << s)) || sigismember(&pending, s) != 1) continue;
      together |= 1ull << s;
      if (stop_rank(s) < stop_rank(chosen)) chosen = s;
      int64_t b = g_budget_ns[s].load();
      if (b > 0 && (budget <= 0 || b < budget)) budget = b;
    }
    if (together) together |= 1ull << signo;
    uint64_t deadline = budget > 0 ? wall_now_ns() + uint64_t(budget) : 0;
    g_posted_signo.store(chosen);
    g_posted_together.store(together);
    g_posted_seq.store(block->request(layout::Reason::stop_signal, true, deadline));
  }
  g_in_handler.fetch_sub(1);
  unsigned char b = static_cast<unsigned char>(signo);
  (void)!::write(g_write_fd, &b, 1);  // a full pipe drops it: the loop is far behind anyway
  errno = saved_errno;
}

}  // namespace

SignalRelay::SignalRelay(boost::asio::io_context& io) : reader_(io) {
  if (g_write_fd >= 0) throw std::logic_error("only one SignalRelay at a time");
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) throw std::runtime_error("pipe2: " + std::string(std::strerror(errno)));
  reader_.assign(fds[0]);
  g_write_fd = fds[1];
  for (auto& b : g_budget_ns) b.store(0);
}

SignalRelay::~SignalRelay() {
  disarm();
  for (int s : added_) ::sigaction(s, &g_previous[s], nullptr);
  g_added_mask.store(0);
  ::close(g_write_fd);
  g_write_fd = -1;
}

void SignalRelay::add(int signo) {
  if (signo <= 0 || signo >= 64) throw std::invalid_argument("signal out of range");
  struct sigaction sa {};
  sa.sa_handler = relay_handler;
  sigfillset(&sa.sa_mask);  // one handler at a time: the exchange above sees them in order
  sa.sa_flags = SA_RESTART;
  if (::sigaction(signo, &sa, &g_previous[signo]) != 0) throw std::runtime_error("sigaction failed");
  added_.push_back(signo);
  g_added_mask.fetch_or(1ull << signo);
}

void SignalRelay::async_wait(std::function<void(int)> handler) {
  handler_ = std::move(handler);
  read_next();
}

void SignalRelay::read_next() {
  boost::asio::async_read(reader_, boost::asio::buffer(&byte_, 1),
                          [this](const boost::system::error_code& ec, size_t) {
                            if (ec || !handler_) return;
                            auto h = std::move(handler_);
                            handler_ = nullptr;
                            h(int(byte_));
                          });
}

void SignalRelay::arm(const ControlBlock& block) {
  g_posted_seq.store(0);
  g_posted_signo.store(0);
  g_posted_together.store(0);
  g_block.store(&block);
}

void SignalRelay::set_budget(int signo, double seconds) {
  if (signo > 0 && signo < kMaxSignal) g_budget_ns[signo].store(int64_t(seconds * 1e9));
}

RelayedStop SignalRelay::disarm() {
  g_block.store(nullptr);
  // A handler that took the block before the store above finishes its request first (it may be
  // running on another thread); one that starts after it sees no block.
  while (g_in_handler.load() != 0) {
  }
  RelayedStop r{g_posted_seq.exchange(0), g_posted_signo.exchange(0), g_posted_together.exchange(0)};
  return r;
}

}  // namespace lifeline
