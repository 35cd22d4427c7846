"""Loaded *inside* the benchmark's JupyterHub processes (from their config file).

Nothing here is used by the spawner itself. It provides:

* ``install(path)``: an asyncio task on the hub's own event loop that measures
  the loop's lag every 50 ms (how late a 50 ms sleep wakes up), and light
  timestamps of the hub's spawn phases (``User.spawn``, ``User._wait_up``,
  ``Proxy.add_user``). Both go to *path* as lines of JSON, flushed about
  once a second and at exit, so the benchmark can cut out the window of one
  run and tell where a spawn's time went.
* ``BenchDockerSpawner``: stock ``dockerspawner.DockerSpawner`` with one
  change, needed only because its containers run on a rootless daemon: the
  container's ``JUPYTERHUB_API_URL`` / ``JUPYTERHUB_ACTIVITY_URL`` point at
  the host's loopback as slirp4netns shows it (``10.0.2.2``). JupyterHub's
  ``Spawner.get_env`` sets those two variables *after* applying
  ``Spawner.environment``, so ``environment`` cannot override them, and
  ``hub_connect_url`` must stay on loopback (the proxy uses it too).
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import json
import os
import threading
import time
from urllib.parse import urlsplit, urlunsplit

try:  # importable without dockerspawner for the benchmark's own analysis code
    from dockerspawner import DockerSpawner
except ImportError:  # pragma: no cover
    DockerSpawner = object

SAMPLE_INTERVAL = 0.05
FLUSH_INTERVAL = 1.0
GATEWAY = "10.0.2.2"

_lock = threading.Lock()
_buffer: list[str] = []
_path: str | None = None
_installed = False


def _record(kind: str, **fields) -> None:
    fields["k"] = kind
    fields["t"] = time.time()
    line = json.dumps(fields, separators=(",", ":"))
    with _lock:
        _buffer.append(line)


def flush() -> None:
    if _path is None:
        return
    with _lock:
        lines, _buffer[:] = list(_buffer), []
    if lines:
        with open(_path, "a") as f:
            f.write("\n".join(lines) + "\n")


async def _sample_lag() -> None:
    loop = asyncio.get_running_loop()
    last_flush = time.monotonic()
    while True:
        t0 = loop.time()
        await asyncio.sleep(SAMPLE_INTERVAL)
        _record("lag", lag=max(0.0, loop.time() - t0 - SAMPLE_INTERVAL))
        if time.monotonic() - last_flush >= FLUSH_INTERVAL:
            last_flush = time.monotonic()
            flush()


def _wrap(owner, name: str, label: str, key) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    async def wrapper(*args, **kwargs):
        who = key(*args, **kwargs)
        _record(label + "_begin", user=who)
        try:
            return await original(*args, **kwargs)
        finally:
            _record(label + "_end", user=who)

    setattr(owner, name, wrapper)


def install(path: str) -> None:
    """Start the lag sampler and the phase timestamps (call from jupyterhub_config.py)."""
    global _path, _installed
    if _installed:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # e.g. `jupyterhub --generate-config`: no hub is running
    _path = path
    _installed = True
    from jupyterhub.proxy import Proxy
    from jupyterhub.user import User

    _wrap(User, "spawn", "spawn", lambda self, *a, **k: self.name)
    _wrap(User, "_wait_up", "wait_up", lambda self, spawner: self.name)
    _wrap(Proxy, "add_user", "proxy_add", lambda self, user, *a, **k: user.name)
    loop.create_task(_sample_lag())
    atexit.register(flush)
    _record("installed", pid=os.getpid())


def _via_gateway(url: str) -> str:
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost"):
        return url
    netloc = GATEWAY + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class BenchDockerSpawner(DockerSpawner):
    """Stock DockerSpawner; only the container's two hub URLs go through 10.0.2.2."""

    def get_env(self):
        env = super().get_env()
        for key in ("JUPYTERHUB_API_URL", "JUPYTERHUB_ACTIVITY_URL"):
            if env.get(key):
                env[key] = _via_gateway(env[key])
        return env
