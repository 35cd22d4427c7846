"""Host side against a hostile student (issue 10): their daemon.json, their daemon's answers,
their log.  One student's bad input is that student's failed check, never the end of the run."""

import json
import os
import pwd

import pytest

from rootless_gpu_spawner import boundedjson, daemonctl, hostchecks
from rootless_gpu_spawner.bootstrap import Bootstrapper
from rootless_gpu_spawner.hostchecks import HostPaths

from fake_daemon import FakeDaemon, rootless_info, routes  # tests/unit is on sys.path (no package)

NESTED = b"[" * 100_000 + b"]" * 100_000


def student(tmp_path, name):
    home = tmp_path / name
    home.mkdir()
    return pwd.struct_passwd((name, "x", os.getuid(), os.getgid(), "", str(home), "/bin/sh"))


def write_daemon_json(pw, raw: bytes):
    d = os.path.join(pw.pw_dir, ".config", "docker")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "daemon.json"), "wb") as f:
        f.write(raw)


@pytest.fixture
def paths(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    for f in ("subuid", "subgid"):
        (etc / f).write_text("rgs-a:165536:65536\nrgs-b:231072:65536\n")
    return HostPaths(subuid=str(etc / "subuid"), subgid=str(etc / "subgid"), tun=str(tmp_path / "tun"),
                     nvidia_config=str(tmp_path / "nv.toml"), systemd_marker=str(tmp_path / "no-systemd"),
                     linger_dir=str(tmp_path / "linger"))


# ---------------------------------------------------------------- #3 bounded JSON


def test_bounded_loads():
    assert boundedjson.loads(b'{"a": [1, {"b": "[[[["}]}') == {"a": [1, {"b": "[[[["}]}
    for raw, what in ((NESTED, "nested 100000 levels deep"), (b"x" * (boundedjson.MAX_BYTES + 1), "larger than"),
                      (b'{"a": "\xff"}', "not UTF-8"), (b'{"a": ', "not valid JSON")):
        with pytest.raises(boundedjson.UntrustedJSONError, match=what):
            boundedjson.loads(raw)
    with pytest.raises(boundedjson.UntrustedJSONError, match="not an object"):
        boundedjson.loads_object(b"[]")


def test_doctor_for_two_students_survives_the_first_ones_nested_daemon_json(tmp_path, paths, runtime_dir):
    a, b = student(tmp_path, "rgs-a"), student(tmp_path, "rgs-b")
    write_daemon_json(a, NESTED)
    write_daemon_json(b, json.dumps({"registry-mirrors": ["http://10.0.2.2:5000"]}).encode())
    checks = hostchecks.run_doctor([a, b], paths, which=lambda n: None)
    by = {(c.scope, c.name): c for c in checks}
    bad = by[("rgs-a", "daemon.json")]
    assert bad.status == "fail" and "nested 100000 levels deep" in bad.detail
    assert "bootstrap --user rgs-a" in bad.fix
    assert by[("rgs-b", "daemon.json")].status == "pass"


def test_bootstrap_for_two_students_survives_the_first_ones_nested_daemon_json(tmp_path, paths):
    a, b = student(tmp_path, "rgs-a"), student(tmp_path, "rgs-b")
    write_daemon_json(a, NESTED)
    boot = Bootstrapper(paths=paths, min_uid=0, systemd=False)
    steps = boot.user(a, ["http://10.0.2.2:5000"], start=False) + boot.user(b, ["http://10.0.2.2:5000"], start=False)
    failed = [(s.scope, s.name) for s in steps if not s.ok]
    assert failed == [("rgs-a", "daemon.json")]
    assert [s for s in steps if s.scope == "rgs-a" and s.name == "daemon.json"][0].detail.count("nested") == 1
    assert json.load(open(os.path.join(b.pw_dir, ".config/docker/daemon.json"))) == {
        "registry-mirrors": ["http://10.0.2.2:5000"]}
    assert open(os.path.join(a.pw_dir, ".config/docker/daemon.json"), "rb").read() == NESTED  # left as is


def test_status_survives_a_nested_info_answer(tmp_path, runtime_dir):
    a = student(tmp_path, "rgs-a")
    daemonctl.ensure_runtime_dir(a)
    with FakeDaemon(daemonctl.daemon_paths(a.pw_uid).socket, routes(info=NESTED)):
        st = daemonctl.daemon_status(a)
        facts = hostchecks.daemon_facts(a)
    assert st["running"] and "nested 100000 levels deep" in st["error"]
    assert facts.info == {}
    assert hostchecks.check_daemon(a, facts).status == "fail"


def test_odd_types_in_info_are_no_crash(tmp_path, runtime_dir):
    a = student(tmp_path, "rgs-a")
    daemonctl.ensure_runtime_dir(a)
    info = rootless_info(RegistryConfig=["not", "a", "dict"], SecurityOptions=17)
    with FakeDaemon(daemonctl.daemon_paths(a.pw_uid).socket, routes(info=info)):
        st = daemonctl.daemon_status(a)
        facts = hostchecks.daemon_facts(a)
    assert st["rootless"] is False and "NOT rootless" in st["error"]
    write_daemon_json(a, b'{"registry-mirrors": ["http://m"]}')
    assert hostchecks.check_daemon_json(a, hostchecks.DaemonFacts({"running": True, "rootless": True}, facts.info))
