#pragma once
// The words history.jsonl uses for end reasons, requeue modes and results, and checkpoint
// request reasons: one enum each, and one table each that spells them as the history does.
#include <optional>
#include <string_view>

namespace lifeline {

// How an attempt ended (attempt_end.end_reason; "lost" only ever comes from the ledger).
// peer_lost: another supervisor of the job (another node) stopped answering (docs/distributed.md).
enum class EndReason { completed, stopped, preempted, time_limit, failed, lost, peer_lost };

// How the next attempt is brought about (attempt_start.requeue_mode, requeue.mode).
enum class RequeueMode { automatic /* "auto" */, scontrol, sbatch, exit, local, none };

// What a requeue event did (requeue.result).
enum class RequeueResult {
  requeued,
  resubmitted,
  exit_code /* "exit code" */,
  not_requeued /* "not requeued" */,
  restart,
  failed,
  budget_exhausted /* "budget exhausted" */
};

// Why a checkpoint was requested (checkpoint_request.reason).
enum class RequestReason { periodic, stop_signal, time_limit, manual };

std::string_view name(EndReason reason);
std::string_view name(RequeueMode mode);
std::string_view name(RequeueResult result);
std::string_view name(RequestReason reason);

// The value the history spells `text`; none for any other text (case and spaces matter).
std::optional<EndReason> parse_end_reason(std::string_view text);
std::optional<RequeueMode> parse_requeue_mode(std::string_view text);
std::optional<RequeueResult> parse_requeue_result(std::string_view text);
std::optional<RequestReason> parse_request_reason(std::string_view text);

// A requeue that brought the next attempt about (requeued, resubmitted, exit code, restart),
// as opposed to one that was tried and failed or never made.
bool requeue_happened(RequeueResult result);

}  // namespace lifeline
