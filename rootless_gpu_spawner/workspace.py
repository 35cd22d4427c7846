"""The student's workspace directory: where it is, and creating it safely as root.

The hub runs as root, so every step here avoids following a symlink the
student could have planted: paths are walked with :mod:`safefs` (directory
file descriptors, ``O_NOFOLLOW``, links resolved by us inside the home only),
and ownership is set on the open descriptor after checking it.  Nothing here
ever deletes anything.  (The bind mount itself is done by the student's own
rootless daemon, which can only mount what the student can already read.)
"""

from __future__ import annotations

import os
import posixpath

from . import safefs


class WorkspaceError(RuntimeError):
    """The workspace cannot be used; the message says why and what to do."""


def workspace_path(home: str, workspace_dir: str) -> str:
    """The absolute workspace path for ``workspace_dir`` (relative to ``home``).

    Lexical check only: ``..`` that climbs out of the home and absolute paths
    outside it are refused.  Symlinks are checked by :func:`ensure_workspace`.
    """
    if not isinstance(workspace_dir, str) or not workspace_dir.strip():
        raise WorkspaceError("RootlessGPUSpawner.workspace_dir is empty; set it to e.g. 'workspace'")
    if "\0" in workspace_dir:
        raise WorkspaceError("RootlessGPUSpawner.workspace_dir contains a NUL byte")
    home = posixpath.normpath(home)
    target = posixpath.normpath(posixpath.join(home, workspace_dir))
    if not _is_within(target, home) or target == home:
        raise WorkspaceError(
            f"workspace {workspace_dir!r} is outside the home directory {home}: "
            "RootlessGPUSpawner.workspace_dir must be a directory inside the student's home "
            "(e.g. 'workspace')"
        )
    return target


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def ensure_workspace(home: str, workspace_dir: str, uid: int, gid: int, mode: int = 0o700) -> str:
    """Make sure the workspace exists and belongs to the student; return its real path.

    Missing directories are created owned by ``uid:gid`` (mode *mode*, 0700:
    another student's container runs as that student's uid and must not read
    this one's files).  The walk is :func:`safefs.open_dir_beneath`: no
    symlink is followed by the kernel; one below the home is resolved
    component by component and only while it stays inside the home
    (``~/workspace -> /etc`` or into another student's home is refused).
    Existing directories are never chowned or changed.
    """
    target = workspace_path(home, workspace_dir)
    rel = posixpath.relpath(target, posixpath.normpath(home))
    real_home = os.path.realpath(home)
    home_fd = _open_home(home, real_home, uid)
    try:
        fd, real = safefs.open_dir_beneath(
            home_fd, real_home, rel, create=(uid, gid), mode=mode, aliases=(posixpath.normpath(home),)
        )
    except safefs.UnsafePathError as e:
        raise WorkspaceError(f"{e} (workspace {workspace_dir!r})") from None
    finally:
        os.close(home_fd)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if st.st_uid != uid:
        raise WorkspaceError(
            f"workspace {real} is owned by uid {st.st_uid}, not the student (uid {uid}): "
            f"ask the admin to run 'chown {uid}:{gid} {real}'"
        )
    return real


def _open_home(home: str, real_home: str, uid: int) -> int:
    """An fd of the student's home (O_NOFOLLOW), which must be theirs."""
    try:
        fd = os.open(real_home, safefs.O_DIR)
    except FileNotFoundError:
        raise WorkspaceError(
            f"home directory {home} does not exist: ask the admin to create it "
            f"(mkhomedir or 'rootless-gpu-admin bootstrap')"
        ) from None
    except NotADirectoryError:
        raise WorkspaceError(f"home {home} is not a directory") from None
    owner = os.fstat(fd).st_uid
    if owner != uid:
        os.close(fd)
        raise WorkspaceError(
            f"home {home} is owned by uid {owner}, not the student (uid {uid}): "
            "refusing to create a workspace there; ask the admin to fix the ownership"
        )
    return fd


def hand_over_root_owned(home: str, workspace_dir: str, uid: int, gid: int) -> bool:
    """Give a workspace an admin made as root to the student; True if it was root's.

    The directory is reached by the same walk (nothing created, no link
    followed by the kernel) and chowned through its fd after fstat shows a
    directory owned by root; one owned by anybody else is left alone.
    """
    rel = posixpath.relpath(workspace_path(home, workspace_dir), posixpath.normpath(home))
    real_home = os.path.realpath(home)
    home_fd = _open_home(home, real_home, uid)
    try:
        fd, real = safefs.open_dir_beneath(home_fd, real_home, rel, aliases=(posixpath.normpath(home),))
    except safefs.UnsafePathError as e:
        raise WorkspaceError(str(e)) from None
    finally:
        os.close(home_fd)
    try:
        if os.fstat(fd).st_uid != 0:
            return False
        safefs.hand_over(fd, uid, gid, real, root_owned_ok=True)
        return True
    finally:
        os.close(fd)
