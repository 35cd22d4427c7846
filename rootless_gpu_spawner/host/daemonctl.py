"""Start, stop and inspect one user's rootless Docker daemon, without systemd.

Why this module exists
----------------------
Each student's JupyterLab runs on the student's *own* rootless dockerd, so a
container escape lands in the student's uid, never in root.  The usual way to
run such a daemon is a systemd *user* service, but our target machines (and
CI) often have no systemd as PID 1, and an admin wants one command that works
everywhere.  So this module does by hand what ``dockerd-rootless.sh`` plus
systemd would do, as plain synchronous Python (stdlib only), usable from an
admin CLI and from the spawner (in a worker thread).

The per-user layout (runtime dir, socket, pid files, log, lock) is spelled in
:mod:`rootless_gpu_spawner.layout`, the one place that names those paths.

Security rules (this code runs as root against user-controlled files):

* The runtime dir and the home are writable by the user, who may plant
  symlinks, FIFOs or hard links there.  Every file root touches there goes
  through :mod:`safefs` (shared with the workspace code): ``O_NOFOLLOW |
  O_NONBLOCK`` opens on directory fds, regular single-link files only, a
  walk that never lets the kernel follow a link (links inside the home are
  resolved by us and may not leave it), one atomic writer, and ownership
  handed over through an fd only after fstat shows what we expect.
* Pid files are user-writable, so a pid read from them is only ever
  signalled after checking ``/proc/PID`` belongs to that user's uid and has
  the expected command name.  Otherwise a student could make root kill the
  hub.  The check and the signal go through one pidfd
  (:func:`_signal_verified`), so a pid recycled in between is never hit.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pwd
import shutil
import signal
import stat
import subprocess
import time
from typing import Iterable, Optional

from .. import boundedjson
from . import commands
from .. import errors
from . import safefs
from .prereqs import (  # noqa: F401  (re-exported: daemonctl.check_tun etc. as before)
    CONTRIB_DIRS, EXTRA_BIN_DIRS, MIN_SUBIDS, _search_dirs, check_subids, check_tun, find_binaries, find_binary,
    subid_entries, subid_ranges,
)
from .procs import (  # noqa: F401  (re-exported)
    DAEMON_COMMS, _POLL, _alive, _all_pids, _belongs_to_daemon, _daemon_procs, _find_procs, _owned_pid, _proc_comm,
    _proc_is_zombie, _proc_uid, _proc_userns, _reap, _signal_all, _signal_verified, _wait_gone,
)
from ..layout import DAEMON_JSON_REL, RUN_USER_DIR, DaemonPaths, daemon_paths  # noqa: F401  (re-exported)
from ..answers import is_rootless  # noqa: F401  (the one test of "not the rootful daemon", re-exported)
from ..safetext import printable, printable_lines
from .userfiles import (  # noqa: F401  (re-exported: daemonctl.read_user_file etc. as before)
    _read_small, _replace_keeping_bak, _safe, read_user_file, user_file, write_user_file,
)
from .daemonjson import _merged, _parse_daemon_json, merge_daemon_json  # noqa: F401  (re-exported)
from .daemonapi import (  # noqa: F401  (re-exported)
    ASK_ERRORS, AnswerTooLarge, DeadlineExceeded, PeerMismatch, _api_object, _open_socket, api_get, ping,
)

__all__ = [
    "DaemonError",
    "DaemonPaths",
    "daemon_paths",
    "ensure_runtime_dir",
    "merge_daemon_json",
    "read_user_file",
    "write_user_file",
    "check_tun",
    "check_subids",
    "find_binaries",
    "find_binary",
    "ROOTLESSKIT_FLAGS",
    "start_daemon",
    "stop_daemon",
    "daemon_status",
    "ping",
    "api_get",
    "CONTRIB_DIRS",
]

LOG_MAX_BYTES = 8 * 1024 * 1024
#: How rootlesskit runs dockerd-rootless.sh: what the script itself does,
#: minus ``--disable-host-loopback`` (hard-coded in Debian's 20.10 script),
#: so containers reach the hub on the host's loopback as 10.0.2.2.  Also
#: used for the systemd drop-in written by ``rootless-gpu-admin bootstrap``.
ROOTLESSKIT_FLAGS = (
    "--net=slirp4netns",
    "--mtu=65520",
    "--slirp4netns-sandbox=auto",
    "--slirp4netns-seccomp=auto",
    "--port-driver=builtin",
    "--copy-up=/etc",
    "--copy-up=/run",
    "--propagation=rslave",
)
_SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


#: The host side's error (root-side start/stop/status, files, prerequisites): errors.HostError.
DaemonError = errors.HostError


# --------------------------------------------------------------------------
# Pid files in the runtime dir (through safefs; the home's files: userfiles.py)
# --------------------------------------------------------------------------

_O_DIR = safefs.O_DIR


@_safe
def _write_pid_file(dir_fd: int, name: str, pid: int, uid: int, gid: int) -> None:
    safefs.atomic_write(dir_fd, name, f"{pid}\n".encode(), mode=0o644, owner=(uid, gid), shown=name)


def _record_pid(paths: "DaemonPaths", pid: int, uid: int, gid: int) -> None:
    """Write dockerd's pid file in the runtime dir (when dockerd did not)."""
    dfd = os.open(paths.runtime_dir, _O_DIR)
    try:
        _write_pid_file(dfd, os.path.basename(paths.pid_file), pid, uid, gid)
    finally:
        os.close(dfd)


