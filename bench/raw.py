"""Raw runs: ``docker run`` through docker-py (``raw``) and the image's own jupyterhub-singleuser against a stub hub API (``rawsu``).

Part of ``python -m bench.spawn_bench`` (see bench/README.md).
"""

from __future__ import annotations

import threading
import time
import docker
from .common import ABORT, BenchError, CONTAINER_PORT, Clients, FALLBACK_POLL_INTERVAL, GATEWAY, IMAGE, LISTENING_MARK, POLL_INTERVAL, RAW_COMMAND, RAW_LABEL, READY_TIMEOUT, container_timeline, finish_parallel, remove_all_containers, start_parallel


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
