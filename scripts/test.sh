#!/usr/bin/env bash
# Run the whole test suite for real (as root): install dependencies, bring up the rootless
# testbed (test users, their rootless dockerd, a local registry as the Docker Hub mirror, the
# offline-built JupyterLab image), run pytest, and tear the testbed down again.
#
#   sudo bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

RGS_VENV=${RGS_VENV:-/opt/rootless-gpu-spawner/venv}
export RGS_VENV
bash scripts/install-deps.sh
py="$RGS_VENV/bin/python"

teardown() { "$py" -m tests.testbed down || echo "testbed down failed" >&2; }
trap teardown EXIT
"$py" -m tests.testbed up

mkdir -p artifacts
rm -f artifacts/reliability.json
status=0
"$py" -m pytest -v -rs -p no:cacheprovider --junitxml=artifacts/junit.xml "$@" tests || status=$?
# docs/reliability.md is regenerated from what this run measured.
if [ -f artifacts/reliability.json ]; then
  "$py" scripts/reliability_report.py || status=1
fi
exit "$status"
