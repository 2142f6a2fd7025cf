// The control block: created private and versioned; a client refuses anything else.
#include <doctest.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <unistd.h>

#include <stdexcept>

#include "control/control_block.h"

using namespace lifeline;
using namespace lifeline::layout;

TEST_CASE("a new control block is mode 0600, versioned, and attachable by its owner") {
  ControlBlock block = ControlBlock::create("test");
  int fd = shm_open(block.name().c_str(), O_RDONLY, 0);
  REQUIRE(fd >= 0);
  struct stat st {};
  REQUIRE(fstat(fd, &st) == 0);
  close(fd);
  CHECK((st.st_mode & 0777) == 0600);
  CHECK(st.st_size == kSize);
  ControlBlock client = ControlBlock::attach(block.name());
  CHECK(client.u64(kMagicOff).load() == kMagic);
  CHECK(client.u32(kVersionOff).load() == kVersion);
  block.u64(kEveryStepsOff).store(20);
  CHECK(client.u64(kEveryStepsOff).load() == 20);
}

TEST_CASE("a client refuses a block of another layout version") {
  ControlBlock block = ControlBlock::create("test");
  block.u32(kVersionOff).store(kVersion + 1);
  CHECK_THROWS_WITH_AS(ControlBlock::attach(block.name()), doctest::Contains("layout version"), std::runtime_error);
}

TEST_CASE("a client refuses a block readable by others") {
  ControlBlock block = ControlBlock::create("test");
  int fd = shm_open(block.name().c_str(), O_RDWR, 0);
  REQUIRE(fd >= 0);
  fchmod(fd, 0644);
  close(fd);
  CHECK_THROWS_WITH_AS(ControlBlock::attach(block.name()), doctest::Contains("0600"), std::runtime_error);
}

TEST_CASE("a client refuses a block without the lifeline magic") {
  ControlBlock block = ControlBlock::create("test");
  block.u64(kMagicOff).store(0);
  CHECK_THROWS_WITH_AS(ControlBlock::attach(block.name()), doctest::Contains("magic"), std::runtime_error);
}

TEST_CASE("the block is unlinked when the supervisor's handle goes away") {
  std::string name;
  {
    ControlBlock block = ControlBlock::create("test");
    name = block.name();
  }
  CHECK(shm_open(name.c_str(), O_RDONLY, 0) < 0);
}

TEST_CASE("a request raises the sequence, keeps the earliest deadline and sets stop") {
  ControlBlock block = ControlBlock::create("test");
  CHECK(block.request(Reason::periodic, false, 0) == 1);
  CHECK((block.u32(kRequestFlagsOff).load() & kFlagStop) == 0);
  CHECK(block.request(Reason::stop_signal, true, 5000) == 2);
  CHECK(block.request(Reason::stop_signal, true, 9000) == 3);
  CHECK(block.u64(kDeadlineOff).load() == 5000);
  CHECK((block.u32(kRequestFlagsOff).load() & kFlagStop) != 0);
}

TEST_CASE("reasons and client states have the names history and status print") {
  CHECK(std::string(reason_name(Reason::periodic)) == "periodic");
  CHECK(std::string(reason_name(Reason::stop_signal)) == "stop_signal");
  CHECK(std::string(reason_name(Reason::time_limit)) == "time_limit");
  CHECK(std::string(reason_name(Reason::manual)) == "manual");
  CHECK(std::string(reason_name(Reason::trainer_signal)) == "trainer_signal");
  CHECK(std::string(reason_name(Reason::none)) == "none");
  CHECK(std::string(reason_name(Reason(99))) == "none");
  CHECK(std::string(client_state_name(ClientState::attached)) == "attached");
  CHECK(std::string(client_state_name(ClientState::saving)) == "saving");
  CHECK(std::string(client_state_name(ClientState::exiting)) == "exiting");
  CHECK(std::string(client_state_name(ClientState::absent)) == "not attached");
}

TEST_CASE("the next periodic step is the first step after this one that is an every_steps point") {
  for (uint64_t every : {1, 3, 10}) {
    for (uint64_t skip : {0, 1, 7, 30, 31}) {
      for (uint64_t step = 0; step < 100; ++step) {
        CAPTURE(every);
        CAPTURE(skip);
        CAPTURE(step);
        uint64_t want = step + 1;
        while (!is_periodic_step(want, every, skip)) ++want;
        CHECK(next_periodic_step(step, every, skip) == want);
      }
    }
  }
  CHECK(is_periodic_step(30, 10, 25));
  CHECK_FALSE(is_periodic_step(20, 10, 25));
  CHECK_FALSE(is_periodic_step(0, 10, 0));
  CHECK_FALSE(is_periodic_step(10, 0, 0));
  CHECK(next_periodic_step(5, 0, 0) == UINT64_MAX);
  CHECK(next_periodic_step(UINT64_MAX - 1, 10, 0) == UINT64_MAX);
  CHECK(next_periodic_step(UINT64_MAX, 1, 0) == UINT64_MAX);
}
