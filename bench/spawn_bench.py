"""Spawn benchmark: raw ``docker run`` vs stock DockerSpawner vs RootlessGPUSpawner.

Run as root from the repository root, with the project's virtualenv::

    python -m bench.spawn_bench [--students 16] [--repeats 3] [--out docs/performance.md] [--quick]

In one run, on this machine's rootless testbed, it measures time to ready for

* ``raw``: ``docker run -d -p 127.0.0.1::8888 IMAGE jupyter lab ...`` through docker-py on
  a student's own rootless daemon, until ``GET /api/status`` answers 200;
* ``stock``: stock DockerSpawner through a real JupyterHub + configurable-http-proxy, every
  student on ONE shared rootless daemon (the only way it can work), from
  ``POST /users/NAME/server`` to the hub's "ready";
* ``ours``: RootlessGPUSpawner through a real JupyterHub, each student on their own daemon
  (gpus=0, image present), same timing definition;
* ``rawsu``: like ``raw`` but the image's own ``jupyterhub-singleuser`` against a stub hub
  API, so that ours can also be compared with the very server it starts;

for 1 student (repeated) and for N students at once, plus the hub's event-loop lag, the
phases of each spawn, a dead-mirror case and a class start on freshly started daemons.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import signal
import statistics
import sys
import tempfile
import textwrap
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import requests
from docker.errors import APIError, NotFound

from rootless_gpu_spawner.host import daemonctl
from tests import testbed
from tests.integration.hub import Hub

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


# ------------------------------------------------------------------ raw docker run


def _get(port: int, path: str, timeout: float = 2.0) -> int | None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _wait_log_line(client: docker.APIClient, cid: str, deadline: float) -> bool:
    """Follow the container's log until the server says it is running (event-driven,
    so waiting costs no polling load); False if the stream ends first."""
    buf = b""
    try:
        stream = client.logs(cid, stream=True, follow=True, stdout=True, stderr=True)
        try:
            for chunk in stream:
                buf = (buf + chunk)[-4096:]
                if LISTENING_MARK.encode() in buf:
                    return True
                if time.monotonic() > deadline:
                    return False
        finally:
            try:
                stream.close()
            except Exception:
                pass
    except Exception:
        return False
    return False


class StubHubAPI:
    """A stand-in for the hub's REST API on loopback, for the ``rawsu`` mode: the image's
    ``jupyterhub-singleuser`` asks the hub for its version before it serves (and exits if
    no hub answers), then posts activity. This answers both at once, so ``rawsu`` measures
    the container and the single-user server alone."""

    def __init__(self):
        import http.server

        import jupyterhub

        version = jupyterhub.__version__

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                body = b"{}"
                self.send_response(200)
                self.send_header("X-JupyterHub-Version", version)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True)
        self._thread.start()

    def close(self):
        self._server.shutdown()
        self._server.server_close()


def raw_spec(mode: str, user: str, stub_port: int | None) -> tuple[list, dict | None, str]:
    """(command, environment, readiness path) of a raw container."""
    if mode == "raw":
        return RAW_COMMAND, None, "/api/status"
    prefix = f"/user/{user}/"
    api = f"http://{GATEWAY}:{stub_port}/hub/api"
    env = {
        "JUPYTERHUB_API_TOKEN": "bench-" + user,
        "JUPYTERHUB_API_URL": api,
        "JUPYTERHUB_ACTIVITY_URL": f"{api}/users/{user}/activity",
        "JUPYTERHUB_SERVICE_PREFIX": prefix,
        "JUPYTERHUB_SERVICE_URL": f"http://0.0.0.0:{CONTAINER_PORT}{prefix}",
        "JUPYTERHUB_USER": user,
        "JUPYTERHUB_CLIENT_ID": f"jupyterhub-user-{user}",
        "JUPYTERHUB_OAUTH_CALLBACK_URL": f"{prefix}oauth_callback",
    }
    # The hub's own readiness check asks for {prefix}api (any answer below 500 will do).
    return ["jupyterhub-singleuser", "--allow-root"], env, f"{prefix}api"


def raw_one(client: docker.APIClient, user: str, spec, go: threading.Event, t_go_box: list) -> dict:
    command, env, ready_path = spec
    rec = {"user": user}
    go.wait(60)
    t0 = time.time()
    rec["t0"] = t0
    rec["t_go"] = t_go_box[0] if t_go_box else t0
    deadline = time.monotonic() + READY_TIMEOUT
    try:
        cont = client.create_container(
            IMAGE,
            command=command,
            environment=env,
            name=f"rgsbench-raw-{user}",
            ports=[CONTAINER_PORT],
            user="0",
            labels={RAW_LABEL: "raw"},
            host_config=client.create_host_config(port_bindings={CONTAINER_PORT: ("127.0.0.1",)}),
        )
        cid = rec["container"] = cont["Id"]
        rec["t_created"] = time.time()
        client.start(cid)
        rec["t_started"] = time.time()
        binding = client.port(cid, CONTAINER_PORT)
        if not binding:
            raise BenchError(f"no published port for {cid[:12]}")
        port = int(binding[0]["HostPort"])
        if _wait_log_line(client, cid, deadline):
            rec["t_line_seen"] = time.time()
            interval = POLL_INTERVAL
        else:
            interval = FALLBACK_POLL_INTERVAL
        attempts = 0
        while True:
            attempts += 1
            if _get(port, ready_path) == 200:
                rec["t_ready"] = time.time()
                break
            if time.monotonic() > deadline or ABORT.is_set():
                raise BenchError(f"raw server of {user} not ready after {READY_TIMEOUT:.0f}s")
            time.sleep(interval)
        rec["attempts"] = attempts
    except Exception as e:
        rec["error"] = f"{type(e).__name__}: {e}"
    return rec


def run_raw(clients: Clients, users: list[str], mode: str = "raw", stub_port: int | None = None) -> list[dict]:
    go = threading.Event()
    box: list = []
    pool, futures = start_parallel(lambda u: raw_one(clients[u], u, raw_spec(mode, u, stub_port), go, box), users)
    time.sleep(0.2)  # every thread parked on the event
    box.append(time.time())
    go.set()
    records = finish_parallel(pool, futures)
    for rec in records:
        if rec.get("container"):
            rec["timeline"] = container_timeline(clients[rec["user"]], rec["container"])
    remove_all_containers(clients, users)
    return records


# ------------------------------------------------------------------ hubs


def hub_common_config(trace_path: Path) -> str:
    paths = [str(CODE_DIR)] if CODE_DIR else []
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


# ------------------------------------------------------------------ analysis


def attach_phases(records: list[dict], trace: list[dict]) -> None:
    """Per hub spawn: hub-side timestamps (from bench/hubext.py) matched by user and time."""
    by_user: dict[str, list[dict]] = {}
    for ev in trace:
        if ev.get("user"):
            by_user.setdefault(ev["user"], []).append(ev)
    for rec in records:
        if "t_ready" not in rec:
            continue
        lo, hi = rec["t0"], rec["t_ready"] + 0.5
        marks = {}
        for ev in by_user.get(rec["user"], []):
            if lo <= ev["t"] <= hi and ev["k"] not in marks:
                marks[ev["k"]] = ev["t"]
        rec["hub"] = marks


def spawn_marks(rec: dict) -> dict:
    """Absolute times of one successful spawn's milestones (None where unknown)."""
    tl = rec.get("timeline") or {}
    hub = rec.get("hub") or {}
    return {
        "request": rec["t0"],
        "hub_spawn_begin": hub.get("spawn_begin"),
        "start_returned": hub.get("wait_up_begin"),  # the spawner's start() is done
        "container_started": tl.get("started_at"),
        "first_log": tl.get("first_log_at"),
        "listening": tl.get("listening_at"),
        "hub_saw_server": hub.get("wait_up_end"),  # JupyterHub's HTTP check passed
        "proxy_added": hub.get("proxy_add_end"),
        "ready": rec.get("t_ready"),
    }


