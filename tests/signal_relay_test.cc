// The supervisor's stop signals reach the trainer from the signal handler itself, before the
// supervisor's loop has run, and the loop still sees every signal.
#include <doctest.h>
#include <signal.h>

#include <boost/asio/io_context.hpp>
#include <vector>

#include "common/clock.h"
#include "control/control_block.h"
#include "supervisor/signal_relay.h"

using namespace lifeline;
using namespace lifeline::layout;

namespace {
// Collects what the relay hands to the loop.
struct Loop {
  boost::asio::io_context io;
  std::vector<int> seen;
  void wait(SignalRelay& relay) {
    relay.async_wait([this, &relay](int signo) {
      seen.push_back(signo);
      wait(relay);
    });
  }
  // Runs the handlers that are ready, without blocking.
  void drain() {
    io.restart();
    io.poll();
  }
};
}  // namespace

TEST_CASE("a stop signal posts the stop request with its deadline before the loop runs") {
  ControlBlock block = ControlBlock::create("test");
  Loop loop;
  SignalRelay relay(loop.io);
  relay.add(SIGUSR1);
  relay.set_budget(SIGUSR1, 30);
  relay.arm(block);
  loop.wait(relay);
  uint64_t before = wall_ns();
  raise(SIGUSR1);  // delivered to this thread before raise returns
  // The loop has not run: the request is in the block already.
  CHECK(loop.seen.empty());
  CHECK(block.u64(kRequestSeqOff).load() == 1);
  CHECK((block.u32(kRequestFlagsOff).load() & kFlagStop) != 0);
  CHECK(block.u32(kRequestReasonOff).load() == uint32_t(Reason::stop_signal));
  uint64_t deadline = block.u64(kDeadlineOff).load();
  CHECK(deadline >= before + 30'000'000'000ull);
  CHECK(deadline <= wall_ns() + 30'000'000'000ull);
  loop.drain();
  CHECK(loop.seen == std::vector<int>{SIGUSR1});
  RelayedStop r = relay.disarm();
  CHECK(r.seq == 1);
  CHECK(r.signo == SIGUSR1);
}

TEST_CASE("only the first stop signal posts; disarmed, signals reach the loop but not the block") {
  ControlBlock block = ControlBlock::create("test");
  Loop loop;
  SignalRelay relay(loop.io);
  relay.add(SIGUSR1);
  relay.add(SIGTERM);
  loop.wait(relay);

  raise(SIGTERM);  // not armed yet: the loop alone hears it
  CHECK(block.u64(kRequestSeqOff).load() == 0);
  relay.arm(block);
  raise(SIGTERM);
  raise(SIGUSR1);
  CHECK(block.u64(kRequestSeqOff).load() == 1);
  CHECK(block.u64(kDeadlineOff).load() == 0);  // no budget set: no deadline
  RelayedStop r = relay.disarm();
  CHECK(r.seq == 1);
  CHECK(r.signo == SIGTERM);
  raise(SIGUSR1);
  CHECK(block.u64(kRequestSeqOff).load() == 1);
  CHECK(relay.disarm().seq == 0);
  loop.drain();
  CHECK(loop.seen == std::vector<int>{SIGTERM, SIGTERM, SIGUSR1, SIGUSR1});
}

TEST_CASE("the relay gives back the signal dispositions it found") {
  struct sigaction before {};
  sigaction(SIGUSR2, nullptr, &before);
  REQUIRE((before.sa_handler == SIG_DFL));
  {
    boost::asio::io_context io;
    SignalRelay relay(io);
    relay.add(SIGUSR2);
    struct sigaction during {};
    sigaction(SIGUSR2, nullptr, &during);
    CHECK((during.sa_handler != SIG_DFL));
    CHECK_THROWS_AS(SignalRelay{io}, std::logic_error);  // dispositions are process-wide
  }
  struct sigaction after {};
  sigaction(SIGUSR2, nullptr, &after);
  CHECK((after.sa_handler == SIG_DFL));
}

TEST_CASE("a deadline is only ever moved earlier") {
  ControlBlock block = ControlBlock::create("test");
  block.request(Reason::stop_signal, true, 2000);
  block.tighten_deadline(3000);
  CHECK(block.u64(kDeadlineOff).load() == 2000);
  block.tighten_deadline(1000);
  CHECK(block.u64(kDeadlineOff).load() == 1000);
  block.tighten_deadline(0);
  CHECK(block.u64(kDeadlineOff).load() == 1000);
  CHECK(block.u64(kRequestSeqOff).load() == 1);  // no new request
}
