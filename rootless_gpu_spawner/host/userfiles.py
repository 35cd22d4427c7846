"""Files root reads and writes in a user's home (through :mod:`safefs`: no link followed out of
the home, regular single-link files only, atomic replace keeping a ``.bak``).

The home is the user's: they may plant symlinks, FIFOs or hard links there. Everything here
goes through safefs' walk on directory fds, and every refusal is a HostError with the path and
the fix.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
from typing import Iterator, Optional

from .. import errors
from . import safefs

DaemonError = errors.HostError
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
