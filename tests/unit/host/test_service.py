"""service.start_daemon_for, the one "make sure the daemon runs" (CLI and spawner), with the
command recorder: which commands it runs on a systemd host with the user's unit, and when it
hands over to daemonctl.start_daemon.  No process is started."""

import pwd
import subprocess

import pytest

from rootless_gpu_spawner.host import daemonctl, service
from rootless_gpu_spawner.host.daemonctl import DaemonError

STUDENT = pwd.struct_passwd(("rgs-fake", "x", 4242, 4242, "", "/nonexistent/rgs-fake", "/bin/sh"))


class Recorder:
    """Plays ``systemctl --user``: every command is recorded, none is run."""

    def __init__(self, rc=0, stderr=""):
        self.rc, self.stderr, self.calls = rc, stderr, []

    def __call__(self, cmd, timeout=None, env=None):
        self.calls.append(cmd)
        return subprocess.CompletedProcess(cmd, self.rc, "", self.stderr)


@pytest.fixture
def statuses(monkeypatch):
    """daemon_status answers from a list (the last one repeats); daemonctl.start_daemon refuses."""
    answers = []

    def status(pw, timeout=2.0):
        return answers.pop(0) if len(answers) > 1 else answers[0]

    def by_hand(*args, **kwargs):
        raise AssertionError("daemonctl.start_daemon called on a systemd host with the unit installed")

    monkeypatch.setattr(daemonctl, "daemon_status", status)
    monkeypatch.setattr(daemonctl, "start_daemon", by_hand)
    monkeypatch.setattr(service, "uses_systemd", lambda pw, marker=None: True)
    return answers


DOWN = {"running": False, "pid": None}
UP = {"running": True, "pid": 4711}


def test_with_the_users_unit_it_is_systemctl_start_then_the_pid(statuses):
    statuses += [DOWN, DOWN, UP]
    rec = Recorder()
    assert service.start_daemon_for(STUDENT, 30, run=rec) == 4711
    ((cmd),) = rec.calls
    assert cmd == daemonctl.systemctl_user_cmd(STUDENT, "start", service.UNIT)


def test_a_running_daemon_runs_nothing(statuses):
    statuses.append(UP)
    rec = Recorder()
    assert service.start_daemon_for(STUDENT, 30, run=rec) == 4711 and rec.calls == []


def test_a_failed_systemctl_start_says_what_systemd_said(statuses):
    statuses.append(DOWN)
    rec = Recorder(rc=1, stderr="Job for docker.service failed")
    with pytest.raises(DaemonError, match=r"systemctl --user -M rgs-fake@ start docker.service failed: Job for"):
        service.start_daemon_for(STUDENT, 30, run=rec)


def test_without_systemd_daemonctl_starts_it_for_the_same_account(monkeypatch):
    started = []
    monkeypatch.setattr(service, "uses_systemd", lambda pw, marker=None: False)
    monkeypatch.setattr(daemonctl, "start_daemon", lambda pw, **kw: started.append((pw, kw)) or 99)
    assert service.start_daemon_for(STUDENT, 12, run=Recorder()) == 99
    ((pw, kw),) = started
    assert pw is STUDENT and kw["timeout"] == 12 and kw["gpu_stub_dir"] is None


@pytest.mark.parametrize("name", ["Bad Name", "../etc", ""])
def test_a_name_goes_through_the_one_resolver(name):
    with pytest.raises(DaemonError, match="is not a valid login name"):
        service.start_daemon_for(name, 1, run=Recorder())
