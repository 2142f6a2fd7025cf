#include "policy/explain.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <vector>

#include "policy/units.h"

namespace lifeline {
namespace {

std::string fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

// "1", "2.5", "172": counts and ratios without noise.
std::string number(double v) {
  if (std::fabs(v - std::round(v)) < 0.05) return fixed(std::round(v), 0);
  return fixed(v, 1);
}

std::string plural(double n, const char* one, const char* many) {
  return number(n) + " " + (std::fabs(n - 1) < 0.05 ? one : many);
}

std::string plural(uint64_t n, const char* one, const char* many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

// "USR1, TERM or INT" (with SIG prefixes).
std::string signal_list(const std::vector<int>& signals, const char* last_sep) {
  std::string out;
  for (size_t i = 0; i < signals.size(); ++i) {
    if (i > 0) out += i + 1 == signals.size() ? last_sep : ", ";
    out += "SIG" + signal_name(signals[i]);
  }
  return out;
}

std::string join_words(const std::vector<std::string>& parts, const char* last_sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i > 0) out += i + 1 == parts.size() ? last_sep : ", ";
    out += parts[i];
  }
  return out;
}

// Least common multiple, or 0 when it does not fit in 64 bits.
uint64_t safe_lcm(uint64_t a, uint64_t b) {
  uint64_t g = std::gcd(a, b);
  uint64_t a_over_g = a / g;
  if (b != 0 && a_over_g > UINT64_MAX / b) return 0;
  return a_over_g * b;
}

// "every 1000 steps or every 1h, whichever comes first" or "" when neither is on.
std::string periodic_words(const Policy::Checkpoint& c) {
  std::vector<std::string> rules;
  if (c.every_steps > 0) rules.push_back("every " + plural(c.every_steps, "step", "steps"));
  if (c.every_seconds > 0) rules.push_back("every " + format_duration(c.every_seconds));
  std::string out = join_words(rules, " or ");
  if (rules.size() > 1) out += ", whichever comes first";
  return out;
}

// "the newest 3, the best 1 by val_loss (lowest), every multiple of 10000 steps forever".
std::string retention_words(const Policy::Retention& r) {
  std::vector<std::string> rules;
  rules.push_back(r.keep_last <= 1 ? "the newest valid checkpoint"
                                   : "the newest " + std::to_string(r.keep_last));
  if (r.keep_best > 0)
    rules.push_back("the best " + std::to_string(r.keep_best) + " by " + r.metric +
                    (r.mode == Policy::Mode::min ? " (lowest)" : " (highest)"));
  if (r.keep_every_steps > 0)
    rules.push_back("every checkpoint at a multiple of " +
                    plural(r.keep_every_steps, "step", "steps") + " forever");
  std::string out = join_words(rules, " and ");
  if (r.max_total_bytes > 0)
    out += ", deleting older ones beyond " + format_size(static_cast<double>(r.max_total_bytes)) +
           " in total (the newest always stays)";
  return out;
}

}  // namespace

