"""safefs: the one walker, reader and atomic writer root uses on a student's files (issue 10).

Also the callers' ownership rules: a file or directory is handed to the
student through its fd only when fstat shows it is ours (just created, or an
admin's for the student) or already theirs.
"""

import os
import pwd
import stat

import pytest

from rootless_gpu_spawner import daemonctl, safefs
from rootless_gpu_spawner.daemonctl import DaemonError

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")
UID, GID = 54321, 54321


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    fd = os.open(r, safefs.O_DIR)
    yield r, fd
    os.close(fd)


def test_walk_creates_and_resolves_inside_links(root):
    r, fd = root
    (r / "real").mkdir()
    (r / "link").symlink_to("real")
    (r / "abs").symlink_to(r / "real")
    for rel in ("link/a", "abs/a", "real/./a", "link/../real/a"):
        dfd, real = safefs.open_dir_beneath(fd, str(r), rel, create=(os.getuid(), os.getgid()))
        os.close(dfd)
        assert real == str(r / "real" / "a"), rel


@pytest.mark.parametrize("target", ["..", "../..", "/etc", "real/../../x"])
def test_walk_refuses_links_out(root, target):
    r, fd = root
    (r / "real").mkdir()
    (r / "link").symlink_to(target)
    with pytest.raises(safefs.SymlinkEscape):
        safefs.open_dir_beneath(fd, str(r), "link/x", create=(os.getuid(), os.getgid()))


def test_walk_refuses_dotdot_above_root(root):
    r, fd = root
    with pytest.raises(safefs.SymlinkEscape):
        safefs.open_dir_beneath(fd, str(r), "../x")


def test_locate_resolves_a_file_link(root):
    r, fd = root
    (r / "dot").mkdir()
    (r / "dot" / "f").write_text("x")
    (r / "f").symlink_to("dot/f")
    dfd, name, shown = safefs.locate_beneath(fd, str(r), "f")
    try:
        assert (name, shown) == ("f", str(r / "dot" / "f"))
        assert safefs.read_small(dfd, name) == b"x"
    finally:
        os.close(dfd)


def test_read_small_bounded(root):
    r, fd = root
    (r / "big").write_bytes(b"x" * 100)
    with pytest.raises(safefs.NotRegularFile, match="larger than 10 bytes"):
        safefs.read_small(fd, "big", limit=10)


def test_atomic_write_replaces_a_link_without_following_it(root, tmp_path):
    r, fd = root
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (r / "f").symlink_to(victim)
    safefs.atomic_write(fd, "f", b"new", mode=0o640)
    assert victim.read_text() == "keep"
    assert (r / "f").read_text() == "new" and not (r / "f").is_symlink()
    assert stat.S_IMODE(os.stat(r / "f").st_mode) == 0o640
    assert sorted(os.listdir(r)) == ["f"]


@as_root
def test_hand_over_rules(root):
    r, fd = root
    (r / "mine").write_text("")
    os.chown(r / "mine", UID, GID)
    (r / "roots").write_text("")
    (r / "other").write_text("")
    os.chown(r / "other", 4343, 4343)
    for name, ok, expect in (("mine", False, UID), ("roots", True, UID)):
        f = os.open(name, os.O_RDONLY, dir_fd=fd)
        safefs.hand_over(f, UID, GID, name, root_owned_ok=ok)
        os.close(f)
        assert os.stat(r / name).st_uid == expect
    (r / "roots2").write_text("")
    for name in ("roots2", "other"):
        f = os.open(name, os.O_RDONLY, dir_fd=fd)
        with pytest.raises(safefs.UnexpectedOwner, match=f"{name} is owned by uid"):
            safefs.hand_over(f, UID, GID, name, root_owned_ok=name == "other")
        os.close(f)
    assert os.stat(r / "roots2").st_uid == 0 and os.stat(r / "other").st_uid == 4343


# ---------------------------------------------------------------- daemonctl's files in /run/user/UID


@pytest.fixture
def student(tmp_path, runtime_dir):
    """A made-up account 54321 whose runtime dir is a temp dir."""
    if os.geteuid() != 0:
        pytest.skip("needs root (chown)")
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, UID, GID)
    return pwd.struct_passwd(("rgs-fake", "x", UID, GID, "", str(home), "/bin/sh"))


def test_runtime_dir_created_and_handed_over(student):
    rd = daemonctl.ensure_runtime_dir(student)
    st = os.stat(rd)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (UID, 0o700)


def test_runtime_dir_of_someone_else_is_not_taken(student):
    rd = daemonctl.daemon_paths(UID).runtime_dir
    os.mkdir(rd, 0o700)
    os.chown(rd, 4343, 4343)
    with pytest.raises(DaemonError, match="owned by uid 4343"):
        daemonctl.ensure_runtime_dir(student)
    assert os.stat(rd).st_uid == 4343


def test_log_created_is_handed_over_but_a_root_owned_one_is_refused(student):
    paths = daemonctl.daemon_paths(UID)
    daemonctl.ensure_runtime_dir(student)
    fd, _ = daemonctl._open_log(paths, student)
    os.close(fd)
    assert os.stat(paths.log_file).st_uid == UID
    os.unlink(paths.log_file)
    with open(paths.log_file, "w") as f:  # not made by us for the student just now
        f.write("root's\n")
    with pytest.raises(DaemonError, match="owned by uid 0"):
        daemonctl._open_log(paths, student)
    assert os.stat(paths.log_file).st_uid == 0


def test_lock_file_of_someone_else_is_refused(student):
    paths = daemonctl.daemon_paths(UID)
    daemonctl.ensure_runtime_dir(student)
    with daemonctl._Lock(paths, student, 1.0):
        pass
    assert os.stat(paths.lock_file).st_uid == UID
    os.chown(paths.lock_file, 4343, 4343)
    with pytest.raises(DaemonError, match="owned by uid 4343"):
        with daemonctl._Lock(paths, student, 1.0):
            pass
    assert os.stat(paths.lock_file).st_uid == 4343


def test_user_file_dirs_created_for_the_student(student):
    assert daemonctl.write_user_file(student, ".config/x/y.conf", b"v")
    for p in (".config", ".config/x", ".config/x/y.conf"):
        assert os.stat(os.path.join(student.pw_dir, p)).st_uid == UID, p
