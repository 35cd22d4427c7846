#!/usr/bin/env bash
# A two-node Slurm cluster on this one host, with SIMULATED GPUs, for the quick start
# (scripts/quickstart.sh --slurm) and the tests (tests/integration/test_slurm.py): munged,
# slurmctld and two slurmd (`slurmd -N gpu1`, `-N gpu2`), each node with 2 GPUs whose device
# files are /dev/null twins (mknod c 1 3): Slurm counts and hands out GPUs, there is no CUDA.
#
#   bash scripts/demo-slurm.sh up DIR     # start (idempotent); writes DIR/slurm.conf, prints it
#   bash scripts/demo-slurm.sh down DIR   # stop everything `up` started in DIR
#
# Everything lives under DIR (config, state, logs, pid files); Slurm's commands find the cluster
# with SLURM_CONF=DIR/slurm.conf. munged is started only when none answers, and then stopped by
# `down` (DIR/munged.started records it). Ports: SLURM_DEMO_CTLD_PORT (default 16817) and
# SLURM_DEMO_NODE_PORTS (default "16818 16819"). Needs root and Debian's slurm-wlm + munge
# (scripts/install-deps.sh installs them).
set -euo pipefail
cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: bash scripts/demo-slurm.sh up|down DIR" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "demo-slurm.sh must run as root" >&2; exit 1; }
log() { printf '[demo-slurm %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2 || true; }
CTLD_PORT=${SLURM_DEMO_CTLD_PORT:-16817}
read -r -a NODE_PORTS <<<"${SLURM_DEMO_NODE_PORTS:-16818 16819}"
NODES=(gpu1 gpu2)
export SLURM_CONF="$dir/slurm.conf"

munge_answers() { timeout 5 munge -n </dev/null >/dev/null 2>&1; }
pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_config() {
  mkdir -p "$dir/state" "$dir/spool" "$dir/log" "$dir/dev"
  # The jobs run as the students and execute their scripts from the spool: it must be reachable.
  chmod 755 "$dir" "$dir/log" "$dir/spool"
  local i=0 node
  for n in 0 1 2 3; do [ -e "$dir/dev/gpu$n" ] || mknod "$dir/dev/gpu$n" c 1 3; done
  {
    echo "# demo cluster written by scripts/demo-slurm.sh: two nodes on this host, SIMULATED GPUs"
    echo "ClusterName=rgsdemo"
    echo "SlurmctldHost=localhost"
    echo "SlurmctldPort=$CTLD_PORT"
    echo "SlurmdPort=${NODE_PORTS[0]}"
    echo "AuthType=auth/munge"
    echo "SlurmUser=root"
    echo "StateSaveLocation=$dir/state"
    echo "SlurmdSpoolDir=$dir/spool/%n"
    echo "SlurmctldPidFile=$dir/slurmctld.pid"
    echo "SlurmdPidFile=$dir/slurmd-%n.pid"
    echo "SlurmctldLogFile=$dir/log/slurmctld.log"
    echo "SlurmdLogFile=$dir/log/slurmd-%n.log"
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/none"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_Core"
    echo "GresTypes=gpu"
    echo "ReturnToService=2"
    echo "JobAcctGatherType=jobacct_gather/none"
    echo "MpiDefault=none"
    echo "KillWait=20"
    echo "SchedulerParameters=sched_interval=2"
    for node in "${NODES[@]}"; do
      echo "NodeName=$node NodeHostname=localhost NodeAddr=127.0.0.1 Port=${NODE_PORTS[$i]} CPUs=2 RealMemory=4000 Gres=gpu:2 State=UNKNOWN"
      i=$((i + 1))
    done
    echo "PartitionName=gpu Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES OverSubscribe=YES MaxTime=INFINITE State=UP"
  } > "$dir/slurm.conf.new"
  mv "$dir/slurm.conf.new" "$dir/slurm.conf"
  printf 'CgroupPlugin=autodetect\nIgnoreSystemd=yes\n' > "$dir/cgroup.conf"
  {
    echo "AutoDetect=off"
    echo "NodeName=gpu1 Name=gpu File=$dir/dev/gpu[0-1]"
    echo "NodeName=gpu2 Name=gpu File=$dir/dev/gpu[2-3]"
  } > "$dir/gres.conf"
  chmod 644 "$dir"/*.conf
}

start_munge() {
  if munge_answers; then return; fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge: /run/munge /var/log/munge /var/lib/munge
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged
  touch "$dir/munged.started"
  for _ in $(seq 50); do munge_answers && return; sleep 0.1; done
  echo "munged did not answer within 5 s (see /var/log/munge/munged.log)" >&2; exit 1
}

wait_nodes_idle() {
  local out
  for _ in $(seq 150); do   # bounded: 30 s
    out=$(sinfo -h -N -o '%N %t' 2>/dev/null || true)
    if [ "$(grep -cE ' (idle|mix|alloc)$' <<<"$out")" = "${#NODES[@]}" ]; then return; fi
    sleep 0.2
  done
  echo "the demo Slurm nodes did not come up within 30 s: $out (logs in $dir/log)" >&2; exit 1
}

up() {
  write_config
  start_munge
  if ! pid_alive "$dir/slurmctld.pid"; then
    log "starting slurmctld on port $CTLD_PORT"
    /usr/sbin/slurmctld -i -f "$SLURM_CONF"   # -f: `down` finds it by this path even without its pid file
  fi
  for node in "${NODES[@]}"; do
    if ! pid_alive "$dir/slurmd-$node.pid"; then
      log "starting slurmd -N $node"
      /usr/sbin/slurmd -N "$node" -f "$SLURM_CONF"
    fi
  done
  wait_nodes_idle
  log "up: SLURM_CONF=$SLURM_CONF"
  echo "$SLURM_CONF"
}

stop_pidfile() {
  local f=$1 pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

down() {
  [ -d "$dir" ] || return 0
  if [ -f "$dir/slurm.conf" ] && pid_alive "$dir/slurmctld.pid"; then
    # Cancel what still runs and let the jobs end (their node side removes its container).
    timeout 10 squeue -h -o %i 2>/dev/null | xargs -r timeout 10 scancel 2>/dev/null || true
    for _ in $(seq 60); do   # bounded: 30 s
      [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
  for node in "${NODES[@]}"; do stop_pidfile "$dir/slurmd-$node.pid"; done
  stop_pidfile "$dir/slurmctld.pid"
  # Any slurmd/slurmctld still started with this cluster's config (a pid file lost): exactly these.
  local p args
  for p in /proc/[0-9]*; do
    args=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null) || continue
    case "$args" in
      "/usr/sbin/slurmd "*"-f $SLURM_CONF "*|"/usr/sbin/slurmctld "*"-f $SLURM_CONF "*) kill -TERM "${p#/proc/}" 2>/dev/null || true ;;
    esac
  done
  if [ -f "$dir/munged.started" ]; then
    stop_pidfile /run/munge/munged.pid
    rm -f "$dir/munged.started"
  fi
  log "down"
}

case "$cmd" in
  up) up ;;
  down) down ;;
  *) echo "usage: bash scripts/demo-slurm.sh up|down DIR" >&2; exit 2 ;;
esac
