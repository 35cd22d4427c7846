"""The peer-verified, bounded connection: each bound reproduced with a real misbehaving server."""

import asyncio
import os
import threading
import time

import pytest

from rootless_gpu_spawner.daemon import (
    AnswerTooLarge,
    DaemonConnection,
    DaemonPool,
    DeadlineExceeded,
    PeerMismatch,
    THREADS_PER_DAEMON,
    UnsafeSocket,
    UnusableAnswer,
)
from rootless_gpu_spawner.transport import MAX_ANSWER_BYTES, SocketTarget

from peer_servers import NOBODY, VERSION, docker_like, listening_as, respond


def close_after_each(conn, line):
    """Answer like a daemon, then close: every next call needs a new connection (and a new check)."""
    docker_like(conn, line)
    return "close"


def _target(tmp_path, name="docker.sock"):
    return SocketTarget(str(tmp_path / name), NOBODY, "alice")


async def _conn(target, timeout=5.0):
    pool = DaemonPool()
    return await pool.connect(target, "unix://" + target.path, timeout, ("alice", "")), pool


async def test_calls_work_and_reuse_threads(tmp_path):
    target = _target(tmp_path)
    with listening_as(target.path, NOBODY):
        conn, _ = await _conn(target)
        for _ in range(10):
            assert (await conn.call("version"))["ApiVersion"] == "1.41"
        assert conn.api_version == "1.41"
        assert len(conn.executor._threads) <= THREADS_PER_DAEMON


async def test_socket_swapped_between_connections_is_caught(tmp_path):
    """The fake answers, closes each connection, and its socket becomes another uid's."""

    target = _target(tmp_path)
    other = str(tmp_path / "other.sock")
    with listening_as(target.path, NOBODY, close_after_each):
        conn, _ = await _conn(target)
        await conn.call("info")
        # Swap: a socket of another uid (root here) renamed over the student's path.
        import socket

        rogue = socket.socket(socket.AF_UNIX)
        rogue.bind(other)
        rogue.listen()
        os.chown(other, NOBODY, NOBODY)  # the file even looks like the student's
        os.rename(other, target.path)
        try:
            with pytest.raises(PeerMismatch, match="served by uid 0"):
                await conn.call("info")
        finally:
            rogue.close()


async def test_symlink_swap_caught(tmp_path):
    target = _target(tmp_path)
    real = str(tmp_path / "real.sock")
    with listening_as(real, NOBODY, close_after_each):
        os.symlink(real, target.path)
        with pytest.raises(UnsafeSocket, match="symbolic link"):
            await _conn(target)


async def test_oversized_answer_cut(tmp_path):
    size = MAX_ANSWER_BYTES * 4

    def huge(conn, line):
        if "/version" in line:
            return docker_like(conn, line)
        respond(conn, body=b"", length=size)
        chunk = b" " * 65536
        for _ in range(size // len(chunk)):
            conn.sendall(chunk)
        return "close"

    target = _target(tmp_path)
    with listening_as(target.path, NOBODY, huge):
        conn, _ = await _conn(target)
        with pytest.raises(AnswerTooLarge, match="larger than 16 MiB"):
            await conn.call("info")


async def test_drip_cut_at_the_deadline(tmp_path):
    def drip(conn, line):
        if "/version" in line:
            return docker_like(conn, line)
        respond(conn, body=b"", length=1000)
        for _ in range(1000):
            conn.sendall(b" ")
            time.sleep(0.2)  # every read succeeds well within the per-read timeout
        return "close"

    target = _target(tmp_path)
    with listening_as(target.path, NOBODY, drip):
        conn, _ = await _conn(target, timeout=2.0)
        with pytest.raises(DeadlineExceeded, match="within 2 s"):
            await conn.call("info")


@pytest.mark.parametrize(
    "body",
    [b"[" * 100000 + b"]" * 100000, b"\xff\xfe not json", b'{"truncated": ', b"[1, 2, 3]"],
    ids=["nested", "invalid-utf8", "truncated", "wrong-type"],
)
async def test_malformed_answers_are_typed(tmp_path, body):
    def malformed(conn, line):
        if "/version" in line:
            return docker_like(conn, line)
        respond(conn, status=500 if body == b"[1, 2, 3]" else 200, body=body)

    target = _target(tmp_path)
    with listening_as(target.path, NOBODY, malformed):
        conn, _ = await _conn(target)
        with pytest.raises(UnusableAnswer, match="cannot use"):
            await conn.call("info")


async def test_bad_version_answer(tmp_path):
    def bad_version(conn, line):
        respond(conn, body={**VERSION, "ApiVersion": "../../x"})

    target = _target(tmp_path)
    with listening_as(target.path, NOBODY, bad_version):
        with pytest.raises(UnusableAnswer, match="ApiVersion"):
            await _conn(target)


async def test_threads_bounded_after_failures(tmp_path):
    """Failing calls, releases and reconnects never grow one daemon's threads past the fixed set."""

    def hang(conn, line):
        if "/version" in line:
            return docker_like(conn, line)
        time.sleep(30)

    target = _target(tmp_path)
    before = threading.active_count()
    with listening_as(target.path, NOBODY, hang):
        pool = DaemonPool()
        for round_ in range(3):
            conn = await pool.connect(target, "unix://" + target.path, 1.0, ("alice", str(round_)))
            results = await asyncio.gather(*[conn.call("info") for _ in range(6)], return_exceptions=True)
            assert all(isinstance(r, DeadlineExceeded) for r in results)
            pool.release(target, ("alice", str(round_)))
    assert threading.active_count() - before <= THREADS_PER_DAEMON


async def test_no_root_credentials_or_proxy_sent(tmp_path, monkeypatch):
    """Root's ~/.docker/config.json must never reach a student's daemon."""
    seen = []

    def record(conn, line):
        seen.append(line)
        docker_like(conn, line)

    home = tmp_path / "roothome"
    (home / ".docker").mkdir(parents=True)
    (home / ".docker" / "config.json").write_text(
        '{"auths": {"https://index.docker.io/v1/": {"auth": "cm9vdDpzZWNyZXQ="}},'
        ' "proxies": {"default": {"httpProxy": "http://root-proxy:3128"}}}'
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(home / ".docker"))
    target = _target(tmp_path)
    with listening_as(target.path, NOBODY, record):
        conn, _ = await _conn(target)
        assert conn.client._auth_configs.auths == {}
        assert not conn.client._proxy_configs
        assert isinstance(conn, DaemonConnection)
