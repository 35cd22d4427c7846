"""/proc and signals: which processes are a user's daemon, and signalling them safely.

Pid files are user-writable, so a pid is only ever signalled after ``/proc/PID`` shows it
belongs to that user's uid with an expected command name, and the check and the signal go
through one pidfd (:func:`_signal_verified`), so a recycled pid is never hit.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from typing import Callable, Iterable, Optional

_POLL = 0.2

#: Command names (``/proc/PID/comm``, at most 15 chars) that belong to a
#: rootless dockerd when run by the user's uid.  Deliberately not generic
#: container tools (slirp4netns, runc, conmon): the student may run podman
#: too.  Those, and rootlesskit's child (``/proc/self/exe``, shown as
#: ``exe``), are only matched through the daemon's user namespace.
DAEMON_COMMS = frozenset(
    {
        "rootlesskit",
        "dockerd",
        "dockerd-rootles",  # dockerd-rootless.sh before it execs dockerd (cut at 15)
        "containerd",
        "containerd-shim",  # also containerd-shim-runc-v2, comm is cut at 15 chars
        "docker-proxy",
    }
)


def _proc_uid(pid: int) -> Optional[int]:
    """Real uid of *pid* as the host sees it, None if gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _proc_comm(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _proc_is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _proc_userns(pid: int) -> Optional[str]:
    try:
        return os.readlink(f"/proc/{pid}/ns/user")
    except OSError:
        return None


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}") and not _proc_is_zombie(pid)


def _owned_pid(pid: Optional[int], uid: int, comms: Iterable[str]) -> Optional[int]:
    """*pid* if it is alive, runs as *uid* and has one of *comms*; else None."""
    if not pid or not _alive(pid):
        return None
    if _proc_uid(pid) != uid:
        return None
    return pid if _proc_comm(pid) in set(comms) else None


def _all_pids() -> list[int]:
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def _find_procs(uid: int, comms: Iterable[str]) -> list[int]:
    comms = set(comms)
    return [p for p in _all_pids() if _proc_uid(p) == uid and _proc_comm(p) in comms and not _proc_is_zombie(p)]


def _reap(pids: Iterable[int]) -> None:
    """Collect our own children so they do not linger as zombies."""
    for p in pids:
        try:
            os.waitpid(p, os.WNOHANG)
        except ChildProcessError:
            pass
        except OSError:
            pass


def _belongs_to_daemon(pid: int, uid: int, userns: set[str]) -> bool:
    """*pid* is in the daemon's user namespace, or runs as *uid* with a daemon command name."""
    ns = _proc_userns(pid)
    if ns and ns in userns:
        return True
    return _proc_uid(pid) == uid and _proc_comm(pid) in DAEMON_COMMS


def _daemon_procs(uid: int, userns: set[str]) -> list[int]:
    """Processes that belong to *uid*'s daemon: known command names run by
    the uid, plus anything (also container processes running as subuids) in
    the daemon's user namespace.  User logins (ssh, cron) of the same uid are
    in the initial namespace and not matched, so they survive a stop."""
    me = os.getpid()
    return [p for p in _all_pids() if p != me and not _proc_is_zombie(p) and _belongs_to_daemon(p, uid, userns)]


def _signal_verified(pid: int, sig: int, check: Callable[[int], bool]) -> bool:
    """Send *sig* to *pid* only if *check(pid)* holds for the very process signalled.

    ``pidfd_open`` pins the process first; *check* then reads ``/proc/PID``
    (uid, command name, namespace) while the pidfd holds it; the signal goes
    through the pidfd, so if that process exited meanwhile (and its pid was
    handed to another process) it reaches nobody (ESRCH), never the new one.
    Without pidfds (kernel before 5.3) it falls back to check + ``os.kill``,
    where a pid reused in between could still be hit: PIDFD_FALLBACK says so.
    """
    if not hasattr(os, "pidfd_open"):
        return _signal_checked_by_number(pid, sig, check)
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
            raise
        return _signal_checked_by_number(pid, sig, check)
    try:
        if not check(pid):
            return False
        signal.pidfd_send_signal(pidfd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)


#: Set once pidfds were found missing; then signals go by number after the check.
PIDFD_FALLBACK = False


def _signal_checked_by_number(pid: int, sig: int, check: Callable[[int], bool]) -> bool:
    global PIDFD_FALLBACK
    PIDFD_FALLBACK = True
    if not check(pid):
        return False
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def _signal_all(pids: Iterable[int], sig: int, check: Optional[Callable[[int], bool]] = None) -> int:
    """Signal each pid that (still) passes *check* (default: alive); how many were signalled."""
    check = check or _alive
    return sum(_signal_verified(p, sig, check) for p in pids)


def _wait_gone(pids: Iterable[int], deadline: float) -> list[int]:
    pids = list(pids)
    while True:
        _reap(pids)
        left = [p for p in pids if _alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(_POLL)
