#!/usr/bin/env bash
# Quick start on a fresh Debian 12 / Ubuntu host: install everything, create two demo students
# (rgs-demo, rgs-demo2), start their rootless Docker daemons as *simulated GPU hosts*, load a
# JupyterLab image built offline (and a dark-theme variant of it), and run JupyterHub with this
# spawner in the foreground on http://127.0.0.1:8000.
#
#   bash scripts/quickstart.sh        (as root; prefix sudo if you are not root)
#   bash scripts/quickstart.sh --slurm
#
# With --slurm the hub uses RootlessGPUSlurmSpawner instead: scripts/demo-slurm.sh brings up a
# two-node Slurm on this host (munged, slurmctld, slurmd -N gpu1/gpu2, 2 SIMULATED GPUs each),
# each server is a Slurm job run as its student, and the teardown stops that cluster too.
#
# Log in as rgs-demo or rgs-demo2, password rgs-demo (DEMO_PASSWORD). The spawn form offers two
# images and 4 GPUs under the exclusive policy; the GPUs are SIMULATED (a stub NVIDIA hook on the
# demo daemons' PATH: Docker accepts GPU requests, there is no CUDA).
#
# Ctrl-C, SIGTERM or closing the terminal (also with the output piped, e.g. through tee) stops the
# hub, its proxy, the students' servers and the demo daemons; the students' files stay in
# ~/workspace. Settings (environment): DEMO_USERS, DEMO_PASSWORD, DEMO_PORT (8000), DEMO_HUB_PORT
# (8081), DEMO_PROXY_API_PORT (8001), DEMO_STATE (/var/lib/rootless-gpu-spawner/demo), RGS_VENV
# (/opt/rootless-gpu-spawner/venv). RGS_SKIP_INSTALL=1 skips scripts/install-deps.sh (tests).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
slurm=0
case "${1:-}" in
  --slurm) slurm=1 ;;
  "") ;;
  *) echo "usage: bash scripts/quickstart.sh [--slurm]" >&2; exit 2 ;;
esac

if [ "$(id -u)" != 0 ]; then
  echo "quickstart.sh must run as root (it installs packages, creates the demo accounts and starts their daemons): run it as root, or prefix sudo" >&2
  exit 1
fi

