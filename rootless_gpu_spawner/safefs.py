"""Root touching a student's files: one walker, one reader, one atomic writer.

The hub and ``rootless-gpu-admin`` run as root and must create, read and write
files in places a student controls (their home, ``/run/user/UID``).  The
student may plant symlinks, FIFOs, hard links or race us by swapping a
directory for a link between two system calls.  So, here and only here:

* **No symlink is ever followed by the kernel.**  Every component is opened
  with ``openat(dir_fd, name, O_NOFOLLOW)`` relative to the directory fd we
  already hold.  A symlink met on the way is *read* (``readlinkat``) and its
  text resolved by us, component by component, from the fds on our own stack:
  ``..`` pops that stack and can never climb above the root we started from,
  an absolute target is accepted only when it names a place below that root.
  A link swapped in after we read it changes nothing: the next open is again
  ``O_NOFOLLOW`` on a directory fd of ours.
* **Only regular, single-link files are read or replaced**, opened
  ``O_NONBLOCK`` (a FIFO cannot hang root), checked with ``fstat``.
* **Ownership is handed over through an fd, after fstat shows what we
  expect** (:func:`hand_over`): a file or directory already the student's is
  left alone; one owned by root is chowned only when we just made it; anything
  else is refused.
* **Writes are atomic**: a new temp file (``O_CREAT | O_EXCL | O_NOFOLLOW``)
  renamed over the target; rename replaces a planted link, never follows it.

Errors are :class:`UnsafePathError` subclasses whose message names the path
and the fix; callers turn them into their own error type.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from typing import Optional

from .safetext import printable

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Symlinks resolved (and mkdir races retried) in one walk, like the kernel's 40.
MAX_LINKS = 40


class UnsafePathError(RuntimeError):
    """Root refuses to use a path a student controls; the message says what to do."""


class SymlinkEscape(UnsafePathError):
    """A symbolic link leads out of the directory root walks beneath."""


class NotADirectory(UnsafePathError):
    """Something that is not a directory sits where a directory must be."""


class NotRegularFile(UnsafePathError):
    """A FIFO, device, directory or hard-linked file where a plain file must be."""


class UnexpectedOwner(UnsafePathError):
    """A file or directory is owned by someone root must not hand it over from."""


class TooManyLinks(UnsafePathError):
    """A walk met more than :data:`MAX_LINKS` links (or mkdir races)."""


# --------------------------------------------------------------------------
# Ownership
# --------------------------------------------------------------------------


def hand_over(fd: int, uid: int, gid: int, shown: str, *, root_owned_ok: bool) -> None:
    """Give the open file *fd* to uid:gid, but only if it is what we expect.

    Already *uid*'s: left as is.  Owned by root (and we are root): chowned
    only with *root_owned_ok*, which callers pass for what they just created
    (``O_EXCL``, a fresh ``mkdir``) or an admin made for the student.
    Anything else raises :class:`UnexpectedOwner`.
    """
    st = os.fstat(fd)
    if st.st_uid == uid:
        return
    if root_owned_ok and st.st_uid == 0 and os.geteuid() == 0:
        os.fchown(fd, uid, gid)
        return
    raise UnexpectedOwner(
        f"{shown} is owned by uid {st.st_uid}, not uid {uid}; refusing to hand it over as root. "
        f"Remove it (or chown it to {uid}:{gid}) to continue."
    )


def _looks_fresh(fd: int) -> bool:
    """An empty directory: what our own mkdir just made (not one swapped in with content)."""
    return stat.S_ISDIR(os.fstat(fd).st_mode) and not os.listdir(fd)


# --------------------------------------------------------------------------
# The walker
# --------------------------------------------------------------------------


def _link_target(dir_fd: int, name: str) -> Optional[str]:
    """The text of the symlink *name* in *dir_fd*, or None if it is none (or missing)."""
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except (OSError, ValueError):
        return None


class _Walk:
    """A stack of directory fds from *root* down; see the module docstring."""

    def __init__(self, root_fd: int, root: str, create: Optional[tuple[int, int]], mode: int, aliases: tuple):
        self.root = root.rstrip("/") or "/"
        self.aliases = [self.root, *(a.rstrip("/") for a in aliases if a)]
        self.stack: list[tuple[str, int]] = [("", os.dup(root_fd))]
        self.create, self.mode, self.links = create, mode, 0

    @property
    def fd(self) -> int:
        return self.stack[-1][1]

    def path(self, name: str = "") -> str:
        names = [n for n, _ in self.stack[1:]] + ([name] if name else [])
        return os.path.join(self.root, *names)

    def close(self, keep_top: bool = False) -> None:
        for _, fd in self.stack[: -1] if keep_top else self.stack:
            os.close(fd)

    def run(self, parts: list[str], leaf_file: bool) -> Optional[str]:
        """Walk *parts*; with *leaf_file* the last one is returned (links resolved), not opened."""
        pending = list(reversed(parts))
        while pending:
            name = pending.pop()
            if name in ("", "."):
                continue
            if name == "..":
                self._up(name)
            elif leaf_file and not pending:
                target = _link_target(self.fd, name)
                if target is None:
                    return name
                self._follow(name, target, pending)
            else:
                self._down(name, pending)
        return None

    def _up(self, name: str) -> None:
        if len(self.stack) == 1:
            raise SymlinkEscape(f"{self.path()}/{name} leads outside {self.root}; refusing to follow it as root.")
        os.close(self.stack.pop()[1])

    def _down(self, name: str, pending: list[str]) -> None:
        try:
            fd = os.open(name, O_DIR, dir_fd=self.fd)
        except FileNotFoundError:
            if self.create is None:
                raise
            fd = self._mkdir(name)
            if fd is None:  # something else appeared meanwhile: look again
                self._count(name)
                pending.append(name)
                return
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            target = _link_target(self.fd, name)
            if target is None:
                raise NotADirectory(
                    f"{self.path(name)} exists and is not a directory; move it away so it can be a directory."
                ) from None
            self._follow(name, target, pending)
            return
        self.stack.append((name, fd))

    def _mkdir(self, name: str) -> Optional[int]:
        try:
            os.mkdir(name, self.mode, dir_fd=self.fd)
            fd = os.open(name, O_DIR, dir_fd=self.fd)
        except FileExistsError:
            return None
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                return None
            raise
        try:
            hand_over(fd, *self.create, self.path(name), root_owned_ok=_looks_fresh(fd))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _count(self, name: str) -> None:
        self.links += 1
        if self.links > MAX_LINKS:
            raise TooManyLinks(f"more than {MAX_LINKS} symbolic links (or races) at {self.path(name)}; refusing.")

    def _follow(self, name: str, target: str, pending: list[str]) -> None:
        self._count(name)
        parts = target.split("/")
        if target.startswith("/"):
            rest = self._beneath(target)
            if rest is None:
                raise SymlinkEscape(
                    f"{self.path(name)} is a symbolic link to {printable(target, 200)}, outside the home {self.root}; "
                    "refusing to follow it as root. Replace the link by a real directory or file inside the home."
                )
            while len(self.stack) > 1:
                os.close(self.stack.pop()[1])
            parts = rest
        pending.extend(reversed(parts))

    def _beneath(self, target: str) -> Optional[list[str]]:
        parts = [p for p in target.split("/") if p not in ("", ".")]
        for alias in self.aliases:
            head = [p for p in alias.split("/") if p]
            if parts[: len(head)] == head and ".." not in head:
                return parts[len(head):]
        return None


def _split(rel: str) -> list[str]:
    if not isinstance(rel, str) or "\0" in rel or rel.startswith("/"):
        raise UnsafePathError(f"{printable(rel, 100)!s} is not a relative path")
    return rel.split("/")


def open_dir_beneath(
    root_fd: int, root: str, rel: str, *, create: Optional[tuple[int, int]] = None, mode: int = 0o700, aliases: tuple = ()
) -> tuple[int, str]:
    """Open directory *rel* below *root_fd* (whose path is *root*); (fd, real path).

    Missing directories are created (*mode*, handed to ``create = (uid, gid)``)
    when *create* is given, else FileNotFoundError.  Links are resolved as the
    module docstring says; *aliases* are other absolute spellings of *root*
    that an absolute link target may use.  The caller closes the fd.
    """
    walk = _Walk(root_fd, root, create, mode, aliases)
    try:
        walk.run(_split(rel), leaf_file=False)
    except BaseException:
        walk.close()
        raise
    walk.close(keep_top=True)
    return walk.fd, walk.path()


def locate_beneath(
    root_fd: int, root: str, rel: str, *, create: Optional[tuple[int, int]] = None, mode: int = 0o700, aliases: tuple = ()
) -> tuple[int, str, str]:
    """The directory fd and entry name that *rel* (a file) stands for, links resolved.

    Like :func:`open_dir_beneath` for the parents; the last component is not
    opened, only resolved when it is a link.  Returns (dir fd, name, shown
    path); the caller closes the fd.
    """
    walk = _Walk(root_fd, root, create, mode, aliases)
    try:
        name = walk.run(_split(rel), leaf_file=True)
        if name is None:
            raise NotRegularFile(f"{walk.path()} is a directory, not a file; move it away to continue.")
    except BaseException:
        walk.close()
        raise
    walk.close(keep_top=True)
    return walk.fd, name, walk.path(name)


# --------------------------------------------------------------------------
# Reading and writing plain files
# --------------------------------------------------------------------------


def open_regular(dir_fd: int, name: str, flags: int, mode: int = 0o600, shown: str = "") -> int:
    """Open *name* in *dir_fd* without following a link; refuse all but single-link plain files.

    ``O_NONBLOCK`` keeps a planted FIFO from hanging root; ``fstat`` then
    refuses anything but a regular file with one link (a hard link to e.g.
    /etc/shadow planted by the student would otherwise be read or written).
    """
    shown = shown or name
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotRegularFile(
                f"{shown} is a symbolic link; refusing to follow it as root. "
                f"Remove the link (and put a real file there) to continue."
            ) from e
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        raise NotRegularFile(
            f"{shown} is not a plain file (mode {oct(st.st_mode)}, {st.st_nlink} links); "
            f"refusing to use it as root. Remove it to continue."
        )
    os.set_blocking(fd, True)
    return fd


def open_or_create(dir_fd: int, name: str, flags: int, owner: tuple[int, int], shown: str, mode: int = 0o600) -> int:
    """Open (creating if missing) the plain file *name*, owned by *owner* afterwards.

    Created here (``O_EXCL``): handed over.  Already there: it must already
    be the owner's (:func:`hand_over` refuses anything else).
    """
    try:
        fd = open_regular(dir_fd, name, flags | os.O_CREAT | os.O_EXCL, mode, shown)
        created = True
    except FileExistsError:
        fd = open_regular(dir_fd, name, flags, mode, shown)
        created = False
    try:
        hand_over(fd, *owner, shown, root_owned_ok=created)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_small(dir_fd: int, name: str, limit: int = 1 << 20, shown: str = "") -> Optional[bytes]:
    """Content of a plain file (at most *limit* bytes, else refused), or None if it does not exist."""
    try:
        fd = open_regular(dir_fd, name, os.O_RDONLY, shown=shown)
    except FileNotFoundError:
        return None
    try:
        data = os.read(fd, limit + 1)
        if len(data) > limit:
            raise NotRegularFile(f"{shown or name} is larger than {limit} bytes; refusing to read it.")
        return data
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def atomic_write(
    dir_fd: int, name: str, data: bytes, *, mode: int = 0o644, owner: Optional[tuple[int, int]] = None, shown: str = ""
) -> None:
    """Make *name* in *dir_fd* hold *data*: temp file + rename, owned by *owner* (uid, gid) if given.

    rename replaces the directory entry itself, so a link at *name* is
    replaced, never followed.  The temp file is new (``O_EXCL``), so handing
    it over is always safe.
    """
    tmp = f".{name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        try:
            _write_all(fd, data)
            if owner is not None:
                hand_over(fd, *owner, shown or name, root_owned_ok=True)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