Explanation explain_policy(const Policy& p, const ExplainInputs& in) {
  const auto& c = p.checkpoint;
  const auto& r = p.retention;
  Explanation e;

  const bool step_known = in.step_seconds && *in.step_seconds > 0;
  std::optional<double> by_steps;
  if (c.every_steps > 0 && step_known)
    by_steps = static_cast<double>(c.every_steps) * *in.step_seconds;
  if (by_steps && c.every_seconds > 0) {
    e.interval_seconds = std::min(*by_steps, c.every_seconds);
  } else if (by_steps) {
    e.interval_seconds = by_steps;
  } else if (c.every_seconds > 0) {
    e.interval_seconds = c.every_seconds;
    e.interval_is_upper_bound = c.every_steps > 0;
  }
  if (e.interval_seconds && in.run_seconds)
    e.periodic_checkpoints = std::floor(*in.run_seconds / *e.interval_seconds);

  e.kept_newest = std::max<uint64_t>(r.keep_last, 1);
  e.kept_best = r.keep_best;
  if (r.keep_every_steps == 0) {
    e.kept_forever = 0.0;
  } else if (in.run_seconds && step_known) {
    uint64_t unit =
        c.every_steps > 0 ? safe_lcm(r.keep_every_steps, c.every_steps) : r.keep_every_steps;
    double steps = std::floor(*in.run_seconds / *in.step_seconds);
    e.kept_forever = unit == 0 ? 0.0 : std::floor(steps / static_cast<double>(unit));
  }
  if (e.kept_forever)
    e.kept_total =
        static_cast<double>(e.kept_newest) + static_cast<double>(e.kept_best) + *e.kept_forever;
  if (e.kept_total && e.periodic_checkpoints) {
    double made = std::max(*e.periodic_checkpoints, 1.0);
    if (*e.kept_total > made) {
      e.kept_total = made;
      e.kept_capped_by_run = true;
    }
  }
  if (in.checkpoint_bytes && *in.checkpoint_bytes > 0 && r.max_total_bytes > 0) {
    double cap = std::max(1.0, std::floor(static_cast<double>(r.max_total_bytes) /
                                          static_cast<double>(*in.checkpoint_bytes)));
    if (!e.kept_total || *e.kept_total > cap) {
      e.kept_total = cap;
      e.kept_capped_by_bytes = true;
      e.kept_capped_by_run = false;
    }
  }

  if (in.checkpoint_bytes && in.write_bytes_per_second > 0)
    e.checkpoint_write_seconds =
        static_cast<double>(*in.checkpoint_bytes) / in.write_bytes_per_second;
  if (in.checkpoint_bytes && e.kept_total)
    e.peak_disk_bytes = (*e.kept_total + 1) * static_cast<double>(*in.checkpoint_bytes);

  if (e.interval_seconds)
    e.lost_unsignalled_seconds = *e.interval_seconds / 2;
  else if (in.run_seconds)
    e.lost_unsignalled_seconds = *in.run_seconds / 2;
  e.signalled_stop_saves_work = c.on_signal && !p.stop.signals.empty() && p.stop.grace_seconds > 0;
  e.stop_checkpoint_may_not_fit = e.signalled_stop_saves_work && e.checkpoint_write_seconds &&
                                  *e.checkpoint_write_seconds > p.stop.grace_seconds;
  if (p.storage.enabled() && p.storage.drain) {
    double rate = in.shared_write_bytes_per_second.value_or(in.write_bytes_per_second);
    if (p.storage.drain_bandwidth > 0) rate = std::min(rate, static_cast<double>(p.storage.drain_bandwidth));
    e.drain_bytes_per_second = rate;
    if (in.checkpoint_bytes && rate > 0) e.drain_seconds = static_cast<double>(*in.checkpoint_bytes) / rate;
    e.stop_drain_may_not_fit = e.signalled_stop_saves_work && e.checkpoint_write_seconds && e.drain_seconds &&
                               !e.stop_checkpoint_may_not_fit &&
                               *e.checkpoint_write_seconds + *e.drain_seconds > p.stop.grace_seconds;
  }

  e.interruptions_assumed = !in.interruptions_per_day.has_value();
  e.interruptions_per_day = in.interruptions_per_day.value_or(1.0);
  if (e.interruptions_per_day > 0) e.mtbi_seconds = 86400.0 / e.interruptions_per_day;
  if (e.checkpoint_write_seconds && e.mtbi_seconds) {
    const double cost = *e.checkpoint_write_seconds;
    const double mtbi = *e.mtbi_seconds;
    e.optimal_interval_seconds = std::sqrt(2 * cost * mtbi);
    if (*e.optimal_interval_seconds > 0) {
      const double t = *e.optimal_interval_seconds;
      e.optimal_overhead_fraction = cost / t + t / (2 * mtbi);
      if (e.interval_seconds) {
        e.interval_over_optimal = *e.interval_seconds / t;
        e.overhead_fraction = cost / *e.interval_seconds + *e.interval_seconds / (2 * mtbi);
      }
    }
  }
  return e;
}

