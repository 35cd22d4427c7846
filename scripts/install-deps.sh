#!/usr/bin/env bash
# Install what the hub, the rootless daemons and the tests need, idempotently (as root,
# Debian 12 / Ubuntu 22.04+). Safe to run again: it only adds what is missing, and puts this
# clone's code into the virtualenv again.
#
#   bash scripts/install-deps.sh          # for the tests: the project with its test extras
#   bash scripts/install-deps.sh --hub    # for a hub: the project alone, and rootless-gpu-admin on PATH
#
# Result: the Debian packages below, configurable-http-proxy (npm), and a virtualenv at
# $RGS_VENV (default /opt/rootless-gpu-spawner/venv) holding a regular (not editable) install
# of this clone: the venv keeps working when the clone is moved or deleted, and its files are
# readable by everyone whatever the permissions of the clone's folder.
# With --hub, /usr/local/bin/rootless-gpu-admin links to $RGS_VENV/bin/rootless-gpu-admin.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
RGS_VENV=${RGS_VENV:-/opt/rootless-gpu-spawner/venv}
log() { printf '[install-deps %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

hub=0
case "${1:-}" in
  --hub) hub=1 ;;
  "") ;;
  *) echo "usage: bash scripts/install-deps.sh [--hub]" >&2; exit 2 ;;
esac

if [ "$(id -u)" != 0 ]; then
  echo "install-deps.sh must run as root (it installs Debian packages): run it as root, or prefix sudo" >&2
  exit 1
fi

packages=(
  docker.io rootlesskit slirp4netns uidmap fuse-overlayfs   # rootless Docker
  docker-registry                                           # a real registry, the test mirror
  debootstrap                                               # builds the test image offline
  nodejs npm                                                # configurable-http-proxy
  chromium fonts-noto-cjk                                   # browser tests (the UI is bilingual)
  slurm-wlm munge                                           # the Slurm spawner's demo and tests (scripts/demo-slurm.sh)
  python3 python3-venv python3-pip
  iproute2 procps ca-certificates curl openssl             # openssl: TLS for the mirror tests
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node may come from elsewhere (e.g. NodeSource); then do not ask apt for Debian's nodejs/npm.
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=($(printf '%s\n' "${missing[@]}" | grep -vx -e nodejs -e npm || true))
fi
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  timeout 900 apt-get update -qq
  # Never let package scripts start the rootful Docker daemon: nothing here needs it.
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 755 "$policy"; made_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive timeout 1800 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$made_policy" = 1 ] && rm -f "$policy"
else
  log "Debian packages already installed"
fi

if ! command -v configurable-http-proxy >/dev/null; then
  log "npm install -g configurable-http-proxy"
  timeout 600 npm install -g --no-fund --no-audit configurable-http-proxy >/dev/null
fi

# Debian's python3 for the venv (a pyenv or conda python on PATH is not what a lab host runs).
py=/usr/bin/python3
[ -x "$py" ] || py=$(command -v python3)
if [ ! -x "$RGS_VENV/bin/python" ]; then
  log "creating virtualenv $RGS_VENV"
  mkdir -p "$(dirname "$RGS_VENV")"
  "$py" -m venv "$RGS_VENV"
fi
# A regular install from a clean copy of the sources: nothing in the venv points back into the
# clone, and nothing is built inside the clone (no stale build/ directory gets packaged).
extras="[test]"
[ "$hub" = 1 ] && extras=""
src=$(mktemp -d /tmp/rootless-gpu-spawner-src.XXXXXX)
trap 'rm -rf "$src"' EXIT
cp -r "$here/pyproject.toml" "$here/README.md" "$here/rootless_gpu_spawner" "$src/"
find "$src" -name __pycache__ -prune -exec rm -rf {} +
log "pip install $here$extras (a regular install, into $RGS_VENV)"
timeout 900 "$RGS_VENV/bin/pip" install -q --disable-pip-version-check "$src$extras"
chmod -R a+rX "$RGS_VENV"
if [ "$hub" = 1 ]; then
  ln -sfn "$RGS_VENV/bin/rootless-gpu-admin" /usr/local/bin/rootless-gpu-admin
  log "rootless-gpu-admin on PATH: /usr/local/bin/rootless-gpu-admin -> $RGS_VENV/bin/rootless-gpu-admin"
fi
log "ready: $("$RGS_VENV/bin/jupyterhub" --version 2>/dev/null | head -1) in $RGS_VENV"
