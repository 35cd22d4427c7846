"""A fake Docker API on a unix socket, for tests of the host-side client (no real daemon).

Each route maps a request path to (status, body bytes) or to a function that
writes the whole answer itself (to trickle, or to send too much).
"""

from __future__ import annotations

import socketserver
import threading
from http.server import BaseHTTPRequestHandler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):  # noqa: N802 - http.server's name
        route = self.server.routes.get(self.path.split("?")[0])
        if callable(route):
            route(self)
            return
        status, body = route or (404, b'{"message": "page not found"}')
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # AF_UNIX has no client address to log
        pass


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class FakeDaemon:
    """The routes served on ``path``: in this process, or with ``uid`` by a child running as that
    uid (what the one transport accepts as a student's daemon: it never accepts root)."""

    def __init__(self, path: str, routes: dict, uid: int | None = None):
        self.path, self.routes, self.uid = path, routes, uid
        self._child = None
        if uid is None:
            self.server = _Server(path, _Handler)
            self.server.routes = routes
            self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def _serve_in_child(self, listening):
        server = _Server(self.path, _Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = listening
        server.routes = self.routes
        server.serve_forever(poll_interval=0.05)

    def __enter__(self) -> "FakeDaemon":
        if self.uid is None:
            self.thread.start()
        else:
            from peer_servers import forked_listener

            self._child = forked_listener(self.path, self.uid, self._serve_in_child)
            self._child.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._child is not None:
            self._child.__exit__(*exc)
            return
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def rootless_info(**extra) -> bytes:
    import json

    info = {"SecurityOptions": ["name=seccomp,profile=default", "name=rootless"], "ServerVersion": "20.10.24",
            "CgroupDriver": "none", **extra}
    return json.dumps(info).encode()


def routes(info: bytes = b"", version: bytes = b'{"Version": "20.10.24", "ApiVersion": "1.41"}') -> dict:
    return {"/_ping": (200, b"OK"), "/info": (200, info or rootless_info()), "/version": (200, version)}
