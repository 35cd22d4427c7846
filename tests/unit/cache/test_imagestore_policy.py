"""host/imagestore.judge: what prune-images may remove (made-up /images/json answers)."""

import pytest

from rootless_gpu_spawner.host import imagestore

DAY = 86400.0
NOW = 1_800_000_000.0
ID = "sha256:" + "1" * 64


def image(**kw):
    base = {"Id": ID, "RepoTags": ["quay.io/jupyter/base-notebook:2025"],
            "RepoDigests": ["quay.io/jupyter/base-notebook@sha256:" + "2" * 64], "Size": 123}
    base.update(kw)
    return base


def test_pulled_and_unused_goes():
    v = imagestore.judge(image(), {}, NOW - 40 * DAY, 30, NOW)
    assert v.remove and v.bytes == 123 and "unused for 40 days" in v.reason


@pytest.mark.parametrize("used", ["running", "stopped"])
def test_a_containers_image_stays(used):
    v = imagestore.judge(image(), {ID: used}, NOW - 400 * DAY, 30, NOW)
    assert not v.remove and f"used by a {used} container" in v.reason


def test_an_image_without_a_registry_digest_is_the_students():
    v = imagestore.judge(image(RepoDigests=None, RepoTags=["mywork:1"]), {}, NOW - 400 * DAY, 30, NOW)
    assert not v.remove and "saved by the student" in v.reason


def test_a_tag_the_student_added_keeps_it():
    v = imagestore.judge(image(RepoTags=["quay.io/jupyter/base-notebook:2025", "thesis/env:final"]), {}, NOW - 400 * DAY, 30, NOW)
    assert not v.remove and "tagged by the student (thesis/env:final)" in v.reason


def test_a_registry_port_is_part_of_the_repository():
    tags = ["10.0.2.2:5001/library/python:3.12"]
    digests = ["10.0.2.2:5001/library/python@sha256:" + "3" * 64]
    v = imagestore.judge(image(RepoTags=tags, RepoDigests=digests), {}, NOW - 40 * DAY, 30, NOW)
    assert v.remove


def test_recent_or_unknown_stays():
    assert "used 2.0 days ago" in imagestore.judge(image(), {}, NOW - 2 * DAY, 30, NOW).reason
    assert "no record" in imagestore.judge(image(), {}, 0.0, 30, NOW).reason


@pytest.mark.parametrize("bad", [{"Id": "../../etc"}, {"Id": 5}, {"Id": None}])
def test_hostile_ids_are_never_candidates(bad):
    v = imagestore.judge(image(**bad), {}, NOW - 400 * DAY, 30, NOW)
    assert not v.remove and "no valid image id" in v.reason


def test_hostile_field_types_are_ignored():
    v = imagestore.judge(image(RepoTags="x", RepoDigests=[1, 2], Size=-5), {}, NOW - 400 * DAY, 30, NOW)
    assert not v.remove and v.bytes == 0  # no digest string: treated as the student's


@pytest.mark.parametrize("text,ok", [
    ("2026-11-30T10:00:00.123456789Z", True), ("2026-11-30T10:00:00+08:00", True),
    ("0001-01-01T00:00:00Z", False), ("yesterday", False), (None, False),
])
def test_docker_timestamps(text, ok):
    assert (imagestore._when(text) > 0) is ok


def test_the_seen_store_round_trips_and_ignores_junk(tmp_path):
    store = imagestore.SeenStore(str(tmp_path / "seen"))
    assert store.load("alice") == {}
    store.save("alice", {ID: 123.0})
    assert store.load("alice") == {ID: 123.0}
    assert oct((tmp_path / "seen" / "alice.json").stat().st_mode & 0o777) == "0o600"
    (tmp_path / "seen" / "bob.json").write_text('{"../x": 1, "%s": "soon"}' % ID)
    assert store.load("bob") == {}
    (tmp_path / "seen" / "carol.json").write_text("[1, 2")
    assert store.load("carol") == {}
