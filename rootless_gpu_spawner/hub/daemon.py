"""Connections to students' rootless Docker daemons.

Each daemon gets its own Docker client and a fixed set of threads, so a slow
or hostile daemon only ever holds its own student's threads (stock
DockerSpawner runs every user's calls on one shared thread).  Every
connection is peer-verified and every call is bounded (:mod:`.transport`);
whatever goes wrong comes out as a typed :class:`DaemonError`.  Nothing here
reads ``DOCKER_HOST``, falls back to ``/var/run/docker.sock``, or sends root's
Docker credentials or proxy settings to a student's daemon.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import docker
import requests
import urllib3
from docker.auth import AuthConfig
from docker.errors import APIError, DockerException
from docker.utils.proxy import ProxyConfig

from ..errors import (  # noqa: F401  (re-exported: the hub's one import for daemon errors)
    AnswerTooLarge,
    BadAnswer,
    DaemonError,
    DaemonNotRunning,
    DaemonUnreachable,
    DeadlineExceeded,
    LyingAnswer,
    PeerMismatch,
    UnsafeSocket,
    UnusableAnswer,
)
from ..safetext import printable
from ..transport import MAX_ANSWER_BYTES, CallGuard, PeerVerifiedAdapter, SocketTarget

log = logging.getLogger(__name__)

# Threads per daemon: enough that a long pull does not hold up the same
# student's poll or stop, small enough that 100 students stay cheap.  They
# live as long as the daemon's entry in the pool, across reconnects.
THREADS_PER_DAEMON = 4
#: API versions the hub speaks (docker-py's range); the daemon's own is used when inside it.
MIN_API, MAX_API = (1, 24), (1, 45)
_API_VERSION = re.compile(r"^1\.(\d{1,3})$")
#: What a broken HTTP exchange raises (truncated or badly chunked body, a redirect, bad headers).
_BROKEN_HTTP = (requests.exceptions.RequestException, http.client.HTTPException, urllib3.exceptions.HTTPError)
#: What a buggy or hostile answer raises inside docker-py or our own parsing.
_MALFORMED = (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError, OverflowError, UnicodeError)


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
    """The filesystem path of a ``unix://`` docker host; None for ``tcp://``-style hosts."""
    parsed = urlparse(docker_host)
    if parsed.scheme == "unix":
        return parsed.path
    if parsed.scheme in ("tcp", "http", "https"):
        return None
    raise ValueError(
        f"docker host {docker_host!r}: only unix:// sockets are supported "
        "by RootlessGPUSpawner.docker_host_template"
    )


def socket_target(docker_host: str, uid: int, account: str) -> SocketTarget:
    """The verified target for a student's docker host; only ``unix://`` can be verified."""
    path = socket_path(docker_host)
    if path is None:
        raise ValueError(
            f"RootlessGPUSpawner.docker_host_template gives {docker_host!r} for {account}: a "
            "tcp:// daemon cannot prove whose it is (anyone on the host can listen on a port). "
            "Use the student's unix socket, e.g. 'unix:///run/user/{uid}/docker.sock'."
        )
    return SocketTarget(path, uid, account)


def negotiate_version(answer) -> str:
    """The API version to speak, from the daemon's ``/version`` answer (checked, clamped)."""
    text = answer.get("ApiVersion") if isinstance(answer, dict) else None
    match = _API_VERSION.match(text) if isinstance(text, str) else None
    if not match:
        raise UnusableAnswer(f"/version has no valid ApiVersion: {printable(text, 40)}")
    minor = min(max(int(match.group(1)), MIN_API[1]), MAX_API[1])
    return f"1.{minor}"


def build_client(target: SocketTarget, timeout: float) -> docker.APIClient:
    """A docker-py client that connects only through the peer-verified adapter.

    No network I/O: the version is set by :meth:`DaemonConnection._ensure_client`.
    Root's ``~/.docker/config.json`` (credentials, proxies, headers) is dropped.
    """
    client = docker.APIClient(
        base_url="unix://" + target.path, version=".".join(map(str, MIN_API)), timeout=timeout
    )
    client.mount("http+docker://", PeerVerifiedAdapter(target, timeout, THREADS_PER_DAEMON))
    client.max_redirects = 0  # the Engine API never redirects: a 3xx is refused, never followed
    client.hooks["response"].append(_strict_utf8)
    client._auth_configs = AuthConfig({})
    client._general_configs = {}
    client._proxy_configs = ProxyConfig()
    return client


def _strict_utf8(response, *args, stream=False, **kwargs):
    """Answers are UTF-8 JSON: an invalid byte is an unusable answer, never a guessed encoding."""
    response.encoding = "utf-8"
    if not stream:
        response.content.decode("utf-8")  # UnicodeDecodeError -> UnusableAnswer
    return response