def _read_pid_file(path: str) -> Optional[int]:
    d, name = os.path.split(path)
    try:
        dfd = os.open(d, _O_DIR)
    except OSError:
        return None
    try:
        data = _read_small(dfd, name, limit=64, what=path)
    except (safefs.UnsafePathError, OSError):
        return None
    finally:
        os.close(dfd)
    if not data:
        return None
    try:
        pid = int(data.strip().split()[0])
    except (ValueError, IndexError):
        return None
    return pid if pid > 1 else None


# --------------------------------------------------------------------------
# The runtime dir
# --------------------------------------------------------------------------


@_safe
def ensure_runtime_dir(pw: pwd.struct_passwd) -> str:
    """Create ``/run/user/UID`` owned by the user, mode 0700.

    Without systemd-logind nobody creates it; rootless dockerd refuses to
    start without a writable ``XDG_RUNTIME_DIR`` and puts its socket there.
    /run/user itself is root's, so the user cannot swap the directory for a
    symlink; we still open it O_NOFOLLOW and fix owner (only from root:
    :func:`safefs.hand_over`) and mode through the fd.
    """
    paths = daemon_paths(pw.pw_uid)
    if os.geteuid() != 0 and not os.path.isdir(paths.runtime_dir):
        # As the student (a Slurm job's node side): /run/user is root's, only root can make it.
        raise DaemonError(
            f"{paths.runtime_dir} (the runtime dir of {pw.pw_name}, where the daemon's socket lives) does not "
            f"exist on this host and only root can create it: ask the admin to run "
            f"'rootless-gpu-admin bootstrap --user {pw.pw_name}' on it (or to let pam_systemd/logind create it)."
        )
    os.makedirs(RUN_USER_DIR, mode=0o755, exist_ok=True)
    try:
        os.mkdir(paths.runtime_dir, 0o700)
    except FileExistsError:
        pass
    try:
        fd = os.open(paths.runtime_dir, _O_DIR)
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        raise DaemonError(
            f"{paths.runtime_dir} exists but is not a directory; remove it so it can be recreated "
            f"as the runtime dir of {pw.pw_name}."
        ) from None
    try:
        # /run/user is root's: a root-owned UID dir there was made by root for this user.
        safefs.hand_over(fd, pw.pw_uid, pw.pw_gid, paths.runtime_dir, root_owned_ok=True)
        if stat.S_IMODE(os.fstat(fd).st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return paths.runtime_dir


# --------------------------------------------------------------------------
# Start / stop / status
# --------------------------------------------------------------------------


#: How much of the end of a log is read, and the mark before each log line shown.
LOG_TAIL_BYTES = 64 * 1024
LOG_LINE_MARK = "  | "


def _log_lines(path: str, start: int = 0, lines: int = 20) -> list[str]:
    """The last *lines* lines of a student-writable log, each made printable (safetext)."""
    try:
        d, name = os.path.split(path)
        dfd = os.open(d, _O_DIR)
        try:
            fd = safefs.open_regular(dfd, name, os.O_RDONLY, shown=path)
        finally:
            os.close(dfd)
        with os.fdopen(fd, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(start, size - LOG_TAIL_BYTES))
            data = f.read(LOG_TAIL_BYTES)
    except FileNotFoundError:
        return []
    except (OSError, safefs.UnsafePathError) as e:
        return [f"(cannot read {path}: {printable(e)})"]
    return printable_lines(data, limit_lines=lines)


def _log_tail(path: str, start: int = 0, lines: int = 20) -> str:
    """The log's last lines for a message: printable, each marked so it cannot pass for a line of ours."""
    return "\n".join(LOG_LINE_MARK + line for line in _log_lines(path, start, lines)) or LOG_LINE_MARK + "(empty)"


@_safe
def _open_log(paths: DaemonPaths, pw: pwd.struct_passwd) -> tuple[int, int]:
    """Open (create) the log in the runtime dir for appending; (fd, offset).

    A log we create is handed to the user; an existing one must already be
    theirs (safefs.open_or_create refuses anything else)."""
    dfd = os.open(paths.runtime_dir, _O_DIR)
    try:
        name = os.path.basename(paths.log_file)
        fd = safefs.open_or_create(dfd, name, os.O_WRONLY | os.O_APPEND, (pw.pw_uid, pw.pw_gid), paths.log_file)
    finally:
        os.close(dfd)
    if os.fstat(fd).st_size > LOG_MAX_BYTES:
        os.ftruncate(fd, 0)
    offset = os.lseek(fd, 0, os.SEEK_END)
    os.write(fd, f"\n===== rootless-gpu-spawner: starting daemon for {pw.pw_name} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')} =====\n".encode())
    return fd, offset


class _Lock:
    """flock on a file in the runtime dir, bounded wait.

    Serialises concurrent start/stop for the same user (the hub spawning
    while an admin runs the CLI).  The file is in the user's dir, so the
    user could hold it: that only blocks their own daemon until timeout.
    """

    def __init__(self, paths: DaemonPaths, pw: pwd.struct_passwd, timeout: float):
        self.paths, self.pw, self.timeout, self.fd = paths, pw, timeout, -1

    def __enter__(self) -> "_Lock":
        dfd = os.open(self.paths.runtime_dir, _O_DIR)
        try:
            owner = (self.pw.pw_uid, self.pw.pw_gid)
            self.fd = safefs.open_or_create(dfd, os.path.basename(self.paths.lock_file), os.O_RDWR, owner, self.paths.lock_file)
        except safefs.UnsafePathError as e:
            raise DaemonError(str(e)) from e
        finally:
            os.close(dfd)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(self.fd)
                    raise DaemonError(
                        f"another start/stop of {self.pw.pw_name}'s daemon holds {self.paths.lock_file} "
                        f"for more than {self.timeout:.0f}s; wait for it or find it with: fuser {self.paths.lock_file}"
                    ) from None
                time.sleep(_POLL)

    def __exit__(self, *exc) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)


