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
