#!/usr/bin/env bash
# Sets everything up and runs the main demo: a LibTorch training run under lifeline is
# interrupted at a random step (SIGUSR1, as Slurm sends before a time limit), stops with a
# committed checkpoint, and a second run resumes from it and ends with the same parameters
# as an uninterrupted run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null

lifeline=$PWD/build/src/cli/lifeline
trainer=$PWD/build/examples/lifeline-train-example
work=$PWD/demo
rm -rf "$work" && mkdir -p "$work"
cat > "$work/policy.yaml" <<'YAML'
version: 1
checkpoint:
  every_steps: 50      # a checkpoint every 50 steps
  every_seconds: 0
retention:
  keep_last: 3
stop:
  grace_seconds: 20    # longest wait for the stop checkpoint
YAML
train=("$trainer" --steps 400 --seed 42 --log-every 25)

echo "== 1. reference: the trainer alone, uninterrupted"
env -u LIFELINE_CONTROL -u LIFELINE_CKPT_DIR "${train[@]}" --step-delay-ms 0 --digest-out "$work/reference.digest" | tail -1

stop_at=$(( (RANDOM % 300) + 60 ))
echo
echo "== 2. lifeline run, interrupted with SIGUSR1 once the trainer passes step $stop_at"
"$lifeline" run --policy "$work/policy.yaml" --ckpt-dir "$work/ckpt" --run-id demo -- "${train[@]}" --step-delay-ms 15 --digest-out "$work/run.digest" \
  >"$work/run1.log" 2>&1 &
pid=$!
until [[ $(grep -E '^step ' "$work/run1.log" | tail -1 | awk '{print $2}') -ge $stop_at ]]; do
  kill -0 $pid 2>/dev/null || break
  sleep 0.05
done
kill -USR1 $pid
set +e; wait $pid; rc=$?; set -e
grep -E "SIGUSR1|stopping at step|checkpoint committed|last checkpoint" "$work/run1.log" | sed 's/^/   /'
echo "   lifeline run exited with $rc (75 = stopped with a committed checkpoint, to be resumed)"

echo
echo "== 3. what is on disk"
"$lifeline" checkpoints "$work/ckpt" | sed 's/^/   /'
"$lifeline" verify "$work/ckpt" | sed 's/^/   /'

echo
echo "== 4. the same run again (--run-id demo; only its step delay differs): it resumes"
"$lifeline" run --policy "$work/policy.yaml" --ckpt-dir "$work/ckpt" --run-id demo -- "${train[@]}" --step-delay-ms 0 \
  --digest-out "$work/run.digest" >"$work/run2.log" 2>&1
grep -E "resuming from|resumed from|finished|training completed" "$work/run2.log" | sed 's/^/   /'

echo
interrupted=$(grep -oE "stopping at step [0-9]+" "$work/run1.log" | awk '{print $4}')
resumed=$(grep -oE "resumed from step [0-9]+" "$work/run2.log" | awk '{print $4}')
echo "== interrupted at step ${interrupted:-?}, resumed from step ${resumed:-?}"
echo "   reference digest: $(cat "$work/reference.digest")"
echo "   resumed digest:   $(cat "$work/run.digest")"
if cmp -s "$work/reference.digest" "$work/run.digest"; then
  echo "   identical: the interrupted run ended bit-exactly where the uninterrupted one did"
else
  echo "   DIFFERENT: resume is not bit-exact"; exit 1
fi
