#pragma once
// LocalTier is one supervisor's node-local checkpoint tier (docs/storage.md): the trainer commits
// into a fast local directory; this drains each commit to the shared checkpoint directory in the
// background (DrainQueue), keeps storage.keep_local checkpoints locally, picks the resume point
// across both tiers, holds a stop until its checkpoint is drained (or its deadline), and keeps
// <shared>/tier.json up to date for `lifeline status` and for the next attempt.
#include <atomic>
#include <chrono>
#include <functional>
#include <cstdint>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "store/checkpoint_store.h"
#include "store/drain.h"

namespace lifeline {

// <shared dir>/tier.json: the tier's state (host, local dir, newest local and drained steps, the
// drain in flight), rewritten as it changes.
constexpr const char* kTierFileName = "tier.json";
// <local dir>/.lifeline-tier.json: which checkpoint directory this local directory belongs to.
constexpr const char* kTierMarkerName = ".lifeline-tier.json";

// Why `local` cannot be the local tier of checkpoint dir `shared` ("" when it can): the same
// directory, one inside the other, or a local dir that already belongs to another checkpoint dir.
std::string local_tier_problem(const std::string& local, const std::string& shared);

// One supervisor's node-local tier: drains, keep_local, the resume across tiers, tier.json.
class LocalTier {
 public:
  struct Options {
    std::string local_dir, shared_dir;  // absolute
    bool drain = true;
    uint64_t keep_local = 2;
    uint64_t drain_bandwidth = 0;  // bytes/s, 0 = unlimited
    std::string host;              // this node
    // One of several supervisors per job (docs/storage.md): what drains is this node's ranks'
    // parts, into the job's shared staging folder (drain_parts), and the leader commits there;
    // nothing is committed locally, so nothing is kept or resumed locally either.
    bool parts = false;
    bool status_file = true;       // writes <shared>/tier.json (the job's leader only, with parts)
    std::function<void()> wake;    // called on the drain thread after each event (may be empty)
  };
  // One drain's outcome, reported on the supervisor's loop (take_events).
  using Event = DrainQueue::Event;

  // Creates the local directory and its marker; throws std::runtime_error naming the path.
  explicit LocalTier(Options options);
  ~LocalTier();
  LocalTier(const LocalTier&) = delete;
  LocalTier& operator=(const LocalTier&) = delete;

  const Options& options() const { return opt_; }

  // What the start of an attempt found across the tiers.
  struct Start {
    ResumeChoice choice;                 // the newest valid of either tier (skips: both tiers')
    std::optional<Event> drained_first;  // a local checkpoint newer than every shared one, drained now
    // A checkpoint the previous attempt committed on a local disk that is not here (another
    // node, a wiped $TMPDIR) and never reached shared storage: {step, host, local_dir}.
    std::optional<nlohmann::json> lost;
  };
  // At an attempt's start, with no writer alive in either directory. Synchronous: a local
  // checkpoint newer than the shared ones is drained before the trainer starts.
  Start start();

  // A commit into the local directory: queue its drain, apply keep_local. With parts: the
  // job's commit on shared storage (every node's parts drained): the local parts go.
  void committed(uint64_t step, uint64_t bytes);
  // With parts: the attempt's staging token (the control block's), which names the folders.
  void set_parts_token(uint64_t token);
  // With parts: every rank of this node has made its part of `step` durable locally: drain them.
  void parts_durable(uint64_t step);
  // With parts: the leader gave `step` up: its local parts go.
  void parts_abandoned(uint64_t step);
  // A stop began: drains run at full speed from now on (the trainer no longer competes).
  void lift_cap();
  // Drains finished (or skipped, or failed) since the last call; on the caller's thread.
  std::vector<Event> take_events();
  // A stop: lifts the bandwidth cap and waits until nothing is left to drain, or `deadline`.
  // True when the newest local checkpoint is on shared storage.
  bool settle(std::chrono::steady_clock::time_point deadline);
  // Seconds a drain of `bytes` is expected to take at the measured rate (none measured: nullopt).
  std::optional<double> drain_seconds(uint64_t bytes) const;

  // A drain is in flight.
  bool busy() const;
  std::optional<uint64_t> newest_local() const;
  std::optional<uint64_t> newest_drained() const;
  // tier.json's object; `write_status` rewrites it (durable when a step changed).
  nlohmann::json status() const;
  void write_status(bool durable);

 private:
  void on_event(const Event& e);  // on the drain thread
  void keep_local(std::optional<uint64_t> also_keep);
  void remove_local_parts(uint64_t up_to);  // parts mode: local staging folders of steps <= up_to

  Options opt_;
  mutable std::mutex mu_;
  std::vector<Event> events_;
  std::optional<uint64_t> newest_local_, newest_drained_;
  uint64_t newest_local_bytes_ = 0;
  double measured_rate_ = 0;  // bytes/s of the last drain that copied something
  std::atomic<uint64_t> parts_token_{0};
  std::unique_ptr<DrainQueue> queue_;  // last: its thread reports into the members above
};

}  // namespace lifeline
