"""A Docker Engine API look-alike on a unix socket that lies, stalls or floods on purpose.

Run it as the student whose daemon it pretends to be, so that it passes the
hub's peer-credential check (otherwise the tests would prove nothing)::

    setpriv --reuid=UID --regid=GID --clear-groups PYTHON -m tests.integration.hostile_daemon \\
        --socket /run/user/UID/docker.sock --behaviour NAME

It answers enough of the API for the spawner's path to go end to end
(``/_ping``, ``/version``, ``/info``, image inspect/pull/tag/remove, container
create/start/inspect/stop/wait/delete/logs, exec), like Docker 20.10 in
rootless mode; each BEHAVIOUR (see :data:`BEHAVIOURS`) changes one answer.
When a container is started it listens on the host port the spawner asked
for (``HostConfig.PortBindings``) with a tiny HTTP server, standing in for
JupyterLab, so that an honest run becomes "ready" in a real hub.

Every request is written to stdout as one JSON line (``{"req": ...}``), and
every deliberately bad answer as ``{"bad": ...}``, for the tests to read.

Everything is bounded: each stream stops after ``--max-seconds`` (and after a
fixed count of lines or bytes), at most ``MAX_CONNECTIONS`` connections are
served at once, and nothing is ever sent anywhere but the unix socket and the
stand-in server on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import random
import signal
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

API_VERSION = "1.41"
MAX_CONNECTIONS = 64
CHUNK = 64 * 1024

VERSION = {
    "Platform": {"Name": "Docker Engine - Community"},
    "Version": "20.10.24+dfsg1",
    "ApiVersion": API_VERSION,
    "MinAPIVersion": "1.12",
    "GitCommit": "5d6db84",
    "GoVersion": "go1.19.8",
    "Os": "linux",
    "Arch": "amd64",
    "KernelVersion": "6.1.0",
}

INFO = {
    "ID": "HOST:ILE:DAEMON",
    "Containers": 0,
    "Images": 1,
    "Driver": "fuse-overlayfs",
    "CgroupDriver": "none",
    "CgroupVersion": "1",
    "NCPU": 2,
    "MemTotal": 8 << 30,
    "Name": "hostile",
    "ServerVersion": "20.10.24+dfsg1",
    "SecurityOptions": ["name=seccomp,profile=default", "name=rootless"],
    "Runtimes": {"runc": {"path": "runc"}},
    "DefaultRuntime": "runc",
    "OperatingSystem": "Debian GNU/Linux 12 (bookworm)",
}

#: name -> what it does (the tests and the fuzzer use these names)
BEHAVIOURS = {
    "honest": "answers like a healthy rootless daemon (the control case)",
    "socket-swap": "after answering /info, replaces its socket with a symlink to --swap-to and drops all connections",
    "relay": "forwards every connection to --relay-to (another uid's daemon); run as root, socket chowned with --owner",
    "lying-port": "container inspect reports 127.0.0.1:--lie-port instead of the port the spawner asked for",
    "lying-ip": "container inspect reports --lie-ip as the host IP",
    "gigabyte-info": "/info answers a 1 GiB body (Content-Length), streamed lazily",
    "gigabyte-chunked": "image inspect answers an endless chunked body (up to 1 GiB), streamed lazily",
    "endless-pull": "the image is missing; its pull stream announces new layer ids forever",
    "slow-pull": "the image is missing; its pull stream sends a small progress line every --drip-interval s, forever",
    "huge-pull-line": "the image is missing; its pull stream sends one 8 MiB line, then finishes normally",
    "drip-body": "/info sends its headers, then its body one byte every --drip-interval seconds",
    "drip-headers": "/info sends its status line and headers one byte every --drip-interval seconds",
    "nested-json": "/info answers '[' * 100000",
    "cdi-glob": "/info reports CDISpecDirs of glob patterns ('/*/*/*/*/*/*' x 20)",
    "cdi-spec-dir": "/info reports CDISpecDirs = [--cdi-dir], a directory it filled with an nvidia.yaml",
    "mirror-failed": "the image is missing; its pull through the mirror reports 'mirror failed'",
    "wrong-types-inspect": "container inspect after create answers wrong types (Id a number, Ports a string, ...)",
    "wrong-types-info": "/info answers wrong types (CDISpecDirs a number, NCPU a string, ...)",
    "invalid-utf8": "/info answers bytes that are not UTF-8",
    "truncated": "container create announces 200 bytes, sends 30 and closes",
    "wrong-status": "container create answers 418 with a body that is not JSON",
    "redirect": "image inspect answers 307 to --redirect-to (a loopback canary)",
    "escape-injection": "container create fails with terminal escapes and control characters in its message",
    "bad-api-version": "/version reports ApiVersion as a number",
    "never-answer": "accepts connections and never answers (--stale: refuses them, a daemon that died); "
                    "holds --lock (flock), so a daemon start for the student never finishes",
    "rootful": "a rootful Docker daemon (no name=rootless in /info, cgroupfs); refuses to create anything",
    "fuzz": "honest, except for randomized malformed answers chosen per iteration (POST /_fuzz/SEED/N)",
}

_print_lock = threading.Lock()


def emit(kind: str, **fields) -> None:
    with _print_lock:
        sys.stdout.write(json.dumps({kind: fields}, default=str) + "\n")
        sys.stdout.flush()


def _hex_id(*parts) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()


# ---------------------------------------------------------------- fuzzing

#: endpoint classes the spawner's start/poll/stop path calls
FUZZ_ENDPOINTS = [
    "ping", "version", "info", "image_inspect", "pull", "container_inspect",
    "create", "start", "stop", "delete", "wait", "logs",
]

FUZZ_MUTATIONS = [
    # (name, weight)
    ("status", 10), ("wrong-type", 16), ("drop-key", 12), ("huge-number", 5), ("negative", 5),
    ("invalid-utf8", 8), ("truncate", 8), ("short-length", 3), ("not-json", 6), ("empty", 4),
    ("nested", 4), ("bad-chunked", 4), ("huge-string", 2), ("over-limit", 1), ("null", 3),
    ("array", 3), ("text-type", 2), ("stall", 1), ("pull-garbage", 6),
]

WEIRD_VALUES = [None, 0, -1, 2**63, 2**64 + 1, -(2**70), 1.5, -0.0, 1e308, "", "x" * 10, "\u0000",
                [], {}, True, False, [[]], {"a": None}, ["name=rootless"], "name=rootless", "8888/tcp"]


class FuzzPlan:
    """Which answers are malformed in one fuzz iteration, and how (seeded, reproducible)."""

    def __init__(self, seed: int, iteration: int):
        self.seed, self.iteration = seed, iteration
        self.rng = random.Random(f"{seed}:{iteration}")
        n = 1 if self.rng.random() < 0.8 else self.rng.randint(2, 3)
        first = FUZZ_ENDPOINTS[iteration % len(FUZZ_ENDPOINTS)]  # every endpoint, in turn
        others = self.rng.sample(FUZZ_ENDPOINTS, n - 1) if n > 1 else []
        names, weights = zip(*FUZZ_MUTATIONS)
        self.targets = {ep: self.rng.choices(names, weights)[0] for ep in [first, *others]}
        self.image_missing = "pull" in self.targets or self.rng.random() < 0.1

    def mutation(self, endpoint: str):
        return self.targets.get(endpoint)


def _walk(node, path=()):
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, path + (i,))


def _set(root, path, value):
    if not path:
        return value
    node = root
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return root


def mutate_json(obj, mutation: str, rng: random.Random) -> bytes:
    """A JSON answer broken in one of the ways of FUZZ_MUTATIONS (those about content)."""
    obj = json.loads(json.dumps(obj))  # a copy
    nodes = list(_walk(obj))
    if mutation == "wrong-type":
        for _ in range(rng.randint(1, 3)):
            path, _node = rng.choice(nodes)
            obj = _set(obj, path, rng.choice(WEIRD_VALUES))
            nodes = list(_walk(obj))
        return json.dumps(obj).encode()
    if mutation == "drop-key":
        dicts = [(p, n) for p, n in nodes if isinstance(n, dict) and n]
        for _ in range(rng.randint(1, 4)):
            if not dicts:
                break
            _p, d = rng.choice(dicts)
            if d:
                d.pop(rng.choice(list(d)))
        return json.dumps(obj).encode()
    if mutation in ("huge-number", "negative"):
        leaves = [p for p, n in nodes if not isinstance(n, (dict, list))] or [()]
        path = rng.choice(leaves)
        if mutation == "negative":
            obj = _set(obj, path, -rng.choice([1, 2**31, 2**63, 10**30]))
            return json.dumps(obj).encode()
        obj = _set(obj, path, "__HUGE__")
        digits = "9" * rng.choice([20, 400, 5000, 50000])
        return json.dumps(obj).replace('"__HUGE__"', digits, 1).encode()
    if mutation == "invalid-utf8":
        data = json.dumps(obj).encode()
        bad = rng.choice([b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"])
        quotes = [i for i, c in enumerate(data) if c == ord('"')] or [len(data)]
        at = rng.choice(quotes) + 1 if quotes else 0
        return data[:at] + bad + data[at:]
    if mutation == "not-json":
        return rng.choice([b"<html><body>502 Bad Gateway</body></html>", b"OK", b"{", b"}{", b"\x00\x01\x02",
                           rng.randbytes(rng.randint(1, 300)), b"NaN", b'{"a": Infinity}', b"1e99999"])
    if mutation == "nested":
        depth = rng.choice([1000, 10000, 100000])
        return rng.choice([b"[" * depth, b'{"a":' * depth, b"[" * depth + b"]" * depth])
    if mutation == "huge-string":
        return json.dumps({"message": "x" * (2 << 20), "Id": "y" * (1 << 20)}).encode()
    if mutation == "null":
        return b"null"
    if mutation == "array":
        return json.dumps([obj]).encode()
    return json.dumps(obj).encode()


# ---------------------------------------------------------------- the daemon state


class Lab:
    """A stand-in for JupyterLab on 127.0.0.1:PORT (any request: 200 with a small JSON body)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = b'{"version": "2.0.0"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_PUT = do_DELETE = do_HEAD = do_GET

        def log_message(self, *args):
            pass

    def __init__(self, port: int):
        ThreadingHTTPServer.daemon_threads = True
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Lab.Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _close_quietly(lab):
    try:
        lab.close()
    except OSError:
        pass


