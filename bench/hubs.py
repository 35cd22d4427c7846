"""The hubs measured: stock DockerSpawner on one shared daemon and RootlessGPUSpawner, each a real JupyterHub.

Part of ``python -m bench.spawn_bench`` (see bench/README.md).
"""

from __future__ import annotations

import json
import textwrap
import threading
import time
from pathlib import Path
import requests
from testkit.hub import Hub
from .common import ABORT, BenchError, Clients, IMAGE, READY_TIMEOUT, REGISTRY_FROM_DAEMON, REPO_ROOT, STOP_TIMEOUT, container_timeline, finish_parallel, log, parallel, remove_all_containers, socket_url, start_parallel
from .machine import OURS_EXTRA_CONFIG
from . import snapshot


# ------------------------------------------------------------------ hubs


def hub_common_config(trace_path: Path) -> str:
    paths = [str(snapshot.CODE_DIR)] if snapshot.CODE_DIR else []
    paths.append(str(REPO_ROOT))
    return f"""
    import sys as _sys
    _sys.path[:0] = {paths!r}
    import bench.hubext as _bench_hubext
    _bench_hubext.install({str(trace_path)!r})
    c.JupyterHub.log_level = "INFO"
    """


def stock_config(trace_path: Path, shared_uid: int) -> str:
    return hub_common_config(trace_path) + f"""
    import os as _os
    # Stock DockerSpawner talks to ONE daemon for everybody, taken from DOCKER_HOST.
    _os.environ["DOCKER_HOST"] = {socket_url(shared_uid)!r}
    c.JupyterHub.spawner_class = "bench.hubext.BenchDockerSpawner"
    c.DockerSpawner.image = {IMAGE!r}
    c.DockerSpawner.remove = True
    c.DockerSpawner.extra_create_kwargs = {{"user": "0"}}
    c.DockerSpawner.args = ["--allow-root"]
    # "never" inspects the image exactly like "ifnotpresent" but can never reach Docker Hub.
    c.DockerSpawner.pull_policy = "never"
    """


def ours_config(trace_path: Path, image: str = IMAGE, mirrors=(REGISTRY_FROM_DAEMON,)) -> str:
    return hub_common_config(trace_path) + f"""
    import rootless_gpu_spawner as _rgs
    _bench_hubext._record("code", file=_rgs.__file__)
    c.JupyterHub.spawner_class = "rootless-gpu"
    c.RootlessGPUSpawner.image = {image!r}
    c.RootlessGPUSpawner.gpus = 0
    c.RootlessGPUSpawner.pull_policy = "ifnotpresent"
    # Only local registries; never the internet.
    c.RootlessGPUSpawner.mirror_prefixes = {list(mirrors)!r}
    c.RootlessGPUSpawner.mirror_fallback_to_upstream = False
    """.rstrip(" ") + "".join(f"    {line}\n" for line in OURS_EXTRA_CONFIG)


