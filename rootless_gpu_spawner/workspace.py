"""The student's workspace directory: where it is, and creating it safely as root.

The hub runs as root, so every step here avoids following a symlink the
student could have planted: paths are walked with directory file descriptors
and ``O_NOFOLLOW``, and ownership is set on the open descriptor.  Nothing here
ever deletes anything.  (The bind mount itself is done by the student's own
rootless daemon, which can only mount what the student can already read.)
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat


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

    Missing directories are created owned by ``uid:gid``.  A symlink anywhere
    below the home is followed only when it stays inside the home (resolved);
    one that leaves it (``~/workspace -> /etc``, or into another student's
    home) is refused.  Existing directories are never chowned or changed.
    New directories are 0700: another student's container runs as that
    student's uid and must not read this one's files.
    """
    target = workspace_path(home, workspace_dir)
    real_home = os.path.realpath(home)
    try:
        home_st = os.stat(real_home)
    except FileNotFoundError:
        raise WorkspaceError(
            f"home directory {home} does not exist: ask the admin to create it "
            f"(mkhomedir or 'rootless-gpu-admin bootstrap')"
        ) from None
    if not stat.S_ISDIR(home_st.st_mode):
        raise WorkspaceError(f"home {home} is not a directory")
    if home_st.st_uid != uid:
        raise WorkspaceError(
            f"home {home} is owned by uid {home_st.st_uid}, not the student (uid {uid}): "
            "refusing to create a workspace there; ask the admin to fix the ownership"
        )

    components = posixpath.relpath(target, posixpath.normpath(home)).split("/")
    current = real_home
    fd = os.open(current, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for i, name in enumerate(components):
            next_path = posixpath.join(current, name)
            try:
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                try:
                    os.mkdir(name, mode, dir_fd=fd)
                except FileExistsError:
                    pass  # raced with another spawn; open below decides
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                if os.fstat(child).st_uid == 0:
                    os.fchown(child, uid, gid)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                # A symlink (ELOOP) or a file (ENOTDIR) is in the way.
                if not os.path.islink(next_path):
                    raise WorkspaceError(
                        f"{next_path} exists and is not a directory: the student should move it "
                        "away so the workspace can be created"
                    ) from None
                resolved = os.path.realpath(next_path)
                if not _is_within(resolved, real_home):
                    raise WorkspaceError(
                        f"{next_path} is a symlink to {resolved}, outside {home}: refusing to "
                        "use it as the workspace. The student should replace the link with a "
                        "real directory inside their home."
                    ) from None
                child = os.open(resolved, os.O_RDONLY | os.O_DIRECTORY)
                next_path = resolved
            os.close(fd)
            fd, current = child, next_path
        st = os.fstat(fd)
        if st.st_uid != uid:
            raise WorkspaceError(
                f"workspace {current} is owned by uid {st.st_uid}, not the student (uid {uid}): "
                f"ask the admin to run 'chown {uid}:{gid} {current}'"
            )
        return current
    finally:
        os.close(fd)