std::string render_explanation(const Policy& p, const ExplainInputs& in, const Explanation& e) {
  const auto& c = p.checkpoint;
  const auto& r = p.retention;
  std::string out;
  const std::string name = p.source.empty() ? "the built-in policy" : p.source;

  // Assumptions first, so every number below can be traced.
  std::vector<std::string> assume;
  assume.push_back(in.checkpoint_bytes
                       ? "checkpoints of " + format_size(static_cast<double>(*in.checkpoint_bytes))
                       : "checkpoint size unknown (--checkpoint-size)");
  assume.push_back("written at " + format_size(in.write_bytes_per_second) + "/s (--write-speed)");
  if (in.step_seconds)
    assume.push_back(format_duration(*in.step_seconds) + " per step (--step-time)");
  assume.push_back(in.run_seconds ? "a " + format_duration(*in.run_seconds) + " run"
                                  : "run length unknown (--run-time)");
  assume.push_back(plural(e.interruptions_per_day, "interruption", "interruptions") + " a day" +
                   (e.interruptions_assumed ? " (assumed; --interruptions-per-day)" : ""));
  out += name + ", assuming " + join_words(assume, " and ") + ".\n\n";

  // When.
  std::string when = periodic_words(c);
  out += "How often: ";
  if (when.empty()) {
    out += "no periodic checkpoints";
  } else {
    out += "a checkpoint " + when;
    if (e.interval_seconds && !e.interval_is_upper_bound && c.every_steps > 0 && in.step_seconds)
      out += ", that is every " + format_duration(*e.interval_seconds);
    else if (e.interval_is_upper_bound)
      out += " (pass --step-time to turn steps into time)";
  }
  if (c.skip_first_steps > 0)
    out += "; none during the first " + plural(c.skip_first_steps, "step", "steps");
  if (e.periodic_checkpoints && in.run_seconds)
    out += "; " + (e.interval_is_upper_bound ? std::string("at least ") : std::string("about ")) +
           number(*e.periodic_checkpoints) + " over the " + format_duration(*in.run_seconds) +
           " run";
  out += ".";
  if (c.on_signal && !p.stop.signals.empty())
    out += " When " + signal_list(p.stop.signals, " or ") +
           " arrives, lifeline asks for a checkpoint and waits up to " +
           format_duration(p.stop.grace_seconds) + " for it.";
  out += " The trainer may also commit checkpoints on its own (e.g. at the end).\n\n";

  // What is kept.
  out += "Kept: " + retention_words(r) + ".";
  if (e.kept_total) {
    out += " At most " + number(*e.kept_total) + " at once";
    if (e.kept_capped_by_bytes)
      out += " (the max_total_bytes limit)";
    else if (e.kept_capped_by_run)
      out += " (no more are made during the run)";
    else if (*e.kept_forever > 0)
      out += " at the end of the run, " + number(*e.kept_forever) + " of them kept forever";
    out += ".";
  } else if (r.keep_every_steps > 0) {
    out +=
        " The ones kept forever add up over time (pass --run-time and --step-time to count them).";
  }
  out += "\n\n";

  // Disk.
  out += "Disk: ";
  if (e.peak_disk_bytes)
    out += "up to " + format_size(*e.peak_disk_bytes) + " at peak (" + number(*e.kept_total) +
           " kept + 1 being written, " + format_size(static_cast<double>(*in.checkpoint_bytes)) +
           " each).";
  else if (!in.checkpoint_bytes)
    out += "pass --checkpoint-size to estimate.";
  else
    out +=
        "grows without a limit (set retention.max_total_bytes, or pass --run-time and "
        "--step-time).";
  if (e.checkpoint_write_seconds)
    out += " Writing one takes about " + format_duration(*e.checkpoint_write_seconds) + ".";
  out += "\n\n";

  // The node-local tier.
  if (p.storage.enabled()) {
    out += "Node-local tier: the trainer commits to " + p.storage.local_spec + " (keeping " +
           plural(p.storage.keep_local, "checkpoint", "checkpoints") + " there); ";
    if (!p.storage.drain) {
      out += "nothing is drained to the checkpoint dir (storage.drain: off), so a job that comes back on another "
             "node starts from what the checkpoint dir already holds.\n\n";
    } else {
      out += "lifeline copies each one to the checkpoint dir in the background at " +
             format_size(*e.drain_bytes_per_second) + "/s (" +
             (p.storage.drain_bandwidth > 0 && double(p.storage.drain_bandwidth) <= *e.drain_bytes_per_second
                  ? std::string("storage.drain_bandwidth")
                  : in.shared_write_bytes_per_second ? std::string("--shared-write-speed")
                                                     : std::string("assumed as fast as --write-speed; pass --shared-write-speed")) +
             ")";
      if (e.drain_seconds) {
        out += ": about " + format_duration(*e.drain_seconds) + " per checkpoint";
        if (e.checkpoint_write_seconds && e.signalled_stop_saves_work)
          out += ". A stop commits locally (" + format_duration(*e.checkpoint_write_seconds) + ") and drains (" +
                 format_duration(*e.drain_seconds) + ") within the " + format_duration(p.stop.grace_seconds) +
                 " grace: " +
                 (e.stop_drain_may_not_fit || e.stop_checkpoint_may_not_fit
                      ? std::string("that does not fit, so the stop checkpoint may stay on the node's disk")
                      : std::string("that fits"));
      } else {
        out += "; pass --checkpoint-size for how long a drain takes";
      }
      out += ".\n\n";
    }
  }

  // Work lost.
  std::string lost;
  if (e.interval_seconds)
    // Everything since the last checkpoint: up to one whole interval, half of one on average.
    lost = std::string("up to ") + (e.interval_is_upper_bound ? "about " : "") + format_duration(*e.interval_seconds) +
           " (one interval), about " + format_duration(*e.lost_unsignalled_seconds) + " on average";
  else if (e.lost_unsignalled_seconds)
    lost = "about " + format_duration(*e.lost_unsignalled_seconds) +
           " (half the run: nothing is periodic)";
  else
    lost = "everything since the attempt began (nothing is periodic)";
  out += "Work lost per interruption: ";
  if (e.signalled_stop_saves_work) {
    out += lost +
           " when the job dies without warning; about nothing when the scheduler signals first, "
           "since a stop checkpoint is written";
    if (e.stop_checkpoint_may_not_fit)
      out += " -- but writing one takes " + format_duration(*e.checkpoint_write_seconds) +
             ", longer than the " + format_duration(p.stop.grace_seconds) +
             " grace, so it may not finish: raise stop.grace_seconds";
    if (e.stop_drain_may_not_fit)
      out += " on the local disk -- but its drain to the checkpoint dir takes " + format_duration(*e.drain_seconds) +
             " more, and both do not fit in the " + format_duration(p.stop.grace_seconds) +
             " grace: a job that comes back on another node resumes from the newest checkpoint drained before "
             "(raise stop.grace_seconds, or checkpoint more often so less is lost)";
  } else {
    out += lost +
           ", signalled or not: there is no stop checkpoint (on_signal is off, no stop signals, "
           "or no grace)";
  }
  out += ".\n\n";

  // Young/Daly.
  out += "Best interval (Young/Daly, sqrt(2 x write time x mean time between interruptions)): ";
  if (!e.checkpoint_write_seconds) {
    out += "pass --checkpoint-size to compute it.\n";
  } else if (!e.mtbi_seconds) {
    out += "no interruptions expected, so periodic checkpoints only cost time.\n";
  } else {
    out += format_duration(*e.optimal_interval_seconds) + " (sqrt(2 x " +
           format_duration(*e.checkpoint_write_seconds) + " x " + format_duration(*e.mtbi_seconds) +
           ")). ";
    if (!e.interval_seconds) {
      out += "This policy has no periodic interval to compare.";
    } else if (e.interval_over_optimal) {
      const double k = *e.interval_over_optimal;
      const std::string at_most = e.interval_is_upper_bound ? "at most " : "";
      if (k >= 1.25)
        out += "Your interval (" + at_most + format_duration(*e.interval_seconds) + ") is " +
               fixed(k, 1) + "\u00d7 longer than optimal: checkpoint more often to lose less work.";
      else if (k <= 0.8)
        out += "Your interval (" + at_most + format_duration(*e.interval_seconds) + ") is " +
               fixed(1 / k, 1) +
               "\u00d7 shorter than optimal: writing checkpoints costs more than the interruptions "
               "it saves.";
      else
        out += "Your interval (" + at_most + format_duration(*e.interval_seconds) +
               ") is close to optimal.";
      out += " Expected overhead: " + fixed(*e.overhead_fraction * 100, 2) +
             "% of run time, against " + fixed(*e.optimal_overhead_fraction * 100, 2) +
             "% at the optimum";
      if (e.signalled_stop_saves_work) out += " (counting every interruption as unsignalled)";
      out += ".";
    }
    out += "\n";
  }
  return out;
}

