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

Layout per user (all decided here, nowhere else):

* runtime dir ``/run/user/UID`` (0700, owned by the user) -- what
  ``XDG_RUNTIME_DIR`` points to; dockerd puts its exec-root there.
* socket ``/run/user/UID/docker.sock`` -- ``DOCKER_HOST=unix://...``.
* pid file ``/run/user/UID/docker.pid`` -- written by dockerd itself (we
  write it if it did not).  It holds the *host* pid of dockerd: rootlesskit
  creates user/mount/net namespaces but no pid namespace.
* rootlesskit pid file ``/run/user/UID/rootless-gpu-rootlesskit.pid`` --
  the parent we started, so that stop can reap it too.
* log file ``/run/user/UID/rootless-gpu-daemon.log`` -- stdout/stderr of
  rootlesskit, the script and dockerd.  It lives in the runtime dir, not in
  the home, because root can always write there (homes on NFS with
  root_squash cannot be written by root), it is per boot just like the
  socket, and it sits next to the socket an admin is debugging.  It is
  truncated when it grows past ``LOG_MAX_BYTES``.

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

import contextlib
import errno
import fcntl
import functools
import grp
import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

from . import boundedjson, commands, daemon_errors, safefs
from .answers import is_rootless  # noqa: F401  (the one test of "not the rootful daemon", re-exported)
from .transport import CallGuard, GuardedSocket, SocketTarget
from .safetext import printable, printable_lines

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

#: Where Debian/Ubuntu (docker.io) and upstream packages put dockerd-rootless.sh.
CONTRIB_DIRS = ("/usr/share/docker.io/contrib", "/usr/share/docker/contrib")
#: Searched in addition to $PATH: admins often run us with a reduced PATH.
EXTRA_BIN_DIRS = ("/usr/sbin", *CONTRIB_DIRS, "/usr/bin", "/usr/local/bin", "/usr/local/sbin", "/sbin", "/bin")
#: A daemon with fewer subordinate ids cannot unpack ordinary images (they
#: contain files owned by uid 65534 'nobody' and friends).
MIN_SUBIDS = 65536
LOG_MAX_BYTES = 8 * 1024 * 1024
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
_POLL = 0.2


class DaemonError(RuntimeError):
    """Something prevents a user's rootless daemon from working.

    The message always says what is wrong *and* what an admin can do about
    it, because it ends up verbatim in the admin CLI and in the spawner's
    progress messages.
    """


@dataclass(frozen=True)
class DaemonPaths:
    """Every path of one user's daemon, derived from the uid only."""

    uid: int
    runtime_dir: str
    socket: str
    pid_file: str
    rootlesskit_pid_file: str
    log_file: str
    lock_file: str

    @property
    def docker_host(self) -> str:
        return "unix://" + self.socket


def daemon_paths(uid: int) -> DaemonPaths:
    """Paths of *uid*'s daemon (see the module docstring for why there)."""
    rd = f"/run/user/{int(uid)}"
    return DaemonPaths(
        uid=int(uid),
        runtime_dir=rd,
        socket=f"{rd}/docker.sock",
        pid_file=f"{rd}/docker.pid",
        rootlesskit_pid_file=f"{rd}/rootless-gpu-rootlesskit.pid",
        log_file=f"{rd}/rootless-gpu-daemon.log",
        lock_file=f"{rd}/rootless-gpu-daemon.lock",
    )


# --------------------------------------------------------------------------
# Files root touches in the runtime dir and the home (all through safefs)
# --------------------------------------------------------------------------

_O_DIR = safefs.O_DIR


