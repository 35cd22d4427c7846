"""Stand-ins for daemons we must never run for real in a test.

The rootful Docker daemon may not be started on the testbed (the suite must
prove nothing needs it), and a daemon that hangs is hard to produce on
purpose. So small servers on a unix socket play them, at the path where a
student's rootless daemon should be:

* ``rootful``: answers ``/_ping``, ``/version`` and ``/info`` like Docker 20.10
  does *without* the ``name=rootless`` security option.
* ``hang``: accepts connections and never answers until released.

The hub checks who listens on every connection (``SO_PEERCRED``), so a
stand-in runs as a process of its own with the listening uid of the test's
choosing: by default the student's (what a student's own program looks
like), or ``listen_uid=0`` for a server that really runs as root with the
socket file merely given to the student.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

SERVER_SOURCE = (Path(__file__).parent / "fake_daemon_server.py").read_text()


class FakeDaemon:
    def __init__(self, path: str, mode: str, uid: int, gid: int, listen_uid: int | None = None):
        self.path, self.mode, self.uid, self.gid = path, mode, uid, gid
        self.listen_uid = uid if listen_uid is None else listen_uid
        self._requests: list = []
        self.proc: subprocess.Popen | None = None

    @property
    def requests(self):
        return list(self._requests)

    def _command(self) -> list:
        cmd = [sys.executable, "-c", SERVER_SOURCE, self.path, self.mode]
        if self.listen_uid != 0:
            cmd = ["setpriv", f"--reuid={self.listen_uid}", f"--regid={self.gid}", "--clear-groups", "--"] + cmd
        return cmd

    def __enter__(self):
        self.proc = subprocess.Popen(
            self._command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd="/",
            start_new_session=True, text=True,
        )
        first = self.proc.stdout.readline()  # "ready", or "" if it died
        if not first.startswith("ready"):
            self.__exit__(None, None, None)
            raise RuntimeError(f"fake {self.mode} daemon did not start at {self.path}")
        if self.listen_uid != self.uid:
            os.chown(self.path, self.uid, self.gid)  # the file looks like the student's
        threading.Thread(target=self._collect, daemon=True).start()
        return self

    def _collect(self):
        for line in self.proc.stdout:
            method, _, path = line.rstrip("\n").partition(" ")
            self._requests.append((method, path))

    def release(self):
        if self.proc is not None and self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def __exit__(self, *exc):
        self.release()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