class State:
    def __init__(self, args):
        self.args = args
        self.behaviour = args.behaviour
        self.lock = threading.Lock()
        self.containers: dict[str, dict] = {}  # id -> container
        self.images_present = self.behaviour not in ("endless-pull", "slow-pull", "huge-pull-line", "mirror-failed")
        self.labs: dict[str, Lab] = {}
        self.connections: set = set()
        self.swapped = False
        self.fuzz: FuzzPlan | None = None
        self.deadline = time.monotonic() + args.max_seconds

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def find(self, ref: str):
        ref = ref.lstrip("/")
        with self.lock:
            if ref in self.containers:
                return self.containers[ref]
            for c in self.containers.values():
                if c["Name"].lstrip("/") == ref or (len(ref) >= 12 and c["Id"].startswith(ref)):
                    return c
        return None

    def close_labs(self, cid=None):
        with self.lock:
            ids = [cid] if cid else list(self.labs)
            labs = [self.labs.pop(i) for i in ids if i in self.labs]
        for lab in labs:
            # In the background: the answer (stop, delete) need not wait for the server's loop.
            threading.Thread(target=_close_quietly, args=(lab,), daemon=True).start()


def container_json(c: dict, state: State) -> dict:
    port_key = f"{c.get('ExposedPort', '8888')}/tcp"
    bindings = c["HostConfig"].get("PortBindings") or {}
    reported = [dict(b) for b in bindings.get(port_key) or [{"HostIp": "127.0.0.1", "HostPort": "49153"}]]
    if state.behaviour == "lying-port":
        reported = [{"HostIp": "127.0.0.1", "HostPort": str(state.args.lie_port)}]
    elif state.behaviour == "lying-ip":
        reported = [{"HostIp": state.args.lie_ip, "HostPort": reported[0].get("HostPort", "49153")}]
    running = c["State"] == "running"
    return {
        "Id": c["Id"],
        "Created": "2026-12-01T00:00:00.000000000Z",
        "Name": c["Name"],
        "Image": "sha256:" + _hex_id("image", c["Config"].get("Image")),
        "State": {
            "Status": c["State"],
            "Running": running,
            "Paused": False,
            "Restarting": False,
            "OOMKilled": False,
            "Dead": False,
            "Pid": 4242 if running else 0,
            "ExitCode": 0,
            "Error": "",
            "StartedAt": "2026-12-01T00:00:01.000000000Z",
            "FinishedAt": "0001-01-01T00:00:00Z",
        },
        "HostConfig": c["HostConfig"],
        "Config": {**c["Config"], "Labels": c["Config"].get("Labels") or {}},
        "NetworkSettings": {
            "Ports": {port_key: reported if running else None},
            "IPAddress": "172.17.0.2",
            "Networks": {"bridge": {"IPAddress": "172.17.0.2"}},
        },
        "Mounts": [],
    }


