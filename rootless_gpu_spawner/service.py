"""How a user's rootless daemon is run: a systemd user service, or by hand.

Where systemd is PID 1 (``/run/systemd/system`` exists) the standard setup
is Docker's own: ``dockerd-rootless-setuptool.sh install`` run as the user
writes and enables ``~/.config/systemd/user/docker.service``, and
``loginctl enable-linger`` keeps the user's systemd (and so the daemon)
running without a login.  Our drop-in
``~/.config/systemd/user/docker.service.d/override.conf`` turns host
loopback on (containers must reach the hub on the host's 127.0.0.1 as
10.0.2.2): newer scripts read ``DOCKERD_ROOTLESS_ROOTLESSKIT_DISABLE_HOST_LOOPBACK``,
Debian's 20.10 script hard-codes ``--disable-host-loopback``, so for such a
script the drop-in also replaces ``ExecStart`` with the rootlesskit command
that :func:`daemonctl.start_daemon` uses.

Without the unit file (not installed yet, or deleted by the student)
:mod:`daemonctl` starts the daemon itself: on a systemd host as a transient
unit in the user's own systemd (``systemd-run --user --machine=USER@``, so it
lives in ``user-UID.slice``, never in the caller's -- the hub's -- cgroup),
without systemd (containers, minimal VMs, CI) by hand.
:func:`start_daemon_for` picks the right way; the admin CLI's
``start-daemon``/``stop-daemon``/``bootstrap`` and the spawner use it, so
there is one code path for both.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from typing import Optional, Union

from . import commands, daemonctl
from .accounts import SYSTEM_USERNAME
from .daemonctl import DaemonError

SYSTEMD_MARKER = daemonctl.SYSTEMD_MARKER
LINGER_DIR = "/var/lib/systemd/linger"
UNIT = "docker.service"
UNIT_REL = ".config/systemd/user/docker.service"
DROPIN_REL = ".config/systemd/user/docker.service.d/override.conf"
LOOPBACK_ENV = "DOCKERD_ROOTLESS_ROOTLESSKIT_DISABLE_HOST_LOOPBACK"

Runner = commands.Runner


def systemd_running(marker: Optional[str] = None) -> bool:
    """systemd is PID 1 (its own test: sd_booted() checks this directory)."""
    return daemonctl.systemd_running(marker)


def linger_enabled(name: str, linger_dir: str = LINGER_DIR) -> bool:
    return os.path.exists(os.path.join(linger_dir, name))


def unit_installed(pw: pwd.struct_passwd) -> bool:
    try:
        return daemonctl.read_user_file(pw, UNIT_REL) is not None
    except DaemonError:
        return False


def script_honours_loopback_env(script: Optional[str]) -> bool:
    """Does this dockerd-rootless.sh read DOCKERD_ROOTLESS_ROOTLESSKIT_DISABLE_HOST_LOOPBACK?"""
    if not script:
        return False
    try:
        with open(script, encoding="utf-8", errors="replace") as f:
            return LOOPBACK_ENV in f.read()
    except OSError:
        return False


def dropin_text(script: Optional[str] = None, rootlesskit: Optional[str] = None) -> str:
    """The drop-in for the user's docker.service (host loopback on)."""
    script = script or daemonctl.find_binary("dockerd-rootless.sh")
    lines = [
        "# Written by 'rootless-gpu-admin bootstrap': containers reach the hub on the",
        "# host's loopback (10.0.2.2 inside a container), so host loopback stays enabled.",
        "[Service]",
        f"Environment={LOOPBACK_ENV}=false",
    ]
    if script and not script_honours_loopback_env(script):
        rootlesskit = rootlesskit or daemonctl.find_binary("rootlesskit") or "rootlesskit"
        lines += [
            "# This dockerd-rootless.sh hard-codes --disable-host-loopback: run rootlesskit",
            "# ourselves with its other flags (as rootless-gpu-admin start-daemon does).",
            "Environment=_DOCKERD_ROOTLESS_CHILD=1",
            "ExecStart=",
            "ExecStart=" + " ".join([rootlesskit, *daemonctl.ROOTLESSKIT_FLAGS, "--state-dir=%t/dockerd-rootless", script]),
        ]
    return "\n".join(lines) + "\n"


#: Runs host commands (usermod, loginctl, systemctl, the setup tool as the user): see commands.run.
_run = commands.run


def systemctl_user(pw: pwd.struct_passwd, *args: str, run: Runner = _run, timeout: float = 120) -> subprocess.CompletedProcess:
    """``systemctl --user`` in *pw*'s user manager (needs systemd >= 248)."""
    return run(daemonctl.systemctl_user_cmd(pw, *args), timeout=timeout)


