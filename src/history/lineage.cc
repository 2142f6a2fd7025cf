#include "history/lineage.h"

#include <cstdio>
#include <random>

#include "common/clock.h"
#include "history/history.h"
#include "history/names.h"

namespace lifeline {

LineageState lineage_state(const Ledger& ledger) {
  LineageState s;
  s.attempts = ledger.attempts.size();
  for (const Attempt& a : ledger.attempts) {
    if (s.lineage.empty()) s.lineage = a.lineage;
    for (const CommitRecord& c : a.commits)
      if (c.duration_known) s.commit_seconds.push_back(c.duration_s);
    // Requeues that cost a job in the queue; a local restart (restart) does not.
    auto r = parse_requeue_result(a.requeue_result);
    if (r == RequeueResult::requeued || r == RequeueResult::resubmitted || r == RequeueResult::exit_code) ++s.requeues;
    if (a.running || a.end_estimated) continue;  // no attempt_end: no say in the failure count
    bool failed = parse_end_reason(a.end_reason) == EndReason::failed;
    s.failures_in_row = failed && a.checkpoints == 0 ? s.failures_in_row + 1 : 0;
  }
  return s;
}

LineageState read_lineage(const std::string& dir) {
  LineageState s = lineage_state(fold_history(read_history_events(dir), Liveness{}, wall_ns()));
  if (s.lineage.empty()) s.lineage = new_lineage_id();
  return s;
}

std::string new_lineage_id() {
  std::random_device rd;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%08x%08x", rd(), rd());
  return buf;
}

}  // namespace lifeline
