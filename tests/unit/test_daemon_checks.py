"""Socket checks on every connection, on real unix sockets with real listeners (as root)."""

import os
import socket

import pytest

from rootless_gpu_spawner.answers import is_rootless
from rootless_gpu_spawner.daemon import (
    DaemonNotRunning,
    PeerMismatch,
    UnsafeSocket,
    render_docker_host,
    socket_path,
    socket_target,
)
from rootless_gpu_spawner.transport import SocketTarget

from peer_servers import NOBODY, listening_as

ALICE = 54321


@pytest.fixture(autouse=True)
def _root():
    assert os.geteuid() == 0, "these checks run as root, like the hub"


def test_socket_of_the_student_accepted(tmp_path):
    path = str(tmp_path / "docker.sock")
    with listening_as(path, NOBODY):
        SocketTarget(path, NOBODY, "alice").open(5).close()


def test_missing_socket_is_not_running(tmp_path):
    with pytest.raises(DaemonNotRunning) as info:
        SocketTarget(str(tmp_path / "docker.sock"), ALICE, "alice").open(5)
    msg = str(info.value)
    assert "rootless Docker is not running for alice" in msg
    assert str(tmp_path / "docker.sock") in msg and "bootstrap" in msg


def test_stale_socket_is_not_running(tmp_path):
    path = str(tmp_path / "docker.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)  # bound, nobody listens: what a killed daemon leaves
    os.chown(path, ALICE, ALICE)
    try:
        with pytest.raises(DaemonNotRunning, match="left over"):
            SocketTarget(path, ALICE, "alice").open(5)
    finally:
        s.close()


def test_socket_owned_by_another_uid_refused(tmp_path):
    path = str(tmp_path / "docker.sock")
    with listening_as(path, NOBODY):
        with pytest.raises(UnsafeSocket) as info:
            SocketTarget(path, ALICE, "alice").open(5)
    assert f"owned by uid {NOBODY}" in str(info.value) and "alice" in str(info.value)


def test_symlink_never_followed(tmp_path):
    real = str(tmp_path / "bob.sock")
    link = tmp_path / "docker.sock"
    with listening_as(real, NOBODY):
        link.symlink_to(real)
        with pytest.raises(UnsafeSocket, match="symbolic link"):
            SocketTarget(str(link), NOBODY, "alice").open(5)


def test_peer_of_another_uid_refused_though_file_is_the_students(tmp_path):
    # The file is chowned to the student, but root listens: the relay / rootful case.
    path = str(tmp_path / "docker.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()
    os.chown(path, NOBODY, NOBODY)
    try:
        with pytest.raises(PeerMismatch) as info:
            SocketTarget(path, NOBODY, "alice").open(5)
    finally:
        server.close()
    assert "served by uid 0 (root)" in str(info.value) and "not by alice" in str(info.value)


def test_not_a_socket_refused(tmp_path):
    f = tmp_path / "docker.sock"
    f.write_text("x")
    os.chown(f, ALICE, ALICE)
    with pytest.raises(UnsafeSocket, match="not a socket"):
        SocketTarget(str(f), ALICE, "alice").open(5)


def test_render_and_parse():
    url = render_docker_host("unix:///run/user/{uid}/docker.sock", 1001, "alice", "/home/alice")
    assert url == "unix:///run/user/1001/docker.sock"
    assert socket_path(url) == "/run/user/1001/docker.sock"


def test_tcp_daemons_cannot_be_verified():
    assert socket_path("tcp://127.0.0.1:2375") is None
    with pytest.raises(ValueError, match="cannot prove whose"):
        socket_target("tcp://127.0.0.1:2375", 1001, "alice")


def test_unknown_scheme_refused():
    with pytest.raises(ValueError):
        socket_path("ssh://host")


def test_unknown_template_field():
    with pytest.raises(ValueError, match="unknown field"):
        render_docker_host("unix:///run/{nope}/docker.sock", 1, "a", "/h")


@pytest.mark.parametrize(
    "info, expected",
    [
        ({"SecurityOptions": ["name=seccomp,profile=default", "name=rootless"]}, True),
        ({"SecurityOptions": ["name=apparmor", "name=seccomp,profile=default"]}, False),
        ({}, False),
        ({"SecurityOptions": None}, False),
    ],
)
def test_is_rootless(info, expected):
    assert is_rootless(info) is expected
