#pragma once
// The control block's byte layout (version 2): the one place both sides read it from.
// Version 2 = version 1's header unchanged + the agreement fields + one slot per local rank
// (docs/distributed.md); a single trainer uses the header only, as in version 1.
// Every field sits at an explicit offset; all multi-byte fields are native-endian lock-free
// atomics, naturally aligned. python/lifeline_client.py mirrors this table; tests/python_test.cc proves they agree.
#include <cstddef>
#include <cstdint>

namespace lifeline::layout {

constexpr uint64_t kMagic = 0x314c54434e4c464cull;  // the bytes "LFLNCTL1" on a little-endian host
constexpr uint32_t kVersion = 2;
constexpr uint32_t kHeaderSize = 256;
constexpr uint32_t kMaxLocalRanks = 64;
constexpr uint32_t kRankSlotSize = 128;
constexpr uint32_t kSize = kHeaderSize + kMaxLocalRanks * kRankSlotSize;  // 8448

// offset, width in bytes
constexpr size_t kMagicOff = 0;            // u64  kMagic
constexpr size_t kVersionOff = 8;          // u32  kVersion
constexpr size_t kSizeOff = 12;            // u32  kSize
constexpr size_t kOwnerUidOff = 16;        // u32  uid of the supervisor
constexpr size_t kSupervisorPidOff = 20;   // u32
constexpr size_t kTrainerPidOff = 24;      // u32  written by the client on attach
constexpr size_t kTrainerSignalOff = 28;   // u32  last stop signal the trainer itself received
constexpr size_t kRequestSeqOff = 32;      // u64  bumped for every checkpoint request (either side)
constexpr size_t kRequestReasonOff = 40;   // u32  Reason of the newest request
constexpr size_t kRequestFlagsOff = 44;    // u32  kFlagStop: leave after the commit
constexpr size_t kDeadlineOff = 48;        // u64  wall-clock ns by which the commit must be done (0 none)
constexpr size_t kAckSeqOff = 56;          // u64  request_seq the last commit answered
constexpr size_t kAckStepOff = 64;         // u64  step of that commit
constexpr size_t kCurrentStepOff = 72;     // u64  trainer's latest completed step (its heartbeat)
constexpr size_t kEveryStepsOff = 80;      // u64  policy: checkpoint every N steps (0 off)
constexpr size_t kSkipFirstStepsOff = 88;  // u64  policy: no periodic checkpoint before this step
constexpr size_t kCommitCountOff = 96;     // u64  commits by this attempt's trainer
constexpr size_t kLastCommitStepOff = 104; // u64
constexpr size_t kLastCommitNsOff = 112;   // u64  duration of the last commit
constexpr size_t kLastCommitBytesOff = 120;// u64
constexpr size_t kFailedSavesOff = 128;    // u64  saves that failed (disk full, ...)
constexpr size_t kClientStateOff = 136;    // u32  ClientState
constexpr size_t kStepsSeenOff = 144;      // u64  number of should_checkpoint calls with a new step
// Rank mode (docs/distributed.md): the agreement on one step, written by the supervisor.
constexpr size_t kAgreementSeqOff = 152;   // u64  request_seq the agreement answers (release, last)
constexpr size_t kAgreedStepOff = 160;     // u64  the step every rank checkpoints for it
constexpr size_t kStagingTokenOff = 168;   // u64  names the shared staging folder
constexpr size_t kAbandonedStepOff = 176;  // u64  newest collective checkpoint given up
constexpr size_t kAgreedStopOff = 184;     // u32  1: every rank leaves after the agreed step (before agreement_seq)
// 188..255 reserved, zero

// Rank slot i (a local rank) at kRankSlotsOff + i * kRankSlotSize; offsets within the slot.
constexpr size_t kRankSlotsOff = kHeaderSize;
constexpr size_t kSlotPidOff = 0;            // u32  0 = free; stored last on attach (release)
constexpr size_t kSlotRankOff = 4;           // u32  global rank
constexpr size_t kSlotWorldSizeOff = 8;      // u32
constexpr size_t kSlotStateOff = 12;         // u32  ClientState of this rank
constexpr size_t kSlotCurrentStepOff = 16;   // u64  heartbeat (relaxed)
constexpr size_t kSlotSeenSeqOff = 24;       // u64  newest request_seq seen (release, after promised_step)
constexpr size_t kSlotPromisedStepOff = 32;  // u64  no step beyond it before an agreement answers seen_seq
constexpr size_t kSlotPartStepOff = 40;      // u64  newest step whose part is durable (release, after part_bytes)
constexpr size_t kSlotPartBytesOff = 48;     // u64
constexpr size_t kSlotFailedStepOff = 56;    // u64  newest step whose part failed (release)
constexpr size_t kSlotFailedSavesOff = 64;   // u64  parts that failed
constexpr size_t kSlotPartNsOff = 72;        // u64  how long that part took, begin to durable (before part_step)
// 80..127 reserved, zero
constexpr size_t rank_slot(uint32_t local_rank) { return kRankSlotsOff + size_t(local_rank) * kRankSlotSize; }

constexpr uint32_t kFlagStop = 1u;

// Why a checkpoint was requested.
enum class Reason : uint32_t { none = 0, periodic = 1, stop_signal = 2, time_limit = 3, manual = 4, trainer_signal = 5 };

// What the trainer side is doing.
enum class ClientState : uint32_t { absent = 0, attached = 1, saving = 2, exiting = 3 };

}  // namespace lifeline::layout