std::string summarize_policy(const Policy& p) {
  const auto& c = p.checkpoint;
  std::string out = "Checkpoints ";
  std::string when = periodic_words(c);
  std::vector<std::string> triggers;
  if (!when.empty()) triggers.push_back(when);
  if (c.on_signal && !p.stop.signals.empty())
    triggers.push_back("when " + signal_list(p.stop.signals, " or ") + " arrives (waiting up to " +
                       format_duration(p.stop.grace_seconds) + ")");
  out += triggers.empty()
             ? "only when the trainer commits one on its own"
             : join_words(triggers, when.find(',') == std::string::npos ? " and " : ", and ");
  if (c.skip_first_steps > 0)
    out += ", none in the first " + plural(c.skip_first_steps, "step", "steps");
  out += ", into " +
         (c.dir.empty() ? std::string("--ckpt-dir, else $LIFELINE_CKPT_DIR, else ./checkpoints")
                        : c.dir) +
         ". ";
  out += "Keeps " + retention_words(p.retention) + ". ";
  switch (p.restart.resume) {
    case Policy::Resume::automatic:
      out += "Resumes from the newest valid checkpoint when there is one";
      break;
    case Policy::Resume::required:
      out += "Refuses to start without a valid checkpoint to resume from";
      break;
    case Policy::Resume::off:
      out += "Never resumes (every attempt starts from scratch)";
      break;
  }
  out += "; requeues (" + p.requeue.mode +
         (p.requeue.mode == "exit" ? ", exit code " + std::to_string(p.requeue.exit_code) : "") +
         ") up to " + plural(p.restart.max_requeues, "time", "times") + " and gives up after " +
         plural(p.restart.max_failures, "failure", "failures") +
         " in a row without a new checkpoint; local restarts wait " +
         format_duration(p.restart.backoff_seconds) + ", doubling up to " +
         format_duration(p.restart.max_backoff_seconds) + ".";
  if (p.storage.enabled())
    out += std::string(" Commits go to the node-local ") + p.storage.local_spec +
           (p.storage.drain ? " first and are drained to the checkpoint dir in the background." : " only (no drain).");
  if (p.stop.hang_seconds > 0)
    out += " A trainer silent for " + format_duration(p.stop.hang_seconds) + " counts as hung.";
  return out;
}

}  // namespace lifeline
