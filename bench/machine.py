"""The machine under the benchmark: its facts, load, daemon restarts and port retries.

Part of ``python -m bench.spawn_bench`` (see bench/README.md).
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
import docker
from rootless_gpu_spawner.host import daemonctl
from . import provision
from .common import ABORT, BenchError, Clients, IMAGE, log, parallel
from .snapshot import code_identity


# ------------------------------------------------------------------ machine facts


def restart_daemons(users, clients: "Clients") -> "Clients":
    """Stop and start every bench daemon (as after a reboot); returns fresh clients."""
    clients.close()
    errors = provision.stop_daemons(users.values())
    if errors:
        raise BenchError(f"could not stop the bench daemons: {errors}")
    parallel(provision.ensure_daemon, list(users.values()))
    return Clients(users)


PORT_RETRY_MARK = "Failed to allocate and map port"


def daemon_log_offsets(users) -> dict:
    out = {}
    for name, pw in users.items():
        try:
            out[name] = os.path.getsize(daemonctl.daemon_paths(pw.pw_uid).log_file)
        except OSError:
            out[name] = 0
    return out


def count_port_retries(users, offsets: dict) -> int:
    """Host-port bindings the bench daemons had to retry during the run: every daemon picks
    its own ephemeral ports, but all of them bind on the host's loopback (rootlesskit)."""
    total = 0
    for name, pw in users.items():
        path = daemonctl.daemon_paths(pw.pw_uid).log_file
        try:
            with open(path, "rb") as f:
                size = os.path.getsize(path)
                f.seek(offsets.get(name, 0) if offsets.get(name, 0) <= size else 0)
                total += f.read().count(PORT_RETRY_MARK.encode())
        except OSError:
            pass
    return total


class LoadSampler:
    """The 1-minute load average every few seconds during the run (other work on the
    machine, such as a test suite, shows up here)."""

    def __init__(self, interval: float = 5.0):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.samples.append(float(open("/proc/loadavg").read().split()[0]))
            except (OSError, ValueError):
                pass
            self._stop.wait(self._interval)

    def stop(self):
        self._stop.set()
        self._thread.join(10)


def wait_for_idle(max_seconds: float) -> float:
    """Wait (bounded) until the 1-minute load average is below half the cores."""
    limit = (os.cpu_count() or 1) / 2
    deadline = time.monotonic() + max_seconds
    while True:
        load = float(open("/proc/loadavg").read().split()[0])
        if load < limit or time.monotonic() >= deadline or ABORT.is_set():
            return load
        log(f"waiting for the machine to quieten: load {load:.2f} (want < {limit:.1f})")
        time.sleep(min(15.0, max(0.0, deadline - time.monotonic())))


def machine_facts(users) -> dict:
    facts = {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                facts["mem_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                facts["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                facts["os"] = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    facts["loadavg_start"] = open("/proc/loadavg").read().split()[:3]
    pw = next(iter(users.values()))
    st = daemonctl.daemon_status(pw)
    facts["docker_server"] = st.get("server_version")
    facts["docker_api"] = st.get("api_version")
    facts["cgroup_driver"] = st.get("cgroup_driver")
    facts["rootless"] = st.get("rootless")
    try:
        code, body = daemonctl.api_get(daemonctl.daemon_paths(pw.pw_uid).socket, "/info")
        info = json.loads(body) if code == 200 else {}
        facts["storage_driver"] = info.get("Driver")
        code, body = daemonctl.api_get(
            daemonctl.daemon_paths(pw.pw_uid).socket, "/images/" + IMAGE.replace("/", "%2F") + "/json"
        )
        if code == 200:
            facts["image_size_mb"] = round(json.loads(body)["Size"] / 1e6)
    except (OSError, ValueError, KeyError):
        pass
    facts["spawner_code"] = code_identity()
    import dockerspawner
    import jupyterhub

    facts["jupyterhub"] = jupyterhub.__version__
    facts["dockerspawner"] = dockerspawner.__version__
    facts["docker_py"] = docker.__version__
    try:
        import subprocess

        p = subprocess.run(["configurable-http-proxy", "--version"], capture_output=True, text=True, timeout=30)
        facts["chp"] = p.stdout.strip()
    except Exception:
        pass
    return facts


#: Extra config lines for every RootlessGPUSpawner hub (--ours-config), for experiments.
OURS_EXTRA_CONFIG: list[str] = []

#: A copy of rootless_gpu_spawner/ taken when the run starts; every hub of the run imports
#: the spawner from it, so the whole run measures one version even if the package is edited.
