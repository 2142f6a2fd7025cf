#include "control/control_block.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "common/errors.h"
#include "common/random_hex.h"

namespace lifeline {
using namespace layout;

static unsigned char* map_block(int fd, const std::string& name) {
  void* p = mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    int err = errno;
    close(fd);
    throw SystemError("mmap control block", name, err);
  }
  close(fd);
  return static_cast<unsigned char*>(p);
}

ControlBlock ControlBlock::create(const std::string& tag) {
  for (int tries = 0; tries < 16; ++tries) {
    std::string name = "/lifeline-" + std::to_string(getuid()) + "-" + tag + "-" + random_hex(2);
    int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) {
      if (errno == EEXIST) continue;
      throw_errno("create shared memory", name);
    }
    // Reserve the pages now: a block only sized with ftruncate is sparse, and the first store
    // into it on a full /dev/shm kills the process with SIGBUS instead of failing here.
    if (int err = posix_fallocate(fd, 0, kSize); err != 0) {
      close(fd);
      shm_unlink(name.c_str());
      throw std::runtime_error("cannot reserve the " + std::to_string(kSize) + "-byte control block " + name +
                               " in /dev/shm: " + std::strerror(err) +
                               (err == ENOSPC ? " (/dev/shm is full: see df /dev/shm and remove stale files there)" : ""));
    }
    unsigned char* base;
    try {
      base = map_block(fd, name);
    } catch (...) {
      shm_unlink(name.c_str());
      throw;
    }
    ControlBlock block(name, base, true);
    // posix_fallocate zero-filled the block; fill the header, magic last.
    block.u32(kVersionOff).store(kVersion);
    block.u32(kSizeOff).store(kSize);
    block.u32(kOwnerUidOff).store(getuid());
    block.u32(kSupervisorPidOff).store(uint32_t(getpid()));
    // Names the shared staging folder of the ranks' checkpoints (docs/distributed.md): the pid
    // of the supervisor that commits it (high half) and a random word. The supervisors of one job
    // all take their leader's (set_staging_token), so every rank of every node names one folder.
    block.u64(kStagingTokenOff).store((uint64_t(uint32_t(getpid())) << 32) | std::stoull(random_hex(1), nullptr, 16));
    block.u64(kMagicOff).store(kMagic, std::memory_order_release);
    return block;
  }
  throw std::runtime_error("cannot find a free shared-memory name for the control block");
}

ControlBlock ControlBlock::attach(const std::string& name) {
  int fd = shm_open(name.c_str(), O_RDWR | O_CLOEXEC, 0);
  if (fd < 0) throw_errno("open control block", name);
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    int err = errno;
    close(fd);
    throw SystemError("stat control block", name, err);
  }
  if (st.st_uid != getuid() || (st.st_mode & 077) != 0) {
    close(fd);
    throw std::runtime_error("control block " + name +
                             " is not owned by this user with mode 0600: refusing it");
  }
  if (st.st_size < off_t(kSize)) {
    close(fd);
    throw std::runtime_error("control block " + name + " is too small (" +
                             std::to_string(st.st_size) + " bytes)");
  }
  ControlBlock block(name, map_block(fd, name), false);
  if (block.u64(kMagicOff).load(std::memory_order_acquire) != kMagic)
    throw std::runtime_error("control block " + name + " has no lifeline magic");
  uint32_t version = block.u32(kVersionOff).load();
  if (version != kVersion)
    throw std::runtime_error("control block " + name + " has layout version " +
                             std::to_string(version) + ", this client speaks " +
                             std::to_string(kVersion));
  if (block.u32(kSizeOff).load() != kSize)
    throw std::runtime_error("control block " + name + " declares an unexpected size");
  return block;
}

void ControlBlock::tighten_deadline(uint64_t deadline_wall_ns) const {
  if (!deadline_wall_ns) return;
  // Keep the earliest deadline of all pending requests.
  auto& d = u64(kDeadlineOff);
  uint64_t cur = d.load();
  while ((cur == 0 || deadline_wall_ns < cur) && !d.compare_exchange_weak(cur, deadline_wall_ns)) {
  }
}

uint64_t ControlBlock::request(Reason reason, bool stop, uint64_t deadline_wall_ns) const {
  tighten_deadline(deadline_wall_ns);
  u32(kRequestReasonOff).store(uint32_t(reason));
  if (stop) u32(kRequestFlagsOff).fetch_or(kFlagStop);
  return u64(kRequestSeqOff).fetch_add(1, std::memory_order_acq_rel) + 1;
}

ControlBlock::ControlBlock(ControlBlock&& other) noexcept
    : name_(std::move(other.name_)), base_(other.base_), owner_(other.owner_) {
  other.base_ = nullptr;
  other.owner_ = false;
}

ControlBlock& ControlBlock::operator=(ControlBlock&& other) noexcept {
  if (this != &other) {
    release();
    name_ = std::move(other.name_);
    base_ = other.base_;
    owner_ = other.owner_;
    other.base_ = nullptr;
    other.owner_ = false;
  }
  return *this;
}

void ControlBlock::release() noexcept {
  if (base_) munmap(base_, kSize);
  if (owner_) shm_unlink(name_.c_str());
  base_ = nullptr;
  owner_ = false;
}

ControlBlock::~ControlBlock() { release(); }

const char* reason_name(Reason r) {
  switch (r) {
    case Reason::periodic: return "periodic";
    case Reason::stop_signal: return "stop_signal";
    case Reason::time_limit: return "time_limit";
    case Reason::manual: return "manual";
    case Reason::trainer_signal: return "trainer_signal";
    default: return "none";
  }
}

const char* client_state_name(ClientState s) {
  switch (s) {
    case ClientState::attached: return "attached";
    case ClientState::saving: return "saving";
    case ClientState::exiting: return "exiting";
    default: return "not attached";
  }
}

bool is_periodic_step(uint64_t step, uint64_t every_steps, uint64_t skip_first_steps) {
  return every_steps > 0 && step % every_steps == 0 && step > 0 && step >= skip_first_steps;
}

uint64_t next_periodic_step(uint64_t step, uint64_t every_steps, uint64_t skip_first_steps) {
  if (every_steps == 0 || step == UINT64_MAX) return UINT64_MAX;
  uint64_t from = std::max(step + 1, skip_first_steps);  // >= 1
  uint64_t multiples = from / every_steps + (from % every_steps != 0);
  if (multiples > UINT64_MAX / every_steps) return UINT64_MAX;
  return multiples * every_steps;
}

}  // namespace lifeline
