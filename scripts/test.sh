#!/usr/bin/env bash
# Run the whole test suite for real (as root): install dependencies, bring up the rootless
# testbed (test users, their rootless dockerd, a local registry as the Docker Hub mirror, the
# offline-built JupyterLab image), run pytest, and tear the testbed down again.
#
#   bash scripts/test.sh [pytest args...]      (as root; prefix sudo if you are not root)
#
# The tests get their own virtualenv, $RGS_VENV (default /opt/rootless-gpu-spawner/test-venv), with
# a regular install of this clone and the test extras, so running them never changes the hub's
# /opt/rootless-gpu-spawner/venv. The integration tests' JupyterHubs load the package from there.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh must run as root (it creates test users and their rootless daemons): run it as root, or prefix sudo" >&2
  exit 1
fi
RGS_VENV=${RGS_VENV:-/opt/rootless-gpu-spawner/test-venv}
export RGS_VENV
bash scripts/install-deps.sh
py="$RGS_VENV/bin/python"
log() { printf '[test %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2 || true; }
mkdir -p artifacts

# Ctrl-C, SIGTERM or a closed terminal stop everything, also when the output goes through a pipe
# (| tee) that dies first: pytest runs in its own session and gets exactly one SIGINT from here
# (its fixtures then stop their hubs and servers), and the testbed (test users' daemons, the
# registry) is always taken down, its log in artifacts/testbed-down.log.
pytest_pid=
teardown() {
  trap '' PIPE INT TERM HUP
  set +e
  if [ -n "$pytest_pid" ] && kill -0 "$pytest_pid" 2>/dev/null; then
    log "stopping pytest (its hubs and servers first)"
    kill -INT "$pytest_pid" 2>/dev/null
    for _ in $(seq 600); do kill -0 "$pytest_pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pytest_pid" 2>/dev/null
  fi
  "$py" -m tests.testbed down >artifacts/testbed-down.log 2>&1 \
    || log "testbed down failed: see artifacts/testbed-down.log"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
"$py" -m tests.testbed up

rm -f artifacts/reliability.json
status=0
# A background job starts with SIGINT ignored: give pytest its KeyboardInterrupt back. Its output
# goes through a relay that outlives a dead pipe (tee -p, no SIGINT), so pytest never fails on a
# write while its fixtures stop their hubs; all of it is also kept in artifacts/pytest-output.log.
setsid "$py" -c 'import signal, sys, pytest; signal.signal(signal.SIGINT, signal.default_int_handler); sys.exit(pytest.main(sys.argv[1:]))' \
  -v -rs -p no:cacheprovider --junitxml=artifacts/junit.xml "$@" tests \
  > >(trap '' INT HUP; exec tee -p artifacts/pytest-output.log) 2>&1 &
pytest_pid=$!
wait "$pytest_pid" || status=$?
pytest_pid=
# docs/reliability.md is regenerated from what this run measured.
if [ -f artifacts/reliability.json ]; then
  "$py" scripts/reliability_report.py || status=1
fi
exit "$status"
