"""Unit tests for the pure, file-level parts of rootless_gpu_spawner.host.daemonctl.

They use a fake passwd entry for the current uid whose home is a tmp dir, so
they run as root or as a normal user, without any daemon.
"""

import json
import os
import pwd
import stat

import pytest

from rootless_gpu_spawner.host import daemonctl, prereqs, procs
from rootless_gpu_spawner.host.daemonctl import DaemonError


@pytest.fixture
def pw(tmp_path):
    home = tmp_path / "home" / "student"
    home.mkdir(parents=True)
    real = pwd.getpwuid(os.getuid())
    return pwd.struct_passwd(
        (real.pw_name, "x", os.getuid(), os.getgid(), "", str(home), "/bin/sh")
    )


def cfg(pw):
    return os.path.join(pw.pw_dir, ".config", "docker", "daemon.json")


def test_daemon_paths():
    p = daemonctl.daemon_paths(1234)
    assert p.runtime_dir == "/run/user/1234"
    assert p.socket == "/run/user/1234/docker.sock"
    assert p.pid_file == "/run/user/1234/docker.pid"
    assert p.docker_host == "unix:///run/user/1234/docker.sock"
    assert p.log_file.startswith("/run/user/1234/")


def test_creates_file_and_dirs(pw):
    assert daemonctl.merge_daemon_json(pw, insecure_registries=["10.0.2.2:5000"]) is True
    assert json.load(open(cfg(pw))) == {"insecure-registries": ["10.0.2.2:5000"]}
    d = os.path.dirname(cfg(pw))
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert os.stat(cfg(pw)).st_uid == pw.pw_uid
    assert not os.path.exists(cfg(pw) + ".bak")  # nothing to back up


def test_keeps_foreign_keys_and_backs_up(pw):
    os.makedirs(os.path.dirname(cfg(pw)))
    old = {"features": {"buildkit": True}, "registry-mirrors": ["http://old:5000"], "debug": False}
    with open(cfg(pw), "w") as f:
        json.dump(old, f)
    assert daemonctl.merge_daemon_json(
        pw, registry_mirrors=["http://10.0.2.2:5000"], insecure_registries=["10.0.2.2:5000"]
    )
    new = json.load(open(cfg(pw)))
    assert new == {
        "features": {"buildkit": True},
        "registry-mirrors": ["http://10.0.2.2:5000"],
        "debug": False,
        "insecure-registries": ["10.0.2.2:5000"],
    }
    assert json.load(open(cfg(pw) + ".bak")) == old
    # no temp files left behind
    assert sorted(os.listdir(os.path.dirname(cfg(pw)))) == ["daemon.json", "daemon.json.bak"]


def test_no_write_when_unchanged(pw):
    assert daemonctl.merge_daemon_json(pw, insecure_registries=["10.0.2.2:5000"])
    st1 = os.stat(cfg(pw))
    assert daemonctl.merge_daemon_json(pw, insecure_registries=["10.0.2.2:5000"]) is False
    st2 = os.stat(cfg(pw))
    assert (st1.st_ino, st1.st_mtime_ns) == (st2.st_ino, st2.st_mtime_ns)
    assert not os.path.exists(cfg(pw) + ".bak")
    # None leaves a key alone; nothing requested and no file: no file created
    assert daemonctl.merge_daemon_json(pw) is False


def test_no_file_created_when_nothing_to_set(pw):
    assert daemonctl.merge_daemon_json(pw) is False
    assert not os.path.exists(cfg(pw))


def test_empty_list_removes_key(pw):
    daemonctl.merge_daemon_json(pw, registry_mirrors=["http://a"], insecure_registries=["b"])
    assert daemonctl.merge_daemon_json(pw, registry_mirrors=[]) is True
    assert json.load(open(cfg(pw))) == {"insecure-registries": ["b"]}


