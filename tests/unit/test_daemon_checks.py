"""Socket ownership checks and rootless detection, on real unix sockets."""

import os
import socket

import pytest

from rootless_gpu_spawner.daemonctl import is_rootless
from rootless_gpu_spawner.daemon import (
    DaemonError,
    render_docker_host,
    socket_path,
    verify_socket,
)

ALICE, BOB = 54321, 54322


@pytest.fixture
def sockets(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("chown of a socket to another uid needs root (the hub runs as root)")
    made = {}
    for name, uid in (("alice", ALICE), ("bob", BOB)):
        path = tmp_path / f"{name}.sock"
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        os.chown(path, uid, uid)
        made[name] = (s, str(path))
    yield {k: v[1] for k, v in made.items()}
    for s, _ in made.values():
        s.close()


def test_own_socket_accepted(sockets):
    assert verify_socket(sockets["alice"], ALICE, "alice") == sockets["alice"]


def test_missing_socket(tmp_path):
    with pytest.raises(DaemonError) as info:
        verify_socket(str(tmp_path / "docker.sock"), ALICE, "alice")
    msg = str(info.value)
    assert "rootless Docker is not running for alice" in msg
    assert str(tmp_path / "docker.sock") in msg and "bootstrap" in msg


def test_socket_owned_by_other_uid(sockets):
    with pytest.raises(DaemonError) as info:
        verify_socket(sockets["bob"], ALICE, "alice")
    msg = str(info.value)
    assert "owned by" in msg and f"uid {BOB}" in msg and "not by alice" in msg


def test_symlink_to_other_students_socket(sockets, tmp_path):
    link = tmp_path / "alice-link.sock"
    link.symlink_to(sockets["bob"])
    with pytest.raises(DaemonError) as info:
        verify_socket(str(link), ALICE, "alice")
    assert "->" in str(info.value) and sockets["bob"] in str(info.value)


def test_symlink_to_own_socket_resolves(sockets, tmp_path):
    link = tmp_path / "link.sock"
    link.symlink_to(sockets["alice"])
    assert verify_socket(str(link), ALICE, "alice") == sockets["alice"]


def test_regular_file_is_not_a_socket(tmp_path):
    f = tmp_path / "docker.sock"
    f.write_text("")
    with pytest.raises(DaemonError, match="not a socket"):
        verify_socket(str(f), os.getuid(), "alice")


def test_render_and_parse_docker_host():
    url = render_docker_host("unix:///run/user/{uid}/docker.sock", 1001, "alice", "/home/alice/")
    assert url == "unix:///run/user/1001/docker.sock"
    assert socket_path(url) == "/run/user/1001/docker.sock"
    assert render_docker_host("unix://{home}/.docker/run/docker.sock", 1, "a", "/home/a/") == (
        "unix:///home/a/.docker/run/docker.sock"
    )
    assert socket_path("tcp://127.0.0.1:2375") is None
    with pytest.raises(ValueError, match="fields"):
        render_docker_host("unix:///run/{user}/docker.sock", 1, "a", "/h")
    with pytest.raises(ValueError, match="only unix"):
        socket_path("ssh://host")


def test_is_rootless():
    assert is_rootless({"SecurityOptions": ["name=seccomp,profile=default", "name=rootless"]})
    assert not is_rootless({"SecurityOptions": ["name=seccomp,profile=default"]})
    assert not is_rootless({"SecurityOptions": None})
    assert not is_rootless({})
