"""Pull progress aggregation, the progress feed, and mirror health (pure logic and loopback)."""

import asyncio
import socket

from rootless_gpu_spawner.hub.mirrors import MirrorHealth, mirror_address, reachable
from rootless_gpu_spawner.hub.progress import ProgressFeed, human_bytes, pull_message
from rootless_gpu_spawner.hub.pulls import PullProgress


def test_pull_progress_sums_layers():
    p = PullProgress()
    p.feed({"status": "Pulling from library/python", "id": "3.11"})
    p.feed({"status": "Pulling fs layer", "id": "a"})
    p.feed({"status": "Pulling fs layer", "id": "b"})
    p.feed({"status": "Already exists", "id": "c"})
    assert p.fraction == 0  # nothing of the two layers to fetch yet; "c" was already there
    p.feed({"status": "Downloading", "id": "a", "progressDetail": {"current": 50, "total": 100}})
    p.feed({"status": "Downloading", "id": "b", "progressDetail": {"current": 0, "total": 300}})
    assert (p.done_bytes, p.total_bytes) == (50, 400)
    assert p.fraction == 0.25
    p.feed({"status": "Download complete", "id": "a"})
    p.feed({"status": "Downloading", "id": "b", "progressDetail": {"current": 150, "total": 300}})
    assert (p.done_bytes, p.total_bytes) == (250, 400)
    p.feed({"status": "Pull complete", "id": "b"})
    assert p.done_bytes == p.total_bytes == 400 and p.fraction == 1
    assert not p.feed({"status": "Digest: sha256:abc"})


def test_messages():
    assert human_bytes(1.2e9) == "1.2 GB" and human_bytes(3_400_000) == "3.4 MB" and human_bytes(12) == "12 B"
    assert pull_message("pytorch/pytorch:2", "mirror mirror.example", 1.2e9, 3.4e9) == (
        "pulling pytorch/pytorch:2 from mirror mirror.example: 1.2 GB of 3.4 GB"
    )
    assert pull_message("python:3", "the lab cache", 0, 0) == "pulling python:3 from the lab cache"


async def test_progress_feed_replays_and_follows():
    feed = ProgressFeed()
    feed.emit(10, "one")
    seen = []

    async def reader():
        async for event in feed.follow():
            seen.append(event)

    task = asyncio.ensure_future(reader())
    await asyncio.sleep(0)
    feed.emit(None, "two")
    await asyncio.get_running_loop().run_in_executor(None, feed.emit_threadsafe, 50, "three")
    await asyncio.get_running_loop().run_in_executor(None, feed.emit_threadsafe, 52, "throttled")
    await asyncio.sleep(0.01)
    feed.close()
    await asyncio.wait_for(task, 1)
    assert seen == [{"progress": 10, "message": "one"}, {"message": "two"}, {"progress": 50, "message": "three"}]


def test_mirror_address():
    assert mirror_address("docker.mirrors.ustc.edu.cn", "10.0.2.2") == ("docker.mirrors.ustc.edu.cn", 443)
    assert mirror_address("10.0.2.2:5000", "10.0.2.2") == ("127.0.0.1", 5000)
    assert mirror_address("registry.lab:8443/dockerhub", "10.0.2.2") == ("registry.lab", 8443)
    assert mirror_address("[::1]:5000", "10.0.2.2") == ("::1", 5000)


def test_mirror_cooldown():
    now = [100.0]
    h = MirrorHealth(clock=lambda: now[0])
    assert h.usable("m")
    h.failed("m", 300)
    assert not h.usable("m") and h.cooling_down() == {"m": 300}
    now[0] += 299
    assert not h.usable("m")
    now[0] += 2
    assert h.usable("m")
    h.failed("m", 0)  # cool-down off
    assert h.usable("m")


async def test_refused_port_is_not_reachable():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert not await reachable("127.0.0.1", free, 2)


async def test_silent_close_is_not_a_registry():
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert not await reachable("127.0.0.1", port, 2)
    finally:
        server.close()


async def test_hung_mirror_is_not_reachable():
    """Accepts the connection, never answers (the bench's hung mirror): dead within the timeout."""
    async def hang(reader, writer):
        await asyncio.sleep(10)
        writer.close()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert not await reachable("127.0.0.1", port, 0.5)
        assert loop.time() - started < 2  # bounded by the probe timeout, not the daemon's 10 s
    finally:
        server.close()


async def test_plain_http_registry_is_reachable():
    """A registry without TLS (the testbed's) answers the plain-HTTP probe."""
    async def http(reader, writer):
        await reader.read(1)  # TLS ClientHello or HTTP request: answer plain HTTP either way
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await reachable("127.0.0.1", port, 2)
    finally:
        server.close()
