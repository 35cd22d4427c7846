"""host/labcache.py and admin/cache.py: the lab cache's configuration, files and hub lines (no processes)."""

import json
import os

import pytest

from rootless_gpu_spawner.admin import cache as cache_cli
from rootless_gpu_spawner.admin.cachewarm import parse_reference
from rootless_gpu_spawner.host import labcache
from rootless_gpu_spawner.host.labcache import CacheError


def test_ports_and_daemon_entries_follow_the_port_base(tmp_path):
    cfg = labcache.make_config(str(tmp_path), labcache.DEFAULT_UPSTREAMS[:2], 10 << 30, 5001)
    assert [(u.registry, u.port, u.backend_port) for u in cfg.upstreams] == [("docker.io", 5001, 5101), ("quay.io", 5002, 5102)]
    assert cfg.lab_cache_mirrors() == {"docker.io": "10.0.2.2:5001", "quay.io": "10.0.2.2:5002"}
    assert cfg.insecure_entries() == ["10.0.2.2:5001", "10.0.2.2:5101", "10.0.2.2:5002", "10.0.2.2:5102"]


@pytest.mark.parametrize("registry,remote,words", [
    ("docker.io", "ftp://x", "http(s)://HOST"),
    ("docker.io", "https://mirror.example.org/path", "no path"),
    ("docker.io", "https://user:pw@mirror.example.org", "no credentials"),
    ("not a host", "https://quay.io", "not a registry host name"),
])
def test_bad_upstreams_are_refused_with_the_form_to_use(tmp_path, registry, remote, words):
    with pytest.raises(CacheError, match="--upstream") as e:
        labcache.make_config(str(tmp_path), [(registry, remote)], 1 << 30, 5001)
    assert words in str(e.value)


def test_ports_out_of_range_and_twice_the_same_registry(tmp_path):
    with pytest.raises(CacheError, match="--port-base"):
        labcache.make_config(str(tmp_path), [("docker.io", "https://registry-1.docker.io")], 1, 65500)
    with pytest.raises(CacheError, match="once"):
        labcache.make_config(str(tmp_path), [("quay.io", "https://quay.io")] * 2, 1, 5001)


@pytest.mark.parametrize("text,n", [("500G", 500 << 30), ("2T", 2 << 40), ("800M", 800 << 20), ("1.5GiB", 3 << 29), ("4096", 4096)])
def test_sizes(text, n):
    assert labcache.parse_size(text) == n


def test_a_bad_size_says_how_to_write_one():
    with pytest.raises(CacheError, match="e.g. 500G"):
        labcache.parse_size("lots")


def test_files_are_written_once_and_read_back(tmp_path):
    cfg = labcache.make_config(str(tmp_path / "c"), [("quay.io", "https://quay.io")], 5 << 30, 6001)
    changed = labcache.ensure_files(cfg)
    assert len(changed) == 2 and labcache.ensure_files(cfg) == []  # idempotent: nothing rewritten
    yml = open(cfg.file(cfg.upstreams[0], "registry.yml")).read()
    assert "remoteurl: https://quay.io" in yml and "addr: 127.0.0.1:6101" in yml
    assert f"rootdirectory: {cfg.data_dir(cfg.upstreams[0])}" in yml
    back = labcache.load(cfg.root)
    assert back == cfg


def test_a_broken_configuration_names_the_fix(tmp_path):
    (tmp_path / labcache.CONFIG_NAME).write_text("{not json")
    with pytest.raises(CacheError, match="cache setup"):
        labcache.load(str(tmp_path))
    (tmp_path / labcache.CONFIG_NAME).write_text(json.dumps({"upstreams": [{}]}))
    with pytest.raises(CacheError, match="not a lab cache configuration"):
        labcache.load(str(tmp_path))
    assert labcache.load(str(tmp_path / "none")) is None


def test_systemd_units_run_the_same_commands_as_by_hand(tmp_path):
    cfg = labcache.make_config(str(tmp_path), [("docker.io", "https://registry-1.docker.io")], 1 << 30, 5001)
    units = labcache.systemd_units(cfg)
    assert set(units) == {"rootless-gpu-cache-docker.io-registry.service", "rootless-gpu-cache-docker.io-front.service"}
    front = units["rootless-gpu-cache-docker.io-front.service"]
    assert "ExecStart=" + " ".join(labcache.front_cmd(cfg, cfg.upstreams[0])) in front
    assert "--listen 127.0.0.1:5001 --backend 127.0.0.1:5101" in front


def test_disk_use_counts_files_and_does_not_follow_links(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 100000)
    os.symlink("/usr", tmp_path / "d" / "link")
    n = labcache.disk_use(str(tmp_path / "d"))
    assert 100000 <= n < 200000


def test_hub_lines_name_the_trait(tmp_path):
    cfg = labcache.make_config(str(tmp_path), labcache.DEFAULT_UPSTREAMS, 1 << 30, 5001)
    lines = cache_cli.hub_lines(cfg)
    assert 'c.RootlessGPUSpawner.lab_cache_mirrors = {"docker.io": "10.0.2.2:5001", "quay.io": "10.0.2.2:5002", ' in lines
    assert "mirror_prefixes" not in lines


@pytest.mark.parametrize("image,want", [
    ("python:3.12", ("docker.io", "library/python", "3.12")),
    ("docker.io/jupyter/base-notebook", ("docker.io", "jupyter/base-notebook", "latest")),
    ("quay.io/jupyter/scipy-notebook:2025-01-06", ("quay.io", "jupyter/scipy-notebook", "2025-01-06")),
    ("nvcr.io/nvidia/pytorch:24.05-py3", ("nvcr.io", "nvidia/pytorch", "24.05-py3")),
    ("localhost:5000/x@sha256:" + "a" * 64, ("localhost:5000", "x", "sha256:" + "a" * 64)),
])
def test_image_references(image, want):
    assert parse_reference(image) == want


def test_a_bad_image_reference_is_refused():
    with pytest.raises(CacheError, match="not an image name"):
        parse_reference("UPPER/../x")


class _Done:
    def __init__(self, code=0):
        self.returncode, self.stdout, self.stderr = code, "", "boom" if code else ""


def test_under_systemd_setup_writes_units_enables_them_and_restarts_on_change(tmp_path, monkeypatch):
    monkeypatch.setattr(labcache, "SYSTEMD_DIR", str(tmp_path / "units"))
    (tmp_path / "units").mkdir()
    cfg = labcache.make_config(str(tmp_path / "c"), [("quay.io", "https://quay.io")], 1 << 30, 5002)
    calls = []
    run = lambda cmd, timeout: calls.append(cmd) or _Done()  # noqa: E731
    steps = cache_cli.start_processes(cfg, labcache.ensure_files(cfg), True, run)
    names = ["rootless-gpu-cache-quay.io-registry.service", "rootless-gpu-cache-quay.io-front.service"]
    assert sorted(os.listdir(tmp_path / "units")) == sorted(names)
    assert calls == [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", *names], ["systemctl", "restart", *names]]
    assert steps[0].ok and steps[0].changed
    calls.clear()
    steps = cache_cli.start_processes(cfg, labcache.ensure_files(cfg), True, run)  # nothing changed
    assert calls == [["systemctl", "enable", "--now", *names]] and not steps[0].changed
    steps = cache_cli.start_processes(cfg, [], True, lambda cmd, timeout: _Done(1))
    assert not steps[0].ok and "systemctl failed: boom" in steps[0].detail
