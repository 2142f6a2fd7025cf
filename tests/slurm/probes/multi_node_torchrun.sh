#!/usr/bin/env bash
# Probe: a real 3-node cluster (tests/slurm/cluster.sh --nodes 3) runs multi-node torchrun.
#
#   tests/slurm/probes/multi_node_torchrun.sh        (root; ~1 min)
#
# 1. One batch job, --nodes=3 --ntasks-per-node=1: srun starts one torchrun agent per node
#    (--nnodes 3 --node_rank $SLURM_NODEID --nproc_per_node 1, master = first node) running
#    examples/train_ddp.py without lifeline (LIFELINE_CONTROL unset); must end COMPLETED with
#    rank 0's digest file written.
# 2. (a) Does `scancel --signal=USR1 JOB` (no --batch) reach the srun task on every node
#    (and does the batch shell get it)?
#    (b) Does a torch.distributed.run agent survive SIGUSR1 sent that way to its step?
# Prints RESULT lines with what was seen and how long it took. Stops the cluster on exit.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../../.." && pwd)
cluster=$here/../cluster.sh
PYTHON=${PYTHON:-/usr/bin/python3}
TRAINER=${TRAINER:-$src/examples/train_ddp.py}
[[ $EUID -eq 0 ]] || { echo "run as root" >&2; exit 2; }
[[ -r "$TRAINER" ]] || { echo "no trainer at $TRAINER" >&2; exit 2; }

D=$(mktemp -d /tmp/ll-mn-XXXXXX)
trap 'bash "$cluster" stop "$D"; rm -rf "$D"' EXIT
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
result() { echo "RESULT $*"; }
fail=0

# Polls `scontrol show job` until the job has ended or $2 s passed; prints the state.
wait_end() {
  local id=$1 limit=$2 t0 s
  t0=$(now)
  while :; do
    s=$(scontrol show job -o "$id" 2>/dev/null | grep -oE 'JobState=[A-Z_]+' | cut -d= -f2)
    case "$s" in COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY) break ;; esac
    (($(since "$t0" | cut -d. -f1) >= limit)) && break
    sleep 0.2
  done
  echo "$s"
}
# torchrun agents running in this cluster's node namespaces (not other clusters' or the host's).
count_agents() {
  local ns p n=0
  while read -r _ ns _; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do
      tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q "^$PYTHON -m torch.distributed.run " && n=$((n + 1))
    done
  done <"$D/nodes"
  echo "$n"
}
# Waits until the job has a running step 0 (srun started), up to $2 s.
wait_step() {
  local id=$1 limit=$2 i
  for ((i = 0; i < limit * 5; i++)); do
    squeue -h -s -j "$id" -o %i 2>/dev/null | grep -qx "$id\.0" && return 0
    sleep 0.2
  done
  return 1
}

t0=$(now)
out=$(bash "$cluster" start "$D" --nodes 3) || { echo "cluster start failed" >&2; exit 1; }
eval "$out"
result cluster_start_s "$(since "$t0")"
sinfo -N -p low

# ------------------------------------------------------------------ 1. DDP over 3 nodes
cat >"$D/ddp.sbatch" <<JOB
#!/bin/bash
#SBATCH --nodes=3
#SBATCH --ntasks-per-node=1
export GLOO_SOCKET_IFNAME=eth0
unset LIFELINE_CONTROL
master=\$(scontrol show hostnames "\$SLURM_JOB_NODELIST" | head -n1)
echo "batch on \$(hostname) master=\$master nodes=\$SLURM_JOB_NODELIST"
srun --kill-on-bad-exit=0 bash -c 'exec $PYTHON -m torch.distributed.run --nnodes 3 --node_rank \$SLURM_NODEID \\
  --nproc_per_node 1 --master_addr '"\$master"' --master_port 29500 --redirects 1 --tee 1 \\
  $TRAINER --steps 20 --log-every 5 --digest-out $D/digest'
JOB
t0=$(now)
job=$(sbatch --parsable -o "$D/ddp-%j.out" "$D/ddp.sbatch")
state=$(wait_end "$job" 180)
result ddp_job_state "$state"
result ddp_job_s "$(since "$t0")"
if [[ "$state" == COMPLETED && -s "$D/digest" ]]; then
  result ddp_digest "$(cat "$D/digest")"
else
  result ddp_digest missing; fail=1
fi
echo "----- ddp job output (tail)"; tail -n 25 "$D/ddp-$job.out"