class DaemonConnection:
    """One Docker client and thread set for one daemon, shared by its servers."""

    def __init__(self, target: SocketTarget, docker_host: str, timeout: float):
        self.target = target
        self.docker_host = docker_host
        self.timeout = timeout
        self.executor = ThreadPoolExecutor(THREADS_PER_DAEMON, thread_name_prefix=f"docker-{target.uid}")
        self.client: docker.APIClient | None = None
        self.api_version = ".".join(map(str, MIN_API))  # set on the first connection
        self.users: set = set()
        self._lock = threading.Lock()
        self._inflight = 0
        self._closing = False

    # ---- calls ------------------------------------------------------------

    async def call(self, method: str, *args, **kwargs):
        """``client.<method>(...)`` on this daemon's threads, under the call deadline and size cap."""
        return await self.run(_invoke, method, args, kwargs)

    async def run(self, func, *args, seconds: float | None = None, max_bytes: int | None = MAX_ANSWER_BYTES):
        """Run ``func(client, *args)`` on this daemon's threads, guarded.

        ``seconds`` is the wall-clock deadline (default: the connection's
        timeout); ``max_bytes`` caps what may be read (None for a stream
        whose consumer bounds itself, such as a pull).
        """
        with self._lock:
            self._inflight += 1
        # A stream (max_bytes None, e.g. a pull) may be quiet a while: only its deadline applies.
        read_timeout = self.timeout if max_bytes is not None else None
        future = self.executor.submit(self._guarded, seconds or self.timeout, max_bytes, read_timeout, func, args)
        future.add_done_callback(lambda _f: self._call_done())
        return await asyncio.wrap_future(future)

    def _guarded(self, seconds, max_bytes, read_timeout, func, args):
        with CallGuard(seconds, max_bytes, read_timeout) as guard:
            try:
                return func(self._ensure_client(), *args)
            except (DaemonError, APIError) as e:
                if guard.violation is not None:
                    raise self._failed(guard.violation) from None
                raise e if isinstance(e, APIError) else self._failed(e)
            except Exception as e:
                typed = self._classify(e, guard)
                if typed is None:
                    raise  # the caller's own error (e.g. a pull failure the stream reported)
                raise self._failed(typed) from None

    def _classify(self, error: Exception, guard: CallGuard) -> DaemonError | None:
        if guard.violation is not None:
            return guard.violation
        if is_connection_error(error):
            return DaemonUnreachable(self.target.account, self.docker_host, error)
        if isinstance(error, _BROKEN_HTTP):
            return UnusableAnswer(f"a broken HTTP answer: {type(error).__name__}")
        if isinstance(error, _MALFORMED):
            log.info("unusable answer from %s: %s", self.docker_host, printable(repr(error), 300))
            return UnusableAnswer(type(error).__name__)
        return None

    def _failed(self, error: DaemonError) -> DaemonError:
        # After any failure the pooled sockets may be mid-answer or lying: start afresh.
        self.reset()
        return error

    def _ensure_client(self) -> docker.APIClient:
        client = self.client
        if client is None:
            client = build_client(self.target, self.timeout)
            client._version = self.api_version = negotiate_version(client.version(api_version=False))
            self.client = client
        return client

    # ---- lifetime -----------------------------------------------------------

    def reset(self) -> None:
        """Drop the client and its sockets; the next call reconnects (and re-verifies)."""
        client, self.client = self.client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing is best effort
                log.debug("error closing docker client for %s", self.docker_host, exc_info=True)

    def _call_done(self):
        with self._lock:
            self._inflight -= 1
            finish = self._closing and self._inflight == 0
        if finish:
            self._shutdown()

    def close(self):
        """Close now if idle; else once the calls still running have ended (their deadlines bound it)."""
        with self._lock:
            self._closing = True
            finish = self._inflight == 0
        if finish:
            self._shutdown()

    def _shutdown(self):
        self.reset()
        self.executor.shutdown(wait=False)

    def reopen(self) -> bool:
        """Take a closing connection back into use; False once it has shut down."""
        with self._lock:
            if self._closing and self._inflight == 0:
                return False
            self._closing = False
            return True

    @property
    def inflight(self) -> int:
        return self._inflight


def _invoke(client, method, args, kwargs):
    return getattr(client, method)(*args, **kwargs)


class DaemonPool:
    """Connections keyed by the verified target (path and uid); one per daemon."""

    def __init__(self):
        self._connections: dict[SocketTarget, DaemonConnection] = {}
        self._connecting: dict[SocketTarget, asyncio.Future] = {}

    async def connect(self, target: SocketTarget, docker_host: str, timeout: float, user_key) -> DaemonConnection:
        conn = self._connections.get(target)
        if conn is not None and not conn.reopen():
            del self._connections[target]
            conn = None
        if conn is None:
            pending = self._connecting.get(target)
            if pending is None:
                pending = asyncio.ensure_future(self._open(target, docker_host, timeout))
                self._connecting[target] = pending
                pending.add_done_callback(lambda _f: self._connecting.pop(target, None))
            conn = await asyncio.shield(pending)
        conn.users.add(user_key)
        return conn

    async def _open(self, target: SocketTarget, docker_host: str, timeout: float) -> DaemonConnection:
        conn = DaemonConnection(target, docker_host, timeout)
        try:
            await conn.run(lambda client: None)  # connect, verify the peer, negotiate the version
        except BaseException:
            conn.close()
            raise
        self._connections[target] = conn
        return conn

    def release(self, target: SocketTarget, user_key) -> None:
        conn = self._connections.get(target)
        if conn is None:
            return
        conn.users.discard(user_key)
        if not conn.users:
            # Kept while calls still run: a reconnect takes the same threads back (reopen),
            # so one daemon never has more than THREADS_PER_DAEMON threads.
            conn.close()
            if conn.inflight == 0:
                del self._connections[target]

    def get(self, target: SocketTarget) -> DaemonConnection | None:
        return self._connections.get(target)

    def __len__(self):
        return len(self._connections)


pool = DaemonPool()


def is_connection_error(error: Exception) -> bool:
    if isinstance(error, DaemonError):
        return not isinstance(error, BadAnswer)
    if isinstance(error, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return True
    if isinstance(error, DockerException) and not isinstance(error, APIError):
        return True
    return isinstance(error, (ConnectionError, TimeoutError, FileNotFoundError))
