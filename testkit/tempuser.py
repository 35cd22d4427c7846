"""Throw-away student accounts for tests and benchmarks (useradd/userdel; root only).

``temp_student(prefix)`` yields a new account (``PREFIX-<random>``, subids
from Debian's useradd, nothing else set up) and at the end stops its rootless
daemon, ends every process of its uid, and deletes the account with its home
and runtime dir.  Accounts of the testbed are never touched.
"""

from __future__ import annotations

import contextlib
import pwd
import secrets
import shutil
import signal
import subprocess
import time

from rootless_gpu_spawner.host import daemonctl


def remove_student(pw: pwd.struct_passwd) -> None:
    try:
        daemonctl.stop_daemon(pw)
    except Exception as e:  # noqa: BLE001 - teardown: report and go on removing the account
        print(f"stop_daemon({pw.pw_name}): {e}")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = [p for p in daemonctl._all_pids() if daemonctl._proc_uid(p) == pw.pw_uid and not daemonctl._proc_is_zombie(p)]
        daemonctl._signal_all(left, sig)
        daemonctl._wait_gone(left, time.monotonic() + 5)
    subprocess.run(["userdel", "-r", pw.pw_name], timeout=120, capture_output=True)
    shutil.rmtree(f"/run/user/{pw.pw_uid}", ignore_errors=True)


def new_student(prefix: str) -> pwd.struct_passwd:
    name = f"{prefix}-{secrets.token_hex(3)}"
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True, timeout=60, capture_output=True)
    return pwd.getpwnam(name)


@contextlib.contextmanager
def temp_student(prefix: str = "rgscache"):
    pw = new_student(prefix)
    try:
        yield pw
    finally:
        remove_student(pw)
