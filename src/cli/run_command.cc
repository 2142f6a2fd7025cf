// `lifeline run`: validates the policy and arguments, then hands over to the supervisor.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "cli/commands.h"
#include "common/errors.h"
#include "policy/units.h"
#include "store/dir_safety.h"
#include "store/file_system.h"
#include "store/init_from.h"
#include "supervisor/local_tier.h"
#include "supervisor/supervisor.h"

namespace lifeline::cli {

namespace {
const std::vector<std::string> kModes = {"auto", "scontrol", "sbatch", "exit", "local", "none"};

// --init-from checked and its checkpoint verified (into o.init_source), reading only: the
// refusal, or "". A run that has a checkpoint of its own resumes from it (--init-from is then
// ignored, said at the start), and a follower takes its leader's choice: neither reads PATH.
std::string init_from_refusal(RunOptions& o) {
  if (std::string why = init_from_path_problem(o.init_from, o.ckpt_dir, o.local_dir); !why.empty()) return why;
  PeerPlace place = peer_place(o);
  if (place.index > 0) return "";
  if (has_own_checkpoint(o.ckpt_dir) || (!o.local_dir.empty() && has_own_checkpoint(o.local_dir))) return "";
  std::string error;
  o.init_source = resolve_init_from(o.init_from, &error);
  if (!o.init_source) return error;
  // This run's world size is known here only with one supervisor per rank (srun -n); otherwise
  // the client refuses a checkpoint of another world size when the trainer attaches.
  const char* reshard = std::getenv("LIFELINE_RESHARD");
  if (place.per_rank)
    return init_from_world_problem(*o.init_source, place.peers, reshard && std::string(reshard) == "1");
  return "";
}
}

void register_run_command(CLI::App& app, int& rc) {
  auto* sub = app.add_subcommand("run", "run a training command under supervision");
  struct Args {
    std::string policy, ckpt_dir, requeue, grace, run_id, init_from;
    bool resume_anyway = false;
    int verbose = 0, quiet = 0;
    uint32_t peers = 0;
    int peer_index = -1;
    std::vector<std::string> command;
  };
  auto args = std::make_shared<Args>();
  sub->add_option("--policy", args->policy, "policy YAML file (default: built-in, as policies/default.yaml)");
  sub->add_option("--ckpt-dir", args->ckpt_dir, "checkpoint directory");
  sub->add_option("--requeue", args->requeue, "auto | scontrol | sbatch | exit | local | none")
      ->check(CLI::IsMember(kModes));
  sub->add_option("--run-id", args->run_id,
                  "a name for this run, kept in the checkpoint dir's run.json: a run of another name is refused there "
                  "(default: $LIFELINE_RUN_ID; without one the training command identifies the run)");
  sub->add_flag("--resume-anyway", args->resume_anyway,
                "resume from the checkpoints of another run in this directory (another --run-id, or the different "
                "command of a run that completed); also LIFELINE_RESUME_ANYWAY=1");
  sub->add_option("--init-from", args->init_from,
                  "fork another run: start this new run from that run's newest valid checkpoint (PATH: its checkpoint "
                  "dir) or from one checkpoint folder; the trainer gets LIFELINE_RESUME_KIND=warm. Ignored once this "
                  "run has checkpoints of its own (also LIFELINE_INIT_FROM)");
  sub->add_option("--grace", args->grace, "longest wait for the stop checkpoint (45, 90s, 2m30s, ...)");
  sub->add_option("--peers", args->peers,
                  "supervisors of this job, one per node (default: srun's SLURM_STEP_NUM_TASKS inside a step, else 1)")
      ->check(CLI::Range(1, 4096));
  sub->add_option("--peer-index", args->peer_index, "this supervisor's index, 0 = the leader (default: SLURM_PROCID)")
      ->check(CLI::Range(0, 4095));
  sub->add_flag("-v,--verbose", args->verbose, "more log lines (-vv: trace)");
  sub->add_flag("-q,--quiet", args->quiet, "fewer log lines (-qq: errors only)");
  sub->add_option("command", args->command, "training command and its arguments (after --)")->required();
  sub->positionals_at_end();
  sub->callback([args, &rc] {
    RunOptions o;
    try {
      o.policy = args->policy.empty() ? default_policy() : load_policy_file(args->policy);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "lifeline run: %s\n", e.what());
      rc = kExitUsage;
      return;
    }
    o.ckpt_dir = resolve_ckpt_dir(args->ckpt_dir, o.policy.checkpoint.dir);
    o.requeue_mode = args->requeue.empty() ? o.policy.requeue.mode : args->requeue;
    o.grace_seconds = o.policy.stop.grace_seconds;
    if (!args->grace.empty()) {
      try {
        o.grace_seconds = parse_duration(args->grace);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "lifeline run: --grace: %s (nothing started)\n", e.what());
        rc = kExitUsage;
        return;
      }
    }
    o.command = args->command;
    if (!args->run_id.empty()) {
      o.run_id = args->run_id;
    } else if (const char* id = std::getenv("LIFELINE_RUN_ID"); id && *id) {
      o.run_id = std::string(id);
    }
    const char* anyway = std::getenv("LIFELINE_RESUME_ANYWAY");
    o.resume_anyway = args->resume_anyway || (anyway && std::string(anyway) == "1");
    o.peers = args->peers;
    o.peer_index = args->peer_index;
    if (!args->init_from.empty()) {
      o.init_from = args->init_from;
    } else if (const char* from = std::getenv("LIFELINE_INIT_FROM"); from && *from) {
      o.init_from = std::string(from);
    }
    int level = args->verbose - args->quiet;
    if (level != 0) {
      const char* names[] = {"off", "error", "warning", "info", "debug", "trace"};
      o.log_level = names[std::max(0, std::min(5, 3 + level))];
    }
    // Everything that can be refused is refused before anything is written.
    if (std::string why = preflight_error(o); !why.empty()) {
      std::fprintf(stderr, "lifeline run: %s (nothing started)\n", why.c_str());
      rc = kExitUsage;
      return;
    }
    if (std::string why = unsafe_dir_reason(o.ckpt_dir); !why.empty()) {
      std::fprintf(stderr, "lifeline run: %s (nothing started)\n", why.c_str());
      rc = kExitUsage;
      return;
    }
    if (o.policy.storage.enabled()) {
      // Expanded again here: $TMPDIR may be set only where the job runs.
      try {
        o.local_dir = expand_variables(o.policy.storage.local_spec,
                                       [](const std::string& name) { return std::getenv(name.c_str()); });
      } catch (const std::invalid_argument& e) {
        std::fprintf(stderr, "lifeline run: %s: storage.local: %s (nothing started)\n", o.policy.source.c_str(), e.what());
        rc = kExitUsage;
        return;
      }
      if (o.local_dir.empty() || o.local_dir[0] != '/') {
        std::error_code ec;
        std::string abs = std::filesystem::absolute(o.local_dir, ec).lexically_normal().string();
        if (!ec) o.local_dir = abs;
      }
      std::string why = unsafe_dir_reason(o.local_dir);
      if (why.empty()) why = local_tier_problem(o.local_dir, o.ckpt_dir);
      if (!why.empty()) {
        std::fprintf(stderr, "lifeline run: %s (nothing started)\n", why.c_str());
        rc = kExitUsage;
        return;
      }
      try {
        default_file_system().make_dirs(o.local_dir);
      } catch (const SystemError& e) {
        std::fprintf(stderr, "lifeline run: cannot create storage.local %s: %s (nothing started)\n", o.local_dir.c_str(),
                     std::strerror(e.code));
        rc = kExitUsage;
        return;
      }
    }
    if (!o.init_from.empty()) {  // before the checkpoint directory is created: a refusal leaves nothing
      if (std::string why = init_from_refusal(o); !why.empty()) {
        std::fprintf(stderr, "lifeline run: %s (nothing started)\n", why.c_str());
        rc = kExitUsage;
        return;
      }
    }
    try {
      default_file_system().make_dirs(o.ckpt_dir);
    } catch (const SystemError& e) {
      std::fprintf(stderr, "lifeline run: cannot create checkpoint directory %s: %s\n", o.ckpt_dir.c_str(),
                   std::strerror(e.code));
      rc = kExitUsage;
      return;
    }
    try {
      rc = run_supervisor(o);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "lifeline run: %s\n", e.what());
      rc = kExitUsage;
    }
  });
}

}  // namespace lifeline::cli
