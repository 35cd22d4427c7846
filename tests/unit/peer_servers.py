"""Unix-socket HTTP servers that listen as another uid, for the per-connection checks.

``SO_PEERCRED`` reports who called ``listen()``, so the server binds as root,
gives the file to the uid, forks, and the child drops to that uid *before*
listening: exactly what a student's own process looks like to the hub.
Each server answers with a behaviour function; it ends with the context.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import socket
import threading
import time

NOBODY = pwd.getpwnam("nobody").pw_uid
VERSION = {"Version": "20.10.24", "ApiVersion": "1.41", "MinAPIVersion": "1.12", "Os": "linux"}


def respond(conn, status=200, body=b"{}", content_type="application/json", length=None):
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    length = len(body) if length is None else length
    head = (
        f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nApi-Version: 1.41\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    conn.sendall(head.encode() + body)


def docker_like(conn, request_line: str):
    """Enough of the Engine API for a connection: /version, /_ping, /info."""
    if "/version" in request_line:
        respond(conn, body=VERSION)
    elif "/info" in request_line:
        respond(conn, body={"SecurityOptions": ["name=rootless"]})
    else:
        respond(conn, body={})


def _read_request(conn) -> str:
    data = b""
    conn.settimeout(30)
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = conn.recv(4096)
        if not chunk:
            return ""
        data += chunk
    return data.split(b"\r\n", 1)[0].decode("latin-1")


def _serve(server: socket.socket, behaviour) -> None:
    deadline = time.monotonic() + 120  # bounded: never outlives a test by much
    server.settimeout(1)
    while time.monotonic() < deadline:
        try:
            conn, _ = server.accept()
        except socket.timeout:
            continue
        threading.Thread(target=_handle, args=(conn, behaviour), daemon=True).start()


def _handle(conn, behaviour) -> None:
    try:
        while True:
            line = _read_request(conn)
            if not line:
                break
            if behaviour(conn, line) == "close":
                break
    except OSError:
        pass
    finally:
        conn.close()


@contextlib.contextmanager
def forked_listener(path: str, uid: int, serve):
    """Bind ``path`` as root, give it to ``uid``, and run ``serve(listening_socket)`` in a child
    that dropped to ``uid`` before ``listen()`` (so SO_PEERCRED says ``uid``). Yields the pid."""
    os.chmod(os.path.dirname(path), 0o755)
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    os.chown(path, uid, uid)
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(ready_r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            server.listen(16)
            os.write(ready_w, b"1")
            os.close(ready_w)
            serve(server)
        except BaseException:
            code = 1
        os._exit(code)
    server.close()
    os.close(ready_w)
    os.read(ready_r, 1)  # listening now (or the child died: then the test fails clearly)
    os.close(ready_r)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def listening_as(path: str, uid: int, behaviour=docker_like):
    """A raw HTTP server on ``path`` whose listener is uid ``uid``, answering with ``behaviour``."""
    return forked_listener(path, uid, lambda server: _serve(server, behaviour))
