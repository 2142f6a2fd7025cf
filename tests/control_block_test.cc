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
