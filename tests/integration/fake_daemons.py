"""Stand-ins for daemons we must never run for real in a test.

The rootful Docker daemon may not be started on the testbed (the suite must
prove nothing needs it), and a daemon that hangs is hard to produce on
purpose. So these small servers on a unix socket play them, at the path
where a student's rootless daemon should be:

* ``rootful``: answers ``/_ping``, ``/version`` and ``/info`` like Docker 20.10
  does *without* the ``name=rootless`` security option.
* ``hang``: accepts connections and never answers until released.
"""

from __future__ import annotations

import json
import os
import socketserver
import threading
from http.server import BaseHTTPRequestHandler

VERSION = {"Version": "20.10.24", "ApiVersion": "1.41", "MinAPIVersion": "1.12", "Os": "linux"}
ROOTFUL_INFO = {
    "ServerVersion": "20.10.24",
    "SecurityOptions": ["name=apparmor", "name=seccomp,profile=default"],
    "CgroupDriver": "cgroupfs",
}


class _RootfulHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, status, body):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if not isinstance(body, bytes) else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Api-Version", "1.41")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?")[0]
        self.server.requests.append(("GET", path))
        if path.endswith("/_ping"):
            self._send(200, b"OK")
        elif path.endswith("/version"):
            self._send(200, VERSION)
        elif path.endswith("/info"):
            self._send(200, ROOTFUL_INFO)
        else:
            self._send(500, {"message": "fake rootful daemon: unexpected call " + path})

    def do_POST(self):
        self.server.requests.append(("POST", self.path.split("?")[0]))
        self._send(500, {"message": "fake rootful daemon: nothing may be created here"})

    do_DELETE = do_POST

    def log_message(self, *args):
        pass

    def address_string(self):
        return "unix"


class _HangHandler(socketserver.BaseRequestHandler):
    def handle(self):
        self.server.requests.append(("CONNECT", ""))
        self.server.release.wait(300)  # bounded: never longer than the test itself


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class FakeDaemon:
    def __init__(self, path: str, mode: str, uid: int, gid: int):
        handler = {"rootful": _RootfulHandler, "hang": _HangHandler}[mode]
        self.path = path
        self.server = _Server(path, handler)
        self.server.requests = []
        self.server.release = threading.Event()
        os.chown(path, uid, gid)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def requests(self):
        return self.server.requests

    def __enter__(self):
        self.thread.start()
        return self

    def release(self):
        self.server.release.set()

    def __exit__(self, *exc):
        self.release()
        self.server.shutdown()
        self.server.server_close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
