"""Host side against a hostile student (issue 10): their daemon.json, their daemon's answers,
their log.  One student's bad input is that student's failed check, never the end of the run."""

import json
import os
import pwd
import threading

import pytest
from peer_servers import NOBODY

from rootless_gpu_spawner import boundedjson, daemonctl, hostchecks
from rootless_gpu_spawner.bootstrap import Bootstrapper
from rootless_gpu_spawner.hostchecks import HostPaths

from fake_daemon import FakeDaemon, rootless_info, routes  # tests/unit is on sys.path (no package)

NESTED = b"[" * 100_000 + b"]" * 100_000


def student(tmp_path, name, uid=None):
    """A student account in a temp home; with ``uid``, that uid (a daemon the transport accepts is
    never root's, so the daemon tests use nobody's)."""
    home = tmp_path / name
    home.mkdir()
    uid, gid = (os.getuid(), os.getgid()) if uid is None else (uid, uid)
    return pwd.struct_passwd((name, "x", uid, gid, "", str(home), "/bin/sh"))


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
    a = student(tmp_path, "rgs-a", uid=NOBODY)
    daemonctl.ensure_runtime_dir(a)
    with FakeDaemon(daemonctl.daemon_paths(a.pw_uid).socket, routes(info=NESTED), uid=a.pw_uid):
        st = daemonctl.daemon_status(a)
        facts = hostchecks.daemon_facts(a)
    assert st["running"] and "nested 100000 levels deep" in st["error"]
    assert facts.info == {}
    assert hostchecks.check_daemon(a, facts).status == "fail"


def test_odd_types_in_info_are_no_crash(tmp_path, runtime_dir):
    a = student(tmp_path, "rgs-a", uid=NOBODY)
    daemonctl.ensure_runtime_dir(a)
    info = rootless_info(RegistryConfig=["not", "a", "dict"], SecurityOptions=17)
    with FakeDaemon(daemonctl.daemon_paths(a.pw_uid).socket, routes(info=info), uid=a.pw_uid):
        st = daemonctl.daemon_status(a)
        facts = hostchecks.daemon_facts(a)
    assert st["rootless"] is False and "NOT rootless" in st["error"]
    write_daemon_json(a, b'{"registry-mirrors": ["http://m"]}')
    assert hostchecks.check_daemon_json(a, hostchecks.DaemonFacts({"running": True, "rootless": True}, facts.info))


# ---------------------------------------------------------------- #8 the stdlib Docker client is bounded


def trickle(handler):
    handler.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n")
    handler.wfile.flush()
    for _ in range(200):  # one byte every 50 ms: each read alone is quick, the whole answer is not
        handler.wfile.write(b" ")
        handler.wfile.flush()
        threading.Event().wait(0.05)


def test_api_get_bounds_size_and_time(tmp_path):
    sock = str(tmp_path / "d.sock")
    big = (200, b'{"x": "' + b"y" * 100_000 + b'"}')
    with FakeDaemon(sock, {"/big": big, "/slow": trickle}):
        with pytest.raises(daemonctl.AnswerTooLarge, match="larger than 1000 bytes"):
            daemonctl.api_get(sock, "/big", timeout=5, limit=1000)
        with pytest.raises(daemonctl.DeadlineExceeded):
            daemonctl.api_get(sock, "/slow", timeout=0.5)
        assert daemonctl.api_get(sock, "/big", timeout=5)[0] == 200


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")
def test_api_get_checks_the_peer_uid(tmp_path):
    # The socket file is 4242's, but root serves it: the kernel's answer (SO_PEERCRED) refuses it.
    sock = str(tmp_path / "d.sock")
    with FakeDaemon(sock, routes()):
        assert daemonctl.api_get(sock, "/_ping") == (200, b"OK")  # no uid given: no check asked for
        os.chown(sock, 4242, 4242)
        with pytest.raises(daemonctl.PeerMismatch, match=f"served by uid {os.getuid()} "):
            daemonctl.api_get(sock, "/_ping", uid=4242)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")
def test_a_socket_served_by_another_uid_is_a_failed_check_naming_it(tmp_path, runtime_dir):
    home = tmp_path / "home"
    home.mkdir()
    other = pwd.struct_passwd(("rgs-fake", "x", 4242, 4242, "", str(home), "/bin/sh"))
    daemonctl.ensure_runtime_dir(other)
    sock = daemonctl.daemon_paths(4242).socket
    with FakeDaemon(sock, routes()):  # served by root, the socket chowned to look like the student's
        os.chown(sock, 4242, 4242)
        facts = hostchecks.daemon_facts(other)
    assert not facts.status["running"] and facts.info == {}
    c = hostchecks.check_daemon(other, facts)
    assert c.status == "fail" and "served by uid 0 (root)" in c.detail


# ---------------------------------------------------------------- #5 nothing a student wrote reaches the terminal raw

FORGED_LOG = "level=info msg=starting\n\x1b[2J\x1b[31mfatal\x1b[0m\r\nOK forged\n"


def as_root_account():
    return pwd.getpwuid(0)  # a real account for the CLI; its runtime dir is redirected by runtime_dir


def assert_escaped(out: str):
    assert "\x1b" not in out and "\r" not in out
    assert "\\x1b[2J" in out
    for line in out.splitlines():
        assert not line.startswith("OK forged"), line


@pytest.mark.skipif(os.geteuid() != 0, reason="status/doctor for root's account")
def test_status_and_doctor_show_a_forged_log_escaped(runtime_dir, capsys):
    from rootless_gpu_spawner import admin

    root = as_root_account()
    daemonctl.ensure_runtime_dir(root)
    with open(daemonctl.daemon_paths(0).log_file, "w") as f:
        f.write(FORGED_LOG)
    assert admin.main(["status", "root"]) == 1
    out = capsys.readouterr().out
    assert_escaped(out)
    assert f"{daemonctl.LOG_LINE_MARK}OK forged" in out  # shown, but marked as the log's line
    admin.main(["doctor", "--user", "root"])
    out = capsys.readouterr().out
    assert_escaped(out)
    (line,) = [l for l in out.splitlines() if "OK forged" in l]
    assert line.startswith(" ") and daemonctl.LOG_LINE_MARK.strip() in line


@pytest.mark.skipif(os.geteuid() != 0, reason="status for root's account")
def test_status_shows_daemon_strings_escaped(runtime_dir, capsys):
    from rootless_gpu_spawner import admin

    nobody = pwd.getpwuid(NOBODY)  # a real account for the CLI; its runtime dir is redirected
    daemonctl.ensure_runtime_dir(nobody)
    version = json.dumps({"Version": "20.10\x1b[2J\nOK forged", "ApiVersion": "1.41"}).encode()
    with FakeDaemon(daemonctl.daemon_paths(NOBODY).socket, routes(version=version), uid=NOBODY):
        assert admin.main(["status", nobody.pw_name]) == 0
        out = capsys.readouterr().out
        st = daemonctl.daemon_status(nobody)
    assert_escaped(out)
    assert "docker 20.10\\x1b[2J\\x0aOK forged" in out
    assert st["server_version"] == "20.10\\x1b[2J\\x0aOK forged"


def test_log_tail_in_an_error_is_printable_and_marked(tmp_path):
    log = tmp_path / "d.log"
    log.write_text(FORGED_LOG + "x" * 200_000)
    tail = daemonctl._log_tail(str(log), lines=5)
    assert "\x1b" not in tail and "\r" not in tail
    assert all(line.startswith(daemonctl.LOG_LINE_MARK) for line in tail.split("\n"))
    assert len(tail) < 2000  # a 200 kB line is cut
