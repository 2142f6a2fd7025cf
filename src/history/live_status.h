#pragma once
// What a checkpoint directory's supervisor is doing now (`lifeline status`), and asking it for a
// checkpoint (`lifeline request`): the library side of both; the CLI only parses and prints.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "control/control_block.h"
#include "history/ledger.h"
#include "history/supervisor_record.h"

namespace lifeline {

// LiveSupervisor is a running supervisor of this host, attached to its live control block.
struct LiveSupervisor {
  SupervisorRecord record;
  ControlBlock block;
};

// Finds the supervisor of `dir` and attaches to its block; on failure says why in `why`.
std::optional<LiveSupervisor> attach_supervisor(const std::string& dir, std::string& why);

// Everything `status` says about a live supervisor (`block` null: not reachable from here), as
// JSON (docs/history.md lists the fields). With `sample_seconds` > 0 it reads the step twice
// that far apart for the rate; else the rate comes from the history.
nlohmann::ordered_json live_status(const std::string& dir, const SupervisorRecord& rec, const ControlBlock* block,
                                   const Ledger& ledger, double sample_seconds);

// The whole `status --json` object for `dir`: live_status when its supervisor runs (here, or
// elsewhere with its attempt still open), else {"running": false, "reason", "last_attempt",
// "summary", "newest_checkpoint"}. `record` and `ledger` are what the caller read of `dir`.
nlohmann::ordered_json status_report(const std::string& dir, const std::optional<SupervisorRecord>& record,
                                     const Liveness& live, const Ledger& ledger, double sample_seconds);

// <dir>/tier.json, the node-local tier's state (docs/storage.md), or null when there is none.
nlohmann::ordered_json tier_status(const std::string& dir);

// Posts a manual checkpoint request on `sup`'s block and records it in dir's history.jsonl as
// asked by `by` (pid of this process); returns the request's sequence number.
uint64_t post_checkpoint_request(const std::string& dir, const LiveSupervisor& sup, const std::string& by);

// CommitWait is how waiting for the checkpoint that answers a request ended.
struct CommitWait {
  std::optional<uint64_t> committed_step;  // set when a commit acknowledged the request
  std::string failure;                     // else why not (timeout, supervisor or attempt gone)
  double waited_seconds = 0;
};

// Waits until a commit acknowledges request `seq` (ack_seq >= seq), the supervisor exits, its
// attempt ends, or `timeout_seconds` pass; polls every 20 ms.
CommitWait wait_for_commit(const std::string& dir, const LiveSupervisor& sup, uint64_t seq, double timeout_seconds);

}  // namespace lifeline