def _safe(fn):
    """Report safefs' refusals as DaemonError (same message: path and fix)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except safefs.UnsafePathError as e:
            raise DaemonError(str(e)) from e

    return wrapper


def _read_small(dir_fd: int, name: str, limit: int = 1 << 20, what: str = "") -> Optional[bytes]:
    return safefs.read_small(dir_fd, name, limit, shown=what)


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


@contextlib.contextmanager
def user_file(pw: pwd.struct_passwd, rel: str, create: bool) -> Iterator[Optional[tuple[int, str, str]]]:
    """(dir fd, name, shown path) of ``~user/rel`` reached by safefs' walk; None when
    a parent is missing and *create* is False.  Links inside the home are
    resolved by the walk, one leading out of it is refused."""
    home = os.path.realpath(pw.pw_dir)
    try:
        hfd = os.open(home, _O_DIR)
    except (FileNotFoundError, NotADirectoryError):
        raise DaemonError(f"home directory {pw.pw_dir} of {pw.pw_name} does not exist; create it (useradd -m).") from None
    try:
        owner = (pw.pw_uid, pw.pw_gid) if create else None
        found = safefs.locate_beneath(hfd, home, rel, create=owner, aliases=(os.path.normpath(pw.pw_dir),))
    except FileNotFoundError:
        found = None
    except safefs.UnsafePathError as e:
        raise DaemonError(str(e)) from e
    finally:
        os.close(hfd)
    try:
        yield found
    finally:
        if found:
            os.close(found[0])


@_safe
def read_user_file(pw: pwd.struct_passwd, rel: str, limit: int = 1 << 20) -> Optional[bytes]:
    """Content of ``~user/rel`` read as root without following symlinks out
    of the home (None when it or a parent dir does not exist)."""
    with user_file(pw, rel, create=False) as found:
        return _read_small(found[0], found[1], limit=limit, what=found[2]) if found else None


@_safe
def write_user_file(pw: pwd.struct_passwd, rel: str, data: bytes, mode: int = 0o644, *, dry_run: bool = False) -> bool:
    """Make ``~user/rel`` hold *data*, owned by the user; return changed.

    Same rules as merge_daemon_json: parents created 0700 and owned by the
    user, no symlink followed, atomic rename, the previous content kept as
    ``rel.bak``, nothing written (no mtime churn) when the content is
    already right.  With *dry_run* nothing is created or written.
    """
    with user_file(pw, rel, create=not dry_run) as found:
        if found is None:
            return True  # dry run: the directory would be created
        dfd, name, shown = found
        old = _read_small(dfd, name, what=shown)
        if old == data:
            return False
        if not dry_run:
            _replace_keeping_bak(pw, dfd, name, old, data, mode, shown)
        return True


def _replace_keeping_bak(pw, dfd: int, name: str, old: Optional[bytes], data: bytes, mode: int, shown: str) -> None:
    owner = (pw.pw_uid, pw.pw_gid)
    if old is not None:
        safefs.atomic_write(dfd, name + ".bak", old, mode=mode, owner=owner, shown=shown + ".bak")
    safefs.atomic_write(dfd, name, data, mode=mode, owner=owner, shown=shown)


# --------------------------------------------------------------------------
# Runtime dir and daemon.json
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
    os.makedirs("/run/user", mode=0o755, exist_ok=True)
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


@_safe
def merge_daemon_json(
    pw: pwd.struct_passwd,
    registry_mirrors: Optional[list[str]] = None,
    insecure_registries: Optional[list[str]] = None,
    *,
    dry_run: bool = False,
) -> bool:
    """Merge our keys into ``~user/.config/docker/daemon.json``; return changed.

    A rootless dockerd reads this file, not /etc/docker/daemon.json, so the
    mirror/insecure-registry policy of the site has to be put there.  Keys we
    do not manage are kept (the student may have set e.g. "features").  For
    our keys the admin's value wins: a list replaces the old value, an empty
    list removes the key, None leaves it alone.  Nothing is written when the
    content would not change (no mtime churn, no .bak rotation).  When it
    changes, the previous file is kept as ``daemon.json.bak``.  The daemon
    only reads the file at start, so callers restart it when this returns
    True.  Runs as root on the user's home: homes on NFS with root_squash
    need this done as the user instead.  With *dry_run* nothing is created
    or written; the return value says whether it would be.
    """
    with user_file(pw, ".config/docker/daemon.json", create=not dry_run) as found:
        if found is None:
            return any(v for v in (registry_mirrors, insecure_registries))  # dry run: ~/.config/docker is missing
        dfd, name, shown = found
        old_bytes = _read_small(dfd, name, what=shown)
        old = _parse_daemon_json(pw, dfd, name, shown, old_bytes) if old_bytes is not None else {}
        new = _merged(old, registry_mirrors, insecure_registries)
        if new == old and (old_bytes is not None or not new):
            return False
        if not dry_run:
            _replace_keeping_bak(pw, dfd, name, old_bytes, (json.dumps(new, indent=2) + "\n").encode(), 0o644, shown)
        return True


def _parse_daemon_json(pw: pwd.struct_passwd, dfd: int, name: str, shown: str, raw: bytes) -> dict:
    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    if st.st_uid not in (pw.pw_uid, 0):
        raise DaemonError(
            f"{shown} is owned by uid {st.st_uid}, neither {pw.pw_name} nor root; refusing to use it. "
            f"Remove it to continue."
        )
    try:
        old = boundedjson.loads(raw) if raw.strip() else {}
    except boundedjson.UntrustedJSONError as e:
        raise DaemonError(
            f"{shown} is {e}; fix it or move it away (the daemon would not start with it either)."
        ) from None
    if not isinstance(old, dict):
        raise DaemonError(f"{shown} does not hold a JSON object; fix it or move it away.")
    return old


def _merged(old: dict, registry_mirrors: Optional[list[str]], insecure_registries: Optional[list[str]]) -> dict:
    new = dict(old)
    for key, value in (("registry-mirrors", registry_mirrors), ("insecure-registries", insecure_registries)):
        if value is None:
            continue
        value = [str(v) for v in value]
        if value:
            new[key] = value
        else:
            new.pop(key, None)
    return new


# --------------------------------------------------------------------------
# Preconditions
# --------------------------------------------------------------------------


def _user_gids(pw: pwd.struct_passwd) -> set[int]:
    gids = {pw.pw_gid}
    try:
        gids.update(g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem)
    except OSError:
        pass
    return gids


def check_tun(pw: pwd.struct_passwd, path: str = "/dev/net/tun") -> None:
    """slirp4netns opens /dev/net/tun as the user; check the user may.

    It is 0666 on ordinary distributions but 0600 on some minimal VMs and
    containers; we only diagnose, changing device modes is the admin's call.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DaemonError(
            f"{path} does not exist; rootless networking (slirp4netns) needs the tun device: "
            f"load the module (modprobe tun) or create it (mknod {path} c 10 200 && chmod 666 {path})."
        ) from None
    if not stat.S_ISCHR(st.st_mode):
        raise DaemonError(f"{path} is not a character device; recreate it: mknod {path} c 10 200 && chmod 666 {path}")
    m = stat.S_IMODE(st.st_mode)
    ok = (m & 0o006) == 0o006
    ok = ok or (st.st_uid == pw.pw_uid and (m & 0o600) == 0o600)
    ok = ok or (st.st_gid in _user_gids(pw) and (m & 0o060) == 0o060)
    if not ok:
        raise DaemonError(
            f"{path} (mode {oct(m)}, owner {st.st_uid}:{st.st_gid}) is not read/writable by {pw.pw_name}; "
            f"slirp4netns needs it. Fix as root: chmod 666 {path} (the default on ordinary distributions)."
        )


