"""Fixtures shared by the unit tests."""

import os
import pwd

import pytest


@pytest.fixture
def pw(tmp_path):
    """A made-up account "rgs-fake" with the test's own uid and a home in tmp_path."""
    home = tmp_path / "home" / "student"
    home.mkdir(parents=True)
    return pwd.struct_passwd(("rgs-fake", "x", os.getuid(), os.getgid(), "", str(home), "/bin/sh"))


@pytest.fixture
def runtime_dir(tmp_path, monkeypatch):
    """daemonctl.daemon_paths(uid) redirected into a temp dir: /run/user/UID is never touched."""
    from rootless_gpu_spawner import daemonctl

    rd = tmp_path / "run-user"
    real = daemonctl.daemon_paths

    def paths(uid):
        p = real(uid)
        names = ("socket", "pid_file", "rootlesskit_pid_file", "log_file", "lock_file")
        return daemonctl.DaemonPaths(int(uid), str(rd), *(str(rd / os.path.basename(getattr(p, n))) for n in names))

    monkeypatch.setattr(daemonctl, "daemon_paths", paths)
    return rd
