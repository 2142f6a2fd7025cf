#!/usr/bin/env bash
# A real one-node Slurm cluster on loopback, for lifeline's tests (see README.md here),
# or a real N-node one on a private bridge (--nodes N, 2..8).
#
#   cluster.sh start STATEDIR [--grace SECONDS] [--send-user-signal] [--kill-wait S]
#                            [--requeue-exit CODES] [--nodes N]
#       Writes STATEDIR/slurm.conf, starts munged (shared, if not running), slurmctld and
#       slurmd on free 127.0.0.1 ports, waits until the node is idle, then prints
#       `export SLURM_CONF=STATEDIR/slurm.conf` (use: eval "$(cluster.sh start DIR)").
#       --nodes N (2..8): N nodes n1..nN, each slurmd in its own network, mount and UTS
#       namespace (`<cluster>-nK`, address 10.77.X.(10+K) on bridge llb<hex>, host side
#       10.77.X.1, X a free subnet); waits until all N are idle. STATEDIR/nodes lists
#       "nK NAMESPACE ADDRESS" per node, STATEDIR/hosts is every node's /etc/hosts.
#       --nodes 1 is the default loopback cluster.
#   cluster.sh stop STATEDIR
#       Stops this cluster's daemons and kills this cluster's leftover job processes
#       (multi-node: also every process in its namespaces; deletes namespaces, veths
#       and bridge). Never fails when nothing is running.
#   cluster.sh status STATEDIR
#       Exit 0 when both daemons of STATEDIR run, 1 otherwise.
#
# Must run as root (SlurmUser=root, jobs run as the submitting user). Everything but munged
# lives in STATEDIR. Diagnostics go to stderr; stdout carries only the export line.
set -euo pipefail

die() { echo "cluster.sh: $*" >&2; exit 1; }
log() { echo "cluster.sh: $*" >&2; }

usage() {
  cat >&2 <<'EOF'
usage: cluster.sh start STATEDIR [--grace SECONDS] [--send-user-signal] [--kill-wait S]
                                 [--requeue-exit CODES] [--nodes N]
       cluster.sh stop STATEDIR
       cluster.sh status STATEDIR
EOF
  exit 2
}

START_TIMEOUT=${CLUSTER_START_TIMEOUT:-30}   # seconds until the node must be idle
STOP_TIMEOUT=${CLUSTER_STOP_TIMEOUT:-15}     # seconds for a daemon to exit after SIGTERM

# ---------------------------------------------------------------------------- helpers

# Cluster name: unique per state dir, so job processes (which carry SLURM_CLUSTER_NAME in
# their environment) can be told apart from another cluster's at stop time.
cluster_name() {
  local h
  h=$(printf '%s' "$1" | md5sum | cut -c1-8)
  echo "ll${h}"
}

# Is PID alive and one of our daemons, started with -f CONF (an exact argument)?
pid_is_ours() {
  local pid=$1 conf=$2
  [[ -n "$pid" && "$pid" =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
  grep -qzxF -- "$conf" /proc/"$pid"/cmdline 2>/dev/null
}

read_pid() { if [[ -r "$1" ]]; then tr -dc '0-9' <"$1" || true; fi; }

port_in_use() {
  # LISTEN sockets on any address with this port (v4 or v6).
  [[ -n "$(ss -Htln "sport = :$1" 2>/dev/null)" ]]
}

# A free TCP port below the kernel's ephemeral range, so an outgoing connection cannot
# take it between our check and the daemon's bind; random, so concurrent starts rarely
# pick the same one (a bind failure is retried with new ports anyway).
pick_port() {
  local lo=20000 hi=32000 p i eph_lo
  eph_lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  ((hi < eph_lo)) || hi=$((eph_lo - 1))
  for ((i = 0; i < 200; i++)); do
    p=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo)))
    [[ " ${avoid_ports:-} " == *" $p "* ]] && continue
    port_in_use "$p" && continue
    echo "$p"
    return 0
  done
  die "no free TCP port found in $lo-$hi"
}

