"""The lab cache's single-flight front: one upstream fetch per blob, however many students miss at once.

Measured (docs/en/lab-cache.md): Debian's docker-registry 2.8 in proxy mode,
asked for one missing 8 MB blob by 16 clients at once, fetched it from the
upstream 17 times (143 MB for 8 MB): its ``inflight`` map only stops a second
*store*, every concurrent request still streams its own copy from upstream.

This front listens where students' daemons connect (127.0.0.1:PORT, seen from
their network namespace as 10.0.2.2:PORT) and passes requests to the
registry on its backend port.  For a blob (``GET|HEAD /v2/NAME/blobs/DIGEST``):

* the first request is the *leader*: relayed to the registry, which fetches
  from upstream and stores it while the bytes stream back;
* requests for that digest arriving meanwhile wait until the leader ends,
  then get a ``307`` to the registry's own port (now a local hit, no Python
  in the data path); a failed leader lets the next waiter lead;
* a digest already served once is redirected straight away.

Everything else (the ``/v2/`` ping, manifests, tags) is relayed.  Only GET and
HEAD are served: a pull-through cache takes no pushes.  Clients are students'
daemons, i.e. hostile: the request head is bounded (16 KiB), each connection has
deadlines, the number of connections is capped, and nothing a client sends is
used but the path (matched against a strict pattern) and the Host name (only
to build the redirect; it must be an IP or host name without odd characters).

Run: ``python -m rootless_gpu_spawner.host.singleflight --listen 127.0.0.1:5001 --backend 127.0.0.1:5101 --storage DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
from typing import Optional

MAX_HEAD = 16 * 1024
MAX_CONNECTIONS = 512
HEAD_TIMEOUT = 30.0
#: A leader may take this long (a 10 GB layer at 20 MB/s is ~9 min); waiters then lead themselves.
LEADER_WAIT = 3600.0
IDLE_TIMEOUT = 300.0
BACKEND_DOWN = "the lab cache's registry does not answer; an admin runs 'rootless-gpu-admin cache status'"
CHUNK = 256 * 1024

REQUEST = re.compile(rb"^(GET|HEAD) (/v2/[A-Za-z0-9._/:@?&=%+-]{0,1024}) HTTP/1\.[01]\r\n")
BLOB = re.compile(r"^/v2/(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/){0,8}[a-z0-9]+(?:[._-][a-z0-9]+)*/blobs/(sha256:[0-9a-f]{64})$")
HOST_HEADER = re.compile(rb"\r\nhost:[ \t]*([A-Za-z0-9.-]{1,253}|\[[0-9a-fA-F:]{2,39}\])(?::[0-9]{1,5})?[ \t]*\r\n", re.I)


def blob_digest(path: str) -> Optional[str]:
    m = BLOB.match(path.split("?", 1)[0])
    return m.group(1) if m else None


class Front:
    def __init__(self, backend: tuple[str, int], storage: Optional[str] = None):
        self.backend = backend
        self.storage = storage  # the registry's filesystem root: a blob is "done" once its data file is there
        self.done: set[str] = set()  # digests the registry has stored (a leader got a full 200)
        self.inflight: dict[str, asyncio.Event] = {}
        self.connections = 0
        self.stats = {"led": 0, "redirected": 0, "relayed": 0, "refused": 0}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.connections > MAX_CONNECTIONS:
                await _answer(writer, 503, "too many connections to the lab cache; retry")
                return
            try:
                first = await asyncio.wait_for(reader.readexactly(1), HEAD_TIMEOUT)
                if not first.isalpha():
                    # A TLS ClientHello (0x16): Docker tries HTTPS first on an insecure registry.  Say no at
                    # once (as Go's server does), or it waits out its 10 s TLS handshake timeout per pull.
                    writer.write(b"HTTP/1.0 400 Bad Request\r\n\r\nthe lab cache speaks plain HTTP\n")
                    return
                head = first + await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
                return
            m = REQUEST.match(head)
            if not m:
                self.stats["refused"] += 1
                await _answer(writer, 405, "the lab cache serves only GET/HEAD /v2/... (pulls)")
                return
            path = m.group(2).decode("ascii")
            digest = blob_digest(path) if m.group(1) == b"GET" else None  # a HEAD stores nothing: relayed
            if digest is None:
                self.stats["relayed"] += 1
                await self.relay(head, writer)
                return
            await self.blob(head, path, digest, writer)
        finally:
            self.connections -= 1
            await _close(writer)

    async def blob(self, head: bytes, path: str, digest: str, writer) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEADER_WAIT
        while digest not in self.done:
            event = self.inflight.get(digest)
            if event is None:
                event = self.inflight[digest] = asyncio.Event()
                self.stats["led"] += 1
                try:
                    if await self.prime(head, digest, writer):
                        self.done.add(digest)
                        await self.redirect(head, path, writer)
                finally:
                    del self.inflight[digest]
                    event.set()
                return
            try:
                await asyncio.wait_for(event.wait(), max(1.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                break  # the leader is stuck: fetch ourselves rather than wait forever
        if digest in self.done:
            await self.redirect(head, path, writer)
        else:
            self.stats["relayed"] += 1
            await self.relay(head, writer)

    async def prime(self, head: bytes, digest: str, writer) -> bool:
        """Make the registry fetch *digest* once and store it; True when it is stored.

        The registry answers a miss by fetching the blob twice (one copy to
        store, one streamed to the client: 2 upstream GETs measured for one
        request), so the leader reads only the answer's head and hangs up:
        the store goes on, the second copy stops.  Any other answer than 200
        (unknown blob, upstream down) goes to the client as it is."""
        try:
            br, bw = await asyncio.wait_for(asyncio.open_connection(*self.backend), 10)
        except (OSError, asyncio.TimeoutError):
            await _answer(writer, 502, BACKEND_DOWN)
            return False
        try:
            bw.write(_close_head(head))
            await bw.drain()
            rhead = await asyncio.wait_for(br.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
            if int(rhead.split(b" ", 2)[1]) != 200:
                writer.write(rhead)
                while data := await asyncio.wait_for(br.read(CHUNK), IDLE_TIMEOUT):
                    writer.write(data)
                await writer.drain()
                return False
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError,
                ValueError, IndexError):
            await _answer(writer, 502, BACKEND_DOWN)
            return False
        finally:
            await _close(bw)
        if await self.stored(digest, LEADER_WAIT):
            return True
        await _answer(writer, 502, "the lab cache could not store this layer in time; retry")
        return False

    async def stored(self, digest: str, wait: float) -> bool:
        """Wait (bounded) until the registry has committed *digest* to its storage.

        The registry finishes streaming to the client before it moves the blob
        into place; a waiter sent to it in between would be a second miss
        (measured: 6 upstream fetches instead of 1 without this wait)."""
        if not self.storage:
            return True
        hexd = digest.split(":", 1)[1]
        path = os.path.join(self.storage, "docker/registry/v2/blobs/sha256", hexd[:2], hexd, "data")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while loop.time() < deadline:
            if os.path.isfile(path):
                return True
            await asyncio.sleep(0.1)
        return False

    async def redirect(self, head: bytes, path: str, writer) -> None:
        m = HOST_HEADER.search(head)
        host = m.group(1).decode("ascii") if m else self.backend[0]
        self.stats["redirected"] += 1
        location = f"http://{host}:{self.backend[1]}{path}"
        writer.write((f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\n"
                      "Docker-Distribution-Api-Version: registry/2.0\r\nConnection: close\r\n\r\n").encode())
        await writer.drain()

    async def relay(self, head: bytes, writer) -> int:
        """Send *head* (Connection: close) to the registry and stream its answer; its status, 0 if none.

        200 counts only when the whole body arrived (Content-Length reached, or the backend closed)."""
        try:
            br, bw = await asyncio.wait_for(asyncio.open_connection(*self.backend), 10)
        except (OSError, asyncio.TimeoutError):
            await _answer(writer, 502, BACKEND_DOWN)
            return 0
        try:
            bw.write(_close_head(head))
            await bw.drain()
            rhead = await asyncio.wait_for(br.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
            status = int(rhead.split(b" ", 2)[1])
            length = _content_length(rhead)
            writer.write(rhead)
            sent = 0
            while (length is None or sent < length) and not head.startswith(b"HEAD"):
                data = await asyncio.wait_for(br.read(CHUNK), IDLE_TIMEOUT)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
                sent += len(data)
            await writer.drain()
            complete = head.startswith(b"HEAD") or length is None or sent >= length
            return status if complete else 0
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError,
                ValueError, IndexError):
            return 0
        finally:
            await _close(bw)


def _close_head(head: bytes) -> bytes:
    lines = [l for l in head[:-4].split(b"\r\n") if not l.lower().startswith((b"connection:", b"keep-alive:"))]
    return b"\r\n".join(lines + [b"Connection: close"]) + b"\r\n\r\n"


def _content_length(head: bytes) -> Optional[int]:
    m = re.search(rb"\r\ncontent-length:[ \t]*([0-9]{1,15})[ \t]*\r\n", head, re.I)
    return int(m.group(1)) if m else None


async def _answer(writer, code: int, message: str) -> None:
    body = ('{"errors":[{"code":"UNAVAILABLE","message":%s}]}' % _json_str(message)).encode()
    reason = {405: "Method Not Allowed", 502: "Bad Gateway", 503: "Service Unavailable"}.get(code, "Error")
    try:
        writer.write(f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                     "Connection: close\r\n\r\n".encode() + body)
        await writer.drain()
    except ConnectionError:
        pass


def _json_str(s: str) -> str:
    import json
    return json.dumps(s)


async def _close(writer) -> None:
    try:
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 5)
    except (ConnectionError, OSError, asyncio.TimeoutError, RuntimeError):
        pass


def parse_addr(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if host not in ("127.0.0.1", "localhost") or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r}: give 127.0.0.1:PORT (the lab cache listens on loopback only)")
    return "127.0.0.1", int(port)


async def serve(listen: tuple[str, int], backend: tuple[str, int], storage: Optional[str] = None) -> None:
    front = Front(backend, storage)
    server = await asyncio.start_server(front.handle, *listen, limit=MAX_HEAD, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"lab cache front on {listen[0]}:{listen[1]} -> registry {backend[0]}:{backend[1]}", flush=True)
    async with server:
        await stop.wait()
    print(f"lab cache front stopping: {front.stats}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rootless_gpu_spawner.host.singleflight")
    p.add_argument("--listen", type=parse_addr, required=True)
    p.add_argument("--backend", type=parse_addr, required=True)
    p.add_argument("--storage", help="the registry's storage rootdirectory (to see when a blob is committed)")
    a = p.parse_args(argv)
    asyncio.run(serve(a.listen, a.backend, a.storage))
    return 0


if __name__ == "__main__":
    sys.exit(main())
