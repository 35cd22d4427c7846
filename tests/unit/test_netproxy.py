"""testkit.netproxy on loopback: bytes pass unchanged, are counted per direction and per request, and stop() ends it."""

import socket
import threading

from testkit.netproxy import CountingProxy


def _server(payload: bytes):
    """Reads one request line, answers ``payload``, closes; returns (port, thread)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve():
        conn, _ = listener.accept()
        with conn:
            conn.makefile("rb").readline()
            conn.sendall(payload)
        listener.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return listener.getsockname()[1], t


def test_bytes_pass_and_are_counted():
    payload = bytes(range(256)) * 4096  # 1 MiB
    port, server = _server(payload)
    proxy = CountingProxy(port, 50e6).start()
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as c:
            c.sendall(b"GET /v2/x/blobs/sha256:" + b"a" * 64 + b" HTTP/1.1\r\n\r\n")
            got = b""
            while len(got) < len(payload):
                chunk = c.recv(65536)
                if not chunk:
                    break
                got += chunk
        assert got == payload
        server.join(timeout=10)
        for _ in range(200):  # the count follows the send by a moment (bounded wait, not a timing assertion)
            if proxy.bytes_down == len(payload):
                break
            threading.Event().wait(0.01)
        assert proxy.bytes_down == len(payload) and proxy.bytes_up == 100 and proxy.connections == 1
        assert proxy.blob_fetches() == {"sha256:" + "a" * 64: 1}
        proxy.reset()
        assert proxy.bytes_down == proxy.bytes_up == 0
    finally:
        proxy.stop()
    assert not proxy._thread.is_alive()
