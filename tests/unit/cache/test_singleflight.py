"""host/singleflight.py against a small asyncio backend that counts what reaches it.

The backend plays the registry: a blob GET "fetches from upstream" (counted),
streams the blob, and only then commits it to the storage directory, as
docker-registry does.  (The real registry behind the real front:
tests/integration/test_lab_cache.py.)"""

import asyncio
import os

import pytest

from rootless_gpu_spawner.host import singleflight

DIGEST = "sha256:" + "ab" * 32
BLOB = os.urandom(300_000)


class Backend:
    def __init__(self, storage, status=200):
        self.storage, self.status, self.gets = storage, status, 0

    async def handle(self, reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ")[1].decode()
        if "/blobs/" in path:
            self.gets += 1
            if self.status != 200:
                body = b'{"errors":[{"code":"BLOB_UNKNOWN"}]}'
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BLOB))
                for i in range(0, len(BLOB), 50_000):
                    writer.write(BLOB[i:i + 50_000])
                    await asyncio.sleep(0.01)
                d = os.path.join(self.storage, "docker/registry/v2/blobs/sha256", DIGEST[7:9], DIGEST[7:])
                await asyncio.sleep(0.1)  # committed after the stream ended
                os.makedirs(d, exist_ok=True)
                open(os.path.join(d, "data"), "wb").write(BLOB)
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()


async def _get(port, path, method="GET"):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"{method} {path} HTTP/1.1\r\nHost: 10.0.2.2:{port}\r\n\r\n".encode())
    await w.drain()
    data = await r.read()
    w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode(), body


async def _run(tmp_path, status=200, clients=16):
    backend = Backend(str(tmp_path), status)
    bserver = await asyncio.start_server(backend.handle, "127.0.0.1", 0)
    bport = bserver.sockets[0].getsockname()[1]
    front = singleflight.Front(("127.0.0.1", bport), str(tmp_path))
    fserver = await asyncio.start_server(front.handle, "127.0.0.1", 0, limit=singleflight.MAX_HEAD)
    fport = fserver.sockets[0].getsockname()[1]
    try:
        answers = await asyncio.gather(*[_get(fport, f"/v2/library/x/blobs/{DIGEST}") for _ in range(clients)])
        return backend, front, answers, fport, bport
    finally:
        fserver.close()
        bserver.close()


async def test_sixteen_concurrent_misses_reach_the_registry_once(tmp_path):
    backend, front, answers, fport, bport = await _run(tmp_path)
    assert backend.gets == 1
    assert front.stats["led"] == 1 and front.stats["redirected"] == 16
    for head, body in answers:
        assert head.startswith("HTTP/1.1 307")
        assert f"Location: http://10.0.2.2:{bport}/v2/library/x/blobs/{DIGEST}" in head


async def test_a_failed_leader_passes_the_registrys_answer_and_stores_nothing(tmp_path):
    backend, front, answers, *_ = await _run(tmp_path, status=404, clients=3)
    assert all(head.startswith("HTTP/1.1 404") and b"BLOB_UNKNOWN" in body for head, body in answers)
    assert front.done == set() and backend.gets == 3  # each waiter asked again after the failure


async def test_pushes_and_odd_requests_are_refused(tmp_path):
    backend = Backend(str(tmp_path))
    bserver = await asyncio.start_server(backend.handle, "127.0.0.1", 0)
    front = singleflight.Front(("127.0.0.1", bserver.sockets[0].getsockname()[1]), str(tmp_path))
    fserver = await asyncio.start_server(front.handle, "127.0.0.1", 0, limit=singleflight.MAX_HEAD)
    port = fserver.sockets[0].getsockname()[1]
    try:
        head, body = await _get(port, "/v2/library/x/blobs/uploads/", method="POST")
        assert head.startswith("HTTP/1.1 405") and b"only GET/HEAD" in body
        head, _ = await _get(port, "/etc/passwd")
        assert head.startswith("HTTP/1.1 405")
        # Docker's HTTPS attempt on an insecure registry: refused at once, not after a timeout.
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        await w.drain()
        assert (await asyncio.wait_for(r.read(), 2)).startswith(b"HTTP/1.0 400")
        w.close()
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /v2/ HTTP/1.1\r\nX: " + b"a" * (singleflight.MAX_HEAD + 10))
        await w.drain()
        assert await asyncio.wait_for(r.read(), 5) == b""  # an endless head: dropped
        w.close()
        head, body = await _get(port, "/v2/")
        assert head.startswith("HTTP/1.1 200") and body == b"{}"
    finally:
        fserver.close()
        bserver.close()
    assert backend.gets == 0


@pytest.mark.parametrize("path,want", [
    (f"/v2/library/python/blobs/{DIGEST}", DIGEST),
    (f"/v2/a/b/c/blobs/{DIGEST}?ns=docker.io", DIGEST),
    ("/v2/library/python/manifests/3.12", None),
    (f"/v2/../blobs/{DIGEST}", None),
])
def test_blob_paths(path, want):
    assert singleflight.blob_digest(path) == want


def test_it_listens_on_loopback_only():
    with pytest.raises(Exception, match="loopback only"):
        singleflight.parse_addr("0.0.0.0:5001")