RGS_VENV=${RGS_VENV:-/opt/rootless-gpu-spawner/venv}
read -r -a users <<<"${DEMO_USERS:-rgs-demo rgs-demo2}"
DEMO_PORT=${DEMO_PORT:-8000}
DEMO_HUB_PORT=${DEMO_HUB_PORT:-8081}
DEMO_PROXY_API_PORT=${DEMO_PROXY_API_PORT:-8001}
DEMO_PASSWORD=${DEMO_PASSWORD:-rgs-demo}   # at least 8 characters
STATE=${DEMO_STATE:-/var/lib/rootless-gpu-spawner/demo}
IMAGE=rgs-demo/jupyterlab:latest
IMAGE_DARK=rgs-demo/jupyterlab:dark
TARBALL=/var/cache/rootless-gpu-spawner/lab-image.tar.gz
GPU_STUB_DIR="$STATE/gpu-stub"
admin="$RGS_VENV/bin/rootless-gpu-admin"
# Logs go to stderr and never stop the script: once a pipe (| tee) is gone, writing fails quietly.
log() { printf '[quickstart %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2 || true; }

# ---- teardown: runs on Ctrl-C, SIGTERM, SIGHUP and any exit, exactly once ----------------------
hub_pid=
cleaned=0
cleanup() {
  [ "$cleaned" = 1 ] && return
  cleaned=1
  trap '' PIPE INT TERM HUP   # a dead pipe or a second Ctrl-C must not cut the teardown short
  set +e
  if [ -n "$hub_pid" ] && kill -0 "$hub_pid" 2>/dev/null; then
    log "stopping JupyterHub (it stops the students' servers and its proxy)"
    kill -TERM "$hub_pid" 2>/dev/null
    for _ in $(seq 120); do kill -0 "$hub_pid" 2>/dev/null || break; sleep 0.5; done
    # Whatever is left of the hub's session (the proxy, if the hub could not stop it).
    kill -KILL -- "-$hub_pid" 2>/dev/null
  fi
  local proxy
  proxy=$(cat "$STATE/hub/proxy.pid" 2>/dev/null || true)
  if [ -n "$proxy" ] && grep -qa configurable-http-proxy "/proc/$proxy/cmdline" 2>/dev/null; then
    kill -KILL "$proxy" 2>/dev/null
  fi
  if [ "$slurm" = 1 ]; then
    log "stopping the demo Slurm (slurmd x2, slurmctld, munged)"
    bash "$repo/scripts/demo-slurm.sh" down "$STATE/slurm" >>"$STATE/teardown.log" 2>&1 \
      || log "could not stop the demo Slurm (see $STATE/teardown.log)"
  fi
  for u in "${users[@]}"; do
    id "$u" >/dev/null 2>&1 || continue
    log "stopping $u's rootless daemon and its containers (files stay in ~$u/workspace)"
    "$admin" stop-daemon "$u" >>"$STATE/teardown.log" 2>&1 \
      || log "could not stop $u's daemon (see $STATE/teardown.log): rootless-gpu-admin stop-daemon $u"
  done
  log "stopped"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

if [ "${RGS_SKIP_INSTALL:-0}" != 1 ]; then
  RGS_VENV=$RGS_VENV bash scripts/install-deps.sh --hub
fi

# ---- the demo students and their daemons (simulated GPU hosts) ---------------------------------
mkdir -p "$STATE/hub" "$GPU_STUB_DIR"
chmod 711 "$STATE"          # the daemons must reach the GPU stub; nothing else here is theirs
chmod 700 "$STATE/hub"      # the hub's database and cookie secret
chmod 755 "$GPU_STUB_DIR"
printf '#!/bin/sh\n# simulated GPU host: lets dockerd register its NVIDIA driver; no real GPU, no CUDA\nexit 0\n' \
  > "$GPU_STUB_DIR/nvidia-container-runtime-hook"
chmod 755 "$GPU_STUB_DIR/nvidia-container-runtime-hook"
for u in "${users[@]}"; do
  if ! id "$u" >/dev/null 2>&1; then
    log "creating demo student $u"
    useradd -m -s /bin/bash "$u"
  fi
  # Subordinate ids, /dev/net/tun, ~/workspace, daemon.json, and the rootless daemon itself,
  # with the GPU stub first on its PATH.
  "$admin" bootstrap --user "$u" --gpu-stub-dir "$GPU_STUB_DIR"
done

# ---- the images: built offline once, loaded into each student's daemon -------------------------
hub_version=$("$RGS_VENV/bin/python" -c 'import jupyterhub; print(jupyterhub.__version__)')
bash scripts/build-lab-image.sh --hub-version "$hub_version" --out "$TARBALL"
context=$(mktemp -d /tmp/rgs-demo-image.XXXXXX)
printf '{"@jupyterlab/apputils-extension:themes": {"theme": "JupyterLab Dark"}}\n' > "$context/overrides.json"
printf 'FROM %s\nCOPY overrides.json /opt/venv/share/jupyter/lab/settings/overrides.json\n' "$IMAGE" > "$context/Dockerfile"
for u in "${users[@]}"; do
  export DOCKER_HOST="unix:///run/user/$(id -u "$u")/docker.sock"
  if ! /usr/bin/docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "loading $IMAGE into $u's rootless daemon"
    /usr/bin/docker import \
      -c 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      -c 'CMD ["jupyterhub-singleuser"]' -c 'WORKDIR /root' "$TARBALL" "$IMAGE" >/dev/null
  fi
  if ! /usr/bin/docker image inspect "$IMAGE_DARK" >/dev/null 2>&1; then
    log "building $IMAGE_DARK (the same software, JupyterLab's dark theme) on $u's daemon"
    DOCKER_BUILDKIT=0 /usr/bin/docker build -q -t "$IMAGE_DARK" "$context" >/dev/null
  fi
done
unset DOCKER_HOST
rm -rf "$context"

# ---- the hub ---------------------------------------------------------------------------------
py_users=$(printf '"%s", ' "${users[@]}")
cat > "$STATE/hub/jupyterhub_config.py" <<CFG
# Generated by scripts/quickstart.sh: the repository's example config, adapted for the demo.
load_subconfig("$repo/jupyterhub_config.py")
c.JupyterHub.port = $DEMO_PORT
c.JupyterHub.hub_port = $DEMO_HUB_PORT
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:$DEMO_PROXY_API_PORT"
c.JupyterHub.db_url = "sqlite:///$STATE/hub/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "$STATE/hub/jupyterhub_cookie_secret"
c.ConfigurableHTTPProxy.pid_file = "$STATE/hub/proxy.pid"
# The demo logs in with a fixed password instead of PAM.
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = "$DEMO_PASSWORD"
c.LocalAuthenticator.allowed_groups = set()
c.Authenticator.allowed_users = {$py_users}
# The offline-built images are already on the demo daemons: no pull, no mirror needed.
c.RootlessGPUSpawner.image = "$IMAGE"
c.RootlessGPUSpawner.allowed_images = {
    "JupyterLab": "$IMAGE",
    "JupyterLab, dark theme / 深色主题": "$IMAGE_DARK",
}
# SIMULATED GPUs: the demo daemons have a stub NVIDIA hook, so Docker accepts GPU requests and
# sets NVIDIA_VISIBLE_DEVICES, but there is no GPU and no CUDA. Each GPU goes to one server at a time.
c.RootlessGPUSpawner.gpu_policy = "exclusive"
c.RootlessGPUSpawner.gpu_ids = ["0", "1", "2", "3"]
c.RootlessGPUSpawner.gpus = 1
c.RootlessGPUSpawner.max_gpus_per_user = 2
c.JupyterHub.template_vars = {
    "announcement": "Demo: the 4 GPUs are simulated (no CUDA). / 演示：这 4 块 GPU 是模拟的（没有 CUDA）。",
}
CFG
if [ "$slurm" = 1 ]; then
  slurm_conf=$(bash scripts/demo-slurm.sh up "$STATE/slurm")
  cat >> "$STATE/hub/jupyterhub_config.py" <<CFG
# --slurm: each server is a Slurm job (partition gpu, 2 nodes x 2 SIMULATED GPUs on this host).
from rootless_gpu_spawner.slurm.report import REPORT_HANDLER
c.JupyterHub.spawner_class = "rootless-gpu-slurm"
c.JupyterHub.extra_handlers = [REPORT_HANDLER]
c.RootlessGPUSlurmSpawner.slurm_conf = "$slurm_conf"
c.RootlessGPUSlurmSpawner.slurm_publish_ip = "127.0.0.1"   # hub and both nodes are this host
c.RootlessGPUSlurmSpawner.slurm_node_gpu_stub_dir = "$GPU_STUB_DIR"
c.RootlessGPUSlurmSpawner.slurm_gpus = 1
c.RootlessGPUSlurmSpawner.slurm_max_gpus = 2
c.RootlessGPUSlurmSpawner.slurm_time_limit = 120
c.RootlessGPUSlurmSpawner.slurm_max_time_limit = 480
c.Spawner.start_timeout = 600   # a job may wait in Slurm's queue
c.JupyterHub.template_vars = {
    "announcement": "Demo: servers run as Slurm jobs on 2 nodes with 2 simulated GPUs each (no CUDA). / 演示：服务器作为 Slurm 作业运行在 2 个节点上，每个节点 2 块模拟 GPU（没有 CUDA）。",
}
CFG
fi

log "JupyterHub on http://127.0.0.1:$DEMO_PORT  (users: ${users[*]}, password $DEMO_PASSWORD; GPUs simulated); Ctrl-C to stop"
cd "$STATE/hub"
# Its own session: Ctrl-C reaches the hub once, from cleanup (a terminal would also send it one).
setsid "$RGS_VENV/bin/jupyterhub" -f "$STATE/hub/jupyterhub_config.py" &
hub_pid=$!
status=0
wait "$hub_pid" || status=$?
hub_pid=
log "JupyterHub exited ($status)"
exit "$status"
