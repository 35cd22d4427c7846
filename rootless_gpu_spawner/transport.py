"""The one way the hub connects to a student's daemon: checked on every connection, bounded in every call.

The socket at the student's path, and the process behind it, belong to the
student: it may be a fake server that swaps its socket for a symlink to
somebody else's between two connections, answers a gigabyte, or drips a byte
a minute.  docker-py reconnects by path for every new HTTP connection, so a
check made once proves nothing.  Here, *every* new connection:

1. opens the path with ``O_PATH | O_NOFOLLOW`` (a symlink is refused, never
   followed) and checks with ``fstat`` that it is a socket owned by the student;
2. connects through ``/proc/self/fd/N``, i.e. to exactly the inode checked;
3. asks the kernel who listens there (``SO_PEERCRED``): the uid must be the
   student's -- never root, never another student -- or the connection is
   closed before a byte is sent.

Every call runs under a :class:`CallGuard` on its thread: a wall-clock
deadline (not a per-read timeout, which a drip defeats) and a cap on the bytes
read.  What went wrong is recorded on the guard as a typed
:class:`~rootless_gpu_spawner.errors.DaemonError`, because urllib3 and requests
wrap socket errors several times over before docker-py sees them.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
import threading
import time
from dataclasses import dataclass

import requests.adapters
import urllib3.connection
import urllib3.connectionpool
from docker.transport.basehttpadapter import BaseHTTPAdapter

from .errors import (
    owner_name,
    AnswerTooLarge,
    DaemonNotRunning,
    DeadlineExceeded,
    PeerMismatch,
    UnsafeSocket,
)

#: Bytes one ordinary answer (inspect, info, list, create) may have: real ones are a few KiB.
MAX_ANSWER_BYTES = 16 * 2**20
_PEERCRED = struct.Struct("3i")

_local = threading.local()


class CallGuard:
    """Deadline and byte budget of the call running on this thread, and what broke it."""

    def __init__(self, seconds: float, max_bytes: int | None, read_timeout: float | None = None):
        self.seconds = seconds
        self.read_timeout = read_timeout  # None: only the deadline (a pull may be quiet a while)
        self.deadline = time.monotonic() + seconds
        self.max_bytes = max_bytes
        self.received = 0
        self.violation = None  # a DaemonError once a bound or a check failed

    def __enter__(self):
        self._outer = getattr(_local, "guard", None)
        _local.guard = self
        return self

    def __exit__(self, *exc):
        _local.guard = self._outer

    def time_left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.fail(DeadlineExceeded(f"does not answer within {self.seconds:g} s"))
        return left

    def count(self, n: int) -> None:
        self.received += n
        if self.max_bytes is not None and self.received > self.max_bytes:
            raise self.fail(AnswerTooLarge(f"sent an answer larger than {_size(self.max_bytes)}"))

    def fail(self, error):
        if self.violation is None:
            self.violation = error
        return error


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n >= 2**20 and n % 2**20 == 0 else f"{n} bytes"


def current_guard() -> CallGuard | None:
    return getattr(_local, "guard", None)


class GuardedSocket(socket.socket):
    """A unix socket whose reads obey the current thread's :class:`CallGuard`."""

    def _read(self, read, size):
        guard = current_guard()
        if guard is None:
            return read(size)
        left = guard.time_left()
        timeout = left if guard.read_timeout is None else min(guard.read_timeout, left)
        self.settimeout(timeout)
        try:
            data = read(size)
        except TimeoutError:
            if timeout == left:  # the deadline, not the per-read timeout, ran out
                guard.time_left()
                raise guard.fail(DeadlineExceeded(f"does not answer within {guard.seconds:g} s"))
            raise
        guard.count(data if isinstance(data, int) else len(data))
        return data

    def recv_into(self, buffer, nbytes=0, flags=0):
        return self._read(lambda n: super(GuardedSocket, self).recv_into(buffer, n, flags), nbytes)

    def recv(self, bufsize, flags=0):
        return self._read(lambda n: super(GuardedSocket, self).recv(n, flags), bufsize)


@dataclass(frozen=True)
class SocketTarget:
    """A student's daemon socket: where it is and whose it must be."""

    path: str
    uid: int
    account: str

    def open(self, timeout: float) -> GuardedSocket:
        """A connected socket whose peer is proven to be the student's process."""
        fd = self._open_path()
        try:
            sock = GuardedSocket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            sock.settimeout(timeout)
            try:
                sock.connect(f"/proc/self/fd/{fd}")
            except ConnectionRefusedError:
                sock.close()  # the socket file outlived its daemon
                raise _record(DaemonNotRunning(self.account, self.path, stale=True)) from None
            try:
                self._check_peer(sock)
            except BaseException:
                sock.close()
                raise
            return sock
        finally:
            os.close(fd)

    def _open_path(self) -> int:
        try:
            fd = os.open(self.path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise _record(DaemonNotRunning(self.account, self.path)) from None
        except OSError as e:
            raise _record(UnsafeSocket(self.account, self.path, f"cannot be opened ({e.strerror})")) from None
        st = os.fstat(fd)
        problem = _socket_problem(st, self.uid, self.account)
        if problem:
            os.close(fd)
            raise _record(UnsafeSocket(self.account, self.path, problem))
        return fd

    def _check_peer(self, sock: socket.socket) -> None:
        _pid, uid, _gid = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
        if uid != self.uid or uid == 0:
            raise _record(PeerMismatch(self.account, self.path, uid))


def _socket_problem(st: os.stat_result, uid: int, account: str) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link (the hub never follows one there)"
    if not stat.S_ISSOCK(st.st_mode):
        return "is not a socket (a stale file is in the way of the rootless daemon)"
    if st.st_uid != uid:
        return f"is owned by uid {st.st_uid} ({owner_name(st.st_uid)}), not by {account}"
    return None


def _record(error):
    guard = current_guard()
    return guard.fail(error) if guard is not None else error


class _Connection(urllib3.connection.HTTPConnection):
    def __init__(self, target: SocketTarget, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.target = target
        self.connect_timeout = timeout

    def connect(self):
        self.sock = self.target.open(self.connect_timeout)


class _Pool(urllib3.connectionpool.HTTPConnectionPool):
    def __init__(self, target: SocketTarget, timeout: float, maxsize: int):
        super().__init__("localhost", timeout=timeout, maxsize=maxsize)
        self.target = target
        self.connect_timeout = timeout

    def _new_conn(self):
        return _Connection(self.target, self.connect_timeout)


class PeerVerifiedAdapter(BaseHTTPAdapter):
    """requests adapter for ``http+docker://`` that only ever connects through :class:`SocketTarget`."""

    def __init__(self, target: SocketTarget, timeout: float, maxsize: int):
        self.target = target
        self.timeout = timeout
        self.maxsize = maxsize
        self._pool = None
        self._lock = threading.Lock()
        super().__init__(max_retries=0)

    def get_connection(self, url, proxies=None):
        with self._lock:
            if self._pool is None:
                self._pool = _Pool(self.target, self.timeout, self.maxsize)
            return self._pool

    def request_url(self, request, proxies):
        return request.path_url

    def close(self):
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        requests.adapters.HTTPAdapter.close(self)