def _running_dockerd(paths: DaemonPaths) -> Optional[int]:
    """Pid of the user's dockerd: from docker.pid if valid, else by /proc scan."""
    pid = _owned_pid(_read_pid_file(paths.pid_file), paths.uid, ("dockerd",))
    if pid:
        return pid
    found = _find_procs(paths.uid, ("dockerd",))
    return min(found) if found else None


def _unlink_in(dir_path: str, names: Iterable[str]) -> None:
    try:
        dfd = os.open(dir_path, _O_DIR)
    except OSError:
        return
    try:
        for n in names:
            try:
                os.unlink(n, dir_fd=dfd)  # unlink never follows a symlink
            except (FileNotFoundError, IsADirectoryError, PermissionError):
                pass
    finally:
        os.close(dfd)


def _child_env(pw: pwd.struct_passwd, paths: DaemonPaths, bins: dict[str, str], gpu_stub_dir: Optional[str]) -> dict[str, str]:
    """A clean environment: nothing of root's (DOCKER_HOST, proxies, PYTHON*)
    leaks into the user's daemon."""
    path = []
    if gpu_stub_dir:
        path.append(gpu_stub_dir)
    for d in [*(os.path.dirname(p) for p in bins.values()), *_SAFE_PATH.split(":")]:
        if d not in path:
            path.append(d)
    env = {
        "HOME": pw.pw_dir,
        "USER": pw.pw_name,
        "LOGNAME": pw.pw_name,
        "SHELL": pw.pw_shell or "/bin/sh",
        "PATH": ":".join(path),
        "XDG_RUNTIME_DIR": paths.runtime_dir,
        "LANG": "C.UTF-8",
        # dockerd-rootless.sh takes its "child" branch (just exec dockerd)
        # because we run rootlesskit ourselves with our own flags.
        "_DOCKERD_ROOTLESS_CHILD": "1",
    }
    return env


