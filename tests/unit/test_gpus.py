"""The gpus setting as Docker device requests (pure logic)."""

import pytest

from rootless_gpu_spawner.gpus import (
    detect_device_mode,
    InvalidGPURequest,
    device_requests,
    gpu_driver_error_message,
    is_gpu_driver_error,
    normalize_gpus,
)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("all", "all"), ("ALL", "all"), (2, 2), ("2", 2), (0, 0), ("0", 0), ("none", 0), (None, 0),
        ([0, 2], ["0", "2"]), (["1", "3"], ["1", "3"]), ("0,2", ["0", "2"]), ("device=1,3", ["1", "3"]),
        (["GPU-3f2a1b4c-1111-2222-3333-444455556666"], ["GPU-3f2a1b4c-1111-2222-3333-444455556666"]),
        ([1, 1, 2], ["1", "2"]), ([], []),
    ],
)
def test_normalize(value, expected):
    assert normalize_gpus(value) == expected


@pytest.mark.parametrize(
    "value", [-1, "-1", 10**6, True, 1.5, "lots", [-1], [None], ["a b"], ["x" * 200], {"n": 1}, "１"]
)
def test_normalize_rejects(value):
    with pytest.raises(InvalidGPURequest):
        normalize_gpus(value)


def test_device_requests_all():
    (req,) = device_requests("all")
    assert req == {"Driver": "", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}


def test_device_requests_count_and_ids():
    (req,) = device_requests(2)
    assert req["Count"] == 2 and req["Capabilities"] == [["gpu"]] and not req["DeviceIDs"]
    (req,) = device_requests([1, 3])
    assert req["DeviceIDs"] == ["1", "3"] and req["Capabilities"] == [["gpu"]]
    assert req["Count"] in (0, None)


@pytest.mark.parametrize("none", [0, "0", [], "none"])
def test_device_requests_none(none):
    assert device_requests(none) == []


def test_gpu_error_in_words():
    raw = 'could not select device driver "" with capabilities: [[gpu]]'
    assert is_gpu_driver_error(raw)
    assert not is_gpu_driver_error("no such image")
    msg = gpu_driver_error_message("alice", "unix:///run/user/1001/docker.sock", "all", raw)
    for needed in ("alice", "NVIDIA Container Toolkit", "no-cgroups = true", "restart", raw):
        assert needed in msg


def test_cgroup_error_names_no_cgroups():
    raw = "failed to add device rules: open /sys/fs/cgroup/devices/devices.allow: permission denied"
    assert is_gpu_driver_error(raw)
    msg = gpu_driver_error_message("bob", "unix:///x", 1, raw)
    assert "device cgroups" in msg and "no-cgroups = true" in msg


def test_cdi_device_requests():
    (req,) = device_requests("all", "cdi")
    assert req["Driver"] == "cdi" and req["DeviceIDs"] == ["nvidia.com/gpu=all"]
    (req,) = device_requests([1, 3], "cdi")
    assert req["DeviceIDs"] == ["nvidia.com/gpu=1", "nvidia.com/gpu=3"]
    (req,) = device_requests(2, "cdi")
    assert req["DeviceIDs"] == ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]
    assert device_requests(0, "cdi") == []


def test_detect_device_mode(tmp_path):
    assert detect_device_mode(False, [str(tmp_path)]) == "nvidia"  # Docker 20.10: no CDI at all
    assert detect_device_mode(True, [str(tmp_path)]) == "nvidia"  # CDI on, no NVIDIA spec
    (tmp_path / "nvidia.yaml").write_text("cdiVersion: 0.5.0\n")
    assert detect_device_mode(True, ["/nonexistent", str(tmp_path)]) == "cdi"
    assert detect_device_mode(False, [str(tmp_path)]) == "nvidia"  # the daemon has CDI off


def test_detect_device_mode_never_uses_daemon_paths():
    # The daemon's CDISpecDirs is only a yes/no: a glob bomb is never expanded or stat'ed.
    import inspect

    params = list(inspect.signature(detect_device_mode).parameters)
    assert params == ["cdi_enabled", "spec_dirs"]
    assert detect_device_mode(True, ["/*/*/*/*/*/*"] * 20) == "nvidia"