def _subid_ranges(path: str, pw: pwd.struct_passwd) -> list[tuple[int, int]]:
    out = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                bits = line.strip().split(":")
                if len(bits) != 3 or bits[0] not in (pw.pw_name, str(pw.pw_uid)):
                    continue
                try:
                    out.append((int(bits[1]), int(bits[2])))
                except ValueError:
                    continue
    except FileNotFoundError:
        pass
    return out


def check_subids(pw: pwd.struct_passwd) -> None:
    """rootlesskit maps the user's subordinate uid/gid ranges into the
    daemon's user namespace (via setuid newuidmap); without them image
    layers with other owners cannot be unpacked."""
    for path, kind in (("/etc/subuid", "uids"), ("/etc/subgid", "gids")):
        total = sum(c for _, c in _subid_ranges(path, pw))
        if total < MIN_SUBIDS:
            start = 100000 + pw.pw_uid * MIN_SUBIDS  # only a suggestion
            raise DaemonError(
                f"{pw.pw_name} has {total} subordinate {kind} in {path}, needs at least {MIN_SUBIDS}; "
                f"add a free range as root, e.g. usermod --add-subuids {start}-{start + MIN_SUBIDS - 1} "
                f"--add-subgids {start}-{start + MIN_SUBIDS - 1} {pw.pw_name} (check it overlaps no other user)."
            )


def _search_dirs() -> list[str]:
    dirs = [d for d in os.environ.get("PATH", "").split(":") if d]
    for d in EXTRA_BIN_DIRS:
        if d not in dirs:
            dirs.append(d)
    return dirs


def _which(name: str, dirs: list[str]) -> Optional[str]:
    for d in dirs:
        p = os.path.join(d, name)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


def find_binary(name: str) -> Optional[str]:
    """Path of an executable *name* on $PATH or the usual system/contrib dirs."""
    return _which(name, _search_dirs())