def test_refuses_symlinked_file_out_of_home(pw, tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text('{"keep": 1}')
    os.makedirs(os.path.dirname(cfg(pw)))
    os.symlink(outside, cfg(pw))
    with pytest.raises(DaemonError, match="outside the home"):
        daemonctl.merge_daemon_json(pw, insecure_registries=["x"])
    assert outside.read_text() == '{"keep": 1}'
    assert os.path.islink(cfg(pw))


def test_refuses_symlinked_dir_out_of_home(pw, tmp_path):
    outside = tmp_path / "etc-like"
    outside.mkdir()
    os.symlink(outside, os.path.join(pw.pw_dir, ".config"))
    with pytest.raises(DaemonError, match="outside the home"):
        daemonctl.merge_daemon_json(pw, insecure_registries=["x"])
    assert os.listdir(outside) == []


def test_symlink_inside_home_is_followed(pw):
    # dotfile managers link ~/.config to a dir inside the home: that is fine
    real = os.path.join(pw.pw_dir, "dotfiles", "config")
    os.makedirs(real)
    os.symlink(real, os.path.join(pw.pw_dir, ".config"))
    assert daemonctl.merge_daemon_json(pw, insecure_registries=["x"])
    assert json.load(open(os.path.join(real, "docker", "daemon.json"))) == {"insecure-registries": ["x"]}
    assert os.path.islink(os.path.join(pw.pw_dir, ".config"))


def test_refuses_dangling_symlink_out_of_home(pw, tmp_path):
    os.makedirs(os.path.dirname(cfg(pw)))
    target = tmp_path / "not-yet-there.json"
    os.symlink(target, cfg(pw))
    with pytest.raises(DaemonError, match="outside the home"):
        daemonctl.merge_daemon_json(pw, insecure_registries=["x"])
    assert not target.exists()


def test_refuses_fifo(pw):
    os.makedirs(os.path.dirname(cfg(pw)))
    os.mkfifo(cfg(pw))
    with pytest.raises(DaemonError, match="not a plain file"):
        daemonctl.merge_daemon_json(pw, insecure_registries=["x"])


def test_refuses_hard_link(pw, tmp_path):
    other = tmp_path / "secret"
    other.write_text("{}")
    os.makedirs(os.path.dirname(cfg(pw)))
    os.link(other, cfg(pw))
    with pytest.raises(DaemonError, match="not a plain file"):
        daemonctl.merge_daemon_json(pw, insecure_registries=["x"])
    assert not os.path.exists(cfg(pw) + ".bak")


def test_invalid_json_is_reported_not_overwritten(pw):
    os.makedirs(os.path.dirname(cfg(pw)))
    with open(cfg(pw), "w") as f:
        f.write("{not json")
    with pytest.raises(DaemonError, match="not valid JSON"):
        daemonctl.merge_daemon_json(pw, insecure_registries=["x"])
    assert open(cfg(pw)).read() == "{not json"


def test_ping_missing_socket(tmp_path):
    assert daemonctl.ping(str(tmp_path / "nope.sock"), timeout=0.5) is False


def test_check_subids_message(pw, monkeypatch):
    monkeypatch.setattr(prereqs, "subid_ranges", lambda path, pw: [])
    with pytest.raises(DaemonError, match="usermod --add-subuids"):
        daemonctl.check_subids(pw)


# ---------------------------------------------------------------- issue 10 #7: signals go through a pidfd


@pytest.fixture
def child():
    import subprocess

    p = subprocess.Popen(["sleep", "60"])
    yield p
    if p.poll() is None:
        p.kill()
    p.wait()


@pytest.fixture
def no_kill_by_number(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: calls.append((pid, sig)))
    return calls


def test_signal_goes_through_the_pidfd_after_the_check(child, no_kill_by_number):
    import signal

    assert daemonctl._signal_all([child.pid], signal.SIGTERM, lambda pid: False) == 0
    assert child.poll() is None  # the check said no: nothing sent
    assert daemonctl._signal_all([child.pid], signal.SIGTERM, lambda pid: pid == child.pid) == 1
    assert child.wait(30) == -signal.SIGTERM
    assert no_kill_by_number == []


def test_process_gone_after_the_check_is_not_signalled_by_number(child, no_kill_by_number):
    """Between the check and the signal the process exits (its pid free for reuse): nobody is hit."""
    import signal

    def check_then_exit(pid):
        fd = os.pidfd_open(pid)
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        os.close(fd)
        child.wait(30)  # reaped: the pid number may now belong to anyone
        return True

    assert daemonctl._signal_all([child.pid], signal.SIGTERM, check_then_exit) == 0
    assert no_kill_by_number == []


def test_without_pidfd_it_falls_back_to_check_then_kill(child, monkeypatch, no_kill_by_number):
    import errno
    import signal

    def no_pidfd(pid):
        raise OSError(errno.ENOSYS, "pidfd_open not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    monkeypatch.setattr(procs, "PIDFD_FALLBACK", False)
    assert daemonctl._signal_all([child.pid], signal.SIGTERM, lambda pid: True) == 1
    assert no_kill_by_number == [(child.pid, signal.SIGTERM)] and procs.PIDFD_FALLBACK


# ---------------------------------------------------------------- issue 10 #1: never in the caller's cgroup on systemd


BINS = {"rootlesskit": "/usr/bin/rootlesskit", "dockerd-rootless.sh": "/usr/share/docker.io/contrib/dockerd-rootless.sh",
        "dockerd": "/usr/sbin/dockerd", "slirp4netns": "/usr/bin/slirp4netns", "newuidmap": "/usr/bin/newuidmap",
        "newgidmap": "/usr/bin/newgidmap"}


@pytest.fixture
def student(tmp_path, runtime_dir, monkeypatch):
    """uid 4242 with a temp home and runtime dir; host preconditions taken as met."""
    if os.geteuid() != 0:
        pytest.skip("needs root (chown)")
    home = tmp_path / "home4242"
    home.mkdir()
    os.chown(home, 4242, 4242)
    monkeypatch.setattr(daemonctl, "check_tun", lambda pw: None)
    monkeypatch.setattr(daemonctl, "check_subids", lambda pw: None)
    monkeypatch.setattr(daemonctl, "find_binaries", lambda: dict(BINS))
    return pwd.struct_passwd(("rgs-fake", "x", 4242, 4242, "", str(home), "/bin/sh"))


class SystemdRecorder:
    """Plays systemd-run and 'systemctl --user is-active' (this machine has no systemd)."""

    def __init__(self, rc=0, stderr="", state="failed"):
        self.rc, self.stderr, self.state, self.calls = rc, stderr, state, []

    def __call__(self, cmd, timeout=None, env=None):
        import subprocess

        self.calls.append(cmd)
        if os.path.basename(cmd[0]) == "systemd-run":
            return subprocess.CompletedProcess(cmd, self.rc, "", self.stderr)
        assert cmd[:3] == ["systemctl", "--user", "--machine=rgs-fake@"] and "is-active" in cmd, cmd
        return subprocess.CompletedProcess(cmd, 3, self.state + "\n", "")


@pytest.fixture
def no_popen(monkeypatch):
    import subprocess

    def refuse(*args, **kwargs):
        raise AssertionError(f"started as our own child: {args}")

    monkeypatch.setattr(subprocess, "Popen", refuse)


def test_on_systemd_the_daemon_is_a_unit_in_the_users_slice(student, no_popen):
    rec = SystemdRecorder(state="failed")
    with pytest.raises(DaemonError, match=r"ended \(its unit rgs-dockerd.service is failed\)"):
        daemonctl.start_daemon(student, systemd=True, run=rec, timeout=30)
    paths = daemonctl.daemon_paths(4242)
    run_cmd = rec.calls[0]
    sep = run_cmd.index("--")
    assert os.path.basename(run_cmd[0]) == "systemd-run"
    assert run_cmd[1:sep][:7] == ["--user", "--machine=rgs-fake@", "--unit=rgs-dockerd.service", "--collect",
                                  "--quiet", "--property=Type=exec", f"--property=StandardOutput=append:{paths.log_file}"]
    assert f"--setenv=XDG_RUNTIME_DIR={paths.runtime_dir}" in run_cmd and "--setenv=_DOCKERD_ROOTLESS_CHILD=1" in run_cmd
    assert run_cmd[sep + 1:] == [BINS["rootlesskit"], *daemonctl.ROOTLESSKIT_FLAGS,
                                 f"--state-dir={paths.runtime_dir}/dockerd-rootless", BINS["dockerd-rootless.sh"]]
    assert not any("setpriv" in a for a in run_cmd)  # the user's manager runs it as the user


def test_on_systemd_without_the_users_manager_start_refuses_with_the_fix(student, no_popen):
    rec = SystemdRecorder(rc=1, stderr="Failed to connect to bus: No medium found")
    with pytest.raises(DaemonError, match="loginctl enable-linger rgs-fake") as e:
        daemonctl.start_daemon(student, systemd=True, run=rec, timeout=30)
    assert "No medium found" in str(e.value) and "user-4242.slice" in str(e.value)
    assert len(rec.calls) == 1


def test_a_deleted_unit_file_does_not_bring_the_daemon_into_the_hubs_cgroup(student, no_popen, tmp_path, monkeypatch):
    """start_daemon_for on a systemd host, the student's docker.service removed: still systemd-run."""
    from rootless_gpu_spawner.host import service

    marker = tmp_path / "run-systemd-system"
    marker.mkdir()
    monkeypatch.setattr(daemonctl, "SYSTEMD_MARKER", str(marker))
    assert service.systemd_running() and not service.uses_systemd(student)
    rec = SystemdRecorder(state="inactive")
    with pytest.raises(DaemonError, match="is inactive"):
        service.start_daemon_for(student, 30, run=rec)
    assert os.path.basename(rec.calls[0][0]) == "systemd-run"


def test_without_systemd_it_is_started_by_hand_detached(student, monkeypatch):
    import subprocess

    started = []

    class Exited:
        pid = 999999

        def __init__(self, cmd, **kwargs):
            started.append((cmd, kwargs))

        def poll(self):
            return 1

    monkeypatch.setattr(subprocess, "Popen", Exited)
    with pytest.raises(DaemonError, match="exited with code 1"):
        daemonctl.start_daemon(student, systemd=False, run=SystemdRecorder(), timeout=30)
    ((cmd, kwargs),) = started
    assert os.path.basename(cmd[0]) == "setpriv" and cmd[1:4] == ["--reuid=4242", "--regid=4242", "--init-groups"]
    assert kwargs["start_new_session"] is True and kwargs["stdin"] == subprocess.DEVNULL
    assert kwargs["env"]["HOME"] == student.pw_dir and "RGS_ROOT_ONLY" not in kwargs["env"]


# ---------------------------------------------------------------- started by the student (a Slurm job's node side)


@pytest.fixture
def as_student_dirs(monkeypatch):
    """A runtime dir and home uid 4242 can reach (pytest's tmp_path is root's 0700)."""
    import shutil
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("needs root (to become uid 4242)")
    base = tempfile.mkdtemp(prefix="rgs-unit-student-")
    os.chmod(base, 0o755)
    home, rd = os.path.join(base, "home"), os.path.join(base, "run")
    for d in (home, rd):
        os.mkdir(d, 0o700)
        os.chown(d, 4242, 4242)
    real = daemonctl.daemon_paths

    def paths(uid):
        p = real(uid)
        names = ("socket", "pid_file", "rootlesskit_pid_file", "log_file", "lock_file")
        return daemonctl.DaemonPaths(int(uid), rd, *(os.path.join(rd, os.path.basename(getattr(p, n))) for n in names))

    monkeypatch.setattr(daemonctl, "daemon_paths", paths)
    monkeypatch.setattr(daemonctl, "check_tun", lambda pw: None)
    monkeypatch.setattr(daemonctl, "check_subids", lambda pw: None)
    yield base, home, rd
    shutil.rmtree(base, ignore_errors=True)


def _as_uid(uid, fn) -> tuple[str, int]:
    """Run fn() in a child that is uid:gid *uid* (not root); (its result or error as text, its pid)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            out = f"ok {fn()}"
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            out = f"{type(e).__name__}: {e}"
        os.write(w, out.encode()[:60000])
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        text = f.read().decode()
    os.waitpid(pid, 0)
    return text, pid


def test_the_student_starts_their_own_daemon_detached_from_the_caller(as_student_dirs, monkeypatch):
    """As the student: no setpriv, no chown; the daemon is nobody's child (a Slurm job's end does not kill it)."""
    base, home, rd = as_student_dirs
    fake = os.path.join(base, "rootlesskit")
    with open(fake, "w") as f:  # plays rootlesskit: waits for its starter to exit, says who its parent is, dies
        f.write("#!/bin/sh\nsleep 1\necho \"fake rootlesskit uid=$(id -u) ppid=$(cut -d' ' -f4 /proc/$$/stat)\"\nexit 3\n")
    os.chmod(fake, 0o755)
    monkeypatch.setattr(daemonctl, "find_binaries", lambda: dict(BINS, rootlesskit=fake))
    student = pwd.struct_passwd(("rgs-fake", "x", 4242, 4242, "", home, "/bin/sh"))
    text, caller = _as_uid(4242, lambda: daemonctl.start_daemon(student, systemd=False, timeout=20))
    assert text.startswith("HostError: rootless dockerd of rgs-fake exited before answering"), text
    assert "fake rootlesskit uid=4242 ppid=" in text, text
    ppid = int(text.split("ppid=")[1].split()[0])
    assert ppid not in (caller, os.getpid()), text  # reparented: not the caller's child
    paths = daemonctl.daemon_paths(4242)
    assert os.stat(paths.log_file).st_uid == 4242 and os.path.exists(paths.rootlesskit_pid_file)


def test_the_student_without_a_runtime_dir_is_told_who_can_make_it(as_student_dirs):
    base, home, rd = as_student_dirs
    os.rmdir(rd)
    student = pwd.struct_passwd(("rgs-fake", "x", 4242, 4242, "", home, "/bin/sh"))
    text, _ = _as_uid(4242, lambda: daemonctl.start_daemon(student, systemd=False, timeout=5))
    assert text.startswith(f"HostError: {rd} (the runtime dir of rgs-fake"), text
    assert "only root can create it" in text and "rootless-gpu-admin bootstrap --user rgs-fake" in text, text