#: (title, from, to, applies to): medians of per-spawn differences
INTERVALS = [
    ("request → container process started", "request", "container_started", "all"),
    ("spawner's `start()` (hub begins the spawn → `start()` returned)", "hub_spawn_begin", "start_returned", "hub"),
    ("container started → server's first log line (interpreter, imports)", "container_started", "first_log", "all"),
    ("first log line → server running (\"is running at\")", "first_log", "listening", "all"),
    ("request → server running", "request", "listening", "all"),
    ("server running → hub's HTTP check passed (`wait_up`)", "listening", "hub_saw_server", "hub"),
    ("server running → `/api/status` 200 (bench polls once the log says running)", "listening", "ready", "raw"),
    ("hub's check passed → proxy route added", "hub_saw_server", "proxy_added", "hub"),
    ("proxy route added → client sees ready", "proxy_added", "ready", "hub"),
    ("server running → ready (all of the above after \"running\")", "listening", "ready", "all"),
    ("**total: request → ready**", "request", "ready", "all"),
]


def interval_medians(runs: list[dict], mode: str) -> dict:
    out = {}
    for title, a, b, applies in INTERVALS:
        if applies not in ("all", "raw" if mode.startswith("raw") else "hub"):
            continue
        diffs = []
        for run in runs:
            for rec in run["records"]:
                if "t_ready" not in rec:
                    continue
                m = spawn_marks(rec)
                if m.get(a) is not None and m.get(b) is not None:
                    diffs.append(m[b] - m[a])
        out[title] = {"median": median(diffs), "min": min(diffs) if diffs else None,
                      "max": max(diffs) if diffs else None, "n": len(diffs)}
    return out


def run_stats(runs: list[dict]) -> dict:
    """runs: [{"records": [...], "t_go": ...}] for one (mode, students)."""
    per_student, makespans, failures = [], [], 0
    for run in runs:
        ok = [r for r in run["records"] if "t_ready" in r]
        failures += len(run["records"]) - len(ok)
        times = [r["t_ready"] - r["t_go"] for r in ok]
        per_student += times
        if ok and len(ok) == len(run["records"]):
            makespans.append(max(times))
    return {
        "n": len(per_student),
        "failures": failures,
        "min": min(per_student) if per_student else None,
        "median": median(per_student),
        "max": max(per_student) if per_student else None,
        "makespan_median": median(makespans),
        "makespan_min": min(makespans) if makespans else None,
        "makespan_max": max(makespans) if makespans else None,
        "makespans": makespans,
        "times": per_student,
    }


def lag_stats(trace: list[dict], windows: list[tuple[float, float]]) -> dict:
    samples = [ev["lag"] for ev in trace if ev.get("k") == "lag" and any(a <= ev["t"] <= b for a, b in windows)]
    return {
        "samples": len(samples),
        "max": max(samples) if samples else None,
        "p99": percentile(samples, 99),
        "median": median(samples),
    }


def run_window(run: dict) -> tuple[float, float]:
    ends = [r.get("t_ready") or r.get("t_post_done") or r["t0"] for r in run["records"]]
    return run["t_go"], max(ends)


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
CODE_DIR: Path | None = None


