"""Workspace resolution and safe creation (real files in a temporary home)."""

import os

import pytest

from rootless_gpu_spawner.workspace import WorkspaceError, ensure_workspace, workspace_path

UID, GID = 54321, 54321  # a uid nobody has: proves we chown what we create


@pytest.mark.parametrize(
    "wdir, expected",
    [
        ("workspace", "/home/alice/workspace"),
        ("work/space", "/home/alice/work/space"),
        ("./workspace/", "/home/alice/workspace"),
        ("/home/alice/ws", "/home/alice/ws"),
        ("a/../workspace", "/home/alice/workspace"),
    ],
)
def test_workspace_path(wdir, expected):
    assert workspace_path("/home/alice", wdir) == expected


@pytest.mark.parametrize(
    "wdir", ["..", "../bob/workspace", "/etc", "/home/alicex", "/home/bob/workspace", "", ".", "a/../../x", "x\0y"]
)
def test_workspace_path_refuses_escape(wdir):
    with pytest.raises(WorkspaceError):
        workspace_path("/home/alice", wdir)


@pytest.fixture
def home(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("creating files owned by another uid needs root (the hub runs as root)")
    h = tmp_path / "alice"
    h.mkdir()
    os.chown(h, UID, GID)
    return h


def test_creates_missing_workspace_owned_by_student(home):
    path = ensure_workspace(str(home), "work/space", UID, GID)
    assert path == str(home / "work" / "space")
    for p in (home / "work", home / "work" / "space"):
        st = os.stat(p)
        assert (st.st_uid, st.st_gid) == (UID, GID)


def test_existing_workspace_kept_as_is(home):
    ws = home / "workspace"
    ws.mkdir()
    os.chown(ws, UID, GID)
    (ws / "notes.txt").write_text("keep me")
    assert ensure_workspace(str(home), "workspace", UID, GID) == str(ws)
    assert (ws / "notes.txt").read_text() == "keep me"


def test_symlink_to_etc_refused(home):
    (home / "workspace").symlink_to("/etc")
    with pytest.raises(WorkspaceError, match="outside"):
        ensure_workspace(str(home), "workspace", UID, GID)
    assert os.stat("/etc").st_uid == 0  # nothing chowned through the link


def test_symlink_into_other_home_refused(home, tmp_path):
    other = tmp_path / "bob" / "workspace"
    other.mkdir(parents=True)
    (home / "workspace").symlink_to(other)
    with pytest.raises(WorkspaceError, match="outside"):
        ensure_workspace(str(home), "workspace", UID, GID)


def test_symlinked_parent_escape_refused(home, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (home / "work").symlink_to(outside)
    with pytest.raises(WorkspaceError, match="outside"):
        ensure_workspace(str(home), "work/space", UID, GID)
    assert not (outside / "space").exists()  # nothing created through the link


def test_symlink_inside_home_followed(home):
    real = home / "data" / "ws"
    real.mkdir(parents=True)
    os.chown(real, UID, GID)
    (home / "workspace").symlink_to(real)
    assert ensure_workspace(str(home), "workspace", UID, GID) == str(real)


def test_file_in_the_way_refused(home):
    (home / "workspace").write_text("not a dir")
    with pytest.raises(WorkspaceError, match="not a directory"):
        ensure_workspace(str(home), "workspace", UID, GID)
    assert (home / "workspace").read_text() == "not a dir"


def test_workspace_owned_by_someone_else_refused(home):
    ws = home / "workspace"
    ws.mkdir()
    os.chown(ws, 0, 0)
    with pytest.raises(WorkspaceError, match="owned by uid 0"):
        ensure_workspace(str(home), "workspace", UID, GID)


def test_home_owned_by_someone_else_refused(home):
    os.chown(home, 0, 0)
    with pytest.raises(WorkspaceError, match="home"):
        ensure_workspace(str(home), "workspace", UID, GID)


def test_missing_home(tmp_path):
    with pytest.raises(WorkspaceError, match="does not exist"):
        ensure_workspace(str(tmp_path / "nobody"), "workspace", UID, GID)


# ---------------------------------------------------------------- issue 10: an fd-based walk, nothing followed


def test_link_swapped_after_the_check_is_not_followed(home, tmp_path, monkeypatch):
    """~/work -> ~/a passes a path check; ~/a then becomes a link to outside: nothing lands there."""
    from rootless_gpu_spawner import workspace

    outside = tmp_path / "outside"
    outside.mkdir()
    (home / "a").mkdir()
    os.chown(home / "a", UID, GID)
    (home / "work").symlink_to(home / "a")
    real_realpath = os.path.realpath

    def realpath_then_swap(path, *args, **kwargs):
        result = real_realpath(path, *args, **kwargs)
        if str(path) == str(home / "work"):  # the student swaps ~/a right after the check
            os.rename(home / "a", home / "a.old")
            (home / "a").symlink_to(outside)
        return result

    monkeypatch.setattr(workspace.os.path, "realpath", realpath_then_swap)
    try:
        ensure_workspace(str(home), "work/space", UID, GID)
    except WorkspaceError:
        pass
    assert not (outside / "space").exists()
    assert os.stat(outside).st_uid == 0


def test_every_open_uses_o_nofollow(home, monkeypatch):
    real = home / "data" / "ws"
    real.mkdir(parents=True)
    os.chown(home / "data", UID, GID)
    os.chown(real, UID, GID)
    (home / "link").symlink_to(home / "data")
    calls = []
    real_open = os.open

    def recording_open(path, flags, *args, **kwargs):
        calls.append((path, flags))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    assert ensure_workspace(str(home), "link/ws/new", UID, GID) == str(real / "new")
    assert calls and all(flags & os.O_NOFOLLOW for _, flags in calls), calls
    assert os.stat(real / "new").st_uid == UID


def test_relative_link_climbing_out_refused(home, tmp_path):
    (tmp_path / "outside").mkdir()
    (home / "work").symlink_to("../outside")
    with pytest.raises(WorkspaceError, match="outside"):
        ensure_workspace(str(home), "work/space", UID, GID)
    assert not (tmp_path / "outside" / "space").exists()


def test_relative_link_inside_home_followed(home):
    (home / "data").mkdir()
    os.chown(home / "data", UID, GID)
    (home / "sub").mkdir()
    os.chown(home / "sub", UID, GID)
    (home / "sub" / "work").symlink_to("../data")
    assert ensure_workspace(str(home), "sub/work/space", UID, GID) == str(home / "data" / "space")


def test_link_loop_refused(home):
    (home / "a").symlink_to("b")
    (home / "b").symlink_to("a")
    with pytest.raises(WorkspaceError, match="symbolic links"):
        ensure_workspace(str(home), "a/space", UID, GID)


def test_root_dir_appearing_in_a_mkdir_race_is_not_chowned(home, monkeypatch):
    """mkdir loses a race to a directory that is root's: it is not handed to the student."""
    real_mkdir = os.mkdir

    def racing_mkdir(name, mode=0o777, *, dir_fd=None):
        real_mkdir(name, 0o755, dir_fd=dir_fd)  # "someone else" made it, as root, with content
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=dir_fd)
        try:
            with open(os.open("keep", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "w") as f:
                f.write("root's")
        finally:
            os.close(fd)
        raise FileExistsError(name)

    monkeypatch.setattr(os, "mkdir", racing_mkdir)
    with pytest.raises(WorkspaceError, match="owned by uid 0"):
        ensure_workspace(str(home), "workspace", UID, GID)
    assert os.stat(home / "workspace").st_uid == 0