class BenchHub:
    def __init__(self, label: str, workdir: Path, users: list[str], config_fn):
        self.label = label
        self.dir = workdir / f"hub-{label}"
        if self.dir.exists():  # a reused --workdir: start from a fresh database and trace
            import shutil

            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self.trace_path = self.dir / "hubext.jsonl"
        self.hub = Hub(self.dir, textwrap.dedent(config_fn(self.trace_path)), users)

    def start(self):
        t = time.monotonic()
        self.hub.start()
        log(f"hub '{self.label}' up on {self.hub.url} in {time.monotonic() - t:.1f}s")
        return self

    def stop(self):
        """Stop the hub and its proxy (servers are not stopped through it: cleanup removes
        every bench container from the daemons directly)."""
        self.hub.stop(keep_servers=True)

    # -- one spawn, timed from POST to the hub's "ready"
    def spawn_one(self, user: str, go: threading.Event, box: list, options=None) -> dict:
        rec = {"user": user}
        go.wait(60)
        t0 = time.time()
        rec["t0"] = t0
        rec["t_go"] = box[0] if box else t0
        deadline = time.monotonic() + READY_TIMEOUT
        try:
            r = self.hub.request("POST", f"/users/{user}/server", json=options or {}, timeout=READY_TIMEOUT)
            rec["t_post_done"] = time.time()
            rec["post_status"] = r.status_code
            if r.status_code == 201:
                rec["t_ready"] = rec["t_post_done"]
                return rec
            if r.status_code != 202:
                raise BenchError(f"POST server of {user}: HTTP {r.status_code} {r.text[:300]}")
            self._wait_ready(user, rec, deadline)
        except Exception as e:
            rec["error"] = f"{type(e).__name__}: {e}"
        return rec

    def _wait_ready(self, user: str, rec: dict, deadline: float) -> None:
        events = rec.setdefault("events", [])
        try:
            with self.hub.request(
                "GET", f"/users/{user}/server/progress", stream=True, timeout=(10, 30)
            ) as r:
                if r.status_code == 200:
                    for line in r.iter_lines(decode_unicode=True):
                        if line and line.startswith("data:"):
                            ev = json.loads(line[5:])
                            events.append([time.time(), ev.get("progress"), ev.get("message")])
                            if ev.get("ready"):
                                rec["t_ready"] = time.time()
                                return
                            if ev.get("failed"):
                                raise BenchError(f"spawn of {user} failed: {ev.get('message')}")
                        if time.monotonic() > deadline or ABORT.is_set():
                            break
        except requests.RequestException as e:
            events.append([time.time(), None, f"progress stream: {e}"])
        # The stream ended without an answer: ask the REST API (bounded).
        while time.monotonic() < deadline and not ABORT.is_set():
            server = self.hub.server(user)
            if server and server.get("ready"):
                rec["t_ready"] = time.time()
                rec["ready_by_polling"] = True
                return
            if not server:
                raise BenchError(f"server of {user} vanished without becoming ready")
            time.sleep(0.1)
        raise BenchError(f"server of {user} not ready after {READY_TIMEOUT:.0f}s")

    def spawn_many(self, users: list[str], options=None) -> list[dict]:
        go = threading.Event()
        box: list = []
        pool, futures = start_parallel(lambda u: self.spawn_one(u, go, box, options), users)
        time.sleep(0.2)  # every thread parked on the event
        box.append(time.time())
        go.set()
        return finish_parallel(pool, futures)

    def stop_servers(self, users: list[str], timeout: float = STOP_TIMEOUT) -> list[str]:
        """Stop the users' servers through the REST API, all at once; returns the users whose
        server is still there after *timeout* (never raises for that)."""

        def stop(user):
            deadline = time.monotonic() + timeout
            try:
                if not self.hub.server(user):
                    return None
                r = self.hub.request("DELETE", f"/users/{user}/server", timeout=timeout)
                if r.status_code not in (202, 204, 400):
                    return f"{user}: DELETE answered {r.status_code} {r.text[:200]}"
                while time.monotonic() < deadline and not ABORT.is_set():
                    if not self.hub.server(user):
                        return None
                    time.sleep(0.25)
            except requests.RequestException as e:
                return f"{user}: {e}"
            return f"{user}: server still there after {timeout:.0f}s"

        return [e for e in parallel(stop, users) if e]

    def read_trace(self) -> list[dict]:
        out = []
        try:
            with open(self.trace_path) as f:
                for line in f:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
        except FileNotFoundError:
            pass
        return out


def container_name(user: str) -> str:
    """DockerSpawner's default container name (a fallback when the hub shows no state)."""
    from dockerspawner import DockerSpawner

    return f"jupyter-{DockerSpawner._escape(user)}"


def run_hub(bh: BenchHub, clients: Clients, users: list[str], where) -> list[dict]:
    """Spawn *users* at once on hub *bh*; *where(user)* names the bench user whose daemon
    runs that user's container (for the container timeline)."""
    records = bh.spawn_many(users)
    for rec in records:
        name = where(rec["user"])
        rec["daemon_of"] = name
        ref = container_name(rec["user"])
        try:  # the spawner's own record of its container (admin:server_state)
            state = (bh.hub.server(rec["user"]) or {}).get("state") or {}
            ref = state.get("object_id") or ref
        except requests.RequestException:
            pass
        rec["timeline"] = container_timeline(clients[name], ref)
    stuck = bh.stop_servers(users)
    if stuck:
        raise BenchError(f"hub '{bh.label}' could not stop servers ({'; '.join(stuck)[:500]}); its log: "
                         f"{bh.hub.log_path}")
    left = remove_all_containers(clients, sorted({where(u) for u in users}))
    if left:
        log(f"note: removed {left} container(s) left behind by hub '{bh.label}'")
    return records
