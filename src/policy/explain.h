// What a policy means in practice: a one-paragraph summary (`lifeline policy check`) and
// the numbers behind `lifeline policy explain` (checkpoint interval, disk use, work lost,
// Young/Daly optimum), computed by a pure function and rendered as plain text.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "policy/policy.h"

namespace lifeline {

// What the user says about the run; an unset field is unknown and the numbers that need it
// are left unset.
struct ExplainInputs {
  std::optional<uint64_t> checkpoint_bytes;     // --checkpoint-size
  std::optional<double> run_seconds;            // --run-time
  std::optional<double> interruptions_per_day;  // --interruptions-per-day; unset = assume 1
  double write_bytes_per_second = 1024.0 * 1024 * 1024;  // --write-speed
  std::optional<double> step_seconds;                    // --step-time, turns every_steps into time
  // --shared-write-speed: the checkpoint dir's disk, where a node-local tier drains to; unset =
  // the same as write_bytes_per_second.
  std::optional<double> shared_write_bytes_per_second;
};

// The numbers `policy explain` prints. Times in seconds, sizes in bytes. Every count is an
// upper bound where rules may overlap (a checkpoint can be both newest and best).
struct Explanation {
  // Time between periodic checkpoints: the smaller of every_seconds and every_steps ×
  // step time. With every_steps set but no step time it is every_seconds, an upper bound.
  // Unset when neither rule can give a time.
  std::optional<double> interval_seconds;
  bool interval_is_upper_bound = false;
  std::optional<double> periodic_checkpoints;  // floor(run / interval), over the whole run

  uint64_t kept_newest = 0;            // max(keep_last, 1): the newest is always kept
  uint64_t kept_best = 0;              // keep_best
  std::optional<double> kept_forever;  // multiples of keep_every_steps over the run
  std::optional<double> kept_total;    // all of the above, capped as below; unset = grows
  bool kept_capped_by_run = false;     // fewer checkpoints are made than the rules keep
  bool kept_capped_by_bytes = false;   // max_total_bytes is the limit

  std::optional<double> checkpoint_write_seconds;  // size / write speed
  std::optional<double> peak_disk_bytes;           // (kept_total + 1 in flight) × size

  // Work lost when the job dies without a signal: half the interval (half the run when
  // nothing is periodic). A signalled stop loses ~nothing when signalled_stop_saves_work.
  std::optional<double> lost_unsignalled_seconds;
  bool signalled_stop_saves_work = false;    // on_signal, signals set, grace_seconds > 0
  bool stop_checkpoint_may_not_fit = false;  // writing a checkpoint (and its drain) takes longer than grace

  // With a node-local tier (storage.local): the drain of one checkpoint to the checkpoint dir, at
  // the shared disk's speed capped by storage.drain_bandwidth. A stop commits locally, then
  // drains within the grace period: when both do not fit, the resume point is the newest
  // checkpoint drained before.
  std::optional<double> drain_bytes_per_second;
  std::optional<double> drain_seconds;
  bool stop_drain_may_not_fit = false;

  double interruptions_per_day = 1;
  bool interruptions_assumed = true;
  std::optional<double> mtbi_seconds;  // 86400 / interruptions_per_day; unset when 0
  // Young/Daly: sqrt(2 × checkpoint_write_seconds × mtbi_seconds).
  std::optional<double> optimal_interval_seconds;
  std::optional<double> interval_over_optimal;  // interval / optimal
  // First-order share of time wasted: write / interval + interval / (2 × MTBI).
  std::optional<double> overhead_fraction;
  std::optional<double> optimal_overhead_fraction;
};

// The numbers for policy p under the given assumptions. Pure.
Explanation explain_policy(const Policy& p, const ExplainInputs& in);

// Plain-language text for `policy explain`, several short paragraphs.
std::string render_explanation(const Policy& p, const ExplainInputs& in, const Explanation& e);

// One paragraph saying what the policy does, for `policy check`.
std::string summarize_policy(const Policy& p);

}  // namespace lifeline
