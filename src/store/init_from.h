#pragma once
// `lifeline run --init-from PATH` (fork a run, a warm start): the checkpoint of another run that a
// new run starts from, found and verified before anything starts. The source is only ever read:
// no lock, no leftovers cleanup, no retention there.
#include <optional>
#include <string>
#include <vector>

#include "store/checkpoint_store.h"

namespace lifeline {

// The verified checkpoint of another run that a fork starts from.
struct InitSource {
  std::string given;     // PATH as given, made absolute
  std::string dir;       // the source run's checkpoint dir: PATH, or the folder's parent when PATH is one checkpoint
  std::string lineage;   // the lineage its MANIFEST names ("" when none)
  CheckpointInfo checkpoint;            // valid
  std::vector<CheckpointInfo> skipped;  // newer checkpoints of the source dir that did not verify, newest first
};

// Why PATH cannot be the source of a run whose checkpoints go to `ckpt_dir` (and `local_dir`, the
// node-local tier; "" for none), or "" when it may: PATH equal to or inside one of the run's
// directories, or one of them inside PATH. Only paths are looked at (links resolved).
std::string init_from_path_problem(const std::string& path, const std::string& ckpt_dir, const std::string& local_dir);

// PATH resolved: one checkpoint folder (a MANIFEST in it, or a step-... name), verified in full;
// else a checkpoint directory's newest checkpoint that verifies in full. nullopt with `error`
// naming PATH (and each checkpoint skipped, with why) when there is none. Reads only.
std::optional<InitSource> resolve_init_from(const std::string& path, std::string* error);

// A world-size mismatch between the source checkpoint and this run's `world_size` ranks: the
// message, or "" when they agree (or `reshard`: the trainer reshards, LIFELINE_RESHARD=1).
std::string init_from_world_problem(const InitSource& source, uint32_t world_size, bool reshard);

// Whether `dir` holds a checkpoint that passes the quick check (manifest and sizes): then a run
// there resumes from its own checkpoints and --init-from is not used. Reads only.
bool has_own_checkpoint(const std::string& dir);

}  // namespace lifeline