def snapshot_code(workdir: Path) -> Path:
    import shutil

    dest = workdir / "code"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(REPO_ROOT / "rootless_gpu_spawner", dest / "rootless_gpu_spawner",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def check_code_snapshot(bh: "BenchHub") -> None:
    """The hub really imported the spawner from the snapshot (not from the working tree)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for ev in bh.read_trace():
            if ev.get("k") == "code":
                if CODE_DIR and not str(ev.get("file", "")).startswith(str(CODE_DIR)):
                    raise BenchError(f"hub '{bh.label}' imported the spawner from {ev.get('file')}, "
                                     f"not from the snapshot {CODE_DIR}")
                return
        time.sleep(0.2)
    log(f"note: hub '{bh.label}' did not report where it imported the spawner from")


def code_identity() -> str:
    """Which spawner code was measured: the commit, plus a hash of the snapshot's files when
    the working tree differed from that commit."""
    import hashlib
    import subprocess

    def git(*a):
        p = subprocess.run(["git", *a], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
        return p.stdout.strip() if p.returncode == 0 else ""

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown commit"
    dirty = git("status", "--porcelain", "--", "rootless_gpu_spawner")
    if not dirty:
        return f"commit {commit}"
    h = hashlib.sha256()
    pkg = (CODE_DIR or REPO_ROOT) / "rootless_gpu_spawner"
    for path in sorted(pkg.rglob("*.py")):
        h.update(path.relative_to(pkg).as_posix().encode() + b"\0" + path.read_bytes())
    return f"commit {commit} + uncommitted changes in rootless_gpu_spawner/ (sources sha256 {h.hexdigest()[:12]})"


# ------------------------------------------------------------------ dead mirror


class HungMirror:
    """A loopback port that accepts connections and never answers: a mirror whose host is up
    but whose service hangs (seen from a daemon as 10.0.2.2:PORT)."""

    def __init__(self):
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self._sock.settimeout(0.5)
        self.port = self._sock.getsockname()[1]
        self._conns = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
                self._conns.append(conn)
            except OSError:
                continue

    def close(self):
        self._stop.set()
        self._thread.join(5)
        for c in self._conns:
            c.close()
        self._sock.close()


def untag_mirror_image(client: docker.APIClient) -> None:
    """Make MIRROR_IMAGE absent again under every name (only names go; the layer it shares
    with the lab image stays)."""
    for img in client.images():
        for tag in img.get("RepoTags") or []:
            if tag.rsplit("/", 1)[-1] == MIRROR_IMAGE:
                try:
                    client.remove_image(tag, noprune=True)
                except NotFound:
                    pass


def docker_pull_seconds(client: docker.APIClient, repository: str, tag: str) -> tuple[float, str | None]:
    t = time.monotonic()
    error = None
    try:
        for chunk in client.pull(repository, tag=tag, stream=True, decode=True):
            if isinstance(chunk, dict) and (chunk.get("error") or chunk.get("errorDetail")):
                error = chunk.get("error") or str(chunk.get("errorDetail"))
    except APIError as e:
        error = e.explanation or str(e)
    except requests.RequestException as e:
        error = f"{type(e).__name__}: {e}"
    return time.monotonic() - t, error


def dead_mirror_case(workdir: Path, clients: Clients, user: str, repeats: int, hubs: list) -> dict:
    out: dict = {"user": user, "image": MIRROR_IMAGE, "live": REGISTRY_FROM_DAEMON}
    if not testbed.registry_answers():
        out["skipped"] = f"the local registry does not answer on {testbed.REGISTRY}"
        return out
    if not testbed.registry_manifest_config_digest(testbed.MIRROR_REPO, testbed.MIRROR_TAG):
        out["skipped"] = f"the local registry holds no {testbed.MIRROR_REPO}:{testbed.MIRROR_TAG}"
        return out
    client = clients[user]
    repo = "library/rgs-lab"
    # Warm-up (untimed): the first pull of this blob on this daemon downloads and extracts the
    # layer; afterwards the daemon knows the blob ("Already exists"), so every timed pull moves
    # only the manifest and the config, and differences between variants are the mirrors' cost.
    untag_mirror_image(client)
    secs, err = docker_pull_seconds(client, f"{REGISTRY_FROM_DAEMON}/{repo}", "latest")
    if err:
        out["skipped"] = f"warm-up pull from {REGISTRY_FROM_DAEMON} failed: {err}"
        return out
    out["warmup_pull_s"] = secs
    untag_mirror_image(client)
    hung = HungMirror()
    started: list[BenchHub] = []
    try:
        variants = {
            "live": [REGISTRY_FROM_DAEMON],
            "refused": [DEAD_MIRROR, REGISTRY_FROM_DAEMON],
            "hung": [f"{GATEWAY}:{hung.port}", REGISTRY_FROM_DAEMON],
        }
        out["variants"] = {k: v for k, v in variants.items()}
        # What the daemon itself takes to give up on each kind of mirror (plain docker pull).
        out["plain_pull"] = {}
        for key, count in (("live", repeats), ("refused", repeats), ("hung", 1)):
            results = [docker_pull_seconds(client, f"{variants[key][0]}/{repo}", "latest") for _ in range(max(1, count))]
            untag_mirror_image(client)
            out["plain_pull"][key] = {"seconds": [r[0] for r in results], "error": results[-1][1]}
        for key, mirrors in variants.items():
            bh = BenchHub(f"mirror-{key}", workdir, [user],
                          lambda p, m=mirrors: ours_config(p, MIRROR_IMAGE, m))
            hubs.append(bh)
            started.append(bh)
            bh.start()
        # Warm every hub's spawn path once with the image present (no mirror is touched), so
        # that a variant's first trial differs from the others only by its mirrors.
        _, err = docker_pull_seconds(client, f"{REGISTRY_FROM_DAEMON}/{repo}", "latest")
        if err:
            raise BenchError(f"pull from {REGISTRY_FROM_DAEMON} failed: {err}")
        client.tag(f"{REGISTRY_FROM_DAEMON}/{repo}:latest", MIRROR_IMAGE.split(":")[0], "latest")
        for bh in started:
            run_hub(bh, clients, [user], lambda u: u)
        untag_mirror_image(client)
        keys = list(variants)
        trials: dict[str, list] = {k: [] for k in keys}
        for r in range(max(1, repeats)):
            for key in keys[r % 3:] + keys[: r % 3]:
                untag_mirror_image(client)
                bh = next(b for b in started if b.label == f"mirror-{key}")
                (rec,) = run_hub(bh, clients, [user], lambda u: u)
                rec["repeat"] = r
                trials[key].append(rec)
                log(f"dead-mirror case, {key:7s} mirrors, trial {r + 1}: " + (
                    f"{rec['t_ready'] - rec['t0']:.2f}s to ready" if "t_ready" in rec else rec.get("error", "?")))
        out["trials"] = trials
    finally:
        for bh in started:
            try:
                bh.stop()
            except Exception as e:
                log(f"hub '{bh.label}' stop: {e}")
            if bh in hubs:
                hubs.remove(bh)
            if "trials" in out:
                attach_phases(out["trials"][bh.label.split("-", 1)[1]], bh.read_trace())
        hung.close()
        try:
            untag_mirror_image(client)
        except Exception:
            pass
    return out


def summarize_dead_mirror(dm: dict) -> None:
    if not dm or not dm.get("trials"):
        return

    def start_s(rec):
        hub = rec.get("hub") or {}
        if "t_ready" in rec and hub.get("spawn_begin") and hub.get("wait_up_begin"):
            return hub["wait_up_begin"] - hub["spawn_begin"]
        return None

    dm["ready_s"] = {k: [r["t_ready"] - r["t0"] if "t_ready" in r else None for r in v] for k, v in dm["trials"].items()}
    dm["start_s"] = {k: [start_s(r) for r in v] for k, v in dm["trials"].items()}
    base = median(dm["start_s"].get("live", []))
    dm["cost"] = {}
    for key in ("refused", "hung"):
        vals = dm["start_s"].get(key) or []
        if base is None or not vals or vals[0] is None:
            continue
        later = [v for v in vals[1:] if v is not None]
        dm["cost"][key] = {
            "first": vals[0] - base,
            "later": (median(later) - base) if later else None,
        }


# ------------------------------------------------------------------ report


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def verdict(value, target):
    if value is None:
        return "–"
    return "met" if value <= target else "**missed**"


BOOT = "container started → server's first log line (interpreter, imports)"
SERVE = "first log line → server running (\"is running at\")"
TOTAL = "**total: request → ready**"


def build_report(res: dict) -> str:
    f = res["facts"]
    n = res["students"]
    st = res["stats"]
    lines: list[str] = []
    add = lines.append
    add(f"Produced by `{res['command']}` (as root, from the repository root, with the project's "
        f"virtualenv) on {res['date']}; the whole run took {res['duration_min']:.1f} min.")
    add("")
    add("### Machine")
    add("")
    add(f"- {f.get('nproc')} CPU cores ({f.get('cpu', '?')}), {f.get('mem_gib', '?')} GiB memory, "
        f"{f.get('os', '?')}, kernel {f.get('kernel')}")
    add(f"- Docker {f.get('docker_server')} (API {f.get('docker_api')}), rootless: "
        f"{'yes' if f.get('rootless') else 'NO'}, storage driver {f.get('storage_driver')}, "
        f"cgroup driver {f.get('cgroup_driver')}; one rootless daemon per bench user "
        f"(`rgsbench-01`…`rgsbench-{n:02d}`)")
    add(f"- JupyterHub {f.get('jupyterhub')}, DockerSpawner {f.get('dockerspawner')}, docker-py "
        f"{f.get('docker_py')}, configurable-http-proxy {f.get('chp', '?')}, Python {f.get('python')}")
    add(f"- RootlessGPUSpawner measured at {f.get('spawner_code', '?')}"
        + (f", with extra config `{'; '.join(res['ours_extra_config'])}`" if res.get("ours_extra_config") else
           ", default settings except `gpus = 0` and local mirrors"))
    add(f"- image `{IMAGE}` ({f.get('image_size_mb', '?')} MB, JupyterLab, built offline); load average "
        f"at start {' '.join(f.get('loadavg_start', []))}, at end {' '.join(res.get('loadavg_end', []))}; "
        f"1-minute load during the run: median {median(res.get('load_samples') or [0]):.2f}, "
        f"max {max(res.get('load_samples') or [0]):.2f} (the bench's own work included; other work on "
        "the machine, e.g. a test suite, shows up here too)")
    add("")
    add("### Time to ready, per student")
    add("")
    add("Seconds from the request (raw: `docker create`; hubs: `POST /users/NAME/server`) to ready "
        "(raw: `GET /api/status` answers 200 on the published port; hubs: the hub's *ready*, i.e. a "
        "201 answer or the ready event of `/users/NAME/server/progress`). With N at once, every "
        "student's clock starts at the same instant and the makespan is when the last one was ready. "
        "Min/median/max pool every student of every run. One untimed warm-up round comes first.")
    add("")
    add("| mode | at once | daemons | runs | min | median | max | makespan: median (range) | failed |")
    add("|---|---:|---|---:|---:|---:|---:|---|---:|")
    for count in sorted({1, n}):
        for mode in MODES:
            key = f"{mode}/{count}"
            if key not in st:
                continue
            s = st[key]
            daemons = "1 shared" if mode == "stock" and count > 1 else ("own" if count > 1 else "1")
            span = (f"{fmt(s['makespan_median'])} ({fmt(s['makespan_min'])}–{fmt(s['makespan_max'])})"
                    if count > 1 else "–")
            add(f"| {MODE_TITLES[mode]} | {count} | {daemons} | {len(res['runs'].get(key, []))} | "
                f"{fmt(s['min'])} | {fmt(s['median'])} | {fmt(s['max'])} | {span} | {s['failures']} |")
    add("")
    rt = res["ratios"]
    lag = res["lag"]
    lo = lag.get(f"ours/{n}", {})
    dm = res.get("dead_mirror") or {}
    cost = dm.get("cost") or {}
    add("### Ratios and targets (issue 7)")
    add("")
    add("| measure | value | target | |")
    add("|---|---:|---:|---|")
    add(f"| 1 student, median: ours / raw | {fmt(rt['single_ours_raw'], 'x')} | ≤ 1.15× | "
        f"{verdict(rt['single_ours_raw'], 1.15)} |")
    add(f"| 1 student, median: stock / raw | {fmt(rt['single_stock_raw'], 'x')} | (reference) | |")
    add(f"| 1 student, median: ours / raw `jupyterhub-singleuser` | {fmt(rt['single_ours_rawsu'], 'x')} | (same server on both sides) | |")
    if n > 1:
        add(f"| {n} at once, makespan: ours / raw | {fmt(rt['makespan_ours_raw'], 'x')} | ≤ 1.15× | "
            f"{verdict(rt['makespan_ours_raw'], 1.15)} |")
        add(f"| {n} at once, makespan: stock / raw | {fmt(rt['makespan_stock_raw'], 'x')} | (reference) | |")
        add(f"| {n} at once, makespan: ours / raw `jupyterhub-singleuser` | {fmt(rt['makespan_ours_rawsu'], 'x')} | (same server on both sides) | |")
        add(f"| {n} at once, median student: ours / stock | {fmt(rt['median_ours_stock'], 'x')} | ≤ 0.5× | "
            f"{verdict(rt['median_ours_stock'], 0.5)} |")
    add(f"| hub event-loop lag while {n} start at once (ours): p99 | {fmt(lo.get('p99'), 'ms')} | "
        f"< 100 ms | {verdict(lo.get('p99'), 0.1)} |")
    add(f"| … max | {fmt(lo.get('max'), 'ms')} | | |")
    for key, title in (("refused", "dead mirror (port refused)"), ("hung", "dead mirror (accepts, never answers)")):
        c = cost.get(key)
        if c:
            add(f"| {title}, first use: extra spawn time | {fmt(c['first'])} | < 2 s | {verdict(c['first'], 2.0)} |")
            add(f"| {title}, later uses: extra spawn time | {fmt(c['later'])} | ≈ 0 (skipped) | "
                f"{verdict(c['later'], 0.2)} |")
    add("")
    add("### Hub event-loop lag")
    add("")
    add("Sampled inside each hub process by an asyncio task that sleeps 50 ms and records how late it "
        "wakes (`bench/hubext.py`, loaded from the hub's config); the window is from the start instant "
        "to the last student's ready, pooled over runs.")
    add("")
    add("| hub | students at once | samples | median | p99 | max |")
    add("|---|---:|---:|---:|---:|---:|")
    for key in sorted(lag, key=lambda k: (int(k.split('/')[1]), k)):
        l = lag[key]
        mode, count = key.split("/")
        add(f"| {mode} | {count} | {l['samples']} | {fmt(l['median'], 'ms')} | "
            f"{fmt(l['p99'], 'ms')} | {fmt(l['max'], 'ms')} |")
    add("")
    add("### Where the time goes")
    add("")
    add("Medians of per-spawn intervals (for N at once: median, and max in brackets). Container times "
        "come from the daemon (`State.StartedAt`; the Docker log timestamps of the server's first line "
        "and of jupyter_server's \"is running at\"); hub times from `bench/hubext.py`, which wraps "
        "`User.spawn`, `User._wait_up` and `Proxy.add_user` inside the hub. `raw` runs `jupyter lab`; "
        "`rawsu` runs the image's `jupyterhub-singleuser` like the hubs do, against a stub hub API.")
    add("")
    keys = [f"{m}/{c}" for c in sorted({1, n}) for m in MODES if f"{m}/{c}" in res["intervals"]]
    add("| interval | " + " | ".join(f"{k.split('/')[0]} ×{k.split('/')[1]}" for k in keys) + " |")
    add("|---|" + "---:|" * len(keys))
    for title, *_ in INTERVALS:
        cells = []
        for k in keys:
            v = res["intervals"][k].get(title)
            if not v:
                cells.append("")
            elif k.endswith("/1"):
                cells.append(fmt(v["median"]))
            else:
                cells.append(f"{fmt(v['median'])} ({fmt(v['max'])})")
        add(f"| {title} | " + " | ".join(cells) + " |")
    add("")
    if dm:
        add("### Dead mirror")
        add("")
        if dm.get("skipped"):
            add(f"Skipped: {dm['skipped']}.")
        else:
            add(f"RootlessGPUSpawner spawns `{MIRROR_IMAGE}` (a Docker Hub name, so it goes through "
                f"`mirror_prefixes`; `mirror_fallback_to_upstream = False`) for {dm['user']}; it is absent "
                f"from the daemon before every trial and the local registry `{REGISTRY_FROM_DAEMON}` holds "
                "it as `library/rgs-lab:latest`. The daemon already has the image's only layer (same "
                "tarball as the lab image), so a pull moves the manifest and the config only, and the "
                "difference to the first row is what the dead mirror costs. Each variant has its own hub, "
                "so its first trial is the dead mirror's first use after the hub started. \"start()\" is "
                "the spawner's part (hub begins the spawn → `start()` returned), free of the hub's "
                "readiness polling jitter.")
            add("")
            add("| mirror_prefixes | what is there | time to ready per trial | `start()` per trial | plain `docker pull` from the first mirror |")
            add("|---|---|---|---|---|")
            what = {"live": "the local registry only", "refused": "a loopback port where nothing listens, then the registry",
                    "hung": "a loopback port that accepts and never answers, then the registry"}
            for key, mirrors in dm.get("variants", {}).items():
                pp = dm.get("plain_pull", {}).get(key, {})
                err = (pp.get("error") or "ok").replace("|", "/")[:120]
                add(f"| `{mirrors}` | {what[key]} | "
                    + ", ".join(fmt(t) for t in dm["ready_s"].get(key, [])) + " | "
                    + ", ".join(fmt(t) for t in dm["start_s"].get(key, [])) + " | "
                    + f"{fmt(median(pp.get('seconds', [])))} ({err}) |")
        add("")
    add("### Reliability seen during the run")
    add("")
    failures = []
    for key, rs in res["runs"].items():
        for run in rs:
            failures += [f"{key}: {r['error'][:220]}" for r in run["records"] if "error" in r]
    if res.get("port_retries") is not None:
        add(f"- The bench daemons retried {res['port_retries']} host-port bindings (Docker's \"{PORT_RETRY_MARK}\" "
            "warning, up to 10 retries per container): each rootless daemon picks its own ephemeral host "
            "ports, but all of them bind on the host's loopback through rootlesskit, so concurrent starts on "
            "different daemons collide. After 10 failed retries the container does not start.")
    add(f"- Failed starts or spawns in the timed runs: {len(failures)}" + (":" if failures else "."))
    for line in failures[:10]:
        add(f"  - `{line}`")
    fresh = res.get("fresh") or {}
    if fresh:
        add(f"- **{n} at once right after every daemon was (re)started** (as after a reboot; run last, "
            "not in the tables above):")
        add("")
        add("  | mode | ready | failed | last ready after | first error |")
        add("  |---|---:|---:|---:|---|")
        for mode, records in fresh.items():
            ok = [r["t_ready"] - r["t_go"] for r in records if "t_ready" in r]
            errs = [r["error"] for r in records if "error" in r]
            first = errs[0].replace("|", "/")[-230:] if errs else ""
            add(f"  | {mode} | {len(ok)} | {len(errs)} | {fmt(max(ok)) if ok else '–'} | "
                + (f"`…{first}`" if first else "") + " |")
        add("")
        add("  Every freshly started daemon hands out ephemeral host ports from the start of the same range, "
            "and retries a port that another daemon's container holds only ten times, one port further each "
            "time: once ten or more servers of other students hold the ports it tries, a start fails with "
            "\"address already in use\".")
    add("")
    nts = notes(res)
    if nts:
        add("### Notes on missed targets (from this run's numbers)")
        add("")
        lines += nts
        add("")
    return "\n".join(lines)


PART_A = "request → container process started"
PART_C = "server running → ready (all of the above after \"running\")"
PART_B = "container started → server running"


def parts(res: dict, key: str, field: str = "median") -> dict:
    """A spawn in three parts: until the container runs, its server's boot, after "running"."""
    iv = res["intervals"].get(key) or {}

    def get(title):
        return (iv.get(title) or {}).get(field)

    boot = None
    if get(BOOT) is not None and get(SERVE) is not None:
        boot = get(BOOT) + get(SERVE)
    return {PART_A: get(PART_A), PART_B: boot, PART_C: get(PART_C), "total": get(TOTAL)}


def notes(res: dict) -> list[str]:
    """For each missed target: how ours differs from the reference, part by part, and the
    known causes of the parts that differ."""
    n = res["students"]
    rt = res["ratios"]
    st = res["stats"]
    out = []
    backoff = ("JupyterHub's own readiness check (`User._wait_up` → `wait_for_http_server`) polls with "
               "exponential backoff and full jitter, sleeping uniform(0, 0.2 s·2^k) up to 5 s, and a port "
               "published by rootlesskit accepts and then resets until the server listens; a spawner that "
               "returns from `start()` only once its server answers (polling every 50–100 ms) makes that "
               "first check pass at once")

    def compare(key, ref_key, field="median"):
        ours, ref = parts(res, key, field), parts(res, ref_key, field)
        cells = []
        for title in (PART_A, PART_B, PART_C):
            if ours[title] is not None and ref[title] is not None:
                cells.append(f"{title}: {fmt(ours[title])} vs {fmt(ref[title])} ({ours[title] - ref[title]:+.2f} s)")
        return ours, ref, "; ".join(cells)

    def causes(key, ref_key, field="median"):
        ours, ref = parts(res, key, field), parts(res, ref_key, field)
        su = parts(res, key.replace("ours", "rawsu"), field)
        found = []
        if None not in (ours[PART_B], ref[PART_B]) and ours[PART_B] - ref[PART_B] > 0.15:
            same = su[PART_B] is not None and abs(su[PART_B] - ours[PART_B]) < 0.5 * (ours[PART_B] - ref[PART_B])
            found.append(
                "the server's boot: the image's `jupyterhub-singleuser` starts slower than plain `jupyter lab`"
                + (f" (run raw, it takes {fmt(su[PART_B])} too, so this part is the single-user server's, "
                   "not the spawner's)" if same else "")
                + "; it also asks the hub for its version, synchronously, before it serves")
        if ours[PART_C] is not None and ours[PART_C] > 0.3:
            found.append(f"{fmt(ours[PART_C])} between \"running\" and ready: {backoff}")
        if None not in (ours[PART_A], ref[PART_A]) and ours[PART_A] - ref[PART_A] > 0.3:
            found.append(f"{fmt(ours[PART_A] - ref[PART_A])} more before the container runs: the spawner's "
                         "Docker calls and any admission queue (starts per host are bounded) come first")
        return found

    if rt.get("single_ours_raw") and rt["single_ours_raw"] > 1.15:
        _, _, cmp_ = compare("ours/1", "raw/1")
        c = causes("ours/1", "raw/1")
        out.append(f"- **1 student** ({fmt(rt['single_ours_raw'], 'x')} raw). Ours vs raw, medians: {cmp_}."
                   + (" Causes: " + "; ".join(c) + "." if c else ""))
    if n > 1 and rt.get("makespan_ours_raw") and rt["makespan_ours_raw"] > 1.15:
        def iv(key, title, field="median"):
            return ((res["intervals"].get(key) or {}).get(title) or {}).get(field)

        su_span = (st.get(f"rawsu/{n}") or {}).get("makespan_median")
        raw_span = (st.get(f"raw/{n}") or {}).get("makespan_median")
        boot = {k: parts(res, f"{k}/{n}")[PART_B] for k in ("ours", "raw", "rawsu")}
        text = f"- **{n} at once, makespan** ({fmt(rt['makespan_ours_raw'], 'x')} raw"
        if rt.get("makespan_ours_rawsu"):
            text += f", {fmt(rt['makespan_ours_rawsu'], 'x')} raw `jupyterhub-singleuser`"
        text += "). "
        if su_span and raw_span:
            text += (f"Started raw, all {n} at once, the image's single-user server is ready after {fmt(su_span)} "
                     f"and plain `jupyter lab` after {fmt(raw_span)}: the server the hubs run costs "
                     f"{fmt(ratio(su_span, raw_span), 'x')} as much to boot on {res['facts'].get('nproc')} cores. ")
        text += (f"Ours starts containers between {fmt(iv(f'ours/{n}', PART_A, 'min'))} and "
                 f"{fmt(iv(f'ours/{n}', PART_A, 'max'))} after the request (admission), each boot then takes "
                 f"{fmt(boot['ours'])} (container started → running, median; all at once: raw "
                 f"{fmt(boot['raw'])}, raw `jupyterhub-singleuser` {fmt(boot['rawsu'])}), and "
                 f"\"running\" → ready adds {fmt(iv(f'ours/{n}', PART_C))}. ")
        if rt.get("makespan_ours_rawsu") and rt["makespan_ours_rawsu"] <= 1.0:
            text += ("So the spawner adds nothing over the same server started raw all at once; the distance to "
                     "plain `jupyter lab` is the single-user server's heavier boot.")
        out.append(text)
    if n > 1 and rt.get("median_ours_stock") and rt["median_ours_stock"] > 0.5:
        ours_med = (st.get(f"ours/{n}") or {}).get("median")
        stock_med = (st.get(f"stock/{n}") or {}).get("median")
        stock_span = (st.get(f"stock/{n}") or {}).get("makespan_median")
        out.append(
            f"- **{n} at once, median student** ({fmt(rt['median_ours_stock'], 'x')} stock): stock starts all "
            f"{n} at once, so its median student ({fmt(stock_med)}) is ready close to its last one "
            f"({fmt(stock_span)}); ours admits a few starts at a time, so its median student ({fmt(ours_med)}) "
            "waits for about half of the others' boots. A cheaper boot per server lowers it further; more "
            "starts at once would not (they share the same cores).")
    lag = res["lag"].get(f"ours/{n}") or {}
    if lag.get("p99") is not None and lag["p99"] >= 0.1:
        out.append(f"- **event-loop lag** p99 {fmt(lag['p99'], 'ms')} while {n} start: something blocks the hub's "
                   "loop; compare the stock hub's row.")
    dm = res.get("dead_mirror") or {}
    for key, c in (dm.get("cost") or {}).items():
        first_bad = c.get("first") is not None and c["first"] >= 2.0
        later_bad = c.get("later") is not None and c["later"] >= 0.2
        if first_bad or later_bad:
            pp = (dm.get("plain_pull") or {}).get(key, {})
            daemon_s = median(pp.get("seconds", []))
            text = (f"- **dead mirror ({key})**: {fmt(c['first'])} extra on first use, {fmt(c.get('later'))} on "
                    f"later spawns. The daemon alone gives up on this mirror after {fmt(daemon_s)} "
                    f"(`{(pp.get('error') or '')[:100]}`)")
            if first_bad and daemon_s and c["first"] < 0.5 * daemon_s:
                text += ("; the spawner already stops waiting for it much sooner, so what is left is the spawner's "
                         "own time limit for a mirror's answer: to stay under the 2 s target it has to be shorter "
                         "(about 1–1.5 s)")
            elif first_bad:
                text += ("; a probe that only opens a TCP connection lets a mirror through when its port accepts "
                         "but nothing answers: asking its `/v2/` with a short total timeout (connect, TLS "
                         "handshake and first answer within ~1–1.5 s) would cut the first use")
            if later_bad:
                text += "; a failed mirror must be skipped for a cool-down period"
            out.append(text + ".")
    return out


BEGIN = "<!-- spawn_bench:begin (generated by python -m bench.spawn_bench; edit outside these markers) -->"
END = "<!-- spawn_bench:end -->"


def write_report(path: Path, body: str) -> None:
    block = f"{BEGIN}\n{body}\n{END}\n"
    if path.exists():
        old = path.read_text()
        if BEGIN in old and END in old:
            head, rest = old.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            tail = tail.lstrip("\n")
            path.write_text(head + block + ("\n" + tail if tail else ""))
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Spawn performance\n\n" + block)


# ------------------------------------------------------------------ main


def summarize(res: dict, traces: dict) -> None:
    """Attach the hubs' traces (phases, event-loop lag), then derive the statistics."""
    runs = res["runs"]
    res["lag"] = {}
    for key, rs in runs.items():
        mode = key.split("/")[0]
        if mode in traces:
            for run in rs:
                attach_phases(run["records"], traces[mode])
            res["lag"][key] = lag_stats(traces[mode], [run_window(r) for r in rs])
    derive(res)


def derive(res: dict) -> None:
    """Statistics, intervals and ratios from the runs (also used by --report-from)."""
    runs = res["runs"]
    res["stats"] = {key: run_stats(rs) for key, rs in runs.items()}
    res["intervals"] = {key: interval_medians(rs, key.split("/")[0]) for key, rs in runs.items()}
    st = res["stats"]
    n = res["students"]

    def get(key, field):
        return (st.get(key) or {}).get(field)

    res["ratios"] = {
        "single_ours_raw": ratio(get("ours/1", "median"), get("raw/1", "median")),
        "single_stock_raw": ratio(get("stock/1", "median"), get("raw/1", "median")),
        "makespan_ours_raw": ratio(get(f"ours/{n}", "makespan_median"), get(f"raw/{n}", "makespan_median")),
        "makespan_stock_raw": ratio(get(f"stock/{n}", "makespan_median"), get(f"raw/{n}", "makespan_median")),
        "single_ours_rawsu": ratio(get("ours/1", "median"), get("rawsu/1", "median")),
        "makespan_ours_rawsu": ratio(get(f"ours/{n}", "makespan_median"), get(f"rawsu/{n}", "makespan_median")),
        "median_ours_stock": ratio(get(f"ours/{n}", "median"), get(f"stock/{n}", "median")),
    }
    summarize_dead_mirror(res.get("dead_mirror"))


def report_from(path: Path, out: str | None) -> int:
    """Render the report again from a run's results.json (no measuring)."""
    res = json.loads(path.read_text())
    derive(res)
    report = build_report(res)
    print(report)
    if out:
        write_report(Path(out), report)
        log(f"wrote {out} from {path}")
    return 0


def main(argv=None) -> int:
    global CODE_DIR
    ap = argparse.ArgumentParser(prog="python -m bench.spawn_bench",
                                 description="Spawn benchmark: raw docker run vs stock DockerSpawner vs RootlessGPUSpawner.")
    ap.add_argument("--students", type=int, default=16, help="students starting at once (default 16)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each N-at-once case and of the dead-mirror trials (default 3)")
    ap.add_argument("--single-repeats", type=int,
                    help="runs of each 1-student case (default 3 × --repeats: single spawns are cheap and the "
                         "hub's readiness polling is jittery)")
    ap.add_argument("--out", help="markdown file to write the results into (e.g. docs/performance.md); "
                                  "text outside the generated block is kept")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 4 students, 1 repeat, 2 single repeats")
    ap.add_argument("--workdir", help="where hub logs, traces and results.json go (default: a new temp dir)")
    ap.add_argument("--skip-dead-mirror", action="store_true")
    ap.add_argument("--skip-fresh-daemons", action="store_true",
                    help="skip the last case: N at once right after every daemon was restarted")
    ap.add_argument("--keep-daemons", action="store_true", help="leave the bench daemons running afterwards")
    ap.add_argument("--modes", default=",".join(MODES),
                    help=f"comma-separated subset of {','.join(MODES)} (default: all; ratios need raw, stock and ours)")
    ap.add_argument("--ours-config", action="append", default=[], metavar="LINE",
                    help="an extra jupyterhub_config.py line for RootlessGPUSpawner's hubs, e.g. "
                         "'c.RootlessGPUSpawner.max_concurrent_starts = 3' (repeatable; for experiments)")
    ap.add_argument("--report-from", metavar="RESULTS_JSON",
                    help="render the report again from an earlier run's results.json (measures nothing)")
    ap.add_argument("--wait-for-idle", type=float, default=0, metavar="SECONDS",
                    help="first wait up to this long for the 1-minute load average to drop below half the cores")
    args = ap.parse_args(argv)
    if args.report_from:
        return report_from(Path(args.report_from), args.out)
    if args.quick:
        args.students, args.repeats, args.single_repeats = 4, 1, 2
    if args.single_repeats is None:
        args.single_repeats = 3 * args.repeats
    modes = tuple(m for m in MODES if m in args.modes.split(","))
    if not modes or set(args.modes.split(",")) - set(MODES):
        ap.error(f"--modes takes a comma-separated subset of {','.join(MODES)}")
    OURS_EXTRA_CONFIG[:] = args.ours_config
    if not 1 <= args.students <= 64 or not 1 <= args.repeats <= 20 or not 1 <= args.single_repeats <= 60:
        ap.error("--students must be 1..64, --repeats 1..20, --single-repeats 1..60")
    if os.geteuid() != 0:
        print("bench.spawn_bench must run as root (it creates users and starts their daemons)", file=sys.stderr)
        return 2
    if Path.cwd().resolve() != REPO_ROOT:
        print(f"run it from the repository root ({REPO_ROOT})", file=sys.stderr)
        return 2

    cleaning = threading.Event()

    def on_signal(signum, frame):
        ABORT.set()
        if not cleaning.is_set():  # cleanup itself is bounded and must run to its end
            raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    n = args.students
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="rgs-spawn-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    shown = argv if argv is not None else sys.argv[1:]
    res: dict = {
        "ours_extra_config": list(args.ours_config),
        "command": ("python -m bench.spawn_bench " + " ".join(shlex.quote(a) for a in shown)).strip(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "students": n,
        "repeats": args.repeats,
        "single_repeats": args.single_repeats,
        "runs": {},
    }
    log(f"workdir {workdir}")
    names = provision.user_names(n)
    users: dict = {}
    clients = None
    hubs: list[BenchHub] = []
    status = 0
    loads = None
    stub = None
    log_offsets = None
    try:
        if args.wait_for_idle > 0:
            wait_for_idle(args.wait_for_idle)
        loads = LoadSampler()
        CODE_DIR = snapshot_code(workdir)
        # Hubs are child processes: the snapshot must come first on their sys.path before
        # JupyterHub imports its spawner entry points (it does so before reading the config).
        os.environ["PYTHONPATH"] = os.pathsep.join([str(CODE_DIR), str(REPO_ROOT)])
        users = provision.provision(names)
        res["facts"] = machine_facts(users)
        log_offsets = daemon_log_offsets(users)
        clients = Clients(users)
        left = remove_all_containers(clients, names)
        if left:
            log(f"removed {left} leftover container(s) from the bench daemons")
        shared = names[0]  # stock DockerSpawner: everybody on this one daemon
        stock = ours = None
        if "stock" in modes:
            stock = BenchHub("stock", workdir, names, lambda p: stock_config(p, users[shared].pw_uid))
            hubs.append(stock)
            stock.start()
        if "ours" in modes:
            ours = BenchHub("ours", workdir, names, ours_config)
            hubs.append(ours)
            ours.start()
            check_code_snapshot(ours)

        stub = StubHubAPI()

        def run_mode(mode: str, students: list[str]) -> list[dict]:
            if mode in ("raw", "rawsu"):
                return run_raw(clients, students, mode, stub.port)
            if mode == "stock":
                return run_hub(stock, clients, students, lambda u: shared)
            return run_hub(ours, clients, students, lambda u: u)

        log(f"warm-up (untimed): {', '.join(modes)}")
        for mode in ("raw", "rawsu"):
            if mode in modes:
                run_raw(clients, names, mode, stub.port)
        for mode in ("stock", "ours"):
            if mode not in modes:
                continue
            failed = [r["error"] for r in run_mode(mode, names[:1]) if "error" in r]
            if failed:
                raise BenchError(f"the warm-up spawn through the '{mode}' hub failed: {failed[0]} "
                                 f"(hub log: {workdir / ('hub-' + mode) / 'jupyterhub.log'})")

        def do(mode: str, count: int, rep: int, total: int) -> None:
            records = run_mode(mode, names[:count])
            key = f"{mode}/{count}"
            run = {"repeat": rep, "t_go": records[0]["t_go"] if records else time.time(), "records": records}
            res["runs"].setdefault(key, []).append(run)
            ok = [r["t_ready"] - r["t_go"] for r in records if "t_ready" in r]
            errors = [r["error"] for r in records if "error" in r]
            log(f"{key:9s} run {rep + 1}/{total}: " + (
                f"median {statistics.median(ok):.2f}s, last {max(ok):.2f}s" if ok else "no server ready")
                + (f"; {len(errors)} failed: {errors[0]}" if errors else ""))
            time.sleep(1.0)  # let the daemons settle after removing containers

        plan = [(1, args.single_repeats)] + ([(n, args.repeats)] if n > 1 else [])
        for count, total in plan:
            for rep in range(total):
                for mode in modes[rep % len(modes):] + modes[: rep % len(modes)]:  # nobody always goes first
                    do(mode, count, rep, total)
        if not args.skip_dead_mirror and "ours" in modes:
            res["dead_mirror"] = dead_mirror_case(workdir, clients, names[0], args.repeats, hubs)
        if not args.skip_fresh_daemons and n > 1:
            res["fresh"] = {}
            for mode in ("raw", "ours"):
                if mode not in modes:
                    continue
                clients = restart_daemons(users, clients)
                records = run_mode(mode, names)
                res["fresh"][mode] = records
                ok = [r["t_ready"] - r["t_go"] for r in records if "t_ready" in r]
                log(f"{mode}/{n} on freshly started daemons: {len(ok)} ready"
                    + (f" (last after {max(ok):.2f}s)" if ok else "") + f", {len(records) - len(ok)} failed")
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); cleaning up")
        status = 130
    except Exception:
        log("FAILED:\n" + traceback.format_exc())
        status = 1
    finally:
        cleaning.set()
        traces = {}
        for bh in list(hubs):
            try:
                bh.stop()
            except Exception as e:
                log(f"hub '{bh.label}' stop: {e}")
            traces[bh.label] = bh.read_trace()
        if clients is not None:
            try:
                remove_all_containers(clients, list(users))
            except Exception as e:
                log(f"container cleanup: {e}")
            clients.close()
        if stub is not None:
            stub.close()
        if users and log_offsets is not None:
            res["port_retries"] = count_port_retries(users, log_offsets)
        if users and not args.keep_daemons:
            errors = provision.stop_daemons(users.values())
            log("bench daemons stopped" + (f" (errors: {errors})" if errors else ""))
    res["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    if loads is not None:
        loads.stop()
        res["load_samples"] = loads.samples
    res["duration_min"] = (time.monotonic() - _T0) / 60
    if "facts" not in res or not res["runs"]:
        return status or 1
    summarize(res, {k: v for k, v in traces.items() if k in ("stock", "ours")})
    (workdir / "results.json").write_text(json.dumps(res, indent=1, default=str))
    report = build_report(res)
    print()
    print(report)
    if args.out and status == 0:
        write_report(Path(args.out), report)
        log(f"wrote {args.out}")
    elif args.out:
        log(f"not writing {args.out}: the run did not complete")
    log(f"raw data, hub logs and traces in {workdir}")
    return status


if __name__ == "__main__":
    sys.exit(main())