def as_user_env(pw: pwd.struct_passwd) -> dict:
    """The environment of a command run as the user (setuptool, systemctl)."""
    rd = daemonctl.daemon_paths(pw.pw_uid).runtime_dir
    contrib = [d for d in daemonctl.CONTRIB_DIRS if os.path.isdir(d)]
    return {
        "HOME": pw.pw_dir,
        "USER": pw.pw_name,
        "LOGNAME": pw.pw_name,
        "PATH": ":".join([*contrib, "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]),
        "XDG_RUNTIME_DIR": rd,
        "DBUS_SESSION_BUS_ADDRESS": f"unix:path={rd}/bus",
        "LANG": "C.UTF-8",
    }


def as_user_cmd(pw: pwd.struct_passwd, *cmd: str) -> list[str]:
    setpriv = daemonctl.find_binary("setpriv") or "setpriv"
    return [setpriv, f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", *cmd]


def _resolve(user: Union[str, pwd.struct_passwd]) -> pwd.struct_passwd:
    if isinstance(user, pwd.struct_passwd):
        return user
    if not isinstance(user, str) or not SYSTEM_USERNAME.match(user):
        raise DaemonError(f"{str(user)[:64]!r} is not a valid login name")
    try:
        return pwd.getpwnam(user)
    except KeyError:
        raise DaemonError(f"no such user {user!r}") from None


def _wait_answering(pw: pwd.struct_passwd, deadline: float) -> int:
    paths = daemonctl.daemon_paths(pw.pw_uid)
    while True:
        st = daemonctl.daemon_status(pw, timeout=2.0)
        if st["running"] and st["pid"]:
            return st["pid"]
        if time.monotonic() >= deadline:
            raise DaemonError(
                f"{pw.pw_name}'s docker.service did not answer on {paths.socket} in time; see "
                f"'journalctl --user -M {pw.pw_name}@ -u {UNIT}'"
            )
        time.sleep(0.3)


def uses_systemd(pw: pwd.struct_passwd, marker: Optional[str] = None) -> bool:
    """The user's daemon is a systemd user service (systemd runs and the unit is installed)."""
    return systemd_running(marker) and unit_installed(pw)


def start_daemon_for(
    user: Union[str, pwd.struct_passwd],
    timeout: float = 60.0,
    *,
    gpu_stub_dir: Optional[str] = None,
    run: Runner = _run,
) -> int:
    """Start *user*'s rootless dockerd unless it already answers; return dockerd's pid.

    The one entry point for "make sure the daemon runs" (admin CLI
    ``start-daemon``/``bootstrap`` and the spawner).  Blocking, bounded by
    *timeout* seconds: call it from a worker thread in async code.  Where
    systemd runs and the user's ``docker.service`` is installed it does
    ``systemctl --user start``, else :func:`daemonctl.start_daemon` starts
    it (a transient unit in the user's systemd where systemd runs, by hand
    where it does not).  Idempotent.  Raises DaemonError with the fix (tun
    device, subuids, missing packages, the user's systemd, log tail).
    """
    pw = _resolve(user)
    if uses_systemd(pw) and gpu_stub_dir is None:
        deadline = time.monotonic() + timeout
        st = daemonctl.daemon_status(pw, timeout=2.0)
        if st["running"] and st["pid"]:
            return st["pid"]
        p = systemctl_user(pw, "start", UNIT, run=run, timeout=timeout)
        if p.returncode != 0:
            raise DaemonError(
                f"systemctl --user -M {pw.pw_name}@ start {UNIT} failed: {(p.stderr or p.stdout).strip()[-500:]}"
            )
        return _wait_answering(pw, deadline)
    return daemonctl.start_daemon(pw, gpu_stub_dir=gpu_stub_dir, timeout=timeout, run=run)


def stop_daemon_for(user: Union[str, pwd.struct_passwd], timeout: float = 30.0, *, run: Runner = _run) -> bool:
    """Stop *user*'s daemon (systemd user service or by hand); True if anything ran."""
    pw = _resolve(user)
    stopped = False
    if uses_systemd(pw):
        was = daemonctl.daemon_status(pw, timeout=2.0)["running"]
        p = systemctl_user(pw, "stop", UNIT, run=run, timeout=timeout)
        if p.returncode != 0:
            raise DaemonError(
                f"systemctl --user -M {pw.pw_name}@ stop {UNIT} failed: {(p.stderr or p.stdout).strip()[-500:]}"
            )
        stopped = was
    # Whatever is left (or a daemon started by hand) goes the daemonctl way.
    return daemonctl.stop_daemon(pw, timeout=timeout) or stopped
