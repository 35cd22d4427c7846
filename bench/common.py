"""Shared pieces of the spawn benchmark: constants, logging, parallel runs, small statistics helpers, the students' Docker clients.

Part of ``python -m bench.spawn_bench`` (see bench/README.md).
"""

from __future__ import annotations

import datetime as dt
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import docker
from docker.errors import APIError, NotFound
from rootless_gpu_spawner.host import daemonctl
from . import provision


REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE = provision.IMAGE
CONTAINER_PORT = 8888
RAW_COMMAND = [
    "jupyter", "lab", "--allow-root", "--ip=0.0.0.0", f"--port={CONTAINER_PORT}",
    "--IdentityProvider.token=", "--no-browser",
]
RAW_LABEL = "org.rootless-gpu-spawner.bench"
GATEWAY = "10.0.2.2"
REGISTRY_FROM_DAEMON = provision.REGISTRY_FROM_DAEMON  # the local registry as a daemon sees it
DEAD_MIRROR = f"{GATEWAY}:1"  # host loopback port 1: nothing listens there
MIRROR_IMAGE = "rgs-lab:latest"  # Docker Hub style name; the local registry holds library/rgs-lab
LISTENING_MARK = "is running at"  # jupyter_server's log line once it serves
READY_TIMEOUT = 300.0
STOP_TIMEOUT = 180.0
POLL_INTERVAL = 0.02  # raw: /api/status polls once the server said it is running
FALLBACK_POLL_INTERVAL = 0.05
MODES = ("raw", "rawsu", "stock", "ours")
MODE_TITLES = {
    "raw": "raw `docker run` (`jupyter lab`) → `/api/status` 200",
    "rawsu": "raw `docker run` (image's `jupyterhub-singleuser`, stub hub API) → `/user/NAME/api` 200",
    "stock": "stock DockerSpawner via JupyterHub",
    "ours": "RootlessGPUSpawner via JupyterHub",
}
_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[bench {time.monotonic() - _T0:7.1f}s] {msg}", flush=True)


class BenchError(RuntimeError):
    pass


#: Set on Ctrl-C / SIGTERM: every wait loop gives up, so cleanup never waits on them.
ABORT = threading.Event()


def start_parallel(fn, items) -> tuple[ThreadPoolExecutor, list]:
    pool = ThreadPoolExecutor(max(1, len(items)))
    return pool, [pool.submit(fn, item) for item in items]


def finish_parallel(pool: ThreadPoolExecutor, futures: list) -> list:
    """Results in order; on an interrupt the workers are not waited for (they notice ABORT)."""
    try:
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def parallel(fn, items) -> list:
    return finish_parallel(*start_parallel(fn, items))


# ------------------------------------------------------------------ small helpers


def parse_docker_time(value: str | None) -> float | None:
    """RFC 3339 with nanoseconds (Docker's format) -> epoch seconds."""
    if not value or value.startswith("0001-"):
        return None
    value = value.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    main, _, tz = value.partition("+")
    if "." in main:
        head, frac = main.split(".", 1)
        main = f"{head}.{frac[:6]}"
    return dt.datetime.fromisoformat(f"{main}+{tz or '00:00'}").timestamp()


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def percentile(values, q: float):
    """Nearest-rank percentile (q in 0..100)."""
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    rank = max(1, min(len(values), int(-(-q * len(values) // 100))))
    return values[rank - 1]


def fmt(value, unit: str = "s", digits: int = 2) -> str:
    if value is None:
        return "–"
    if unit == "ms":
        return f"{value * 1000:.0f} ms"
    if unit == "x":
        return f"{value:.2f}×"
    return f"{value:.{digits}f} s"


def socket_url(uid: int) -> str:
    return daemonctl.daemon_paths(uid).docker_host


class Clients:
    """One docker-py client per bench daemon, created once (outside any timing)."""

    def __init__(self, users):
        self._clients = {
            name: docker.APIClient(base_url=socket_url(pw.pw_uid), version="auto", timeout=120)
            for name, pw in users.items()
        }

    def __getitem__(self, name) -> docker.APIClient:
        return self._clients[name]

    def close(self):
        for c in self._clients.values():
            try:
                c.close()
            except Exception:
                pass


def remove_all_containers(clients: Clients, names) -> int:
    """Bench daemons hold only bench containers: remove every one (leftovers of a run)."""

    def clean(name):
        c = clients[name]
        removed = 0
        for ct in c.containers(all=True):
            try:
                c.remove_container(ct["Id"], force=True)
                removed += 1
            except NotFound:
                pass
        return removed

    return sum(parallel(clean, list(names)))


def container_timeline(client: docker.APIClient, ref: str) -> dict:
    """From the daemon: when the container's process started, when the server printed its
    first line and when it said it is running (jupyter_server's "is running at")."""
    out = {"started_at": None, "first_log_at": None, "listening_at": None}
    try:
        info = client.inspect_container(ref)
    except NotFound:
        return out
    out["id"] = info["Id"][:12]
    out["created_at"] = parse_docker_time(info.get("Created"))
    out["started_at"] = parse_docker_time(info["State"].get("StartedAt"))
    try:
        text = client.logs(ref, timestamps=True, tail=400).decode(errors="replace")
    except APIError:
        text = ""
    for line in text.splitlines():
        stamp = parse_docker_time(line.split(" ", 1)[0])
        if out["first_log_at"] is None:
            out["first_log_at"] = stamp
        if LISTENING_MARK in line:
            out["listening_at"] = stamp
            break
    return out