ensure_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
  # Two clusters starting at once must not both start munged (--force would let the
  # second take the socket over): serialize, and check again under the lock.
  exec 9>/tmp/.lifeline-cluster-munge.lock
  flock -w 20 9 || die "timed out waiting for the munged start lock"
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then exec 9>&-; return 0; fi
  log "starting munged"
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge: /run/munge /var/log/munge /var/lib/munge
  [[ -r /etc/munge/munge.key ]] || die "/etc/munge/munge.key missing (apt-get install munge creates it)"
  # Runs in the background forever; shared by every cluster on the machine.
  runuser -u munge -- munged --force </dev/null >/dev/null 2>&1 9>&- || true
  local i
  for ((i = 0; i < 50; i++)); do
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then exec 9>&-; return 0; fi
    sleep 0.1
  done
  tail -n 20 /var/log/munge/munged.log >&2 2>/dev/null || true
  die "munged does not answer (munge -n | unmunge fails)"
}

# Pids of this cluster's job processes:
# - slurmstepd of our slurmd: they keep our slurmd.log open (their environment and argv are
#   overwritten by setproctitle, so nothing else names the cluster);
# - every process whose environment names our cluster: slurmstepd sets SLURM_CLUSTER_NAME
#   for job processes, which keep it even after they re-parent to init (and so escape
#   proctrack/linuxproc). One grep over /proc; NUL-separated entries matched whole.
cluster_job_pids() {
  local dir=$1 name=$2 f p
  {
    for p in $(pgrep -x slurmstepd || true); do
      find /proc/"$p"/fd -maxdepth 1 \( -lname "$dir/slurmd.log" -o -lname "$dir/slurmd-n*.log" \) \
        2>/dev/null | grep -q . && echo "$p"
    done
    grep -lzxF -e "SLURM_CLUSTER_NAME=$name" /proc/[0-9]*/environ 2>/dev/null |
      while read -r f; do
        p=${f#/proc/}; p=${p%/environ}
        echo "$p"
      done
  } | while read -r p; do
    [[ "$p" == "$$" || ! -d /proc/$p ]] && continue
    echo "$p"
  done || true
}

# Stop one daemon by pid file: SIGTERM, wait, SIGKILL.
stop_daemon() {
  local pidfile=$1 conf=$2 what=$3 pid i
  pid=$(read_pid "$pidfile")
  if pid_is_ours "$pid" "$conf"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
      pid_is_ours "$pid" "$conf" || break
      sleep 0.1
    done
    if pid_is_ours "$pid" "$conf"; then
      log "$what ($pid) ignored SIGTERM for ${STOP_TIMEOUT}s; SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do pid_is_ours "$pid" "$conf" || break; sleep 0.1; done
    fi
  fi
  rm -f "$pidfile"
}

# Also catch daemons whose pid file is gone (e.g. killed mid-start): slurmctld/slurmd
# processes with the argument CONF, which is unique to this state dir.
stray_daemon_pids() {
  local conf=$1 f p arg0
  grep -lzxF -- "$conf" /proc/[0-9]*/cmdline 2>/dev/null |
    while read -r f; do
      p=${f#/proc/}; p=${p%/cmdline}
      arg0=$( { tr '\0' '\n' <"$f" | head -n1; } 2>/dev/null) || continue
      case "${arg0##*/}" in slurmctld | slurmd) echo "$p" ;; esac
    done || true
}

do_stop() {
  local dir=$1 conf=$1/slurm.conf name p i pids
  name=$(cluster_name "$dir")
  stop_daemon "$dir/slurmctld.pid" "$conf" slurmctld
  stop_daemon "$dir/slurmd.pid" "$conf" slurmd
  local f
  for f in "$dir"/slurmd-n*.pid; do
    [[ -e "$f" ]] && stop_daemon "$f" "$conf" "slurmd ${f##*/slurmd-}"
  done
  pids=$(stray_daemon_pids "$conf")
  if [[ -n "$pids" ]]; then
    # shellcheck disable=SC2086  # one pid per word
    kill -KILL $pids 2>/dev/null || true
  fi
  # Leftover slurmstepd and job processes of this cluster (slurmd does not take its
  # steps down with it). SIGKILL, repeated until none is left (bounded), as a job may
  # fork while we kill.
  for ((i = 0; i < 50; i++)); do
    pids=$(cluster_job_pids "$dir" "$name")
    [[ -z "$pids" ]] && break
    # shellcheck disable=SC2086  # one pid per word
    kill -KILL $pids 2>/dev/null || true
    sleep 0.1
  done
  pids=$(cluster_job_pids "$dir" "$name")
  [[ -z "$pids" ]] || log "warning: processes still alive: $pids"
  net_teardown "$dir" "$name"
  local link=/tmp/.lifeline-spool-$name
  if [[ -L "$link" ]]; then rm -f "$link"; fi
  return 0
}

is_running() {
  local dir=$1 conf=$1/slurm.conf n k
  pid_is_ours "$(read_pid "$dir/slurmctld.pid")" "$conf" || return 1
  n=$(node_count "$dir")
  if ((n <= 1)); then
    pid_is_ours "$(read_pid "$dir/slurmd.pid")" "$conf"
    return
  fi
  for ((k = 1; k <= n; k++)); do
    pid_is_ours "$(read_pid "$dir/slurmd-n$k.pid")" "$conf" || return 1
  done
}

# slurmstepd listens on SPOOL/HOST_JOBID.STEPID, a Unix socket path (108 bytes at most,
# e.g. "_1234567.4294967291" after the host name). A deep STATEDIR gets a short symlink in
# /tmp pointing at STATEDIR/spool (removed by stop); the files stay inside STATEDIR.
spool_path() {
  local dir=$1 host=$2
  if (( ${#dir} + 7 + ${#host} + 20 < 108 )); then
    echo "$dir/spool"
  else
    echo "/tmp/.lifeline-spool-$(cluster_name "$dir")"
  fi
}

write_conf() {
  local dir=$1 ctld_port=$2 d_port=$3 host=$4 hw=$5 spool=$6
  local name extra=""
  local what="a one-node test cluster on loopback" ctld_addr=127.0.0.1
  local d_pid=$dir/slurmd.pid d_log=$dir/slurmd.log part_nodes=$host
  local node_line="NodeName=$host NodeAddr=127.0.0.1 $hw State=UNKNOWN"
  if ((nodes > 1)); then
    # One slurmd per network namespace; %n = the node name (n1..nN).
    what="a $nodes-node test cluster on bridge $(bridge_name "$dir") (10.77.$subnet.0/24)"
    ctld_addr=10.77.$subnet.1
    spool=$spool/%n d_pid=$dir/slurmd-%n.pid d_log=$dir/slurmd-%n.log part_nodes="n[1-$nodes]"
    node_line="NodeName=n[1-$nodes] NodeAddr=10.77.$subnet.[11-$((10 + nodes))] $hw State=UNKNOWN"
  fi
  name=$(cluster_name "$dir")
  ((send_user_signal)) && extra="SlurmctldParameters=preempt_send_user_signal"
  [[ -n "$requeue_exit" ]] && extra="$extra
RequeueExit=$requeue_exit"
  cat >"$dir/slurm.conf.tmp" <<EOF
# Generated by tests/slurm/cluster.sh for $what.
ClusterName=$name
SlurmctldHost=$host($ctld_addr)
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Requeued jobs become eligible cred_expire+1 s after requeue (default 120+1).
AuthInfo=cred_expire=10

StateSaveLocation=$dir/state
SlurmdSpoolDir=$spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$d_pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$d_log
SlurmctldDebug=${CLUSTER_DEBUG:-info}
SlurmdDebug=${CLUSTER_DEBUG:-info}
PlugStackConfig=$dir/plugstack.conf
MailProg=/bin/true

# No systemd, no cgroups in the test machine.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core

SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
KillWait=$kill_wait
JobRequeue=1
MinJobAge=300
MaxJobCount=100000
ReturnToService=2
SlurmdTimeout=30
SlurmctldTimeout=30
InactiveLimit=0
MessageTimeout=10

PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
$extra

$node_line
PartitionName=low Nodes=$part_nodes Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=$grace OverSubscribe=NO
PartitionName=high Nodes=$part_nodes MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF OverSubscribe=NO
EOF
  mv "$dir/slurm.conf.tmp" "$dir/slurm.conf"
  : >"$dir/plugstack.conf"  # keep /etc/slurm/plugstack.conf.d (site SPANK plugins) out
}

log_tails() {
  local dir=$1 f
  for f in "$dir/slurmctld.log" "$dir/slurmd.log" "$dir/slurmctld.out" "$dir/slurmd.out" \
           "$dir"/slurmd-n*.log "$dir"/slurmd-n*.out; do
    [[ -s "$f" ]] || continue
    echo "----- tail $f" >&2
    tail -n 25 "$f" >&2
  done
}

do_start() {
  local dir=$1 host hw attempt i state ctld_port d_port conf spool
  [[ $EUID -eq 0 ]] || die "must run as root"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd -P)
  [[ "$dir" =~ ^[A-Za-z0-9_./+-]+$ ]] ||
    die "STATEDIR '$dir' has characters slurm.conf cannot carry (spaces, quotes, ...)"
  conf=$dir/slurm.conf
  for cmd in slurmctld slurmd sinfo ss munge; do
    command -v "$cmd" >/dev/null || die "$cmd not found (scripts/setup.sh installs slurm-wlm and munge)"
  done

  # A cluster left running in this dir (crashed test): take it down first.
  do_stop "$dir"
  rm -f "$dir/nodes" "$dir/hosts" "$dir"/slurmd-n*.pid "$dir"/slurmd-n*.log "$dir"/slurmd-n*.out
  if ((nodes > 1)); then
    do_start_multi "$dir"
    return
  fi

  ensure_munge

  host=$(hostname -s)
  # Hardware line from slurmd -C (what slurmd will register), so the node never comes up
  # INVALID for claiming more than it has. RealMemory left out: memory is not scheduled.
  hw=$(slurmd -C 2>/dev/null | head -n1 | tr ' ' '\n' |
       grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=' | tr '\n' ' ')
  [[ "$hw" == *CPUs=* ]] || hw="CPUs=$(nproc)"

  spool=$(spool_path "$dir" "$host")
  avoid_ports=""
  for attempt in 1 2 3; do
    rm -rf "$dir/state" "$dir/spool"
    mkdir -p "$dir/state" "$dir/spool"
    [[ "$spool" == "$dir/spool" ]] || ln -sfn "$dir/spool" "$spool"
    rm -f "$dir"/slurmctld.log "$dir"/slurmd.log "$dir"/slurmctld.out "$dir"/slurmd.out
    ctld_port=$(pick_port); avoid_ports="$avoid_ports $ctld_port"
    d_port=$(pick_port); avoid_ports="$avoid_ports $d_port"
    write_conf "$dir" "$ctld_port" "$d_port" "$host" "$hw" "$spool"

    # The daemons fork into the background; stdio to files so a caller reading our
    # stdout (popen, $(...)) is never kept waiting by a daemon holding the pipe.
    setsid slurmctld -c -f "$conf" </dev/null >"$dir/slurmctld.out" 2>&1 || true
    setsid slurmd -c -f "$conf" </dev/null >"$dir/slurmd.out" 2>&1 || true

    for ((i = 0; i < START_TIMEOUT * 10; i++)); do
      state=$(SLURM_CONF=$conf timeout 5 sinfo -h -N -n "$host" -o %t 2>/dev/null | head -n1 || true)
      [[ "$state" == idle ]] && break
      # The node registered with less hardware than configured: it will not recover.
      [[ "$state" == inval ]] && ((i > 30)) && break
      # A daemon that died (e.g. bind failure) will not come back: stop polling early.
      if ((i > 10)) && { ! pid_is_ours "$(read_pid "$dir/slurmctld.pid")" "$conf" ||
                         ! pid_is_ours "$(read_pid "$dir/slurmd.pid")" "$conf"; }; then
        sleep 0.3   # pid files may lag the fork by a moment
        pid_is_ours "$(read_pid "$dir/slurmctld.pid")" "$conf" &&
          pid_is_ours "$(read_pid "$dir/slurmd.pid")" "$conf" && continue
        break
      fi
      sleep 0.1
    done
    if [[ "$state" == idle ]]; then
      echo "export SLURM_CONF=$conf"
      return 0
    fi
    if cat "$dir"/slurm*.log "$dir"/slurm*.out 2>/dev/null | grep -qi 'address already in use'; then
      log "port collision (attempt $attempt), retrying with other ports"
      do_stop "$dir"
      continue
    fi
    break
  done
  log "cluster in $dir did not become idle within ${START_TIMEOUT}s (node state: '${state:-none}')"
  log_tails "$dir"
  do_stop "$dir"
  exit 1
}

# ------------------------------------------------------------ several nodes (--nodes N)
#
# docs/slurm-facts.md, "Several nodes on one machine": a bridge on the host with
# 10.77.X.1/24, one network namespace per node with a veth into the bridge (node side
# `eth0`, 10.77.X.(10+K)), and each slurmd started by nsenter (not `ip netns exec`, which
# remounts /sys: slurmd 22.05 then dies with "No filesystem mounted on /sys/fs/cgroup")
# plus unshare -m -u: own host name nK, own /dev/shm, STATEDIR/hosts as /etc/hosts.
# Names derive from the cluster name ll<8hex>: bridge llb<8hex>, host-side veths
# llv<8hex>n<K>, namespaces ll<8hex>-n<K> (interface names stay within 15 characters).

bridge_name() { local n; n=$(cluster_name "$1"); echo "llb${n#ll}"; }

# Nodes of the cluster in DIR as last started: lines in DIR/nodes, or 1 (loopback).
node_count() {
  local n=0
  [[ -r "$1/nodes" ]] && n=$(grep -c . "$1/nodes" 2>/dev/null || true)
  ((n > 1)) && echo "$n" || echo 1
}

# Deletes this cluster's namespaces (after killing every process left in them), veths and
# bridge. Also finds them after a crash mid-start (by name, not by DIR/nodes).
net_teardown() {
  local dir=$1 name=$2 hex=${2#ll} ns l i pids
  command -v ip >/dev/null 2>&1 || return 0
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${name}-n[0-9]+$" || true); do
    pids=""
    for ((i = 0; i < 50; i++)); do
      pids=$(ip netns pids "$ns" 2>/dev/null | grep -vx "$$" || true)
      [[ -z "$pids" ]] && break
      # shellcheck disable=SC2086  # one pid per word
      kill -KILL $pids 2>/dev/null || true
      sleep 0.1
    done
    [[ -z "$pids" ]] || log "warning: processes still alive in netns $ns: ${pids//$'\n'/ }"
    ip netns del "$ns" 2>/dev/null || log "warning: could not delete netns $ns"
  done
  for l in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' |
             grep -E "^(llv${hex}n[0-9]+|llb${hex})$" || true); do
    ip link del "$l" 2>/dev/null || true
  done
  return 0
}

# A third octet X with no 10.77.X.* address on this machine, tried from a per-cluster
# starting point. Call with the net lock held (the caller assigns the address before
# releasing it), so two clusters starting at once cannot take the same subnet.
pick_subnet() {
  local name=$1 used x i start
  used=" $(ip -o -4 addr show 2>/dev/null | grep -oE '10\.77\.[0-9]+\.' | cut -d. -f3 | sort -u | tr '\n' ' ') "
  start=$((16#${name:2:2}))
  for ((i = 0; i < 256; i++)); do
    x=$(((start + i) % 256))
    [[ "$used" == *" $x "* ]] && continue
    echo "$x"
    return 0
  done
  die "no free subnet 10.77.X.0/24 (X in 0-255)"
}

# Bridge, namespaces, veths, STATEDIR/hosts and STATEDIR/nodes; sets the global `subnet`.
net_setup() {
  local dir=$1 host=$2 name hex br ns k v p addr
  name=$(cluster_name "$dir"); hex=${name#ll}; br=llb$hex
  exec 8>/tmp/.lifeline-cluster-net.lock
  flock -w 30 8 || die "timed out waiting for the network setup lock"
  subnet=$(pick_subnet "$name")
  ip link add "$br" type bridge || die "cannot create bridge $br"
  ip addr add "10.77.$subnet.1/24" dev "$br" || die "cannot give $br 10.77.$subnet.1/24"
  exec 8>&-
  ip link set "$br" up
  {
    echo "127.0.0.1 localhost"
    echo "::1 localhost ip6-localhost ip6-loopback"
    echo "10.77.$subnet.1 $host"
    for ((k = 1; k <= nodes; k++)); do echo "10.77.$subnet.$((10 + k)) n$k"; done
  } >"$dir/hosts"
  : >"$dir/nodes.tmp"
  for ((k = 1; k <= nodes; k++)); do
    ns=$name-n$k v=llv${hex}n$k p=llp${hex}n$k addr=10.77.$subnet.$((10 + k))
    ip netns add "$ns" || die "cannot create netns $ns"
    ip link add "$v" type veth peer name "$p" || die "cannot create veth $v"
    ip link set "$p" netns "$ns"
    ip -n "$ns" link set "$p" name eth0
    ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    ip link set "$v" master "$br"
    ip link set "$v" up
    echo "n$k $ns $addr" >>"$dir/nodes.tmp"
  done
  mv "$dir/nodes.tmp" "$dir/nodes"
}

# What runs inside a node's new mount + UTS namespace before slurmd: $1 = node name,
# $2 = hosts file, $3 = slurm.conf. The node's copy of /run/netns is dropped (it would
# keep other clusters' namespaces alive after their stop).
# shellcheck disable=SC2016  # expanded by the inner sh
NODE_INIT='set -e
hostname "$1"
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount --bind "$2" /etc/hosts
awk '\''$2 == "/run/netns" || $2 ~ "^/run/netns/" {print $2}'\'' /proc/self/mounts | sort -r |
  while read -r m; do umount -l "$m" 2>/dev/null || true; done
exec slurmd -c -f "$3" -N "$1"'

# Are slurmctld and every slurmd of DIR alive (pid files may lag the fork a moment)?
multi_daemons_alive() {
  local dir=$1 conf=$1/slurm.conf k
  pid_is_ours "$(read_pid "$dir/slurmctld.pid")" "$conf" || return 1
  for ((k = 1; k <= nodes; k++)); do
    pid_is_ours "$(read_pid "$dir/slurmd-n$k.pid")" "$conf" || return 1
  done
}

do_start_multi() {
  local dir=$1 host hw attempt i k idle states ctld_port d_port conf=$1/slurm.conf spool ns
  for cmd in ip nsenter unshare flock; do
    command -v "$cmd" >/dev/null || die "$cmd not found (needs iproute2 and util-linux)"
  done
  ensure_munge
  host=$(hostname -s)
  hw=$(slurmd -C 2>/dev/null | head -n1 | tr ' ' '\n' |
       grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=' | tr '\n' ' ')
  [[ "$hw" == *CPUs=* ]] || hw="CPUs=$(nproc)"
  spool=$(spool_path "$dir" "n$nodes/x")
  avoid_ports=""
  for attempt in 1 2 3; do
    net_setup "$dir" "$host"
    rm -rf "$dir/state" "$dir/spool"
    mkdir -p "$dir/state" "$dir/spool"
    for ((k = 1; k <= nodes; k++)); do mkdir -p "$dir/spool/n$k"; done
    [[ "$spool" == "$dir/spool" ]] || ln -sfn "$dir/spool" "$spool"
    rm -f "$dir"/slurmctld.log "$dir"/slurmctld.out "$dir"/slurmd-n*.log "$dir"/slurmd-n*.out
    ctld_port=$(pick_port); avoid_ports="$avoid_ports $ctld_port"
    d_port=$(pick_port); avoid_ports="$avoid_ports $d_port"
    write_conf "$dir" "$ctld_port" "$d_port" "$host" "$hw" "$spool"

    setsid slurmctld -c -f "$conf" </dev/null >"$dir/slurmctld.out" 2>&1 || true
    for ((k = 1; k <= nodes; k++)); do
      ns=$(cluster_name "$dir")-n$k
      setsid nsenter --net=/var/run/netns/"$ns" unshare -m -u --propagation private \
        sh -c "$NODE_INIT" sh "n$k" "$dir/hosts" "$conf" \
        </dev/null >"$dir/slurmd-n$k.out" 2>&1 || true
    done

    idle=0 states=""
    for ((i = 0; i < START_TIMEOUT * 10; i++)); do
      states=$(SLURM_CONF=$conf timeout 5 sinfo -h -N -p low -o '%N=%t' 2>/dev/null | sort -u | tr '\n' ' ' || true)
      idle=$( (grep -o '=idle ' <<<"$states" || true) | wc -l)
      ((idle == nodes)) && break
      [[ "$states" == *=inval* ]] && ((i > 30)) && break
      if ((i > 10)) && ! multi_daemons_alive "$dir"; then
        sleep 0.3
        multi_daemons_alive "$dir" && continue
        break
      fi
      sleep 0.1
    done
    if ((idle == nodes)); then
      log "$nodes nodes idle on 10.77.$subnet.0/24 (bridge $(bridge_name "$dir"))"
      echo "export SLURM_CONF=$conf"
      return 0
    fi
    if cat "$dir"/slurm*.log "$dir"/slurm*.out 2>/dev/null | grep -qi 'address already in use'; then
      log "port collision (attempt $attempt), retrying with other ports"
      do_stop "$dir"
      continue
    fi
    break
  done
  log "cluster in $dir: not all $nodes nodes idle within ${START_TIMEOUT}s (${states:-no node state})"
  log_tails "$dir"
  do_stop "$dir"
  exit 1
}

# ---------------------------------------------------------------------------- main

(($# >= 2)) || usage
action=$1 dir=$2
shift 2
grace=20 kill_wait=10 send_user_signal=0 requeue_exit="" nodes=1 subnet=""
while (($#)); do
  case "$1" in
    --grace) (($# >= 2)) || usage; grace=$2; shift 2 ;;
    --grace=*) grace=${1#*=}; shift ;;
    --kill-wait) (($# >= 2)) || usage; kill_wait=$2; shift 2 ;;
    --kill-wait=*) kill_wait=${1#*=}; shift ;;
    --send-user-signal) send_user_signal=1; shift ;;
    --requeue-exit) (($# >= 2)) || usage; requeue_exit=$2; shift 2 ;;
    --requeue-exit=*) requeue_exit=${1#*=}; shift ;;
    --nodes) (($# >= 2)) || usage; nodes=$2; shift 2 ;;
    --nodes=*) nodes=${1#*=}; shift ;;
    *) usage ;;
  esac
done
[[ "$grace" =~ ^[0-9]+$ ]] || die "--grace wants whole seconds, got '$grace'"
[[ "$kill_wait" =~ ^[0-9]+$ ]] || die "--kill-wait wants whole seconds, got '$kill_wait'"
[[ -z "$requeue_exit" || "$requeue_exit" =~ ^[0-9,-]+$ ]] ||
  die "--requeue-exit wants exit codes such as 75 or 75,76 or 75-79, got '$requeue_exit'"
[[ "$nodes" =~ ^[1-8]$ ]] || die "--nodes wants 1..8, got '$nodes'"

case "$action" in
  start) do_start "$dir" ;;
  stop)
    [[ -d "$dir" ]] || exit 0
    dir=$(cd "$dir" && pwd -P)
    do_stop "$dir" ;;
  status)
    [[ -d "$dir" ]] || exit 1
    dir=$(cd "$dir" && pwd -P)
    is_running "$dir" ;;
  *) usage ;;
esac
