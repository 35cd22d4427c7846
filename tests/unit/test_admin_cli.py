"""The rootless-gpu-admin command line: names refused, non-root refused, exit codes, --json.

Nothing here changes the host: bootstrap runs only as --dry-run or against
temporary files (the NVIDIA config through the hidden --nvidia-config).
"""

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys

import pytest

from rootless_gpu_spawner import admin, hostchecks

from test_admin_nvidiaconf import STOCK  # tests/unit is on sys.path (no package)

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
BAD_NAMES = ["Alice", "-rf", "../etc", "a/b", "rgs fake", "", "x" * 40, "ålice", "1abc"]


def cli(capsys, *argv):
    rc = admin.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("command", [["bootstrap", "--dry-run"], ["doctor"], ["start-daemon"], ["stop-daemon"], ["status"]])
def test_malformed_names_refused(capsys, command, name):
    if command[0] in ("bootstrap", "start-daemon", "stop-daemon") and os.geteuid() != 0:
        pytest.skip("non-root is refused before the name is looked at")
    # "--user=NAME" / "-- NAME" so that argparse hands even "-rf" over as a name
    argv = [*command, f"--user={name}"] if command[0] in ("bootstrap", "doctor") else [*command, "--", name]
    rc, out, err = cli(capsys, *argv)
    assert rc == 2 and out == ""
    assert "is not a valid login name" in err


@as_root
@pytest.mark.parametrize("command", [["bootstrap", "--dry-run", "--user"], ["doctor", "--user"], ["start-daemon"]])
def test_unknown_user_refused(capsys, command):
    rc, out, err = cli(capsys, *command, "rgsadm-no-such-user")
    assert rc == 2 and out == ""
    assert "no such user 'rgsadm-no-such-user': create it first (useradd -m rgsadm-no-such-user)" in err


@as_root
def test_system_account_refused(capsys):
    rc, out, err = cli(capsys, "bootstrap", "--dry-run", "--user", "daemon")
    assert rc == 2 and "is a system account" in err


@as_root
def test_user_and_group_exclusive(capsys):
    rc, out, err = cli(capsys, "bootstrap", "--user", "root", "--group", "root")
    assert rc == 2 and "not allowed with argument" in err


@as_root
@pytest.mark.parametrize("url", ["mirror.example.org", "https://mirror.example/v2/", "ftp://x", "https://u:p@m.example"])
def test_bad_mirror_refused(capsys, url):
    rc, out, err = cli(capsys, "bootstrap", "--dry-run", "--mirror", url)
    assert rc == 2 and "--mirror" in err and "http(s)://HOST[:PORT]" in err


def _world_reachable(path) -> bool:
    """Can any user open *path*? (every parent searchable by others, the file readable)."""
    path = os.path.realpath(path)
    parents = [path]
    while parents[-1] != "/":
        parents.append(os.path.dirname(parents[-1]))
    return all(os.stat(d).st_mode & 0o001 for d in parents[1:]) and bool(os.stat(path).st_mode & 0o004)


@pytest.fixture
def as_nobody():
    """Run this checkout's CLI as an unprivileged user.

    This checkout's package is copied to a world-readable directory first, so
    the test does not depend on where the clone lives (a clone in a 0700 folder,
    an editable install pointing there); the interpreter's own dependencies are
    used as installed.
    """
    if not shutil.which("setpriv"):
        pytest.skip("setpriv missing")
    if not _world_reachable(sys.executable):
        pytest.skip(f"{sys.executable} is not reachable by other users (the virtualenv lives in a private folder)")
    import tempfile
    base = tempfile.mkdtemp(prefix="rgs-cli-")
    os.chmod(base, 0o755)
    shutil.copytree(os.path.dirname(admin.__file__), os.path.join(base, "rootless_gpu_spawner"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for root, dirs, files in os.walk(base):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)

    def run(*argv):
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "env", "-i", "PATH=/usr/bin:/bin",
               f"PYTHONPATH={base}", "PYTHONDONTWRITEBYTECODE=1",
               sys.executable, "-m", "rootless_gpu_spawner.admin", *argv]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd="/")

    yield run
    shutil.rmtree(base, ignore_errors=True)


