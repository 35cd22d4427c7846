"""A real JupyterHub (with configurable-http-proxy) for the integration tests and the benchmark.

Everything listens on 127.0.0.1 only.  The spawner is loaded by its entry
point name, as an admin would configure it.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import requests

HUB_START_TIMEOUT = 90
READY_TIMEOUT = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hub:
    def __init__(self, workdir: Path, spawner_config: str, users):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.hub_port = free_port()
        self.proxy_api_port = free_port()
        self.token = secrets.token_hex(32)
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = self.url + "/hub/api"
        self.users = list(users)
        self.spawner_config = spawner_config
        self.proc = None
        self.log_path = self.workdir / "jupyterhub.log"

    def write_config(self) -> Path:
        cfg = self.workdir / "jupyterhub_config.py"
        cfg.write_text(
            textwrap.dedent(
                f"""
                c = get_config()  # noqa
                c.JupyterHub.ip = "127.0.0.1"
                c.JupyterHub.port = {self.port}
                c.JupyterHub.hub_ip = "127.0.0.1"
                c.JupyterHub.hub_port = {self.hub_port}
                c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.proxy_api_port}"
                c.JupyterHub.db_url = "sqlite:///{self.workdir}/jupyterhub.sqlite"
                c.JupyterHub.cookie_secret_file = "{self.workdir}/cookie_secret"
                c.ConfigurableHTTPProxy.pid_file = "{self.workdir}/proxy.pid"
                c.JupyterHub.pid_file = "{self.workdir}/hub.pid"
                c.JupyterHub.authenticator_class = "dummy"
                c.DummyAuthenticator.password = "testbed-password"
                c.Authenticator.allowed_users = {set(self.users)!r}
                c.JupyterHub.services = [{{"name": "testbed", "api_token": "{self.token}"}}]
                c.JupyterHub.load_roles = [{{"name": "admin", "services": ["testbed"]}}]
                c.JupyterHub.spawner_class = "rootless-gpu"
                c.Spawner.start_timeout = 180
                c.Spawner.http_timeout = 120
                c.JupyterHub.log_level = "DEBUG"
                # Servers outlive a hub restart (the restart test relies on it);
                # Hub.stop() stops them through the API first.
                c.JupyterHub.cleanup_servers = False
                """
            )
            + textwrap.dedent(self.spawner_config)
        )
        return cfg

    def start(self):
        cfg = self.write_config()
        env = dict(os.environ)
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        env.pop("DOCKER_HOST", None)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "jupyterhub"), "-f", str(cfg)],
            cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + HUB_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyterhub exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.api + "/", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.3)
        else:
            raise RuntimeError(f"jupyterhub did not answer in {HUB_START_TIMEOUT}s:\n{self.log_tail()}")
        for name in self.users:
            r = self.request("POST", f"/users/{name}")
            assert r.status_code in (201, 409), r.text
        return self

    def stop(self, keep_servers=False):
        if self.proc is None:
            return
        if not keep_servers and self.proc.poll() is None:
            for name in self.users:
                try:
                    if self.server(name):
                        self.stop_server(name)
                except Exception as e:  # teardown: report, go on stopping the hub
                    print(f"could not stop the server of {name}: {e}")
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        # configurable-http-proxy runs in the hub's session; make sure it is gone.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None

    def restart(self):
        """Stop the hub (and its proxy) but not the servers, then start it again on the same database."""
        self.stop(keep_servers=True)
        return self.start()

    def log_tail(self, n=60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"

    # ---- REST API ----------------------------------------------------------

    def request(self, method, path, **kwargs):
        headers = kwargs.pop("headers", {})
        headers["Authorization"] = f"token {self.token}"
        kwargs.setdefault("timeout", 60)
        return requests.request(method, self.api + path, headers=headers, **kwargs)

    def spawn(self, name, options=None):
        return self.request("POST", f"/users/{name}/server", json=options or {}, timeout=120)

    def server(self, name):
        r = self.request("GET", f"/users/{name}")
        r.raise_for_status()
        return r.json().get("servers", {}).get("")

    def progress_events(self, name, timeout=30):
        """The spawn progress stream (its last event carries a failure's message)."""
        events = []
        try:
            with self.request(
                "GET", f"/users/{name}/server/progress", stream=True, timeout=timeout
            ) as r:
                for line in r.iter_lines(decode_unicode=True):
                    if line and line.startswith("data:"):
                        events.append(json.loads(line[5:]))
                        if events[-1].get("ready") or events[-1].get("failed"):
                            break
        except requests.RequestException:
            pass
        return events

    def wait_ready(self, name, timeout=READY_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self.server(name)
            if server and server.get("ready"):
                return server
            if not server:
                events = self.progress_events(name, timeout=5)
                raise AssertionError(f"server of {name} is gone without becoming ready: {events}")
            time.sleep(0.5)
        raise AssertionError(f"server of {name} not ready after {timeout}s:\n{self.log_tail()}")

    def stop_server(self, name, timeout=120):
        r = self.request("DELETE", f"/users/{name}/server", timeout=timeout)
        assert r.status_code in (202, 204, 400), r.text
        self.wait_gone(name, timeout)

    def wait_gone(self, name, timeout=90):
        """Until the hub no longer lists the server (stopped, or seen dead by poll)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.server(name):
                return
            time.sleep(0.5)
        raise AssertionError(f"server of {name} still there after {timeout}s")

    def user_get(self, name, path, **kwargs):
        """A request to the user's own server through the proxy."""
        headers = kwargs.pop("headers", {})
        headers["Authorization"] = f"token {self.token}"
        return requests.get(f"{self.url}/user/{name}{path}", headers=headers, timeout=60, **kwargs)

    def user_put(self, name, path, **kwargs):
        headers = kwargs.pop("headers", {})
        headers["Authorization"] = f"token {self.token}"
        return requests.put(f"{self.url}/user/{name}{path}", headers=headers, timeout=60, **kwargs)
