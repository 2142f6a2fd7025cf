#!/bin/bash
# watch-job.sh JOBID MAX_SECONDS [STOP_STATE...]
# Polls `scontrol show job -o JOBID` every 0.2 s and prints "EPOCH STATE REASON restarts=N"
# each time that triple changes. Stops after MAX_SECONDS, or when the job reaches one of
# STOP_STATE (default: COMPLETED FAILED CANCELLED TIMEOUT NODE_FAIL OUT_OF_MEMORY).
id=$1 max=$2; shift 2
stops=("$@"); ((${#stops[@]})) || stops=(COMPLETED FAILED CANCELLED TIMEOUT NODE_FAIL OUT_OF_MEMORY)
end=$(( $(date +%s) + max )) last=""
while (( $(date +%s) < end )); do
  line=$(scontrol show job -o "$id" 2>/dev/null)
  st=$(grep -o 'JobState=[^ ]*' <<<"$line"); st=${st#JobState=}
  rs=$(grep -o 'Reason=[^ ]*' <<<"$line"); rs=${rs#Reason=}
  rc=$(grep -o 'Restarts=[^ ]*' <<<"$line"); rc=${rc#Restarts=}
  cur="${st:-gone} $rs restarts=$rc"
  if [[ "$cur" != "$last" ]]; then echo "$(date +%s.%N) $cur"; last=$cur; fi
  for s in "${stops[@]}"; do [[ "$st" == "$s" ]] && exit 0; done
  sleep 0.2
done
echo "$(date +%s.%N) watch timeout ($max s), last: $last"
exit 1
