#pragma once
// The `lifeline run` supervisor: starts the trainer, turns signals into checkpoint requests,
// waits for the committed ack, and ends each attempt by completing, restarting or requeueing.
#include <optional>
#include <string>
#include <vector>

#include "policy/policy.h"
#include "store/init_from.h"

namespace lifeline {

// Everything `lifeline run` was asked to do, already validated.
struct RunOptions {
  Policy policy;
  std::string ckpt_dir;       // absolute
  std::string local_dir;      // storage.local expanded and absolute ("" = no node-local tier)
  std::optional<std::string> run_id;  // --run-id / LIFELINE_RUN_ID: the run's name (run.json)
  bool resume_anyway = false;         // --resume-anyway / LIFELINE_RESUME_ANYWAY=1: resume another run's checkpoints
  // --init-from / LIFELINE_INIT_FROM: another run's checkpoint dir or checkpoint folder to fork from
  // (a warm start; "" for none), and it resolved and verified before the start (none when the run
  // has a checkpoint of its own, or on a follower: the leader chooses).
  std::string init_from;
  std::optional<InitSource> init_source;
  std::string requeue_mode;   // auto | scontrol | sbatch | exit | local | none
  double grace_seconds = 25;  // longest wait for the stop checkpoint
  std::vector<std::string> command;
  std::string log_level;      // spdlog level name; "" = $LIFELINE_LOG_LEVEL, else info
  // Several supervisors of one job (docs/distributed.md): how many and which one this is (0 is
  // the leader). 0 / -1: from srun's SLURM_STEP_NUM_TASKS / SLURM_PROCID, else one supervisor.
  uint32_t peers = 0;
  int peer_index = -1;
};

// Who this supervisor is among the job's supervisors.
struct PeerPlace {
  uint32_t peers = 1;
  uint32_t index = 0;
  bool per_rank = false;  // more supervisors than nodes: each one's trainer is one rank (srun -n)
};
// From the options, else srun's environment; throws std::runtime_error naming a bad value.
PeerPlace peer_place(const RunOptions& options);

// Runs the trainer under supervision; returns the exit status of `lifeline run` (docs/contract.md).
int run_supervisor(const RunOptions& options);

// What `lifeline run` can refuse before it writes anything (no directory, lock or history):
// a training command that is not an executable, a requeue mode this environment cannot do, a
// grace period out of range. "" when the run may start, else the message to print.
std::string preflight_error(const RunOptions& options);

// `auto` made concrete: scontrol inside a Slurm batch job, local outside; others unchanged.
std::string effective_requeue_mode(const std::string& mode, bool in_slurm_job);

// Exit status when the trainer stopped with a committed checkpoint and no requeue happened.
constexpr int kExitStopped = 75;
// Exit status for bad arguments or a bad policy (nothing started).
constexpr int kExitUsage = 2;

}  // namespace lifeline
