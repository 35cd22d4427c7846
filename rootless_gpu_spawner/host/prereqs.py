"""The host's prerequisites for a user's rootless daemon: the tun device, subordinate ids, the
binaries (rootlesskit, dockerd-rootless.sh, newuidmap, ...).  Each check raises
:class:`~rootless_gpu_spawner.errors.HostError` with the fix; the doctor's checks
(``admin/checks.py``) report the same facts as findings.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from typing import Optional

from ..errors import HostError as DaemonError

#: Where Debian/Ubuntu (docker.io) and upstream packages put dockerd-rootless.sh.
CONTRIB_DIRS = ("/usr/share/docker.io/contrib", "/usr/share/docker/contrib")
#: Searched in addition to $PATH: admins often run us with a reduced PATH.
EXTRA_BIN_DIRS = ("/usr/sbin", *CONTRIB_DIRS, "/usr/bin", "/usr/local/bin", "/usr/local/sbin", "/sbin", "/bin")
#: A daemon with fewer subordinate ids cannot unpack ordinary images (they
#: contain files owned by uid 65534 'nobody' and friends).
MIN_SUBIDS = 65536


def _user_gids(pw: pwd.struct_passwd) -> set[int]:
    gids = {pw.pw_gid}
    try:
        gids.update(g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem)
    except OSError:
        pass
    return gids


TUN = "/dev/net/tun"


@dataclass(frozen=True)
class TunDevice:
    """What the tun device looks like: the one reading behind the start check, the doctor and bootstrap.

    slirp4netns opens it as the user. It is 0666 on ordinary distributions but 0600 on some
    minimal VMs and containers.
    """

    path: str
    exists: bool
    is_char: bool = False
    mode: int = 0
    uid: int = 0
    gid: int = 0

    @property
    def problem(self) -> Optional[tuple[str, str]]:
        """(what is wrong, the fix) when the device itself is missing or not a device."""
        if not self.exists:
            return (f"{self.path} does not exist; rootless networking (slirp4netns) needs the tun device",
                    f"modprobe tun  (or: mknod {self.path} c 10 200 && chmod 666 {self.path})")
        if not self.is_char:
            return (f"{self.path} is not a character device",
                    f"rm {self.path} && mknod {self.path} c 10 200 && chmod 666 {self.path}")
        return None

    @property
    def usable_by_all(self) -> bool:
        return self.problem is None and self.mode & 0o006 == 0o006

    def usable_by(self, pw: pwd.struct_passwd) -> bool:
        if self.problem is not None:
            return False
        return (self.usable_by_all
                or (self.uid == pw.pw_uid and self.mode & 0o600 == 0o600)
                or (self.gid in _user_gids(pw) and self.mode & 0o060 == 0o060))


def read_tun(path: str = TUN) -> TunDevice:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return TunDevice(path, exists=False)
    return TunDevice(path, True, stat.S_ISCHR(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)


def check_tun(pw: pwd.struct_passwd, path: str = TUN) -> None:
    """Raise with the fix unless ``pw`` may open the tun device (we only diagnose here;
    changing device modes is bootstrap's job, the admin's call)."""
    tun = read_tun(path)
    if tun.problem:
        what, fix = tun.problem
        raise DaemonError(f"{what}: {fix}.")
    if not tun.usable_by(pw):
        raise DaemonError(
            f"{path} (mode {oct(tun.mode)}, owner {tun.uid}:{tun.gid}) is not read/writable by {pw.pw_name}; "
            f"slirp4netns needs it. Fix as root: chmod 666 {path} (the default on ordinary distributions)."
        )


def subid_entries(path: str) -> list[tuple[str, int, int]]:
    """Every ``owner:start:count`` line of /etc/subuid or /etc/subgid (the one parser);
    a malformed line is skipped, a missing or unreadable file has none."""
    out = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return out
    for line in text.splitlines():
        bits = line.strip().split(":")
        if len(bits) == 3 and bits[1].isdigit() and bits[2].isdigit():
            out.append((bits[0], int(bits[1]), int(bits[2])))
    return out


def subid_ranges(path: str, pw: pwd.struct_passwd) -> list[tuple[int, int]]:
    """(start, count) of *pw*'s ranges in *path* (by name or uid)."""
    return [(start, count) for owner, start, count in subid_entries(path) if owner in (pw.pw_name, str(pw.pw_uid))]


def check_subids(pw: pwd.struct_passwd) -> None:
    """rootlesskit maps the user's subordinate uid/gid ranges into the
    daemon's user namespace (via setuid newuidmap); without them image
    layers with other owners cannot be unpacked."""
    for path, kind in (("/etc/subuid", "uids"), ("/etc/subgid", "gids")):
        total = sum(c for _, c in subid_ranges(path, pw))
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
