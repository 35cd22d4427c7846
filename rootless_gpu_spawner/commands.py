"""Running host commands from root: detached, bounded, never with root's terminal or environment.

Used for everything root runs on a student's behalf (``usermod``,
``loginctl``, ``systemctl --user -M``, ``systemd-run``, and
``dockerd-rootless-setuptool.sh`` run *as* the student through setpriv).
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from typing import Callable, Optional

Runner = Callable[..., subprocess.CompletedProcess]

#: What a command keeps of its output (the last bytes of each stream).
OUTPUT_LIMIT = 64 * 1024
#: The environment of a command when the caller gives none: never root's own.
MINIMAL_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def run(cmd: list[str], *, timeout: float = 120, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """Run *cmd* (often as a student, through setpriv) detached from root.

    Its own session (setsid: no controlling terminal of root's to read or
    inject into), stdin from /dev/null, *env* or :data:`MINIMAL_ENV` (never
    root's environment), cwd /, the last :data:`OUTPUT_LIMIT` bytes of each
    stream kept, and at *timeout* seconds its whole process group is killed
    (subprocess.TimeoutExpired).
    """
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(MINIMAL_ENV if env is None else env), cwd="/", start_new_session=True, close_fds=True,
    )
    try:
        out, err = _collect(proc, time.monotonic() + timeout, timeout)
    except BaseException:
        _kill_group(proc)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _collect(proc: subprocess.Popen, deadline: float, timeout: float) -> tuple[str, str]:
    """Both output streams (each cut to its last OUTPUT_LIMIT bytes) until exit or *deadline*."""
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    with selectors.DefaultSelector() as sel:
        for f in bufs:
            sel.register(f, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(proc.args, timeout)
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf = bufs[key.fileobj]
                buf += chunk
                del buf[:-OUTPUT_LIMIT]
    for f in bufs:
        f.close()
    proc.wait(max(0.0, deadline - time.monotonic()))
    return tuple(bytes(b).decode("utf-8", "replace") for b in bufs.values())


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the command's process group (its session leader's pid) and reap it."""
    if proc.returncode is None:  # not reaped yet: the group's id cannot belong to anyone else
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    for f in (proc.stdout, proc.stderr):
        f.close()