def find_binaries() -> dict[str, str]:
    """Locate what a rootless daemon needs; DaemonError names the package.

    Debian keeps dockerd in /usr/sbin and the script in a contrib dir that is
    never on PATH, hence the extra search dirs.
    """
    dirs = _search_dirs()
    need = {
        "rootlesskit": "rootlesskit (Debian package 'rootlesskit')",
        "dockerd-rootless.sh": "dockerd-rootless.sh (Debian package 'docker.io', in /usr/share/docker.io/contrib)",
        "dockerd": "dockerd (Debian package 'docker.io')",
        "slirp4netns": "slirp4netns (Debian package 'slirp4netns')",
        "newuidmap": "newuidmap (Debian package 'uidmap')",
        "newgidmap": "newgidmap (Debian package 'uidmap')",
    }
    found, missing = {}, []
    for name, hint in need.items():
        p = _which(name, dirs)
        if p is None:
            missing.append(hint)
        else:
            found[name] = p
    if missing:
        raise DaemonError("not found: " + "; ".join(missing) + ". Install them (apt-get install docker.io rootlesskit slirp4netns uidmap).")
    for name in ("newuidmap", "newgidmap"):
        if not os.stat(found[name]).st_mode & stat.S_ISUID:
            raise DaemonError(f"{found[name]} is not setuid root; reinstall package 'uidmap' (or chmod u+s {found[name]}).")
    return found


# --------------------------------------------------------------------------
# Talking to the daemon
# --------------------------------------------------------------------------


# The one transport (peer-verified, deadline-bound) and its errors, shared with the hub.
PeerMismatch = daemon_errors.PeerMismatch
AnswerTooLarge = daemon_errors.AnswerTooLarge
DeadlineExceeded = daemon_errors.DeadlineExceeded
#: What asking a student's daemon can raise, besides our own DaemonError.
ASK_ERRORS = (OSError, http.client.HTTPException, daemon_errors.DaemonError)


def _open_socket(socket_path: str, timeout: float, uid: Optional[int], account: Optional[str]) -> socket.socket:
    if uid is not None:  # the socket must be the student's, and so must its listener
        return SocketTarget(socket_path, uid, account or f"uid {uid}").open(timeout)
    sock = GuardedSocket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        sock.connect(socket_path)
    except BaseException:
        sock.close()
        raise
    return sock


def api_get(
    socket_path: str, path: str, timeout: float = 5.0, limit: int = 8 << 20, *,
    uid: Optional[int] = None, account: Optional[str] = None,
) -> tuple[int, bytes]:
    """GET *path* from the Docker API on *socket_path*; (status, body).

    Through :mod:`.transport`: the whole exchange ends by *timeout* seconds
    (DeadlineExceeded), a body over *limit* bytes raises AnswerTooLarge, and
    with *uid* the socket must be that uid's and so must the process serving
    it (UnsafeSocket / PeerMismatch). stdlib http.client on purpose: one
    short exchange per call, no pool to keep in the admin CLI.
    """
    with CallGuard(timeout, None):
        conn = http.client.HTTPConnection("localhost", timeout=timeout)
        conn.sock = _open_socket(socket_path, timeout, uid, account)
        try:
            conn.request("GET", path, headers={"Host": "docker"})
            resp = conn.getresponse()
            body = resp.read(limit + 1)
        finally:
            conn.close()
    if len(body) > limit:
        raise AnswerTooLarge(f"sent an answer to GET {path} on {socket_path} larger than {limit} bytes")
    return resp.status, body


def _api_object(socket_path: str, path: str, timeout: float, uid: int) -> dict:
    """GET *path* and parse the answer as a bounded JSON object ({} unless 200)."""
    code, body = api_get(socket_path, path, timeout=timeout, limit=boundedjson.MAX_BYTES, uid=uid)
    return boundedjson.loads_object(body) if code == 200 else {}


def ping(socket_path: str, timeout: float = 2.0, *, uid: Optional[int] = None) -> bool:
    """True when something answers ``GET /_ping`` with 200 "OK" on the socket.

    With *uid*, a server of another uid raises PeerMismatch instead of
    counting as an answer."""
    try:
        status, body = api_get(socket_path, "/_ping", timeout=timeout, limit=64, uid=uid)
    except PeerMismatch:
        raise
    except ASK_ERRORS:
        return False
    return status == 200 and body.strip() == b"OK"


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------


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


def _launch_by_hand(pw: pwd.struct_passwd, paths: DaemonPaths, cmd: list[str], env: dict, logfd: int) -> _HandStarted:
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv", path=":".join(_search_dirs()))
        if not setpriv:
            raise DaemonError("setpriv not found (Debian package 'util-linux'); it drops root to the user.")
        cmd = [setpriv, f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", *cmd]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logfd, stderr=logfd, env=env, cwd="/",
                            start_new_session=True, close_fds=True)
    dfd = os.open(paths.runtime_dir, _O_DIR)
    try:
        _write_pid_file(dfd, os.path.basename(paths.rootlesskit_pid_file), proc.pid, pw.pw_uid, pw.pw_gid)
    finally:
        os.close(dfd)
    return _HandStarted(proc)


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
