"""The hostile daemon (hostile_daemon.py) as a test helper: run one BEHAVIOUR at a socket path.

Every stand-in for a daemon that must not or cannot run for real goes through here: the lying,
stalling and flooding daemons of test_hostile_daemons.py, the rootful daemon (the real one may
never run on the testbed) and the daemon that never answers of test_hostile.py and
test_refusals.py. The fixture ``fake_home`` (conftest.py) holds a copy of the program that the
test users can read, and the fakes' logs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
FAKE_SOURCE = HERE / "hostile_daemon.py"
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"


class Fake:
    """One hostile daemon process (own process group), its request log and its bad answers."""

    def __init__(self, proc, log_path: Path, socket_path: str):
        self.proc, self.log_path, self.socket_path = proc, log_path, socket_path

    def lines(self):
        out = []
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    @property
    def requests(self):
        return [l["req"] for l in self.lines() if "req" in l]

    @property
    def bad(self):
        return [l["bad"] for l in self.lines() if "bad" in l]

    def created(self):
        return [r for r in self.requests if r["method"] == "POST" and r["path"] == "/containers/create"]

    def deleted(self):
        return [r for r in self.requests if r["method"] == "DELETE" and r["path"].startswith("/containers/")]

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


_fake_count = [0]


@contextmanager
def hostile(fake_home: Path, socket_path: str, behaviour: str, *args: str, as_uid=None, max_seconds=120):
    """Run the hostile daemon with BEHAVIOUR at SOCKET_PATH as uid:gid ``as_uid`` (None: root)."""
    _fake_count[0] += 1
    log_path = fake_home / f"fake-{_fake_count[0]:03d}-{behaviour}.log"
    cmd = [sys.executable, str(fake_home / "hostile_daemon.py"), "--socket", socket_path,
           "--behaviour", behaviour, "--max-seconds", str(max_seconds), *args]
    if as_uid is not None:
        uid, gid = as_uid
        cmd = [SETPRIV, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *cmd]
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd="/", start_new_session=True, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    fake = Fake(proc, log_path, socket_path)
    try:
        for _ in range(100):  # bounded: 10 s
            if any("ready" in l for l in fake.lines()):
                break
            if proc.poll() is not None:
                raise AssertionError(f"hostile daemon {behaviour} exited: {log_path.read_text()[-2000:]}")
            time.sleep(0.1)
        else:
            raise AssertionError(f"hostile daemon {behaviour} did not come up: {log_path.read_text()[-2000:]}")
        yield fake
    finally:
        fake.stop()