# ------------------------------------------------- 2a. scancel --signal=USR1 JOB (no --batch)
cat >"$D/usr1.sbatch" <<'JOB'
#!/bin/bash
#SBATCH --nodes=3
#SBATCH --ntasks-per-node=1
trap 'echo "batch shell got USR1 on $(hostname) at $(date +%s.%N)"' USR1
srun bash -c 'trap "echo task got USR1 on \$(hostname) at \$(date +%s.%N)" USR1
  for i in $(seq 150); do sleep 0.1; done'
echo "batch shell done"
JOB
job=$(sbatch --parsable -o "$D/usr1-%j.out" "$D/usr1.sbatch")
if wait_step "$job" 30; then
  sleep 1
  ts=$(now)
  scancel --signal=USR1 "$job"
  echo "sent USR1 at $ts"
  state=$(wait_end "$job" 40)
  n=$(grep -c '^task got USR1' "$D/usr1-$job.out")
  result usr1_tasks_reached "$n/3 ($(grep '^task got USR1' "$D/usr1-$job.out" | awk '{print $5}' | sort | tr '\n' ' '))"
  grep '^task got USR1' "$D/usr1-$job.out" | while read -r _ _ _ _ h _ t; do
    awk -v a="$ts" -v b="$t" -v h="$h" 'BEGIN { printf "  %s: +%.3f s\n", h, b - a }'
  done
  result usr1_batch_shell "$(grep -q '^batch shell got USR1' "$D/usr1-$job.out" && echo got-it || echo nothing)"
  result usr1_job_state "$state"
else
  result usr1_tasks_reached "step never started"; fail=1
fi

# ------------- 2c. does that USR1 also reach the task's children (own session, like a trainer)?
cat >"$D/child.sbatch" <<'JOB'
#!/bin/bash
#SBATCH --nodes=3
#SBATCH --ntasks-per-node=1
srun bash -c 'trap "echo task got USR1 on \$(hostname)" USR1
  setsid bash -c "trap \"echo child got USR1 on \$(hostname)\" USR1; for i in \$(seq 100); do sleep 0.1; done" &
  for i in $(seq 120); do sleep 0.1; done; wait'
JOB
job=$(sbatch --parsable -o "$D/child-%j.out" "$D/child.sbatch")
if wait_step "$job" 30; then
  sleep 1
  scancel --signal=USR1 "$job"
  wait_end "$job" 40 >/dev/null
  result usr1_task_children_reached "$(grep -c '^child got USR1' "$D/child-$job.out")/3 (tasks: $(grep -c '^task got USR1' "$D/child-$job.out")/3; child in its own session and process group)"
else
  result usr1_task_children_reached "step never started"; fail=1
fi

# ------------------------------------- 2b. torchrun agent vs SIGUSR1 sent to its step
cat >"$D/agent.sbatch" <<JOB
#!/bin/bash
#SBATCH --nodes=3
#SBATCH --ntasks-per-node=1
export GLOO_SOCKET_IFNAME=eth0
unset LIFELINE_CONTROL
master=\$(scontrol show hostnames "\$SLURM_JOB_NODELIST" | head -n1)
srun --kill-on-bad-exit=0 bash -c 'exec $PYTHON -m torch.distributed.run --nnodes 3 --node_rank \$SLURM_NODEID \\
  --nproc_per_node 1 --master_addr '"\$master"' --master_port 29501 --redirects 1 --tee 1 \\
  $TRAINER --steps 100000 --step-delay-ms 50 --log-every 20'
echo "srun exited \$? at \$(date +%s.%N)"
JOB
job=$(sbatch --parsable -o "$D/agent-%j.out" "$D/agent.sbatch")
if wait_step "$job" 30; then
  # Wait until training runs (rank 0 logs steps), so the agents are past rendezvous.
  for ((i = 0; i < 300; i++)); do grep -q 'step [0-9]' "$D/agent-$job.out" 2>/dev/null && break; sleep 0.2; done
  sleep 1
  agents_before=$(count_agents)
  ts=$(now)
  scancel --signal=USR1 "$job"
  sleep 8
  agents_after=$(count_agents)
  state=$(scontrol show job -o "$job" | grep -oE 'JobState=[A-Z_]+' | cut -d= -f2)
  result agent_processes_before_after "$agents_before -> $agents_after (torchrun agents on all nodes; 8 s after USR1)"
  result agent_job_state_8s_after "$state"
  scancel "$job"; wait_end "$job" 30 >/dev/null
  echo "----- agent job output (tail; USR1 sent at $ts)"; tail -n 30 "$D/agent-$job.out"
else
  result agent_survives "step never started"; fail=1
fi

exit "$fail"
