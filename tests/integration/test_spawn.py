"""End to end: a real JupyterHub spawns JupyterLab on each student's own rootless daemon.

Bob's daemon is a *simulated GPU host* (a stub nvidia-container-runtime-hook,
see TESTBED.md): it proves the GPU request path, not CUDA.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor

import docker

from .conftest import containers_of

ALICE, BOB, CAROL = "rgstest-alice", "rgstest-bob", "rgstest-carol"


def container_env(client, hub_user):
    """The environment of the server process (PID 1) in the user's container.

    Read from /proc/1/environ, not `docker exec env`: the daemon's GPU driver
    adds NVIDIA_VISIBLE_DEVICES to the container's process spec only.
    """
    (container,) = containers_of(client, hub_user)
    result = container.exec_run(["cat", "/proc/1/environ"])
    assert result.exit_code == 0, result.output
    entries = result.output.decode().split("\0")
    return dict(e.split("=", 1) for e in entries if "=" in e)


def spawn_message(hub, name, response):
    """The error a student would see: the API's answer, else the progress stream's last event."""
    text = response.text
    if response.status_code < 400:
        events = hub.progress_events(name, timeout=120)
        text = events[-1].get("message", "") if events else ""
    return text


def test_two_students_spawn_at_once_on_their_own_daemons(hub, testbed, daemons):
    # Alice has no GPU driver, so she asks for none; Bob's simulated GPU host gets GPUs 1 and 3.
    options = {ALICE: {"gpus": 0}, BOB: {"gpus": [1, 3]}}
    with ThreadPoolExecutor(2) as pool:
        responses = dict(zip(options, pool.map(lambda n: hub.spawn(n, options[n]), options)))
    for name, r in responses.items():
        assert r.status_code in (201, 202), (name, r.status_code, r.text)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(hub.wait_ready, options))

    # Each container exists only on its owner's daemon.
    for owner in (ALICE, BOB):
        other = BOB if owner == ALICE else ALICE
        mine = containers_of(daemons[owner])
        assert [c.labels["org.rootless-gpu-spawner.hub-user"] for c in mine] == [owner]
        assert containers_of(daemons[owner], other) == []
        (c,) = mine
        assert c.status == "running"
        port = c.attrs["HostConfig"]["PortBindings"]["8888/tcp"][0]
        published = c.attrs["NetworkSettings"]["Ports"]["8888/tcp"][0]
        # On loopback, on the port the spawner chose on the host (not the daemon's counter).
        assert port["HostIp"] == published["HostIp"] == "127.0.0.1"
        assert int(port["HostPort"]) == int(published["HostPort"]) > 1024

    # The server answers through the hub's proxy.
    for name in options:
        r = hub.user_get(name, "/api/status")
        assert r.status_code == 200, (name, r.status_code, r.text[:300])

    # The container reaches the hub through the slirp4netns gateway, not loopback.
    env = container_env(daemons[ALICE], ALICE)
    assert env["JUPYTERHUB_API_URL"].startswith(f"http://{'10.0.2.2'}:{hub.hub_port}/")
    assert "NVIDIA_VISIBLE_DEVICES" not in env

    # GPUs as requested (simulated GPU host).
    assert container_env(daemons[BOB], BOB)["NVIDIA_VISIBLE_DEVICES"] == "1,3"


def test_file_written_in_notebook_is_the_students(hub, testbed):
    content = f"written at {time.time()}\n"
    for name in (ALICE, BOB):
        r = hub.user_put(
            name, "/api/contents/hello-from-test.txt",
            json={"type": "file", "format": "text", "content": content},
        )
        assert r.status_code in (200, 201), r.text
        user = testbed["users"][name]
        path = os.path.join(user["home"], "workspace", "hello-from-test.txt")
        st = os.stat(path)
        assert (st.st_uid, st.st_gid) == (user["uid"], user["gid"])
        with open(path) as f:
            assert f.read() == content


def test_stop_removes_the_server_and_keeps_the_files(hub, testbed, daemons):
    path = os.path.join(testbed["users"][ALICE]["home"], "workspace", "hello-from-test.txt")
    before = hashlib.sha256(open(path, "rb").read()).hexdigest()
    for name in (ALICE, BOB):
        hub.stop_server(name)
        assert containers_of(daemons[name], name) == []
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == before


def test_docker_hub_short_name_pulled_through_mirror_and_tagged(hub, testbed, daemons):
    client = daemons[ALICE]
    short = testbed["mirror_image_short"]  # held in the local registry as library/<name>
    mirror_name = f"{testbed['registry_from_daemon']}/library/{short}"
    for name in (short, mirror_name):
        try:
            client.images.remove(name, noprune=False)
        except docker.errors.ImageNotFound:
            pass
    r = hub.spawn(ALICE, {"image": short, "gpus": 0})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(ALICE)
    image = client.images.get(short)  # tagged with its canonical (Docker Hub) name
    assert short in image.tags
    assert not any(t.startswith(testbed["registry_from_daemon"]) for t in image.tags)
    (c,) = containers_of(client, ALICE)
    assert c.attrs["Config"]["Image"] == short
    assert "pulled from " + mirror_name in hub.log_tail(400)
    hub.stop_server(ALICE)


def test_no_gpu_driver_gives_clear_message(hub, daemons):
    # All GPUs (the default) on a daemon without the NVIDIA hook. Explicit, because the
    # hub reuses the previous user_options when a spawn sends none.
    r = hub.spawn(ALICE, {"gpus": "all"})
    message = spawn_message(hub, ALICE, r)
    assert "no NVIDIA GPU driver" in message and "no-cgroups = true" in message, message
    assert containers_of(daemons[ALICE], ALICE) == []
    assert not hub.server(ALICE)


def test_missing_socket_is_refused_clearly(hub, testbed, daemons):
    carol = testbed["users"][CAROL]
    sock = f"/run/user/{carol['uid']}/docker.sock"
    assert not os.path.lexists(sock)
    r = hub.spawn(CAROL, {"gpus": 0})
    message = spawn_message(hub, CAROL, r)
    assert f"rootless Docker is not running for {CAROL}" in message, message
    assert sock in message
    for client in daemons.values():
        assert containers_of(client, CAROL) == []
    assert not hub.server(CAROL)


def test_socket_owned_by_another_uid_is_refused(hub, testbed, daemons, carol_socket):
    # Carol's expected socket is a link to Alice's: never followed (O_NOFOLLOW on every connection).
    os.symlink(testbed["users"][ALICE]["docker_host"][len("unix://"):], carol_socket)
    r = hub.spawn(CAROL, {"gpus": 0})
    message = spawn_message(hub, CAROL, r)
    assert "is a symbolic link" in message and CAROL in message, message
    for client in daemons.values():
        assert containers_of(client, CAROL) == []
