#pragma once
// What earlier attempts of a checkpoint directory's lineage left in its history, read through
// the ledger: the next attempt's number, the failure and requeue budgets used so far, and the
// commit durations that size the time-limit lead.
#include <cstdint>
#include <string>
#include <vector>

#include "history/ledger.h"

namespace lifeline {

// What earlier attempts of this directory's lineage left: for the next attempt's numbers and budgets.
struct LineageState {
  std::string lineage;                 // the first attempt's lineage id; "" when none recorded
  uint64_t attempts = 0;               // attempts so far: the next attempt's number
  uint64_t failures_in_row = 0;        // trailing recorded ends that failed without a commit
  uint64_t requeues = 0;               // requeue results requeued, resubmitted, exit code
  std::vector<double> commit_seconds;  // every measured commit duration, oldest first
};

// Pure. An attempt without a recorded end (lost, running) neither adds to nor breaks
// failures_in_row; a local restart is not a requeue; commits without a measured duration are
// not in commit_seconds.
LineageState lineage_state(const Ledger& ledger);

// lineage_state of `dir`'s history (read_history_events, fold_history), with a new random
// lineage id (new_lineage_id) when the history names none.
LineageState read_lineage(const std::string& dir);

// 16 random hex digits.
std::string new_lineage_id();

}  // namespace lifeline
