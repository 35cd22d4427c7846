"""Container request building and the hub URL rewrite (pure logic)."""

import pytest

from rootless_gpu_spawner.hub.container import (
    build_container_request,
    check_container_port,
    rewrite_hub_urls,
    server_args,
)
from rootless_gpu_spawner.hub.gpus import device_requests


@pytest.mark.parametrize(
    "url, expected",
    [
        ("http://127.0.0.1:8081/hub/api", "http://10.0.2.2:8081/hub/api"),
        ("http://localhost:8081/hub/api", "http://10.0.2.2:8081/hub/api"),
        ("http://[::1]:8081/hub/api", "http://10.0.2.2:8081/hub/api"),
        ("https://127.0.0.1/hub/api?x=1", "https://10.0.2.2/hub/api?x=1"),
        ("http://hub.lab.example:8081/hub/api", "http://hub.lab.example:8081/hub/api"),
        ("http://192.168.1.5:8081/hub/api", "http://192.168.1.5:8081/hub/api"),
    ],
)
def test_rewrite_hub_urls(url, expected):
    env = {
        "JUPYTERHUB_API_URL": url,
        "JUPYTERHUB_ACTIVITY_URL": url + "/users/a/activity",
        "JUPYTERHUB_SERVICE_URL": "http://0.0.0.0:8888/user/a/",
        "JUPYTERHUB_BASE_URL": "/",
    }
    out = rewrite_hub_urls(env, "10.0.2.2")
    assert out["JUPYTERHUB_API_URL"] == expected
    assert out["JUPYTERHUB_ACTIVITY_URL"] == expected + "/users/a/activity"
    # Only those two: where the server listens and everything else is untouched.
    assert out["JUPYTERHUB_SERVICE_URL"] == env["JUPYTERHUB_SERVICE_URL"]
    assert out["JUPYTERHUB_BASE_URL"] == "/"
    assert env["JUPYTERHUB_API_URL"] == url  # input not mutated


def test_rewrite_custom_gateway_and_missing_vars():
    out = rewrite_hub_urls({"JUPYTERHUB_API_URL": "http://127.0.0.1:8081/hub/api"}, "169.254.1.2")
    assert out == {"JUPYTERHUB_API_URL": "http://169.254.1.2:8081/hub/api"}
    assert rewrite_hub_urls({}, "10.0.2.2") == {}


@pytest.mark.parametrize("port", [22, 80, 443, 1023])
def test_privileged_port_refused(port):
    with pytest.raises(ValueError, match="below 1024"):
        check_container_port(port)


@pytest.mark.parametrize("port", [0, 70000, "8888", True])
def test_invalid_port(port):
    with pytest.raises(ValueError):
        check_container_port(port)


def test_server_args():
    assert server_args(["--debug"], True) == ["--debug", "--allow-root"]
    assert server_args(["--allow-root"], True) == ["--allow-root"]
    assert server_args([], False) == []


def _request(**overrides):
    kwargs = dict(
        name="jupyter-alice", image="lab:1", command=["jupyterhub-singleuser", "--allow-root"],
        env={"A": "1"}, port=8888, host_ip="127.0.0.1", workspace_source="/home/alice/workspace",
        workspace_mount="/workspace", run_as_root=True, device_requests=device_requests([1, 3]),
        labels={"k": "v"},
    )
    kwargs.update(overrides)
    return build_container_request(**kwargs)


def test_request_publishes_loopback_ephemeral_and_mounts_workspace():
    create, host = _request()
    assert create["ports"] == {"8888/tcp": None}
    assert host["port_bindings"] == {8888: ("127.0.0.1",)}
    assert host["binds"] == {"/home/alice/workspace": {"bind": "/workspace", "mode": "rw"}}
    assert create["working_dir"] == "/workspace" and create["user"] == "0:0"
    assert host["device_requests"][0]["DeviceIDs"] == ["1", "3"]
    assert create["volumes"] == ["/workspace"]


def test_request_without_root_or_gpus():
    create, host = _request(run_as_root=False, device_requests=[])
    assert "user" not in create and "device_requests" not in host


def test_request_keeps_extra_binds_and_limits():
    _, host = _request(extra_binds={"/data": {"bind": "/data", "mode": "ro"}}, mem_limit="2G", cpu_limit=1.5)
    assert host["binds"]["/data"] == {"bind": "/data", "mode": "ro"}
    assert host["mem_limit"] == "2G" and host["cpu_quota"] == 150_000


def test_request_refuses_privileged_port():
    with pytest.raises(ValueError, match="below 1024"):
        _request(port=80)


def test_request_with_chosen_host_port():
    _, host = _request(host_port=40123)
    assert host["port_bindings"] == {8888: ("127.0.0.1", 40123)}


def test_pick_host_port_is_free_and_not_repeated():
    import socket

    from rootless_gpu_spawner.hub import container

    picked = {container.pick_host_port("127.0.0.1", now=1000.0) for _ in range(20)}
    assert len(picked) == 20  # never the same port twice within the reuse window
    for port in picked:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # and each was free on the host
    assert all(p > 1024 for p in picked)


def test_port_clash_messages():
    from rootless_gpu_spawner.hub.container import is_port_clash

    assert is_port_clash("driver failed programming external connectivity on endpoint x: "
                         "listen tcp4 127.0.0.1:32777: bind: address already in use")
    assert is_port_clash("Bind for 127.0.0.1:40000 failed: port is already allocated")
    assert not is_port_clash("no such image")
