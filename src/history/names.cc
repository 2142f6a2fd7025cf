#include "history/names.h"

#include <array>
#include <utility>

namespace lifeline {

namespace {

template <typename E, size_t N>
using NameTable = std::array<std::pair<E, std::string_view>, N>;

constexpr NameTable<EndReason, 7> kEndReasons{{
    {EndReason::completed, "completed"},
    {EndReason::stopped, "stopped"},
    {EndReason::preempted, "preempted"},
    {EndReason::time_limit, "time_limit"},
    {EndReason::failed, "failed"},
    {EndReason::lost, "lost"},
    {EndReason::peer_lost, "peer_lost"},
}};

constexpr NameTable<RequeueMode, 6> kRequeueModes{{
    {RequeueMode::automatic, "auto"},
    {RequeueMode::scontrol, "scontrol"},
    {RequeueMode::sbatch, "sbatch"},
    {RequeueMode::exit, "exit"},
    {RequeueMode::local, "local"},
    {RequeueMode::none, "none"},
}};

constexpr NameTable<RequeueResult, 7> kRequeueResults{{
    {RequeueResult::requeued, "requeued"},
    {RequeueResult::resubmitted, "resubmitted"},
    {RequeueResult::exit_code, "exit code"},
    {RequeueResult::not_requeued, "not requeued"},
    {RequeueResult::restart, "restart"},
    {RequeueResult::failed, "failed"},
    {RequeueResult::budget_exhausted, "budget exhausted"},
}};

constexpr NameTable<RequestReason, 4> kRequestReasons{{
    {RequestReason::periodic, "periodic"},
    {RequestReason::stop_signal, "stop_signal"},
    {RequestReason::time_limit, "time_limit"},
    {RequestReason::manual, "manual"},
}};

template <typename E, size_t N>
std::string_view name_in(const NameTable<E, N>& table, E value) {
  for (const auto& [v, text] : table)
    if (v == value) return text;
  return "";  // not reached: every table names every value
}

template <typename E, size_t N>
std::optional<E> parse_in(const NameTable<E, N>& table, std::string_view text) {
  for (const auto& [v, t] : table)
    if (t == text) return v;
  return std::nullopt;
}

}  // namespace

std::string_view name(EndReason reason) { return name_in(kEndReasons, reason); }
std::string_view name(RequeueMode mode) { return name_in(kRequeueModes, mode); }
std::string_view name(RequeueResult result) { return name_in(kRequeueResults, result); }
std::string_view name(RequestReason reason) { return name_in(kRequestReasons, reason); }

std::optional<EndReason> parse_end_reason(std::string_view text) { return parse_in(kEndReasons, text); }
std::optional<RequeueMode> parse_requeue_mode(std::string_view text) { return parse_in(kRequeueModes, text); }
std::optional<RequeueResult> parse_requeue_result(std::string_view text) { return parse_in(kRequeueResults, text); }
std::optional<RequestReason> parse_request_reason(std::string_view text) { return parse_in(kRequestReasons, text); }

bool requeue_happened(RequeueResult result) {
  return result == RequeueResult::requeued || result == RequeueResult::resubmitted ||
         result == RequeueResult::exit_code || result == RequeueResult::restart;
}

}  // namespace lifeline
