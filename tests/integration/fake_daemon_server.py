"""The stand-in daemons' server (stdlib only), run as the listening uid by fake_daemons.FakeDaemon.

Started as ``python -c SOURCE PATH MODE`` (the source is passed, so the
student account never needs to read the repository). It binds PATH, prints
``ready``, prints each request as ``METHOD PATH`` on stdout, and ends when its
stdin closes (``release``) or after 300 s at most.
"""

import json
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler

VERSION = {"Version": "20.10.24", "ApiVersion": "1.41", "MinAPIVersion": "1.12", "Os": "linux"}
ROOTFUL_INFO = {
    "ServerVersion": "20.10.24",
    "SecurityOptions": ["name=apparmor", "name=seccomp,profile=default"],
    "CgroupDriver": "cgroupfs",
}
released = threading.Event()
out_lock = threading.Lock()


def note(method, path):
    with out_lock:
        sys.stdout.write(f"{method} {path}\n")
        sys.stdout.flush()


class Rootful(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, status, body):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if isinstance(body, bytes) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Api-Version", "1.41")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?")[0]
        note("GET", path)
        if path.endswith("/_ping"):
            self._send(200, b"OK")
        elif path.endswith("/version"):
            self._send(200, VERSION)
        elif path.endswith("/info"):
            self._send(200, ROOTFUL_INFO)
        else:
            self._send(500, {"message": "fake rootful daemon: unexpected call " + path})

    def do_POST(self):
        note("POST", self.path.split("?")[0])
        self._send(500, {"message": "fake rootful daemon: nothing may be created here"})

    do_DELETE = do_POST

    def log_message(self, *args):
        pass

    def address_string(self):
        return "unix"


class Hang(socketserver.BaseRequestHandler):
    def handle(self):
        note("CONNECT", "")
        released.wait(300)  # bounded: never longer than the test itself


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def main(path, mode):
    server = Server(path, {"rootful": Rootful, "hang": Hang}[mode])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    note("ready", "")
    sys.stdin.read()  # until the test releases us (closes our stdin) or dies
    released.set()
    server.shutdown()
    server.server_close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
