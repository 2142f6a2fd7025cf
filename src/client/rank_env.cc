#include "client/rank_env.h"

#include <cstdlib>
#include <stdexcept>

#include "lifeline/control_layout.h"

namespace lifeline {

EnvLookup process_env() {
  return [](const char* name) -> std::optional<std::string> {
    const char* v = std::getenv(name);
    if (!v) return std::nullopt;
    return std::string(v);
  };
}

namespace {

// The first of `names` that is set, parsed as a decimal number in [min, max].
std::optional<uint64_t> number(const EnvLookup& env, std::initializer_list<const char*> names, uint64_t min, uint64_t max) {
  for (const char* name : names) {
    std::optional<std::string> v = env(name);
    if (!v) continue;
    const std::string& s = *v;
    bool digits = !s.empty() && s.size() <= 19 && s.find_first_not_of("0123456789") == std::string::npos;
    uint64_t n = digits ? std::strtoull(s.c_str(), nullptr, 10) : 0;
    if (!digits || n < min || n > max)
      throw std::runtime_error(std::string("lifeline: ") + name + "='" + s + "' is not a number from " +
                               std::to_string(min) + " to " + std::to_string(max));
    return n;
  }
  return std::nullopt;
}

}  // namespace

std::optional<RankEnv> rank_env(const EnvLookup& env) {
  std::optional<uint64_t> local_world =
      number(env, {"LIFELINE_LOCAL_WORLD_SIZE", "LOCAL_WORLD_SIZE"}, 1, UINT32_MAX);
  // Several supervisors of one job (one per node, docs/distributed.md): every trainer is a rank,
  // even one alone on its node.
  uint64_t peers = number(env, {"LIFELINE_PEERS"}, 1, UINT32_MAX).value_or(1);
  if (peers > 1 && !local_world) local_world = 1;
  if (!local_world || (*local_world == 1 && peers == 1)) return std::nullopt;
  if (*local_world > layout::kMaxLocalRanks)
    throw std::runtime_error("lifeline: " + std::to_string(*local_world) + " local ranks (LOCAL_WORLD_SIZE) are more than " +
                             std::to_string(layout::kMaxLocalRanks) + ", the most one control block serves");
  RankEnv r;
  r.local_world_size = uint32_t(*local_world);
  std::optional<uint64_t> local_rank = number(env, {"LIFELINE_LOCAL_RANK", "LOCAL_RANK"}, 0, r.local_world_size - 1);
  if (!local_rank && r.local_world_size == 1) local_rank = 0;
  if (!local_rank)
    throw std::runtime_error("lifeline: LOCAL_WORLD_SIZE is " + std::to_string(r.local_world_size) +
                             " but LOCAL_RANK (or LIFELINE_LOCAL_RANK) is not set");
  r.local_rank = uint32_t(*local_rank);
  r.world_size = uint32_t(number(env, {"LIFELINE_WORLD_SIZE", "WORLD_SIZE"}, 1, UINT32_MAX).value_or(r.local_world_size));
  r.rank = uint32_t(number(env, {"LIFELINE_RANK", "RANK"}, 0, r.world_size - 1).value_or(r.local_rank));
  if (peers == 1 && r.world_size != r.local_world_size)
    throw std::runtime_error("lifeline: WORLD_SIZE " + std::to_string(r.world_size) + " spans several nodes (LOCAL_WORLD_SIZE " +
                             std::to_string(r.local_world_size) +
                             ") but this lifeline run is the job's only supervisor: start one per node with srun "
                             "(docs/distributed.md, jobscripts/multi-node.sbatch)");
  if (r.world_size < r.local_world_size)
    throw std::runtime_error("lifeline: WORLD_SIZE " + std::to_string(r.world_size) + " is smaller than LOCAL_WORLD_SIZE " +
                             std::to_string(r.local_world_size));
  r.agree_margin = number(env, {"LIFELINE_AGREE_MARGIN"}, 1, 1000000).value_or(2);
  std::optional<std::string> reshard = env("LIFELINE_RESHARD");
  r.reshard = reshard && *reshard == "1";
  return r;
}

}  // namespace lifeline
