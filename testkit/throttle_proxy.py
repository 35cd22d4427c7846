"""A bandwidth-limiting, byte-counting TCP proxy on loopback, for tests and benchmarks.

Put it in front of a registry to play a slow "upstream" and to count what
crosses it: ``bytes_down`` is what the server sent to clients (the bytes an
upstream registry would bill), ``bytes_up`` what clients sent.  The rate limit
applies to the server-to-client direction, shared by all connections (one
link, like a lab's uplink).  Threads only; ``stop()`` closes every connection
and joins every thread it started.
"""

from __future__ import annotations

import socket
import threading
import time

CHUNK = 64 * 1024


class _Bucket:
    """A token bucket shared by all connections: ``take(n)`` waits until n bytes may pass."""

    def __init__(self, rate: float | None):
        self.rate = rate
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def take(self, n: int, stopped: threading.Event) -> None:
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + n / self.rate
        delay = start - time.monotonic()
        if delay > 0:
            stopped.wait(delay)


class ThrottledProxy:
    """``127.0.0.1:port`` forwards to ``target``; ``rate`` bytes/s downstream (None: unlimited)."""

    def __init__(self, target: tuple[str, int], rate: float | None = None, host: str = "127.0.0.1"):
        self.target = target
        self._bucket = _Bucket(rate)
        self._lock = threading.Lock()
        self.bytes_down = 0
        self.bytes_up = 0
        self.connections = 0
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: set[socket.socket] = set()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def start(self) -> "ThrottledProxy":
        self._spawn(self._accept_loop)
        return self

    def reset(self) -> None:
        with self._lock:
            self.bytes_down = self.bytes_up = 0

    def _spawn(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.connections += 1
                self._sockets.update((client, server))
            self._spawn(self._pump, client, server, False)
            self._spawn(self._pump, server, client, True)

    def _pump(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        src.settimeout(0.5)
        try:
            while not self._stopped.is_set():
                try:
                    data = src.recv(CHUNK)
                except socket.timeout:
                    continue
                if not data:
                    break
                if downstream:
                    self._bucket.take(len(data), self._stopped)
                dst.sendall(data)
                with self._lock:
                    if downstream:
                        self.bytes_down += len(data)
                    else:
                        self.bytes_up += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for s in sockets:
            try:
                s.close()
            except OSError:
                pass
        for t in threads:
            t.join(timeout=5)
