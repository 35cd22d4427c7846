"""The rootless-gpu-admin command line: names refused, non-root refused, exit codes, --json.

Nothing here changes the host: bootstrap runs only as --dry-run or against
temporary files (the NVIDIA config through the hidden --nvidia-config).
"""

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from rootless_gpu_spawner import admin
from rootless_gpu_spawner.admin import checks as hostchecks

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


def _as_nobody(*argv):
    # The package as installed for this interpreter, run by an unprivileged user.
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "env", "-i", "PATH=/usr/bin:/bin",
           sys.executable, "-m", "rootless_gpu_spawner.admin", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd="/")


@as_root
def test_non_root_refused_except_doctor_for_oneself():
    if not shutil.which("setpriv"):
        pytest.skip("setpriv missing")
    for argv in (["bootstrap", "--dry-run"], ["start-daemon", "nobody"], ["stop-daemon", "nobody"]):
        p = _as_nobody(*argv)
        assert p.returncode == 2 and "run it as root (sudo)" in p.stderr, (argv, p.stderr)
    p = _as_nobody("doctor", "--user", "root")
    assert p.returncode == 2 and "doctor for other users (root) needs root" in p.stderr
    p = _as_nobody("doctor", "--json")
    assert p.returncode in (0, 1), p.stderr
    report = json.loads(p.stdout)
    assert report["users"] == ["nobody"]
    assert {c["scope"] for c in report["checks"]} == {"host", "nobody"}


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