@as_root
def test_non_root_refused_except_doctor_for_oneself(as_nobody):
    for argv in (["bootstrap", "--dry-run"], ["start-daemon", "nobody"], ["stop-daemon", "nobody"]):
        p = as_nobody(*argv)
        assert p.returncode == 2 and "run it as root (sudo)" in p.stderr, (argv, p.stderr)
    p = as_nobody("doctor", "--user", "root")
    assert p.returncode == 2 and "doctor for other users (root) needs root" in p.stderr
    p = as_nobody("doctor", "--json")
    assert p.returncode in (0, 1), p.stderr
    report = json.loads(p.stdout)
    assert report["users"] == ["nobody"]
    assert {c["scope"] for c in report["checks"]} == {"host", "nobody"}
    # a student's status checks their own daemon, never root's or everyone's
    p = as_nobody("status")
    assert p.returncode in (0, 1) and p.stdout.startswith("nobody: "), (p.stdout, p.stderr)


def test_doctor_json_and_exit_code_follow_the_nvidia_config(capsys, tmp_path, monkeypatch):
    cfg = tmp_path / "config.toml"
    cfg.write_text(STOCK.replace("#no-cgroups = false", "no-cgroups = false"))
    rc, out, _ = cli(capsys, "doctor", "--json", "--nvidia-config", str(cfg))
    report = json.loads(out)
    (nv,) = [c for c in report["checks"] if c["name"] == "nvidia no-cgroups"]
    assert nv["status"] == "fail" and nv["fix"].startswith("rootless-gpu-admin bootstrap --gpu")
    assert rc == 1 and report["ok"] is False
    # human output names the problem and its fix
    rc, out, _ = cli(capsys, "doctor", "--nvidia-config", str(cfg))
    assert rc == 1 and "[FAIL] nvidia no-cgroups:" in out and "fix: rootless-gpu-admin bootstrap --gpu" in out
    assert "host/nvidia no-cgroups" in out.splitlines()[-1]
    # the same file through the environment variable
    monkeypatch.setenv(hostchecks.NVIDIA_CONFIG_ENV, str(cfg))
    rc, out, _ = cli(capsys, "doctor", "--json")
    assert [c for c in json.loads(out)["checks"] if c["name"] == "nvidia no-cgroups"][0]["status"] == "fail"


@as_root
def test_bootstrap_gpu_fixes_the_temporary_nvidia_config(capsys, tmp_path):
    tun = os.stat("/dev/net/tun")
    if stat.S_IMODE(tun.st_mode) & 0o006 != 0o006:
        pytest.skip("/dev/net/tun is not 0666 here; this test must not change it")
    cfg = tmp_path / "config.toml"
    cfg.write_text(STOCK.replace("#no-cgroups = false", "no-cgroups = false"))
    rc, out, _ = cli(capsys, "bootstrap", "--gpu", "--dry-run", "--json", "--nvidia-config", str(cfg))
    report = json.loads(out)
    assert rc == 0 and report["dry_run"] and report["changed"]
    assert "no-cgroups = false" in cfg.read_text() and not os.path.exists(f"{cfg}.bak")
    rc, out, _ = cli(capsys, "bootstrap", "--gpu", "--nvidia-config", str(cfg))
    assert rc == 0 and "[changed] host: nvidia no-cgroups:" in out
    assert cfg.read_text() == STOCK.replace("#no-cgroups = false", "no-cgroups = true")
    rc, out, _ = cli(capsys, "doctor", "--json", "--nvidia-config", str(cfg))
    assert [c for c in json.loads(out)["checks"] if c["name"] == "nvidia no-cgroups"][0]["status"] == "pass"
    rc, out, _ = cli(capsys, "bootstrap", "--gpu", "--json", "--nvidia-config", str(cfg))
    assert rc == 0 and json.loads(out)["changed"] is False
    assert os.stat("/dev/net/tun") == tun  # untouched


def test_help_returns_zero(capsys):
    assert admin.main(["--help"]) == 0
    assert "doctor" in capsys.readouterr().out
    assert admin.main(["no-such-command"]) == 2


# ------------------------------------------------------------------ status without names


def _pw(name, uid, home):
    return pwd.struct_passwd((name, "x", uid, uid, "", str(home), "/bin/sh"))