def image_json(name: str) -> dict:
    return {
        "Id": "sha256:" + _hex_id("image", name),
        "RepoTags": [name],
        "RepoDigests": [],
        "Created": "2026-12-01T00:00:00Z",
        "Config": {"Cmd": ["jupyterhub-singleuser"], "Env": ["PATH=/opt/venv/bin:/usr/bin:/bin"],
                   "WorkingDir": "/root", "ExposedPorts": None},
        "Architecture": "amd64",
        "Os": "linux",
        "Size": 600_000_000,
    }


# ---------------------------------------------------------------- HTTP


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Docker/20.10.24 (linux)"
    sys_version = ""

    def setup(self):
        super().setup()
        self.state: State = self.server.state
        with self.state.lock:
            self.state.connections.add(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            with self.state.lock:
                self.state.connections.discard(self.connection)

    def log_message(self, *args):
        pass

    def address_string(self):
        return "unix"

    # ---- answering

    def _raw(self, data: bytes):
        try:
            self.connection.sendall(data)
        except OSError:
            self.close_connection = True
            raise

    def reply(self, status, body=b"", *, ctype="application/json", headers=None, length=None, close=False,
              reason=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        lines = [f"HTTP/1.1 {status} {reason or self.responses.get(status, ('Unknown',))[0]}",
                 f"Api-Version: {API_VERSION}", "Docker-Experimental: false", "Ostype: linux",
                 "Server: Docker/20.10.24 (linux)", f"Date: {self.date_time_string()}"]
        if ctype:
            lines.append(f"Content-Type: {ctype}")
        if length is not False:
            lines.append(f"Content-Length: {len(body) if length is None else length}")
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        if close:
            lines.append("Connection: close")
            self.close_connection = True
        self._raw(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def start_chunked(self, status=200, ctype="application/json"):
        head = (f"HTTP/1.1 {status} OK\r\nApi-Version: {API_VERSION}\r\nContent-Type: {ctype}\r\n"
                f"Date: {self.date_time_string()}\r\nTransfer-Encoding: chunked\r\n\r\n")
        self._raw(head.encode())

    def chunk(self, data: bytes):
        self._raw(b"%x\r\n%s\r\n" % (len(data), data))

    def end_chunked(self):
        self._raw(b"0\r\n\r\n")

    def not_found(self, what):
        self.reply(404, {"message": f"No such {what}"})

    # ---- request dispatch

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def do_HEAD(self):
        self.dispatch("HEAD")

    def do_PUT(self):
        self.dispatch("PUT")

    def dispatch(self, method):
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if path.startswith("/v") and "/" in path[1:]:
            head, rest = path[1:].split("/", 1)
            if head[1:].replace(".", "").isdigit():
                path = "/" + rest
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, 16 << 20)) if length > 0 else b""
        record = {"method": method, "path": path, "query": query}
        if path == "/containers/create":
            try:
                record["body"] = json.loads(body or b"{}")
            except ValueError:
                record["body"] = body[:200].decode("latin-1")
        emit("req", **record)
        st = self.state
        if path.startswith("/_behaviour/") and method == "POST":
            # The test switches a running fake to another behaviour (e.g. honest, then garbled).
            name = path[len("/_behaviour/"):]
            if name in BEHAVIOURS:
                st.behaviour = name
                emit("bad", what="behaviour switched", behaviour=name)
            return self.reply(200, {"behaviour": st.behaviour})
        if path.startswith("/_fuzz/") and method == "POST":
            _, _, seed, iteration = path.split("/")
            st.fuzz = FuzzPlan(int(seed), int(iteration))
            st.images_present = not st.fuzz.image_missing
            return self.reply(200, {"targets": st.fuzz.targets})
        try:
            self.route(method, path, query, body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def endpoint(self, method, path) -> str:
        if path == "/_ping":
            return "ping"
        if path == "/version":
            return "version"
        if path == "/info":
            return "info"
        if path == "/images/create":
            return "pull"
        if path.startswith("/images/") and path.endswith("/json"):
            return "image_inspect"
        if path == "/containers/create":
            return "create"
        if path.startswith("/containers/"):
            tail = path.rsplit("/", 1)[-1]
            if method == "DELETE":
                return "delete"
            return {"json": "container_inspect", "start": "start", "stop": "stop", "wait": "wait",
                    "logs": "logs"}.get(tail, "other")
        return "other"

    def route(self, method, path, query, body):
        st = self.state
        b = st.behaviour
        ep = self.endpoint(method, path)
        honest = self.honest(method, path, query, body, ep)
        if honest is None:
            return  # answered already (streams, special behaviours)
        status, payload = honest[0], honest[1]
        extra = honest[2] if len(honest) > 2 else {}
        if b == "rootful" and method in ("POST", "DELETE", "PUT"):
            status, payload, extra = 500, {"message": "fake rootful daemon: nothing may be created here"}, {}
        if b == "fuzz" and st.fuzz is not None and st.fuzz.mutation(ep):
            return self.fuzzed(ep, st.fuzz.mutation(ep), status, payload, extra)
        self.reply(status, payload, **extra)
        if ep == "info" and b == "socket-swap" and not st.swapped:
            self.swap_socket()

    # ---- the honest daemon (with the behaviours that only change a value)

    def honest(self, method, path, query, body, ep):
        st, b = self.state, self.state.behaviour
        if ep == "ping":
            return 200, b"OK", {"ctype": "text/plain; charset=utf-8"}
        if ep == "version":
            if b == "bad-api-version":
                return 200, {**VERSION, "ApiVersion": 1.41}
            return 200, VERSION
        if ep == "info":
            return self.info()
        if ep == "pull":
            return self.pull(query)
        if ep == "image_inspect":
            name = path[len("/images/"):-len("/json")]
            if b == "redirect":
                return 307, {"message": "moved"}, {"headers": {"Location": self.state.args.redirect_to + path}}
            if b == "gigabyte-chunked":
                self.stream_junk(chunked=True)
                return None
            if not st.images_present:
                return 404, {"message": f"No such image: {name}"}
            return 200, image_json(name)
        if path.startswith("/images/") and path.endswith("/tag") and method == "POST":
            return 201, b"", {"ctype": None}
        if path.startswith("/images/") and method == "DELETE":
            return 200, [{"Untagged": path[len("/images/"):]}]
        if ep == "create":
            return self.create(query, body)
        if path == "/containers/json":
            with st.lock:
                return 200, [container_json(c, st) for c in st.containers.values()]
        if path.startswith("/containers/"):
            return self.container_call(method, path, query, ep)
        if path.startswith("/exec/"):
            if path.endswith("/json"):
                return 200, {"Running": False, "ExitCode": 0}
            self.reply(200, b"", ctype="application/vnd.docker.raw-stream", close=True)
            return None
        return 404, {"message": "page not found"}

    def info(self):
        b, args = self.state.behaviour, self.state.args
        info = dict(INFO)
        with self.state.lock:
            info["Containers"] = len(self.state.containers)
        if b == "gigabyte-info":
            self.stream_junk(chunked=False)
            return None
        if b in ("drip-body", "drip-headers"):
            self.drip(json.dumps(info).encode(), headers_too=(b == "drip-headers"))
            return None
        if b == "nested-json":
            return 200, b"[" * 100000
        if b == "cdi-glob":
            info["CDISpecDirs"] = ["/*/*/*/*/*/*"] * 20
        if b == "cdi-spec-dir":
            info["CDISpecDirs"] = [args.cdi_dir]
        if b == "wrong-types-info":
            info.update({"CDISpecDirs": 5, "NCPU": "many", "ServerVersion": ["20.10"], "Driver": {},
                         "SecurityOptions": ["name=rootless", 7, None, {"name": "x"}], "MemTotal": -1})
        if b == "rootful":
            info.update({"SecurityOptions": ["name=apparmor", "name=seccomp,profile=default"],
                         "CgroupDriver": "cgroupfs"})
        if b == "invalid-utf8":
            data = json.dumps(info).encode().replace(b'"hostile"', b'"host\xff\xfeile\xc3\x28"')
            return 200, data
        return 200, info

    def create(self, query, body):
        st, b = self.state, self.state.behaviour
        try:
            config = json.loads(body or b"{}")
        except ValueError:
            return 400, {"message": "bad JSON"}
        name = "/" + (query.get("name") or _hex_id("anon", time.time())[:12])
        if b == "truncated":
            self.reply(201, b'{"Id": "' + b"0" * 20, length=200, close=True)
            return None
        if b == "wrong-status":
            self.reply(418, b"I'm a teapot \xff\x00 (not JSON)", ctype="text/plain", reason="I'm a teapot")
            return None
        if b == "escape-injection":
            return 500, {"message": "\x1b[2J\x1b[1;31mdaemon on fire\x1b]0;pwned\x07\r\x08\x08 "
                                    "<script>alert(1)</script>\u202e\x00 gone"}
        with st.lock:
            if any(c["Name"] == name for c in st.containers.values()):
                return 409, {"message": f"Conflict. The container name \"{name}\" is already in use"}
            cid = _hex_id("container", name, time.monotonic())
            host_config = config.pop("HostConfig", {}) or {}
            st.containers[cid] = {"Id": cid, "Name": name, "Config": config, "HostConfig": host_config,
                                  "State": "created"}
        return 201, {"Id": cid, "Warnings": []}

    def container_call(self, method, path, query, ep):
        st, b = self.state, self.state.behaviour
        ref = path[len("/containers/"):]
        if ep != "delete":
            ref = ref.rsplit("/", 1)[0]
        c = st.find(ref)
        if c is None:
            return 404, {"message": f"No such container: {ref}"}
        if ep == "container_inspect":
            if b == "wrong-types-inspect" and c["State"] == "running":
                return 200, {"Id": 12345, "Name": ["x"], "State": "running", "Config": ["x"],
                             "HostConfig": "none", "NetworkSettings": {"Ports": "127.0.0.1:1->8888/tcp"}}
            return 200, container_json(c, st)
        if ep == "start":
            if c["State"] == "running":
                return 304, b"", {"ctype": None}
            c["State"] = "running"
            self.open_lab(c)
            return 204, b"", {"ctype": None}
        if ep in ("stop",) or path.endswith("/kill"):
            if c["State"] != "running":
                return 304, b"", {"ctype": None}
            c["State"] = "exited"
            st.close_labs(c["Id"])
            return 204, b"", {"ctype": None}
        if ep == "wait":
            return 200, {"StatusCode": 0, "Error": None}
        if ep == "logs":
            return 200, b"\x01\x00\x00\x00\x00\x00\x00\x0cfake server\n", {"ctype": "application/vnd.docker.raw-stream"}
        if ep == "delete":
            if c["State"] == "running" and query.get("force") not in ("1", "True", "true"):
                # Docker refuses, but the spawner stops first; be lenient like `rm -f`.
                pass
            st.close_labs(c["Id"])
            with st.lock:
                st.containers.pop(c["Id"], None)
            return 204, b"", {"ctype": None}
        if path.endswith("/exec"):
            return 201, {"Id": _hex_id("exec", c["Id"], time.monotonic())}
        return 404, {"message": "page not found"}

    def open_lab(self, c):
        bindings = (c["HostConfig"].get("PortBindings") or {})
        for key, items in bindings.items():
            for item in items or []:
                try:
                    port = int(item.get("HostPort") or 0)
                except (TypeError, ValueError):
                    continue
                if 1024 < port < 65536:
                    try:
                        lab = Lab(port)
                    except OSError as e:
                        emit("note", lab_port=port, error=str(e))
                        continue
                    old = None
                    with self.state.lock:
                        old = self.state.labs.pop(c["Id"], None)
                        self.state.labs[c["Id"]] = lab
                        if len(self.state.labs) > 8:  # bounded: drop the oldest
                            oldest = next(iter(self.state.labs))
                            old2 = self.state.labs.pop(oldest)
                        else:
                            old2 = None
                    for o in (old, old2):
                        if o is not None:
                            threading.Thread(target=_close_quietly, args=(o,), daemon=True).start()
                    return

    # ---- pulls

    def pull(self, query):
        st, b = self.state, self.state.behaviour
        image = query.get("fromImage", "?")
        tag = query.get("tag", "latest")
        if b == "endless-pull":
            self.start_chunked()
            n = 0
            # New layer ids forever (bounded by --max-seconds and 3,000,000 lines).
            while n < 3_000_000 and st.time_left() > 0:
                lines = b"".join(
                    b'{"status":"Pulling fs layer","progressDetail":{},"id":"%012x"}\r\n' % (n + i)
                    for i in range(200)
                )
                n += 200
                self.chunk(lines)
            emit("bad", what="endless pull ended", lines=n)
            self.close_connection = True
            return None
        if b == "slow-pull":
            # Well-formed, small, always the same layer: only the pull's own deadline ends it.
            self.start_chunked()
            n = 0
            while st.time_left() > 0:
                self.chunk(b'{"status":"Downloading","progressDetail":{"current":%d,"total":1000000000},'
                           b'"id":"0123456789ab"}\r\n' % n)
                n += 1
                time.sleep(self.state.args.drip_interval)
            emit("bad", what="slow pull ended", lines=n)
            self.close_connection = True
            return None
        if b == "huge-pull-line":
            self.start_chunked()
            self.chunk(b'{"status":"Pulling from %s","id":"%s"}\r\n' % (image.encode(), tag.encode()))
            self.chunk(b'{"status":"Downloading","id":"0123456789ab","progress":"')
            sent = 0
            while sent < (8 << 20) and st.time_left() > 0:
                self.chunk(b"x" * CHUNK)
                sent += CHUNK
            self.chunk(b'","progressDetail":{"current":1,"total":2}}\r\n')
            self.chunk(b'{"status":"Status: Downloaded newer image for %s:%s"}\r\n' % (image.encode(), tag.encode()))
            self.end_chunked()
            st.images_present = True
            return None
        if b == "mirror-failed":
            self.start_chunked()
            self.chunk(b'{"status":"Pulling from %s","id":"%s"}\r\n' % (image.encode(), tag.encode()))
            self.chunk(json.dumps({"errorDetail": {"message": "mirror failed: 502 Bad Gateway from the registry"},
                                   "error": "mirror failed: 502 Bad Gateway from the registry"}).encode() + b"\r\n")
            self.end_chunked()
            return None
        lines = self.honest_pull_lines(image, tag)
        if b == "fuzz" and st.fuzz is not None and st.fuzz.mutation("pull"):
            return self.fuzzed_pull(st.fuzz.mutation("pull"), lines)
        self.start_chunked()
        for line in lines:
            self.chunk(line)
        self.end_chunked()
        st.images_present = True
        return None

    @staticmethod
    def honest_pull_lines(image, tag):
        layers = [_hex_id("layer", image, i)[:12] for i in range(3)]
        out = [{"status": f"Pulling from {image}", "id": tag}]
        out += [{"status": "Pulling fs layer", "progressDetail": {}, "id": l} for l in layers]
        for l in layers:
            out += [{"status": "Downloading", "progressDetail": {"current": 500, "total": 1000},
                     "progress": "[=====>     ]", "id": l},
                    {"status": "Download complete", "progressDetail": {}, "id": l},
                    {"status": "Pull complete", "progressDetail": {}, "id": l}]
        out += [{"status": "Digest: sha256:" + _hex_id("digest", image)},
                {"status": f"Status: Downloaded newer image for {image}:{tag}"}]
        return [json.dumps(o).encode() + b"\r\n" for o in out]

    # ---- floods and drips

    def stream_junk(self, chunked: bool):
        """Up to 1 GiB of one JSON string, produced lazily (never held in memory)."""
        total = 1 << 30
        prefix = b'{"ServerVersion": "20.10", "SecurityOptions": ["name=rootless"], "Junk": "'
        block = b"A" * CHUNK
        if chunked:
            self.start_chunked()
        else:
            head = (f"HTTP/1.1 200 OK\r\nApi-Version: {API_VERSION}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {total}\r\n\r\n")
            self._raw(head.encode())
        send = self.chunk if chunked else self._raw
        sent = 0
        try:
            send(prefix)
            sent = len(prefix)
            while sent + CHUNK < total - 2 and self.state.time_left() > 0:
                send(block)
                sent += CHUNK
            emit("bad", what="junk body finished", bytes=sent)
        except OSError:
            emit("bad", what="junk body cut by the client", bytes=sent)
        self.close_connection = True

    def drip(self, body: bytes, headers_too: bool):
        head = (f"HTTP/1.1 200 OK\r\nApi-Version: {API_VERSION}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        interval = self.state.args.drip_interval
        data = head + body if headers_too else body
        if not headers_too:
            self._raw(head)
        sent = 0
        try:
            for i in range(len(data)):
                if self.state.time_left() <= 0:
                    break
                self._raw(data[i:i + 1])
                sent += 1
                time.sleep(interval)
            emit("bad", what="drip finished", bytes=sent)
        except OSError:
            emit("bad", what="drip cut by the client", bytes=sent)
        self.close_connection = True

    # ---- socket swap

    def swap_socket(self):
        st = self.state
        st.swapped = True
        path, target = st.args.socket, st.args.swap_to
        tmp = path + ".swap"
        try:
            os.symlink(target, tmp)
            os.replace(tmp, path)
            emit("bad", what="socket swapped", target=target)
        except OSError as e:
            emit("bad", what="socket swap failed", error=str(e))
        self.close_connection = True
        with st.lock:
            conns = list(st.connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # ---- fuzzing

    def fuzzed(self, ep, mutation, status, payload, extra):
        rng = self.state.fuzz.rng
        emit("bad", fuzz=self.state.fuzz.iteration, endpoint=ep, mutation=mutation)
        if isinstance(payload, bytes):
            try:
                obj = json.loads(payload) if payload else {}
            except ValueError:
                obj = {"raw": payload.decode("latin-1")}
        else:
            obj = payload
        ctype = "application/json"
        if mutation == "status":
            new = rng.choice([200, 201, 204, 299, 301, 302, 304, 400, 401, 404, 409, 418, 500, 502, 503, 600, 999])
            body = json.dumps(obj).encode() if new not in (204, 304) else b""
            headers = {"Location": "/v1.41/_ping"} if new in (301, 302) else None
            return self.reply(new, body, headers=headers)
        if mutation == "truncate":
            body = json.dumps(obj).encode() or b"{}"
            return self.reply(status, body[: max(1, len(body) // rng.randint(2, 5))], length=len(body) + 10, close=True)
        if mutation == "short-length":
            body = json.dumps(obj).encode()
            return self.reply(status, body, length=max(0, len(body) // 2), close=True)
        if mutation == "empty":
            return self.reply(rng.choice([200, status]), b"")
        if mutation == "bad-chunked":
            self._raw(f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
            self._raw(rng.choice([b"zz\r\n{}\r\n0\r\n\r\n", b"ffffffffffffffff\r\n{", b"5\r\n{}\r\n0\r\n\r\n", b"-1\r\n"]))
            self.close_connection = True
            return None
        if mutation == "over-limit":
            self._raw(f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\nContent-Length: {17 << 20}\r\n\r\n".encode())
            try:
                self._raw(b'{"a": "')
                for _ in range((17 << 20) // CHUNK - 1):
                    self._raw(b"B" * CHUNK)
            except OSError:
                pass
            self.close_connection = True
            return None
        if mutation == "text-type":
            return self.reply(status, json.dumps(obj).encode(), ctype="text/html; charset=koi8-r")
        if mutation == "stall":
            # No answer at all until the client gives up (bounded).
            end = time.monotonic() + 20
            while time.monotonic() < end and self.state.time_left() > 0:
                time.sleep(0.1)
                try:
                    if self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                        break
                except BlockingIOError:
                    continue
                except OSError:
                    break
            self.close_connection = True
            return None
        if mutation == "pull-garbage":
            mutation = "wrong-type"
        body = mutate_json(obj, mutation, rng)
        return self.reply(status, body, ctype=ctype)

    def fuzzed_pull(self, mutation, lines):
        rng = self.state.fuzz.rng
        emit("bad", fuzz=self.state.fuzz.iteration, endpoint="pull", mutation=mutation)
        if mutation not in ("pull-garbage", "wrong-type", "drop-key", "invalid-utf8", "huge-number", "negative",
                            "nested", "not-json", "huge-string"):
            status = 200
            return self.fuzzed("pull", mutation, status, b"".join(lines).split(b"\r\n")[0], {})
        self.start_chunked()
        garbage = [b'{"error": 5}', b'{"errorDetail": []}', b'{"errorDetail": {"message": {"x": 1}}}',
                   b'{"id": {}, "status": "Downloading"}', b'{"id": "a", "status": "Downloading", "progressDetail": []}',
                   b'{"id": "a", "status": "Downloading", "progressDetail": {"current": -5, "total": "x"}}',
                   b'{"id": "a", "status": "Downloading", "progressDetail": {"current": 1e308, "total": 0}}',
                   b'{"id": "a", "status": "Downloading", "progressDetail": {"current": 3, "total": -2}}',
                   b'{"id": ["a"], "status": ["Pull complete"]}', b"[]", b"null", b"17", b'"str"', b"{",
                   b'{"status": "' + b"\xff\xfe" + b'"}', b"[" * 5000, b'{"a":' * 5000]
        out = list(lines)
        for _ in range(rng.randint(1, 4)):
            at = rng.randint(0, len(out))
            if mutation == "pull-garbage":
                item = rng.choice(garbage) + b"\r\n"
            else:
                item = mutate_json(json.loads(rng.choice(lines)), mutation, rng) + b"\r\n"
            out.insert(at, item)
        try:
            for line in out:
                self.chunk(line)
            self.end_chunked()
        except OSError:
            pass
        self.state.images_present = True
        return None


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, path, state):
        self.state = state
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(path, Handler)

    def process_request(self, request, client_address):
        if not self.slots.acquire(timeout=5):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


# ---------------------------------------------------------------- special modes


def accepted(listener, max_seconds: float):
    """Each connection the listener accepts until max_seconds have passed (bounded, 0.5 s ticks)."""
    listener.settimeout(0.5)
    end = time.monotonic() + max_seconds
    while time.monotonic() < end:
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        yield conn


def serve_never_answer(args):
    """Accept connections and read them, never answer; hold the daemon-start lock meanwhile."""
    lock_fd = None
    if args.lock:
        lock_fd = os.open(args.lock, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        emit("bad", what="holding lock", path=args.lock)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(args.socket)
    if args.stale:
        # A socket nobody listens on (a daemon that died): connections are refused.
        emit("ready", behaviour=args.behaviour, pid=os.getpid(), uid=os.getuid(), stale=True)
        end = time.monotonic() + args.max_seconds
        while time.monotonic() < end:
            time.sleep(0.5)
        listener.close()
        return
    listener.listen(128)
    emit("ready", behaviour=args.behaviour, pid=os.getpid(), uid=os.getuid())
    held = []
    for conn in accepted(listener, args.max_seconds):
        emit("req", method="CONNECT", path="", query={})
        held.append(conn)
        if len(held) > 256:  # bounded
            held.pop(0).close()
    for conn in held:
        conn.close()
    listener.close()


def chown_socket(args) -> None:
    if args.owner:
        uid, gid = (int(x) for x in args.owner.split(":"))
        os.chown(args.socket, uid, gid)


def serve_relay(args):
    """Forward each connection to another daemon's socket (byte for byte)."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(args.socket)
    chown_socket(args)
    os.chmod(args.socket, 0o660)
    listener.listen(64)
    emit("ready", behaviour=args.behaviour, pid=os.getpid(), uid=os.getuid())
    slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def pipe(src, dst):
        try:
            while True:
                data = src.recv(CHUNK)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def relay(conn):
        try:
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(args.relay_to)
            emit("req", method="RELAY", path=args.relay_to, query={})
            t = threading.Thread(target=pipe, args=(upstream, conn), daemon=True)
            t.start()
            pipe(conn, upstream)
            t.join(args.max_seconds)
            upstream.close()
        except OSError as e:
            emit("note", relay_error=str(e))
        finally:
            conn.close()
            slots.release()

    for conn in accepted(listener, args.max_seconds):
        if not slots.acquire(timeout=5):
            conn.close()
            continue
        threading.Thread(target=relay, args=(conn,), daemon=True).start()
    listener.close()


def prepare_cdi_dir(path):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "nvidia.yaml"), "w") as f:
        f.write('cdiVersion: "0.5.0"\nkind: nvidia.com/gpu\ndevices:\n- name: "0"\n  containerEdits:\n'
                '    deviceNodes:\n    - path: /dev/null\n')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socket", required=True)
    p.add_argument("--behaviour", required=True, choices=sorted(BEHAVIOURS))
    p.add_argument("--max-seconds", type=float, default=120.0, help="every stream, drip and wait ends by then")
    p.add_argument("--swap-to", default="")
    p.add_argument("--relay-to", default="")
    p.add_argument("--owner", default="", help="UID:GID to chown the socket to (when run as root: relay, "
                                                "or root listening behind a socket file given to the student)")
    p.add_argument("--lie-port", type=int, default=0)
    p.add_argument("--lie-ip", default="127.0.0.2")
    p.add_argument("--cdi-dir", default="")
    p.add_argument("--lock", default="")
    p.add_argument("--stale", action="store_true", help="never-answer: bind the socket but never listen")
    p.add_argument("--redirect-to", default="http://127.0.0.1:9")
    p.add_argument("--drip-interval", type=float, default=0.5)
    args = p.parse_args(argv)
    def _term(signum, frame):
        emit("note", exiting=f"signal {signum}")
        os._exit(0)

    signal.signal(signal.SIGTERM, _term)
    if os.path.lexists(args.socket):
        os.unlink(args.socket)
    if args.behaviour == "never-answer":
        return serve_never_answer(args)
    if args.behaviour == "relay":
        return serve_relay(args)
    if args.behaviour == "cdi-spec-dir" and args.cdi_dir:
        prepare_cdi_dir(args.cdi_dir)
    state = State(args)
    server = Server(args.socket, state)
    chown_socket(args)
    os.chmod(args.socket, 0o660)
    emit("ready", behaviour=args.behaviour, pid=os.getpid(), uid=os.getuid())
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    t.start()
    end = time.monotonic() + args.max_seconds + 30
    while time.monotonic() < end and t.is_alive():
        time.sleep(0.5)
    emit("note", exiting="serving thread ended" if not t.is_alive() else "max seconds")
    server.shutdown()
    state.close_labs()
    return 0


if __name__ == "__main__":
    sys.exit(main() or 0)
