"""Connections to students' rootless Docker daemons.

Each daemon gets its own Docker client and its own small thread pool, so a
slow pull on one student's daemon never delays a call to another's (stock
DockerSpawner runs every call of every user on one shared thread).  Nothing
here reads ``DOCKER_HOST`` or falls back to ``/var/run/docker.sock``: the only
daemon a student's server may run on is the one the template names.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import docker
from docker.errors import DockerException

log = logging.getLogger(__name__)

# Threads per daemon: enough that a long pull does not hold up the same
# student's poll or stop, small enough that 100 students stay cheap.
THREADS_PER_DAEMON = 4


class DaemonError(RuntimeError):
    """The student's daemon cannot be used; the message names the student, the path and the fix."""


def render_docker_host(template: str, uid: int, username: str, home: str) -> str:
    try:
        url = template.format(uid=uid, username=username, home=home.rstrip("/"))
    except (KeyError, IndexError) as e:
        raise ValueError(
            f"RootlessGPUSpawner.docker_host_template={template!r} uses unknown field {e}; "
            "the fields are {uid}, {username} and {home}"
        ) from None
    return url


def socket_path(docker_host: str) -> str | None:
    """The filesystem path of a ``unix://`` docker host, else None."""
    parsed = urlparse(docker_host)
    if parsed.scheme == "unix":
        return parsed.path
    if parsed.scheme in ("tcp", "http", "https"):
        return None
    raise ValueError(
        f"docker host {docker_host!r}: only unix:// (and tcp:// for remote daemons) are supported "
        "by RootlessGPUSpawner.docker_host_template"
    )


def verify_socket(path: str, uid: int, account: str) -> str:
    """Check the socket before trusting it; return the resolved path to connect to.

    The check is made on the resolved path, so a symlink planted at the
    expected location that points at somebody else's socket is refused.
    """
    resolved = os.path.realpath(path)
    try:
        st = os.stat(resolved, follow_symlinks=False)
    except FileNotFoundError:
        raise DaemonError(
            f"rootless Docker is not running for {account}: no socket at {path}. "
            f"Ask the admin to run 'rootless-gpu-admin bootstrap --user {account}', or start it "
            f"('rootless-gpu-admin start-daemon {account}' or, as {account}, "
            "'systemctl --user start docker')."
        ) from None
    except PermissionError as e:
        raise DaemonError(f"cannot inspect the Docker socket for {account} at {path}: {e}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise DaemonError(
            f"{path} (for {account}) is not a socket: a stale file is in the way of the rootless "
            f"Docker daemon. Ask the admin to remove it and start {account}'s daemon again."
        )
    if st.st_uid != uid:
        owner = _owner_name(st.st_uid)
        where = f"{path} -> {resolved}" if resolved != path else path
        raise DaemonError(
            f"the Docker socket for {account} ({where}) is owned by {owner} (uid {st.st_uid}), "
            f"not by {account} (uid {uid}): refusing to start a server on somebody else's daemon. "
            f"Ask the admin to check RootlessGPUSpawner.docker_host_template and {account}'s "
            "rootless Docker setup."
        )
    return resolved


def _owner_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


class DaemonConnection:
    """One Docker client and thread pool for one daemon, shared by its servers."""

    def __init__(self, docker_host: str, timeout: float):
        self.docker_host = docker_host
        self.timeout = timeout
        self.executor = ThreadPoolExecutor(
            THREADS_PER_DAEMON, thread_name_prefix=f"docker-{_short(docker_host)}"
        )
        self.client: docker.APIClient | None = None
        self.users: set = set()

    def _connect(self):
        # version="auto" asks the daemon for its API version: network I/O,
        # so this runs on the daemon's own thread, never on the event loop.
        self.client = docker.APIClient(base_url=self.docker_host, version="auto", timeout=self.timeout)
        return self.client

    async def call(self, method: str, *args, **kwargs):
        """Run ``client.<method>(...)`` on this daemon's threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, _invoke, self.client, method, args, kwargs)

    async def run(self, func, *args):
        """Run a blocking function (e.g. draining a pull stream) on this daemon's threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, func, *args)

    def close(self):
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # closing is best effort
                log.debug("error closing docker client for %s", self.docker_host, exc_info=True)
        self.executor.shutdown(wait=False)


def _invoke(client, method, args, kwargs):
    return getattr(client, method)(*args, **kwargs)


def _short(docker_host: str) -> str:
    parts = [p for p in docker_host.replace(":", "/").split("/") if p]
    return "-".join(parts[-2:])[-32:]


class DaemonPool:
    """Connections keyed by docker host; closed when the last server using one lets go."""

    def __init__(self):
        self._connections: dict[str, DaemonConnection] = {}
        self._connecting: dict[str, asyncio.Future] = {}

    def get_cached(self, docker_host: str) -> DaemonConnection | None:
        return self._connections.get(docker_host)

    async def connect(self, docker_host: str, timeout: float, user_key) -> DaemonConnection:
        conn = self._connections.get(docker_host)
        if conn is None:
            pending = self._connecting.get(docker_host)
            if pending is None:
                pending = asyncio.ensure_future(self._open(docker_host, timeout))
                self._connecting[docker_host] = pending
                pending.add_done_callback(lambda _f: self._connecting.pop(docker_host, None))
            conn = await asyncio.shield(pending)
        conn.users.add(user_key)
        return conn

    async def _open(self, docker_host: str, timeout: float) -> DaemonConnection:
        conn = DaemonConnection(docker_host, timeout)
        try:
            await conn.run(conn._connect)
        except Exception:
            conn.close()
            raise
        self._connections[docker_host] = conn
        return conn

    def release(self, docker_host: str, user_key) -> None:
        conn = self._connections.get(docker_host)
        if conn is None:
            return
        conn.users.discard(user_key)
        if not conn.users:
            del self._connections[docker_host]
            conn.close()

    def discard(self, docker_host: str) -> None:
        """Forget a connection whose daemon went away (it will be re-opened on next use)."""
        conn = self._connections.pop(docker_host, None)
        if conn is not None:
            conn.close()

    def __len__(self):
        return len(self._connections)


pool = DaemonPool()


def daemon_unreachable(account: str, docker_host: str, error: Exception) -> DaemonError:
    return DaemonError(
        f"rootless Docker for {account} does not answer at {docker_host} ({_brief(error)}). "
        f"It may have stopped: ask the admin to run 'rootless-gpu-admin start-daemon {account}' "
        "(or 'rootless-gpu-admin doctor' to see why)."
    )


def _brief(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) < 200 else text[:197] + "..."


def is_connection_error(error: Exception) -> bool:
    import requests

    if isinstance(error, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return True
    if isinstance(error, DockerException) and not isinstance(error, docker.errors.APIError):
        # docker-py raises DockerException("Error while fetching server API version") on connect.
        return True
    return isinstance(error, (ConnectionError, TimeoutError, FileNotFoundError))