def test_status_finds_students_by_socket_or_config_without_following_links(tmp_path):
    run = tmp_path / "run"
    homes = tmp_path / "home"
    outside = tmp_path / "outside" / "docker"
    outside.mkdir(parents=True)
    (outside / "daemon.json").write_text("{}")
    accounts = []
    for name, uid in [("sock", 2001), ("conf", 2002), ("unit", 2003), ("none", 2004), ("link", 2005),
                      ("dirlink", 2006), ("sys", 999)]:
        (homes / name).mkdir(parents=True)
        accounts.append(_pw(name, uid, homes / name))
    (run / "2001").mkdir(parents=True)
    (run / "2001" / "docker.sock").write_text("")  # lstat only: any kind of file counts
    (homes / "conf" / ".config" / "docker").mkdir(parents=True)
    (homes / "conf" / ".config" / "docker" / "daemon.json").write_text("{}")
    (homes / "unit" / ".config" / "systemd" / "user").mkdir(parents=True)
    (homes / "unit" / ".config" / "systemd" / "user" / "docker.service").write_text("")
    (homes / "link" / ".config" / "docker").mkdir(parents=True)
    (homes / "link" / ".config" / "docker" / "daemon.json").symlink_to(outside / "daemon.json")
    (homes / "dirlink" / ".config").mkdir()
    (homes / "dirlink" / ".config" / "docker").symlink_to(outside)
    # a home that is itself a link (the admin's /home -> /data/home) is resolved
    (tmp_path / "data" / "linkedhome" / ".config" / "docker").mkdir(parents=True)
    (tmp_path / "data" / "linkedhome" / ".config" / "docker" / "daemon.json").write_text("{}")
    (homes / "linkedhome").symlink_to(tmp_path / "data" / "linkedhome")
    accounts.append(_pw("linkedhome", 2007, homes / "linkedhome"))
    (run / "999").mkdir()
    (run / "999" / "docker.sock").write_text("")  # a system account is never a student
    found = admin.students_with_daemons(accounts, run_dir=str(run))
    # "link" and "dirlink": a link leading out of the home is never followed (the one safe walk
    # of daemonctl.user_file, the same that bootstrap and doctor use), so neither counts.
    assert [pw.pw_name for pw in found] == ["conf", "linkedhome", "sock", "unit"]


FAKE_STATUS = {"running": True, "rootless": True, "server_version": "20.10\x1b[2J", "error": None}


@as_root
def test_status_without_names_lists_every_student(capsys, monkeypatch, tmp_path):
    students = [_pw("rgs-s1", 2001, tmp_path), _pw("rgs-s2", 2002, tmp_path)]
    monkeypatch.setattr(admin, "students_with_daemons", lambda: students)
    monkeypatch.setattr(admin.daemonctl, "daemon_status", lambda pw: {
        **FAKE_STATUS, "user": pw.pw_name,
        **({"running": False, "rootless": None, "error": "no socket\r\nforged line"} if pw.pw_name == "rgs-s2" else {})})
    rc, out, err = cli(capsys, "status")
    assert rc == 1 and err == ""
    lines = out.splitlines()
    # one entry each; what the student's daemon said cannot reach the terminal raw: escapes are
    # escaped, and a line it adds is indented under ours (it can never pass for a line of ours)
    assert lines == ["rgs-s1: running, rootless=True, docker 20.10\\x1b[2J",
                     "rgs-s2: not running -- no socket\\x0d",
                     "  forged line"]
    rc, out, _ = cli(capsys, "status", "--json")
    assert [st["user"] for st in json.loads(out)] == ["rgs-s1", "rgs-s2"]


@as_root
def test_status_without_students_prints_usage(capsys, monkeypatch):
    monkeypatch.setattr(admin, "students_with_daemons", lambda: [])
    rc, out, err = cli(capsys, "status")
    assert rc == 2 and out == ""
    assert "no student (uid >= 1000) has a rootless Docker daemon" in err
    assert "usage: rootless-gpu-admin status [NAME ...] [--json]" in err
    rc, out, err = cli(capsys, "status", "--json")
    assert rc == 2 and json.loads(out) == []
