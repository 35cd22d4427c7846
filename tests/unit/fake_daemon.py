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
    def __init__(self, path: str, routes: dict):
        self.server = _Server(path, _Handler)
        self.server.routes = routes
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "FakeDaemon":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
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