def start_daemon(
    pw: pwd.struct_passwd,
    *,
    gpu_stub_dir: Optional[str] = None,
    timeout: float = 60,
    systemd: Optional[bool] = None,
    run: commands.Runner = commands.run,
) -> int:
    """Start *pw*'s rootless dockerd unless it already answers; return its pid.

    We run rootlesskit ourselves instead of plain ``dockerd-rootless.sh``
    because Debian's 20.10 script hard-codes ``--disable-host-loopback``,
    and containers must reach the hub on the host's loopback (as 10.0.2.2,
    slirp4netns' gateway).  *gpu_stub_dir* is put first on the daemon's PATH:
    dockerd registers its NVIDIA device driver when it finds
    ``nvidia-container-runtime-hook`` there at start (a real one on GPU
    hosts, an ``exit 0`` stub on a *simulated GPU host*).

    Where systemd is PID 1 (*systemd* None: detected) the daemon is never a
    child of the caller -- it would live in the caller's cgroup, i.e. the
    hub's: it is started as a transient unit in the user's own systemd
    (``systemd-run --user --machine=USER@``, in ``user-UID.slice``), see
    :func:`systemd_run_cmd`.  Without systemd it is started by hand, in its
    own session.  *run* runs systemd-run/systemctl (tests record it).

    Raises DaemonError with a fix (tun device, subuids, missing packages,
    the user's systemd not running) or with the last lines of the log when
    the daemon dies or does not answer within *timeout* seconds (a timed-out
    start is torn down again).
    """
    deadline = time.monotonic() + timeout
    paths = daemon_paths(pw.pw_uid)
    _check_can_start(pw, gpu_stub_dir)
    ensure_runtime_dir(pw)
    with _Lock(paths, pw, max(1.0, deadline - time.monotonic())):
        pid = _already_running(pw, paths, deadline)
        if pid:
            return pid
        check_tun(pw)
        check_subids(pw)
        bins = find_binaries()
        # Stale files of a crashed daemon would make dockerd refuse to start
        # ("pid file found, ensure docker is not running").
        _unlink_in(paths.runtime_dir, [os.path.basename(paths.socket), os.path.basename(paths.pid_file),
                                       os.path.basename(paths.rootlesskit_pid_file)])
        # A killed rootlesskit leaves sockets in its state dir; start clean.
        _rm_stale_state_dir(paths)
        cmd = [bins["rootlesskit"], *ROOTLESSKIT_FLAGS, f"--state-dir={paths.runtime_dir}/dockerd-rootless",
               bins["dockerd-rootless.sh"]]
        env = _child_env(pw, paths, bins, gpu_stub_dir)
        in_user_manager = systemd_running() if systemd is None else systemd
        logfd, offset = _open_log(paths, pw)
        try:
            if in_user_manager:
                launched = _launch_in_user_manager(pw, paths, cmd, env, run)
            else:
                launched = _launch_by_hand(pw, paths, cmd, env, logfd)
        finally:
            os.close(logfd)
        _wait_first_answer(pw, paths, launched, deadline, timeout, offset)
        return _dockerd_pid(paths, pw)


def _check_can_start(pw: pwd.struct_passwd, gpu_stub_dir: Optional[str]) -> None:
    if os.geteuid() not in (0, pw.pw_uid):
        raise DaemonError(f"starting the daemon of {pw.pw_name} needs root (or to be {pw.pw_name}); run as root.")
    if pw.pw_uid == 0:
        raise DaemonError("refusing to start a rootless daemon for root; use a normal user.")
    if gpu_stub_dir is not None:
        hook = os.path.join(gpu_stub_dir, "nvidia-container-runtime-hook")
        if not (os.path.isfile(hook) and os.access(hook, os.X_OK)):
            raise DaemonError(f"gpu_stub_dir {gpu_stub_dir} has no executable nvidia-container-runtime-hook.")


