#pragma once
// ControlBlock owns one mapping of the shared-memory block that supervisor and trainer share.
#include <atomic>
#include <cstdint>
#include <string>

#include "lifeline/control_layout.h"

namespace lifeline {

class ControlBlock {
 public:
  // Supervisor side: creates a new block (O_EXCL, 0600) named /lifeline-<uid>-<tag>-<random>
  // and unlinks it when destroyed.
  static ControlBlock create(const std::string& tag);
  // Trainer side: maps an existing block; throws unless it is ours and of this layout.
  static ControlBlock attach(const std::string& name);

  ControlBlock(ControlBlock&& other) noexcept;
  ControlBlock& operator=(ControlBlock&& other) noexcept;
  ControlBlock(const ControlBlock&) = delete;
  ControlBlock& operator=(const ControlBlock&) = delete;
  ~ControlBlock();

  const std::string& name() const { return name_; }

  std::atomic<uint64_t>& u64(size_t offset) const {
    return *reinterpret_cast<std::atomic<uint64_t>*>(base_ + offset);
  }
  std::atomic<uint32_t>& u32(size_t offset) const {
    return *reinterpret_cast<std::atomic<uint32_t>*>(base_ + offset);
  }

  // Posts a checkpoint request; returns its sequence number. Async-signal-safe.
  uint64_t request(layout::Reason reason, bool stop, uint64_t deadline_wall_ns) const;
  // Moves the pending deadline earlier (never later), without a new request. Async-signal-safe.
  void tighten_deadline(uint64_t deadline_wall_ns) const;

 private:
  ControlBlock(std::string name, unsigned char* base, bool owner)
      : name_(std::move(name)), base_(base), owner_(owner) {}
  void release() noexcept;

  std::string name_;
  unsigned char* base_ = nullptr;
  bool owner_ = false;
};

// The name of a request reason as history.jsonl and `lifeline status` write it ("periodic",
// "stop_signal", "time_limit", "manual", "trainer_signal"); "none" for none or an unknown value.
const char* reason_name(layout::Reason r);
// "attached", "saving", "exiting"; "not attached" for absent or an unknown value.
const char* client_state_name(layout::ClientState s);

// Whether `step` is an every_steps point (docs/protocol.md, "Poll"): step % every_steps == 0,
// step > 0 and step >= skip_first_steps; never when every_steps is 0.
bool is_periodic_step(uint64_t step, uint64_t every_steps, uint64_t skip_first_steps);
// The first every_steps point after `step`; UINT64_MAX when every_steps is 0 or none fits in 64 bits.
uint64_t next_periodic_step(uint64_t step, uint64_t every_steps, uint64_t skip_first_steps);

static_assert(std::atomic<uint64_t>::is_always_lock_free && sizeof(std::atomic<uint64_t>) == 8,
              "the control block needs lock-free 64-bit atomics");
static_assert(std::atomic<uint32_t>::is_always_lock_free && sizeof(std::atomic<uint32_t>) == 4,
              "the control block needs lock-free 32-bit atomics");

}  // namespace lifeline
