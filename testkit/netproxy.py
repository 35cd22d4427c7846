"""A throttled, counting TCP proxy on loopback (test and bench helper, never shipped).

``CountingProxy(target_port, rate_bps)`` listens on a free 127.0.0.1 port and
relays every connection to 127.0.0.1:target_port.  The server-to-client
direction is throttled by one token bucket shared by all connections (the
"upstream link" of a lab), and the proxy counts what crosses it:

* ``bytes_down``: bytes sent from the target to the clients (upstream bytes);
* ``bytes_up``: bytes the clients sent to the target;
* ``requests``: every HTTP request line a client sent (method, path), in order,
  so a test counts blob fetches: ``proxy.blob_fetches()`` -> {digest: count}.

Request lines are found by scanning the client-to-server bytes for
``METHOD /path HTTP/1.x``: good for the registry clients here (GET/HEAD
without bodies); not an HTTP parser.

It runs its own asyncio loop in a daemon thread (``start()``/``stop()``, or a
``with`` block), so a synchronous test or a bench process uses it directly;
``python -m testkit.netproxy TARGET_PORT RATE_MBIT`` runs one in the
foreground and prints its port.
"""

from __future__ import annotations

import asyncio
import collections
import re
import sys
import threading
import time
from typing import Optional

REQUEST_LINE = re.compile(rb"(GET|HEAD|POST|PUT|PATCH|DELETE) (/\S{0,2000}) HTTP/1\.[01]\r\n")
BLOB_PATH = re.compile(r"^/v2/.+/blobs/(sha256:[0-9a-f]{64})$")
CHUNK = 64 * 1024


class _Bucket:
    """A token bucket of *rate* bytes/s shared by every connection (burst: 1/20 s of traffic)."""

    def __init__(self, rate: float):
        self.rate = rate
        self.burst = max(CHUNK, rate / 20)
        self.tokens = self.burst
        self.stamp = time.monotonic()

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= n:
                self.tokens -= n
                return
            await asyncio.sleep(min(0.05, (n - self.tokens) / self.rate))


class CountingProxy:
    def __init__(self, target_port: int, rate_bps: float = 0.0, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.rate = rate_bps
        self.port: Optional[int] = None
        self.bytes_down = 0
        self.bytes_up = 0
        self.connections = 0
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._server = None

    # ------------------------------------------------------------ counting

    def blob_fetches(self, method: str = "GET") -> dict[str, int]:
        out: dict[str, int] = collections.Counter()
        with self._lock:
            for m, path in self.requests:
                hit = BLOB_PATH.match(path.split("?")[0])
                if m == method and hit:
                    out[hit.group(1)] += 1
        return dict(out)

    def reset(self) -> None:
        with self._lock:
            self.bytes_down = self.bytes_up = 0
            self.requests.clear()
            self.connections = 0

    # ------------------------------------------------------------ relay

    async def _pipe_up(self, reader, writer) -> None:
        tail = b""
        try:
            while data := await reader.read(CHUNK):
                scan = tail + data
                with self._lock:
                    for m in REQUEST_LINE.finditer(scan):
                        if m.end() > len(tail):  # not already counted in the previous chunk
                            self.requests.append((m.group(1).decode(), m.group(2).decode("latin-1")))
                    self.bytes_up += len(data)
                tail = scan[-2100:]
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            _close(writer)

    async def _pipe_down(self, reader, writer, bucket: _Bucket) -> None:
        try:
            while data := await reader.read(CHUNK):
                await bucket.take(len(data))
                with self._lock:
                    self.bytes_down += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            _close(writer)

    async def _handle(self, creader, cwriter) -> None:
        with self._lock:
            self.connections += 1
        try:
            ureader, uwriter = await asyncio.open_connection(*self.target)
        except OSError:
            _close(cwriter)
            return
        await asyncio.gather(self._pipe_up(creader, uwriter), self._pipe_down(ureader, cwriter, self._bucket))

    async def _serve(self) -> None:
        self._bucket = _Bucket(self.rate)
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        async with self._server:
            await self._server.serve_forever()

    def start(self) -> "CountingProxy":
        def run():
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(self._serve())
            except asyncio.CancelledError:
                pass
            finally:
                pending = asyncio.all_tasks(self._loop)
                for t in pending:
                    t.cancel()
                self._loop.run_until_complete(_drain(pending))
                self._loop.close()

        self._thread = threading.Thread(target=run, name="counting-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("counting proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop and self._server:
            def shut():
                self._server.close()
                for t in asyncio.all_tasks(self._loop):
                    t.cancel()
            self._loop.call_soon_threadsafe(shut)
        if self._thread:
            self._thread.join(10)

    def __enter__(self) -> "CountingProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


async def _drain(tasks) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)


def _close(writer) -> None:
    try:
        writer.close()
    except (ConnectionError, OSError, RuntimeError):
        pass


def main(argv=None) -> int:
    argv = argv or sys.argv[1:]
    proxy = CountingProxy(int(argv[0]), float(argv[1]) * 1e6 / 8 if len(argv) > 1 else 0).start()
    print(proxy.port, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