def _already_running(pw: pwd.struct_passwd, paths: DaemonPaths, deadline: float) -> Optional[int]:
    """Idempotence: the pid of a daemon that answers (kept as is), None when none runs; else DaemonError."""
    uid = pw.pw_uid
    pid = _running_dockerd(paths)
    if pid and ping(paths.socket, uid=uid):
        if _read_pid_file(paths.pid_file) != pid:
            _record_pid(paths, pid, uid, pw.pw_gid)
        return pid
    if pid:
        # Alive but not (yet) answering: maybe still starting elsewhere.
        while time.monotonic() < deadline and _alive(pid):
            if ping(paths.socket, uid=uid):
                return pid
            time.sleep(_POLL)
        raise DaemonError(
            f"dockerd of {pw.pw_name} (pid {pid}) is running but does not answer on {paths.socket}; "
            f"stop it (rootless-gpu-admin stop-daemon {pw.pw_name}) and start again. Log: {paths.log_file}\n"
            + _log_tail(paths.log_file)
        )
    if ping(paths.socket, uid=uid):
        raise DaemonError(
            f"something answers on {paths.socket} but no dockerd of uid {uid} runs; "
            f"find it with: fuser {paths.socket}"
        )
    leftovers = _find_procs(uid, ("rootlesskit",))
    if leftovers:
        raise DaemonError(
            f"rootlesskit of {pw.pw_name} still runs (pids {leftovers}) without a dockerd; "
            f"stop it first (rootless-gpu-admin stop-daemon {pw.pw_name})."
        )
    return None


