#pragma once
// Which rank of a distributed job this trainer process is, read from its launcher's variables
// (docs/distributed.md, "Who is a rank").
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace lifeline {

// A rank's place: its local rank picks its slot in the node's control block.
struct RankEnv {
  uint32_t local_rank = 0;
  uint32_t local_world_size = 1;
  uint32_t rank = 0;
  uint32_t world_size = 1;
  uint64_t agree_margin = 2;  // steps a rank may run on after seeing a request, before an agreement
  bool reshard = false;       // LIFELINE_RESHARD=1: the trainer loads a checkpoint of another world size
};

// Reads a variable; nullopt when unset.
using EnvLookup = std::function<std::optional<std::string>(const char*)>;
EnvLookup process_env();

// The rank this process is, or nullopt for a single trainer (a local world of one, or no
// launcher variables). LIFELINE_LOCAL_RANK / LIFELINE_LOCAL_WORLD_SIZE / LIFELINE_RANK /
// LIFELINE_WORLD_SIZE win over torchrun's LOCAL_RANK / LOCAL_WORLD_SIZE / RANK / WORLD_SIZE.
// Throws std::runtime_error naming the variable for a value that is not a number or out of range,
// and for a world larger than the local one (several nodes: not built yet).
std::optional<RankEnv> rank_env(const EnvLookup& env);

}  // namespace lifeline
