#!/bin/bash
# run-all.sh [--with-signal]: re-measures what tests/slurm/README.md reports, on real
# clusters started by ../cluster.sh in a temp dir. About 2 minutes (+70 s with
# --with-signal). Prints one "RESULT name value" line per measurement and "FAIL ..." lines;
# exit status 0 when every check passed. Needs root, slurm-wlm and munge.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
C=$here/../cluster.sh
W=$here/watch-job.sh
with_signal=0
[[ "${1:-}" == --with-signal ]] && with_signal=1

fails=0
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
result() { echo "RESULT $1 $2"; }
now() { date +%s.%N; }
dt() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
field() { grep -o "$2=[^ ]*" <<<"$1" | head -n1 | cut -d= -f2-; }
# epoch of the first line of watch output ($1) whose state is $2 (after line $3, default 1)
when() { awk -v s="$2" -v n="${3:-1}" 'NR >= n && $2 == s { print $1; exit }' <<<"$1"; }

base=$(mktemp -d /tmp/lifeline-probes.XXXXXX)
A=$base/a B=$base/b
cleanup() { "$C" stop "$A"; "$C" stop "$B"; }
trap cleanup EXIT

# ---- start (and munged if needed)
t0=$(now)
if ! out=$("$C" start "$A" --grace 20 --kill-wait 10); then fail "start"; exit 1; fi
result start_seconds "$(dt "$t0" "$(now)")"
eval "$out"
cd "$A" || exit 1

# ---- 1. a job runs and finishes; scontrol show job still shows it
j=$(sbatch --parsable -o hello-%j.out "$here/hello.sbatch")
t0=$(now)
sbatch_wait=$(sbatch --parsable --wait -o /dev/null --wrap true; echo "rc=$?")
[[ "$sbatch_wait" == *rc=0 ]] || fail "sbatch --wait: $sbatch_wait"
"$W" "$j" 30 >/dev/null || fail "hello job did not finish"
line=$(scontrol show job -o "$j")
[[ "$(field "$line" JobState)" == COMPLETED ]] || fail "hello: $(field "$line" JobState)"
result submit_to_completed_seconds "$(dt "$t0" "$(now)")"

# ---- 2. preemption: low job on every CPU, then a high job
v=$(sbatch --parsable -p low --exclusive --requeue --open-mode=append -o victim-%j.out "$here/victim.sbatch")
"$W" "$v" 20 RUNNING >/dev/null || fail "victim did not start"
sleep 2
th=$(now)
h=$(sbatch --parsable -p high -o /dev/null --wrap 'sleep 1')
log=$("$W" "$v" 90 COMPLETED)
echo "$log" | sed 's/^/  victim: /'
tp=$(when "$log" PENDING 2)
tr=$(awk '$1 == "start" && $4 == "restart=1" { print $2; exit }' "victim-$v.out")
grep -q 'shell-got-TERM' "victim-$v.out" || fail "victim batch shell got no SIGTERM at grace end"
grep -q 'restart=1' "victim-$v.out" || fail "second run did not see SLURM_RESTART_COUNT=1"
tt=$(awk '$1 == "shell-got-TERM" { print $2; exit }' "victim-$v.out")
[[ -n "$tt" ]] && result preempt_submit_to_grace_end_TERM_seconds "$(dt "$th" "$tt")"
[[ -n "$tp" && -n "$tt" ]] && result grace_end_TERM_to_pending_seconds "$(dt "$tt" "$tp")"
[[ -n "$tp" && -n "$tr" ]] && result requeue_pending_to_running_seconds "$(dt "$tp" "$tr")"
"$W" "$h" 30 >/dev/null || fail "high job did not finish"

# ---- 3. scontrol requeue from inside the job
s=$(VICTIM_SELF_REQUEUE=1 sbatch --parsable --requeue --open-mode=append -o self-%j.out "$here/victim.sbatch")
log=$("$W" "$s" 60 COMPLETED)
echo "$log" | sed 's/^/  self-requeue: /'
grep -q 'restart=1' "self-$s.out" || fail "self-requeue: no second run"
tq=$(awk '$1 == "requeue-self" { print $2; exit }' "self-$s.out")
tr=$(awk '$1 == "start" && $4 == "restart=1" { print $2; exit }' "self-$s.out")
[[ -n "$tq" && -n "$tr" ]] && result self_requeue_to_running_again_seconds "$(dt "$tq" "$tr")"

# ---- 4. --signal=B:USR1@N reaches the batch shell (optional: needs a 1-minute job)
if ((with_signal)); then
  b=$(VICTIM_SECONDS=50 sbatch --parsable --time=1 --signal=B:USR1@50 --no-requeue -o bsig-%j.out "$here/victim.sbatch")
  sleep 55
  ts=$(awk '$1 == "start" { print $2; exit }' "bsig-$b.out")
  tu=$(awk '$1 == "shell-got-USR1" { print $2; exit }' "bsig-$b.out")
  if [[ -n "$tu" ]]; then result b_usr1_after_start_seconds_limit60_at50 "$(dt "$ts" "$tu")"
  else fail "B:USR1 never reached the batch shell"; fi
  scancel "$b"
fi

# ---- 5. stop leaves nothing; restart works; two clusters at once
ports=$(grep -E '^Slurm(ctld|d)Port=' "$A/slurm.conf" | cut -d= -f2)
t0=$(now)
"$C" stop "$A" || fail "stop"
result stop_seconds "$(dt "$t0" "$(now)")"
for p in $ports; do [[ -z "$(ss -Htln "sport = :$p")" ]] || fail "port $p still listening"; done
left=$(grep -lzxF "SLURM_CLUSTER_NAME=$(grep -o '^ClusterName=.*' "$A/slurm.conf" | cut -d= -f2)" /proc/[0-9]*/environ 2>/dev/null)
[[ -z "$left" ]] || fail "job processes left: $left"
"$C" status "$A" && fail "status says running after stop"
"$C" stop "$A" || fail "second stop failed"
t0=$(now)
eval "$("$C" start "$A")" || fail "restart"
result restart_seconds "$(dt "$t0" "$(now)")"
eval "$("$C" start "$B")" || fail "second cluster"
for d in "$A" "$B"; do
  rc=$(SLURM_CONF=$d/slurm.conf sbatch --wait -o /dev/null --wrap true >/dev/null; echo $?)
  [[ "$rc" == 0 ]] || fail "job on $d: rc $rc"
done
result two_clusters ok

echo "probes done in $base: $fails failure(s)"
exit $((fails > 0))
