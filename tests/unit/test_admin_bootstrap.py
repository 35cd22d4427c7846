"""bootstrap's steps on temporary files: dry run changes nothing, a second run changes nothing.

The user is a passwd entry for the current uid whose home is a temp dir; the
host files (subuid, tun, NVIDIA config, systemd's linger dir) are temp paths.
The daemon step itself needs a real account: tests/integration/test_admin.py.
"""

import hashlib
import json
import os
import pwd
import stat
import subprocess

import pytest

from rootless_gpu_spawner import bootstrap, service
from rootless_gpu_spawner.bootstrap import Bootstrapper, BootstrapError
from rootless_gpu_spawner.hostchecks import HostPaths

from test_admin_nvidiaconf import STOCK  # tests/unit is on sys.path (no package)

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mknod / chown)")
MIRROR = "http://10.0.2.2:5000"


@pytest.fixture
def paths(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    for f in ("subuid", "subgid"):
        (etc / f).write_text("alice:100000:65536\nrgs-fake:165536:65536\n")
    nv = tmp_path / "nvidia-container-runtime"
    nv.mkdir()
    (nv / "config.toml").write_text(STOCK)
    os.chmod(nv / "config.toml", 0o640)
    tun = tmp_path / "dev" / "tun"
    tun.parent.mkdir()
    if os.geteuid() == 0:
        os.mknod(tun, stat.S_IFCHR | 0o600, os.makedev(10, 200))  # a node of our own, not /dev/net/tun
        os.chmod(tun, 0o600)
    return HostPaths(
        subuid=str(etc / "subuid"),
        subgid=str(etc / "subgid"),
        tun=str(tun),
        nvidia_config=str(nv / "config.toml"),
        systemd_marker=str(tmp_path / "no-systemd"),
        linger_dir=str(tmp_path / "linger"),
    )


def tree_state(root) -> dict:
    """Every entry under *root*: type, mode, owner, content hash, inode and mtime."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            entry = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            if stat.S_ISREG(st.st_mode):
                entry += (hashlib.sha256(open(p, "rb").read()).hexdigest(), st.st_ino, st.st_mtime_ns)
            out[os.path.relpath(p, root)] = entry
    return out


def run_all(b: Bootstrapper, pw, mirrors=(MIRROR,), gpu=True):
    steps = b.host(gpu=gpu) + b.user(pw, list(mirrors) if mirrors else None, start=False)
    assert all(s.ok for s in steps), [s for s in steps if not s.ok]
    return {s.name: s for s in steps}


def daemon_json(pw):
    return os.path.join(pw.pw_dir, ".config", "docker", "daemon.json")


def write_daemon_json(pw, data):
    os.makedirs(os.path.dirname(daemon_json(pw)))
    with open(daemon_json(pw), "w") as f:
        json.dump(data, f)


@as_root
def test_first_run_changes_second_run_changes_nothing(pw, paths, tmp_path):
    write_daemon_json(pw, {"features": {"buildkit": True}})
    b = Bootstrapper(paths=paths, min_uid=0, systemd=False)
    first = run_all(b, pw)
    assert [n for n, s in first.items() if s.changed] == ["tun", "nvidia no-cgroups", "workspace", "daemon.json"]
    assert stat.S_IMODE(os.stat(paths.tun).st_mode) == 0o666
    assert os.path.isdir(os.path.join(pw.pw_dir, "workspace"))
    before = tree_state(tmp_path)

    second = run_all(Bootstrapper(paths=paths, min_uid=0, systemd=False), pw)
    assert not [s for s in second.values() if s.changed]
    for s in second.values():
        assert "already" in s.detail or "not applicable" in s.detail, s
    assert tree_state(tmp_path) == before  # same content, same inodes, same mtimes: nothing rewritten


@as_root
def test_dry_run_changes_nothing(pw, paths, tmp_path):
    with open(paths.subuid, "w") as f:
        f.write("alice:100000:65536\n")  # the user's range is missing
    write_daemon_json(pw, {"features": {"buildkit": True}})
    before = tree_state(tmp_path)
    steps = run_all(Bootstrapper(dry_run=True, paths=paths, min_uid=0, systemd=False), pw)
    assert tree_state(tmp_path) == before
    assert steps["tun"].changed and steps["tun"].detail.startswith(f"would chmod 0666 {paths.tun}")
    assert steps["nvidia no-cgroups"].detail.startswith(f"would edit {paths.nvidia_config} line 13: uncommented")
    # the first id after every range of both files (the subgid file still has the user's)
    assert steps["subids"].detail == "would run: usermod --add-subuids 231072-296607 rgs-fake"
    assert steps["workspace"].detail.startswith("would create")
    assert steps["daemon.json"].detail.startswith(f"would merge registry-mirrors ['{MIRROR}']")


def test_dry_run_creates_no_directories(pw, paths, tmp_path):
    before = tree_state(tmp_path)
    steps = run_all(Bootstrapper(dry_run=True, paths=paths, min_uid=0, systemd=False), pw, gpu=False)
    assert steps["daemon.json"].changed and steps["workspace"].changed
    assert tree_state(tmp_path) == before
    assert not os.path.exists(os.path.join(pw.pw_dir, ".config"))


def test_daemon_json_merge_keeps_foreign_keys_and_backs_up(pw, paths):
    old = {"features": {"buildkit": True}, "log-level": "warn", "registry-mirrors": ["https://old.example"]}
    write_daemon_json(pw, old)
    b = Bootstrapper(paths=paths, min_uid=0, systemd=False)
    step = b.ensure_daemon_json(pw, [MIRROR, "https://second.example"], None)
    assert step.changed and "other keys kept" in step.detail
    assert json.load(open(daemon_json(pw))) == {
        "features": {"buildkit": True},
        "log-level": "warn",
        "registry-mirrors": [MIRROR, "https://second.example"],
    }
    assert json.load(open(daemon_json(pw) + ".bak")) == old
    # no --mirror: left alone
    step = b.ensure_daemon_json(pw, None, None)
    assert not step.changed and "no --mirror given" in step.detail
    step = b.ensure_daemon_json(pw, [MIRROR, "https://second.example"], None)
    assert not step.changed and step.detail.endswith("already")


def test_nvidia_config_written_atomically_with_bak(pw, paths):
    step = Bootstrapper(paths=paths).ensure_nvidia_no_cgroups()
    assert step.changed and f"previous version kept as {paths.nvidia_config}.bak" in step.detail
    assert open(paths.nvidia_config + ".bak").read() == STOCK
    new = open(paths.nvidia_config).read()
    assert new == STOCK.replace("#no-cgroups = false", "no-cgroups = true")
    assert stat.S_IMODE(os.stat(paths.nvidia_config).st_mode) == 0o640  # mode kept
    assert sorted(os.listdir(os.path.dirname(paths.nvidia_config))) == ["config.toml", "config.toml.bak"]
    assert not Bootstrapper(paths=paths).ensure_nvidia_no_cgroups().changed


def test_nvidia_without_toolkit_is_a_clear_failure(tmp_path):
    b = Bootstrapper(paths=HostPaths(nvidia_config=str(tmp_path / "absent" / "config.toml")))
    (step,) = [s for s in b.host(gpu=True) if s.name == "nvidia no-cgroups"]
    assert not step.ok and "install nvidia-container-toolkit first" in step.detail


def test_write_file_atomic_refuses_symlink(tmp_path):
    target = tmp_path / "real"
    target.write_text("x")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(BootstrapError, match="not a regular file"):
        bootstrap.write_file_atomic(str(link), b"y")
    assert target.read_text() == "x"


def test_subids_only_through_usermod_on_the_real_files(pw, paths):
    with open(paths.subgid, "w") as f:
        f.write("")
    b = Bootstrapper(paths=paths, min_uid=0, systemd=False)
    step = b._guard("subids", pw.pw_name, b.ensure_subids, pw)
    assert not step.ok and "usermod edits /etc/subuid and /etc/subgid only" in step.detail


def test_system_accounts_refused(paths):
    root = pwd.getpwuid(0)
    (step,) = Bootstrapper(paths=paths).user(root)
    assert not step.ok and "system account" in step.detail


@as_root
def test_root_owned_workspace_is_handed_to_the_user(tmp_path, paths):
    home = tmp_path / "home4242"
    home.mkdir()
    os.chown(home, 4242, 4242)
    (home / "workspace").mkdir()  # made by an admin as root
    student = pwd.struct_passwd(("rgs-fake", "x", 4242, 4242, "", str(home), "/bin/sh"))
    b = Bootstrapper(paths=paths, systemd=False)
    step = b.ensure_workspace(student)
    assert step.changed and "was owned by root" in step.detail
    assert os.stat(home / "workspace").st_uid == 4242
    assert not b.ensure_workspace(student).changed
    os.chown(home / "workspace", 4343, 4343)  # somebody else's: not ours to take
    step = b._guard("workspace", "rgs-fake", b.ensure_workspace, student)
    assert not step.ok and "chown rgs-fake:" in step.detail


def test_group_members():
    assert "root" in bootstrap.group_members("root")
    with pytest.raises(BootstrapError, match="no such group"):
        bootstrap.group_members("rgs-no-such-group")


# ---------------------------------------------------------------- systemd hosts
# This machine kind has no systemd, so the commands are recorded by a runner
# that plays loginctl and the setup tool (creating what they would create).


class Recorder:
    def __init__(self, pw, paths):
        self.pw, self.paths, self.calls = pw, paths, []

    def __call__(self, cmd, timeout=None, env=None):
        self.calls.append(cmd)
        if cmd[:2] == ["loginctl", "enable-linger"]:
            os.makedirs(self.paths.linger_dir, exist_ok=True)
            open(os.path.join(self.paths.linger_dir, cmd[2]), "w").close()
        elif cmd[-1] == "install" and cmd[-2].endswith("dockerd-rootless-setuptool.sh"):
            assert env["XDG_RUNTIME_DIR"] == f"/run/user/{self.pw.pw_uid}"
            unit = os.path.join(self.pw.pw_dir, service.UNIT_REL)
            with open(unit, "w") as f:
                f.write("[Service]\nExecStart=dockerd-rootless.sh\n")
        return subprocess.CompletedProcess(cmd, 0, "", "")


def test_systemd_linger_dropin_and_setuptool(pw, paths, tmp_path):
    rec = Recorder(pw, paths)
    b = Bootstrapper(paths=paths, min_uid=0, systemd=True, run=rec, runtime_dir_wait=0)
    steps = {s.name: s for s in b.user(pw, start=False)}
    assert all(s.ok for s in steps.values()), steps
    assert rec.calls[0] == ["loginctl", "enable-linger", "rgs-fake"]
    setpriv, *rest = rec.calls[1]
    assert setpriv.endswith("setpriv") and rest[:3] == [f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups"]
    assert rest[-1] == "install" and rest[-2].endswith("dockerd-rootless-setuptool.sh")
    assert steps["linger"].changed and steps["user service"].changed
    dropin = open(os.path.join(pw.pw_dir, service.DROPIN_REL)).read()
    assert "Environment=DOCKERD_ROOTLESS_ROOTLESSKIT_DISABLE_HOST_LOOPBACK=false" in dropin
    script = os.path.realpath(service.daemonctl.find_binary("dockerd-rootless.sh"))
    if not service.script_honours_loopback_env(script):  # Debian's 20.10 script
        (execstart,) = [l for l in dropin.splitlines() if l.startswith("ExecStart=/")]
        assert "ExecStart=\n" in dropin and "--disable-host-loopback" not in execstart
        assert "--net=slirp4netns" in execstart and execstart.endswith("--state-dir=%t/dockerd-rootless " + script)
    before = tree_state(tmp_path)
    rec.calls.clear()
    again = {s.name: s for s in b.user(pw, start=False)}
    assert rec.calls == [] and not [s for s in again.values() if s.changed]
    assert tree_state(tmp_path) == before


# ---------------------------------------------------------------- issue 10 #4: commands as the student, detached


PROBE = ("import os, sys; print(os.getsid(0) == os.getpid(), os.getpgid(0) == os.getpid(), "
         "repr(sys.stdin.read()), os.getcwd(), ' '.join(sorted(os.environ)))")


def test_run_detaches_from_root(monkeypatch):
    import sys

    monkeypatch.setenv("RGS_ROOT_ONLY", "secret")
    p = service._run([sys.executable, "-c", PROBE], timeout=60)
    session, group, stdin, cwd, env = p.stdout.split(" ", 4)
    assert (session, group, stdin, cwd) == ("True", "True", "''", "/")
    assert "RGS_ROOT_ONLY" not in env and set(env.split()) <= {"PATH", "LANG", "LC_CTYPE"}
    p = service._run([sys.executable, "-c", "import os; print(sorted(os.environ))"], env={"HOME": "/nonexistent"})
    assert "HOME" in p.stdout and "RGS_ROOT_ONLY" not in p.stdout


def test_run_timeout_kills_the_whole_group(tmp_path):
    import sys
    import time

    pidfile = tmp_path / "grandchild"
    script = (f"import subprocess, time; p = subprocess.Popen(['sleep', '120']); "
              f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(120)")
    with pytest.raises(subprocess.TimeoutExpired):
        service._run([sys.executable, "-c", script], timeout=2)
    grandchild = int(pidfile.read_text())
    for _ in range(100):  # bounded: reparented to init, it is reaped soon after SIGKILL
        if not os.path.exists(f"/proc/{grandchild}") or service.daemonctl._proc_is_zombie(grandchild):
            break
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{grandchild}") or service.daemonctl._proc_is_zombie(grandchild)


def test_run_keeps_only_the_tail_of_the_output():
    import sys

    p = service._run([sys.executable, "-c", "import sys; sys.stdout.write('x' * 300000 + 'END')"])
    assert len(p.stdout) == service.commands.OUTPUT_LIMIT and p.stdout.endswith("END")


def test_setuptool_runs_in_its_own_session_with_the_users_env(pw, paths, monkeypatch):
    """bootstrap on a systemd host: every command (loginctl, the setup tool as the user) is detached."""
    real_popen = subprocess.Popen
    calls = []

    def recording_popen(cmd, **kwargs):
        calls.append((cmd, kwargs))
        return real_popen(["true"], **kwargs)

    monkeypatch.setattr(subprocess, "Popen", recording_popen)
    monkeypatch.setenv("RGS_ROOT_ONLY", "secret")
    b = Bootstrapper(paths=paths, min_uid=0, systemd=True, runtime_dir_wait=0)
    b.user(pw, start=False)
    (tool,) = [(c, k) for c, k in calls if c[-1] == "install"]
    assert tool[0][-2].endswith("dockerd-rootless-setuptool.sh")
    assert tool[1]["env"] == service.as_user_env(pw)
    for cmd, kwargs in calls:
        assert kwargs["start_new_session"] is True and kwargs["stdin"] == subprocess.DEVNULL, cmd
        assert kwargs["env"] is not None and "RGS_ROOT_ONLY" not in kwargs["env"], cmd
