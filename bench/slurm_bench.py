"""Time to ready through Slurm (RootlessGPUSlurmSpawner) vs the local spawner, same host, idle cluster.

Needs the rootless testbed up (``python -m tests.testbed up``: bob's *simulated GPU* daemon, the
lab image) and Slurm's packages; it starts its own two-node Slurm with scripts/demo-slurm.sh and
stops it again. Two real hubs run side by side (one per spawner); the same hub user (mapped to
bob's account, as in tests/integration/test_slurm.py) starts and stops a server with 1 GPU on
each, interleaved, ``--repeats`` times after one untimed warm-up each::

    python -m bench.slurm_bench [--repeats 5] [--out docs/performance-slurm.json]

Through Slurm the start is broken down from the spawner's own log line ("slurm phases"):
sbatch returned -> job seen RUNNING (squeue, every 0.2 s) -> the node side reported its started
container -> the hub's ready check answered. Each figure is seconds from the moment the spawner
called sbatch; "total" is the client's clock from POST /users/NAME/server to the hub's ready.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTBED_JSON = Path("/run/rootless-gpu-spawner-testbed/testbed.json")
USER = "slurm-bench"
BOB = "rgstest-bob"
PHASES = re.compile(r"slurm phases for (\S+): job (\d+) (.*)$")


def local_config(testbed) -> str:
    return f"""
    c.RootlessGPUSpawner.image = {testbed['local_image']!r}
    c.RootlessGPUSpawner.pull_policy = "ifnotpresent"
    c.RootlessGPUSpawner.mirror_prefixes = [{testbed['registry_from_daemon']!r}]
    c.RootlessGPUSpawner.mirror_fallback_to_upstream = False
    c.RootlessGPUSpawner.system_user = lambda name: {BOB!r}
    c.RootlessGPUSpawner.allow_shared_accounts = True
    c.RootlessGPUSpawner.gpus = 1
    """


def slurm_config(testbed, slurm_conf: str) -> str:
    return local_config(testbed) + f"""
    c.JupyterHub.spawner_class = "rootless-gpu-slurm"
    from rootless_gpu_spawner.slurm.report import REPORT_HANDLER
    c.JupyterHub.extra_handlers = [REPORT_HANDLER]
    c.RootlessGPUSlurmSpawner.slurm_conf = {slurm_conf!r}
    c.RootlessGPUSlurmSpawner.slurm_publish_ip = "127.0.0.1"
    c.RootlessGPUSlurmSpawner.slurm_node_gpu_stub_dir = {testbed['gpu_stub_dir']!r}
    c.RootlessGPUSlurmSpawner.slurm_gpus = 1
    c.RootlessGPUSlurmSpawner.slurm_status_interval = 0.2
    """


def timed_start(hub) -> float:
    t0 = time.monotonic()
    r = hub.spawn(USER, {"gpus": 1})
    if r.status_code not in (201, 202):
        raise RuntimeError(f"spawn failed: {r.status_code} {r.text[:300]}")
    if r.status_code == 202:
        hub.wait_ready(USER, timeout=120)
    return time.monotonic() - t0


def phases_from_log(hub) -> list[dict]:
    out = []
    for line in hub.log_path.read_text(errors="replace").splitlines():
        m = PHASES.search(line)
        if m:
            out.append({k: float(v) for k, v in (kv.split("=") for kv in m.group(3).split())})
    return out


def run(repeats: int) -> dict:
    sys.path.insert(0, str(REPO))
    from testkit.hub import Hub

    testbed = json.loads(TESTBED_JSON.read_text())
    workdir = Path(tempfile.mkdtemp(prefix="rgs-bench-slurm-"))
    workdir.chmod(0o711)  # the jobs (run as the student) execute their scripts from the Slurm spool below
    script = str(REPO / "scripts" / "demo-slurm.sh")
    subprocess.run(["bash", script, "up", str(workdir / "slurm")], check=True, capture_output=True, timeout=120)
    hubs = {}
    try:
        hubs["local"] = Hub(workdir / "local", local_config(testbed), [USER]).start()
        hubs["slurm"] = Hub(workdir / "hub-slurm", slurm_config(testbed, str(workdir / "slurm" / "slurm.conf")),
                            [USER]).start()
        totals = {"local": [], "slurm": []}
        for i in range(repeats + 1):
            order = ["local", "slurm"] if i % 2 == 0 else ["slurm", "local"]
            for mode in order:
                seconds = timed_start(hubs[mode])
                hubs[mode].stop_server(USER)
                if i > 0:  # the first round warms both up
                    totals[mode].append(seconds)
        phases = phases_from_log(hubs["slurm"])[1:]
    finally:
        for hub in hubs.values():
            hub.stop()
        subprocess.run(["bash", script, "down", str(workdir / "slurm")], capture_output=True, timeout=120)
        shutil.rmtree(workdir, ignore_errors=True)
    median = {mode: statistics.median(v) for mode, v in totals.items()}
    return {
        "repeats": repeats,
        "totals": totals,
        "median": median,
        "slurm_minus_local": median["slurm"] - median["local"],
        "slurm_phases_median": {k: statistics.median(p[k] for p in phases if k in p)
                                for k in ("submitted", "running", "container_started", "ready")},
        "cpus": os.cpu_count(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    result = run(args.repeats)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def test_slurm_vs_local_bench():
    """Entry for running the bench through a pytest wrapper (``RGS_BENCH_SLURM=1``); not a test."""
    import pytest

    if os.environ.get("RGS_BENCH_SLURM") != "1":
        pytest.skip("a benchmark: set RGS_BENCH_SLURM=1 to run it")
    out = os.environ.get("RGS_BENCH_SLURM_OUT", str(REPO / "artifacts" / "slurm-bench.json"))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    main(["--repeats", os.environ.get("RGS_BENCH_SLURM_REPEATS", "5"), "--out", out])


if __name__ == "__main__":
    sys.exit(main())