class _HandStarted:
    """A daemon we started ourselves (no systemd): our child, in its own session."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def ended(self) -> Optional[str]:
        rc = self.proc.poll()
        return None if rc is None else f"exited with code {rc}"


class _Detached:
    """A daemon the student started for themselves, detached from the caller (no parent to poll)."""

    def __init__(self, pid: int):
        self.pid = pid

    def ended(self) -> Optional[str]:
        return None if _alive(self.pid) else "exited"


#: Runs the daemon in the background of a shell that exits at once, so the daemon is nobody's child.
_DETACH_SH = '"$@" </dev/null >&2 & echo $!'


def _launch_detached(pw: pwd.struct_passwd, paths: DaemonPaths, cmd: list[str], env: dict, logfd: int) -> _Detached:
    """As the student (a Slurm job's node side): the daemon must outlive the caller.

    A batch job's processes are its descendants (proctrack/linuxproc, /pgid), all killed when the
    job ends; the student's daemon serves later jobs too. So it is started by a shell that exits
    at once (the daemon is reparented to init, in its own session). Under proctrack/cgroup it
    stays in the job's cgroup: there an admin starts it (rootless-gpu-admin start-daemon)."""
    sh = shutil.which("sh", path=_SAFE_PATH) or "/bin/sh"
    proc = subprocess.Popen([sh, "-c", _DETACH_SH, "sh", *cmd], stdin=subprocess.DEVNULL,  # log: stdout and stderr
                            stdout=subprocess.PIPE, stderr=logfd, env=env, cwd="/", start_new_session=True, close_fds=True)
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise DaemonError(f"the shell starting {pw.pw_name}'s daemon did not return within 10 s") from None
    text = out.decode("ascii", "replace").strip()
    if proc.returncode != 0 or not text.isdigit():
        raise DaemonError(f"could not start {pw.pw_name}'s daemon in the background (sh said {printable(text, 100)!s})")
    pid = int(text)
    _record_rootlesskit(paths, pid, pw)
    return _Detached(pid)


def _launch_by_hand(pw: pwd.struct_passwd, paths: DaemonPaths, cmd: list[str], env: dict, logfd: int):
    """Root: the daemon as root's child, dropped to the student (setpriv). The student: detached."""
    if os.geteuid() != 0:  # the student themselves (start_daemon checked it is them)
        return _launch_detached(pw, paths, cmd, env, logfd)
    setpriv = shutil.which("setpriv", path=":".join(_search_dirs()))
    if not setpriv:
        raise DaemonError("setpriv not found (Debian package 'util-linux'); it drops root to the user.")
    cmd = [setpriv, f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", *cmd]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logfd, stderr=logfd, env=env, cwd="/",
                            start_new_session=True, close_fds=True)
    _record_rootlesskit(paths, proc.pid, pw)
    return _HandStarted(proc)


def _record_rootlesskit(paths: DaemonPaths, pid: int, pw: pwd.struct_passwd) -> None:
    dfd = os.open(paths.runtime_dir, _O_DIR)
    try:
        _write_pid_file(dfd, os.path.basename(paths.rootlesskit_pid_file), pid, pw.pw_uid, pw.pw_gid)
    finally:
        os.close(dfd)


#: The transient unit, in the user's own systemd, that runs a daemon we start.
DAEMON_UNIT = "rgs-dockerd.service"
SYSTEMD_MARKER = "/run/systemd/system"


def systemd_running(marker: Optional[str] = None) -> bool:
    """systemd is PID 1 (its own test: sd_booted() checks this directory)."""
    return os.path.isdir(marker or SYSTEMD_MARKER)


def systemctl_user_cmd(pw: pwd.struct_passwd, *args: str) -> list[str]:
    """``systemctl --user`` in *pw*'s user manager (needs systemd >= 248)."""
    return ["systemctl", "--user", f"--machine={pw.pw_name}@", "--no-pager", *args]


def systemd_run_cmd(pw: pwd.struct_passwd, paths: DaemonPaths, cmd: list[str], env: dict) -> list[str]:
    """systemd-run for *cmd* as a transient unit in *pw*'s own systemd (user-UID.slice).

    Why the user's manager (``--user --machine=USER@``) rather than a system
    unit (``--uid=UID --slice=user-UID.slice``): everything about the unit
    happens as the student -- the user manager opens the log file in
    /run/user/UID, so PID 1 never opens a student-controlled path as root --
    it sits in user@UID.service under user-UID.slice with the cgroup
    delegation a rootless daemon expects, and it is the same manager that
    runs the unit-file daemon.  It needs that manager running (linger),
    which bootstrap sets up on systemd hosts; otherwise start refuses.
    """
    systemd_run = find_binary("systemd-run") or "systemd-run"
    return [
        systemd_run, "--user", f"--machine={pw.pw_name}@", f"--unit={DAEMON_UNIT}", "--collect", "--quiet",
        "--property=Type=exec", f"--property=StandardOutput=append:{paths.log_file}",
        f"--property=StandardError=append:{paths.log_file}", "--working-directory=/",
        *(f"--setenv={k}={v}" for k, v in env.items()), "--", *cmd,
    ]


class _UnitStarted:
    """A daemon running as DAEMON_UNIT in the user's systemd; asks it (at most once a second) whether it ended."""

    def __init__(self, pw: pwd.struct_passwd, run: commands.Runner):
        self.pw, self.run, self.next_check = pw, run, 0.0

    def ended(self) -> Optional[str]:
        if time.monotonic() < self.next_check:
            return None
        self.next_check = time.monotonic() + 1.0
        p = self.run(systemctl_user_cmd(self.pw, "is-active", DAEMON_UNIT), timeout=10)
        state = (p.stdout or "").strip()
        if state in ("active", "activating", "reloading"):
            return None
        return f"ended (its unit {DAEMON_UNIT} is {printable(state, 40)})"


def _launch_in_user_manager(
    pw: pwd.struct_passwd, paths: DaemonPaths, cmd: list[str], env: dict, run: commands.Runner
) -> _UnitStarted:
    p = run(systemd_run_cmd(pw, paths, cmd, env), timeout=60)
    if p.returncode != 0:
        why = printable(((p.stderr or "") + (p.stdout or "")).strip()[-300:], 300)
        raise DaemonError(
            f"systemd-run could not start {pw.pw_name}'s daemon in their own systemd (user-{pw.pw_uid}.slice): {why}. "
            f"Their user manager must run: loginctl enable-linger {pw.pw_name} "
            f"(or: rootless-gpu-admin bootstrap --user {pw.pw_name}), then start again."
        )
    return _UnitStarted(pw, run)


def _wait_first_answer(pw, paths: DaemonPaths, launched, deadline: float, timeout: float, offset: int) -> None:
    """Until the socket answers; DaemonError with the log tail when the daemon ends or *deadline* passes."""
    while True:
        ended = launched.ended()
        if ended is not None:
            raise DaemonError(
                f"rootless dockerd of {pw.pw_name} {ended} before answering on {paths.socket}. "
                f"Last lines of {paths.log_file}:\n" + _log_tail(paths.log_file, offset)
            )
        if os.path.exists(paths.socket) and ping(paths.socket, timeout=1.0, uid=pw.pw_uid):
            return
        if time.monotonic() >= deadline:
            tail = _log_tail(paths.log_file, offset)
            _stop_locked(pw, paths, 10.0)
            raise DaemonError(
                f"rootless dockerd of {pw.pw_name} did not answer on {paths.socket} within {timeout:.0f}s "
                f"(stopped again). Last lines of {paths.log_file}:\n" + tail
            )
        time.sleep(_POLL)


def _dockerd_pid(paths: DaemonPaths, pw: pwd.struct_passwd) -> int:
    pid = _owned_pid(_read_pid_file(paths.pid_file), pw.pw_uid, ("dockerd",))
    if not pid:
        found = _find_procs(pw.pw_uid, ("dockerd",))
        if not found:
            raise DaemonError(f"{paths.socket} answers but no dockerd of uid {pw.pw_uid} was found; see {paths.log_file}")
        pid = min(found)
        _record_pid(paths, pid, pw.pw_uid, pw.pw_gid)
    return pid


def _rm_stale_state_dir(paths: DaemonPaths) -> None:
    """Empty rootlesskit's state dir left by a killed instance (only files
    directly in it; it holds sockets, pid and lock files)."""
    sd = os.path.join(paths.runtime_dir, "dockerd-rootless")
    try:
        st = os.lstat(sd)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        _unlink_in(paths.runtime_dir, ["dockerd-rootless"])
        return
    try:
        names = os.listdir(sd)
    except OSError:
        return
    _unlink_in(sd, names[:100])


def _stop_locked(pw: pwd.struct_passwd, paths: DaemonPaths, timeout: float) -> bool:
    uid = pw.pw_uid
    deadline = time.monotonic() + timeout
    dockerd = _running_dockerd(paths)
    rk = _owned_pid(_read_pid_file(paths.rootlesskit_pid_file), uid, ("rootlesskit",))
    rks = set(_find_procs(uid, ("rootlesskit",)))
    if rk:
        rks.add(rk)
    # User namespaces of the daemon: rootlesskit's child and dockerd live in
    # one that is not the initial namespace; containers inherit it.
    init_ns = _proc_userns(1)
    userns = set()
    for p in [dockerd, *rks, *_find_procs(uid, DAEMON_COMMS)]:
        if p:
            ns = _proc_userns(p)
            if ns and ns != init_ns and ns != _proc_userns(os.getpid()):
                userns.add(ns)
    stopped = False
    ours = lambda p: _belongs_to_daemon(p, uid, userns)  # noqa: E731 - re-checked on each pidfd
    # 1. dockerd first, gracefully: it stops containers and unmounts.
    if dockerd:
        stopped |= _signal_all([dockerd], signal.SIGTERM, ours) > 0
        _wait_gone([dockerd], min(deadline, time.monotonic() + max(1.0, timeout * 0.6)))
    # 2. rootlesskit (normally gone already, it exits with its child).
    if rks:
        stopped |= _signal_all(rks, signal.SIGTERM, ours) > 0
        _wait_gone(rks, min(deadline, time.monotonic() + 3.0))
    # 3. whatever is left of it: TERM, bounded wait, KILL.
    #    The KILL wait is not cut by the caller's timeout: we must not return
    #    while daemon processes remain.
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        left = _daemon_procs(uid, userns)
        if not left:
            break
        stopped |= _signal_all(left, sig, ours) > 0
        now = time.monotonic()
        _wait_gone(left, now + grace if sig == signal.SIGKILL else max(now + 0.5, min(deadline, now + grace)))
    left = _daemon_procs(uid, userns)
    if left:
        raise DaemonError(
            f"processes of {pw.pw_name}'s daemon survived SIGKILL: {left}; check them with ps -o pid,stat,comm -p "
            + ",".join(map(str, left))
        )
    _unlink_in(paths.runtime_dir, [os.path.basename(paths.socket), os.path.basename(paths.pid_file),
                                   os.path.basename(paths.rootlesskit_pid_file)])
    _rm_stale_state_dir(paths)
    return stopped


def stop_daemon(pw: pwd.struct_passwd, timeout: float = 30) -> bool:
    """Stop *pw*'s daemon and everything it started; True if anything ran.

    Idempotent.  dockerd gets SIGTERM first (it stops containers and
    unmounts cleanly), then leftovers -- rootlesskit, slirp4netns,
    containerd, shims and container processes in the daemon's user
    namespace -- get SIGTERM and finally SIGKILL, each wait bounded.  Other
    processes of the user (an ssh login) are left alone.  Stale socket and
    pid files are removed so the next start is clean.
    """
    if os.geteuid() not in (0, pw.pw_uid):
        raise DaemonError(f"stopping the daemon of {pw.pw_name} needs root; run as root.")
    paths = daemon_paths(pw.pw_uid)
    if not os.path.isdir(paths.runtime_dir) or os.path.islink(paths.runtime_dir):
        # Nothing of ours can run without the runtime dir; still sweep by name.
        left = _find_procs(pw.pw_uid, DAEMON_COMMS)
        if not left:
            return False
        ensure_runtime_dir(pw)
    with _Lock(paths, pw, timeout):
        return _stop_locked(pw, paths, timeout)


def daemon_status(pw: pwd.struct_passwd, timeout: float = 5.0) -> dict:
    """What an admin (and the spawner) needs to know about the daemon.

    Keys: user, uid, running (answers /_ping), pid, rootlesskit_pid, socket,
    docker_host, socket_exists, socket_uid, rootless (the daemon says
    ``name=rootless`` in SecurityOptions: proves it is *not* the rootful
    daemon), server_version, api_version, cgroup_driver, log_file, error
    (None or a sentence), log_tail (when not running: the last lines of the
    log, each made printable).  Strings that come from the daemon are made
    printable and bounded.  Never raises for daemon problems.
    """
    paths = daemon_paths(pw.pw_uid)
    st: dict = {
        "user": pw.pw_name, "uid": pw.pw_uid, "running": False, "pid": None, "rootlesskit_pid": None,
        "socket": paths.socket, "docker_host": paths.docker_host, "socket_exists": False, "socket_uid": None,
        "rootless": None, "server_version": None, "api_version": None, "cgroup_driver": None,
        "log_file": paths.log_file, "error": None, "log_tail": [],
    }
    st["pid"] = _running_dockerd(paths)
    st["rootlesskit_pid"] = _owned_pid(_read_pid_file(paths.rootlesskit_pid_file), pw.pw_uid, ("rootlesskit",))
    st["error"] = _socket_problem(pw, paths, st) or _ask_daemon(pw, paths, st, timeout)
    if not st["running"]:
        st["log_tail"] = _log_lines(paths.log_file, lines=STATUS_LOG_LINES)
    return st


#: Log lines daemon_status (and so doctor and status) shows for a daemon that is not running.
STATUS_LOG_LINES = 5


def _socket_problem(pw: pwd.struct_passwd, paths: DaemonPaths, st: dict) -> Optional[str]:
    """Why the socket cannot be the user's daemon (None: it may be); fills socket_exists/socket_uid."""
    try:
        s = os.lstat(paths.socket)
    except FileNotFoundError:
        return f"no socket {paths.socket}: the daemon of {pw.pw_name} is not started (rootless-gpu-admin start-daemon {pw.pw_name})"
    except OSError as e:
        return f"cannot stat {paths.socket}: {e}"
    st["socket_exists"], st["socket_uid"] = stat.S_ISSOCK(s.st_mode), s.st_uid
    if not st["socket_exists"]:
        return f"{paths.socket} is not a socket"
    if s.st_uid != pw.pw_uid:
        return f"{paths.socket} is owned by uid {s.st_uid}, not {pw.pw_uid}; refusing to trust it"
    return None


def _ask_daemon(pw: pwd.struct_passwd, paths: DaemonPaths, st: dict, timeout: float) -> Optional[str]:
    """Ping, /info and /version (bounded, peer uid checked); fills the daemon's facts, returns the problem."""
    try:
        st["running"] = ping(paths.socket, timeout=min(timeout, 2.0), uid=pw.pw_uid)
    except PeerMismatch as e:
        return str(e)
    if not st["running"]:
        return f"{paths.socket} exists but does not answer /_ping (stale? restart the daemon). Log: {paths.log_file}"
    try:
        info, ver = (_api_object(paths.socket, p, timeout, pw.pw_uid) for p in ("/info", "/version"))
    except ASK_ERRORS as e:
        return f"/info or /version failed: {printable(e)}"
    except boundedjson.UntrustedJSONError as e:
        return f"the daemon on {paths.socket} answered /info or /version with a document that is {e}; restart it"
    st["rootless"] = is_rootless(info)
    for key, value in (("server_version", ver.get("Version") or info.get("ServerVersion")),
                       ("api_version", ver.get("ApiVersion")), ("cgroup_driver", info.get("CgroupDriver"))):
        st[key] = None if value is None else printable(value, 100)
    if not st["rootless"]:
        sec = printable(info.get("SecurityOptions"), 300)
        return f"the daemon on {paths.socket} is NOT rootless (SecurityOptions {sec}); do not use it"
    return None
