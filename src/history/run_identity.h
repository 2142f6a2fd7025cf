#pragma once
// RunIdentity is what <ckpt dir>/run.json says about the run whose checkpoints the directory
// holds: its name (--run-id / LIFELINE_RUN_ID), its training command, whether it completed. A
// new `lifeline run` in the same directory compares itself with it before resuming, so another
// experiment never silently continues from this one's checkpoints (docs/contract.md).
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

namespace lifeline {

constexpr const char* kRunIdentityName = "run.json";

// The checkpoint of another run that this run was forked from (`--init-from`, a warm start), as
// run.json and the first attempt's attempt_start record it.
struct RunParent {
  std::string dir;         // the source run's checkpoint directory
  std::string lineage;     // the source checkpoint's lineage ("" when its MANIFEST names none)
  uint64_t step = 0;
  std::string checkpoint;  // the checkpoint folder, absolute
};
// {"dir", "lineage" (null when unknown), "step", "checkpoint"}; null for none.
nlohmann::json parent_json(const std::optional<RunParent>& parent);
// None for null or anything that is not such an object.
std::optional<RunParent> parent_from_json(const nlohmann::json& j);
// "forked from DIR (lineage L, step S)", for people.
std::string parent_words(const RunParent& parent);

// The run whose checkpoints a directory holds, as run.json records it.
struct RunIdentity {
  std::optional<std::string> run_id;
  std::vector<std::string> command;
  std::string policy;      // the policy file it used ("" = built-in)
  bool completed = false;  // its last attempt ended `completed`
  std::optional<RunParent> parent;  // the run it was forked from (--init-from), if any
};

// None when there is no run.json (a new directory, or one from before run.json existed);
// `error` says why when the file is there but unusable.
std::optional<RunIdentity> read_run_identity(const std::string& dir, std::string* error = nullptr);
// Replaces run.json atomically and durably; false with `error` on failure.
bool write_run_identity(const std::string& dir, const RunIdentity& id, std::string* error);

// What a new run in a directory that holds `was` must do.
struct IdentityCheck {
  enum class Verdict { same, changed, refuse } verdict = Verdict::same;
  std::string why;  // changed / refuse: what differs, in words
};
// refuse: both runs are named and the names differ, or the command differs from that of a run
// that completed (a new experiment in the old one's directory). changed: the command differs from
// that of a run that was stopped (resumed with other flags: said, recorded, allowed). same: the
// same name, or the same command.
IdentityCheck check_run_identity(const RunIdentity& was, const RunIdentity& now);

// "prog --a 1 --b" for messages, each word quoted when it needs it.
std::string command_words(const std::vector<std::string>& argv);

}  // namespace lifeline
