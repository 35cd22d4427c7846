"""Asking a user's daemon from the host side: ``GET`` on the Docker API socket, and the ping.

Through :mod:`..transport` (peer-verified: with a uid, the socket and its listener must be that
uid's; deadline-bound; size-capped). stdlib ``http.client`` on purpose: one short exchange per
call, no connection pool to keep in the admin CLI; the hub side uses docker-py over the same
transport (``hub/daemon.py``).
"""

from __future__ import annotations

import http.client
import socket
from typing import Optional

from .. import boundedjson, errors
from ..transport import CallGuard, GuardedSocket, SocketTarget


# The one transport (peer-verified, deadline-bound) and its errors, shared with the hub.
PeerMismatch = errors.PeerMismatch
AnswerTooLarge = errors.AnswerTooLarge
DeadlineExceeded = errors.DeadlineExceeded
#: What asking a student's daemon can raise, besides our own DaemonError.
ASK_ERRORS = (OSError, http.client.HTTPException, errors.DaemonError)


def _open_socket(socket_path: str, timeout: float, uid: Optional[int], account: Optional[str]) -> socket.socket:
    if uid is not None:  # the socket must be the student's, and so must its listener
        return SocketTarget(socket_path, uid, account or f"uid {uid}").open(timeout)
    sock = GuardedSocket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        sock.connect(socket_path)
    except BaseException:
        sock.close()
        raise
    return sock


def api_get(
    socket_path: str, path: str, timeout: float = 5.0, limit: int = 8 << 20, *,
    uid: Optional[int] = None, account: Optional[str] = None,
) -> tuple[int, bytes]:
    """GET *path* from the Docker API on *socket_path*; (status, body).

    Through :mod:`.transport`: the whole exchange ends by *timeout* seconds
    (DeadlineExceeded), a body over *limit* bytes raises AnswerTooLarge, and
    with *uid* the socket must be that uid's and so must the process serving
    it (UnsafeSocket / PeerMismatch). stdlib http.client on purpose: one
    short exchange per call, no pool to keep in the admin CLI.
    """
    with CallGuard(timeout, None):
        conn = http.client.HTTPConnection("localhost", timeout=timeout)
        conn.sock = _open_socket(socket_path, timeout, uid, account)
        try:
            conn.request("GET", path, headers={"Host": "docker"})
            resp = conn.getresponse()
            body = resp.read(limit + 1)
        finally:
            conn.close()
    if len(body) > limit:
        raise AnswerTooLarge(f"sent an answer to GET {path} on {socket_path} larger than {limit} bytes")
    return resp.status, body


def _api_object(socket_path: str, path: str, timeout: float, uid: int) -> dict:
    """GET *path* and parse the answer as a bounded JSON object ({} unless 200)."""
    code, body = api_get(socket_path, path, timeout=timeout, limit=boundedjson.MAX_BYTES, uid=uid)
    return boundedjson.loads_object(body) if code == 200 else {}


def ping(socket_path: str, timeout: float = 2.0, *, uid: Optional[int] = None) -> bool:
    """True when something answers ``GET /_ping`` with 200 "OK" on the socket.

    With *uid*, a server of another uid raises PeerMismatch instead of
    counting as an answer."""
    try:
        status, body = api_get(socket_path, "/_ping", timeout=timeout, limit=64, uid=uid)
    except PeerMismatch:
        raise
    except ASK_ERRORS:
        return False
    return status == 200 and body.strip() == b"OK"
