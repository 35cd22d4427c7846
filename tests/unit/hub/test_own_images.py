"""The student's own images: the daemon's `docker images` answer is hostile input."""

import pytest

from rootless_gpu_spawner.hub.options_form import FormChoices, parse_form, render_form
from rootless_gpu_spawner.hub.own_images import (
    MAX_OWN_IMAGES, OwnImage, OwnImagePolicy, check_own_image_name, format_age, format_size,
    own_images_from_answer,
)

NOW = 1_800_000_000
ALL = OwnImagePolicy()


def entry(tags, size=1_200_000_000, created=NOW - 3 * 86400):
    return {"Id": "sha256:" + "a" * 64, "RepoTags": tags, "Size": size, "Created": created}


def test_lists_tags_newest_first_with_size_and_age():
    answer = [entry(["old:1"], created=NOW - 10 * 86400), entry(["new:1", "new:latest"], created=NOW - 60)]
    images = own_images_from_answer(answer, ALL, now=NOW)
    assert [i.name for i in images] == ["new:1", "new:latest", "old:1"]
    assert images[0].describe(NOW) == "new:1 (1.2 GB, 1 minute ago)"
    assert images[2].describe(NOW) == "old:1 (1.2 GB, 10 days ago)"


@pytest.mark.parametrize("answer", [None, {}, "x", 5, [None, 3, "a", []], [{"RepoTags": "x:1"}], [{"RepoTags": [5]}]])
def test_wrong_shapes_give_nothing(answer):
    assert own_images_from_answer(answer, ALL, now=NOW) == []


@pytest.mark.parametrize("tag", [
    "<none>:<none>", "evil\x1b[2J:1", "a\nb:1", "Upper:1", "x" * 300 + ":1", "名字:1",
    "x@sha256:" + "a" * 64, "../etc:1", "a:" + "t" * 200, "",
])
def test_hostile_tags_are_dropped(tag):
    assert own_images_from_answer([entry([tag, "ok:1"])], ALL, now=NOW) == [OwnImage("ok:1", 1_200_000_000, NOW - 3 * 86400)]


@pytest.mark.parametrize("size, created", [(-1, NOW), (2**60, NOW), ("5", NOW), (True, NOW), (5, -3), (5, NOW + 10**9), (5, 1.5)])
def test_bad_figures_are_not_shown_but_the_name_is(size, created):
    (image,) = own_images_from_answer([entry(["ok:1"], size=size, created=created)], ALL, now=NOW)
    assert image.name == "ok:1"
    assert image.size in (None, 5) and image.created in (None, NOW)


def test_count_capped_and_duplicates_once():
    answer = [entry([f"img{i}:v", "dup:1"], created=NOW - i) for i in range(1000)]
    images = own_images_from_answer(answer, ALL, now=NOW)
    assert len(images) == MAX_OWN_IMAGES
    assert [i.name for i in images].count("dup:1") == 1


def test_patterns_and_exclude():
    answer = [entry(["env/a:1", "b:1", "rgs-test/jupyterlab:latest"])]
    names = [i.name for i in own_images_from_answer(answer, OwnImagePolicy(True, ("env/*",)), now=NOW)]
    assert names == ["env/a:1"]
    names = [i.name for i in own_images_from_answer(answer, ALL, exclude={"rgs-test/jupyterlab:latest"}, now=NOW)]
    assert names == ["b:1", "env/a:1"]
    assert own_images_from_answer(answer, OwnImagePolicy(enabled=False), now=NOW) == []


@pytest.mark.parametrize("name, words", [
    ("../../etc/passwd", "not a valid registry host"), ("Python:3", "lowercase"), ("a;b", "may only contain"),
    ("x@sha256:" + "a" * 64, "not by digest"), ("x\x1b", "only lowercase letters"), (5, "must be a string"),
])
def test_check_name_says_what_is_wrong(name, words):
    with pytest.raises(ValueError) as info:
        check_own_image_name(name, ALL)
    assert words in str(info.value)


def test_check_name_normalises_and_obeys_policy():
    assert check_own_image_name("docker.io/library/myenv", ALL) == "myenv:latest"
    with pytest.raises(ValueError, match="turned off"):
        check_own_image_name("myenv:1", OwnImagePolicy(enabled=False))
    with pytest.raises(ValueError, match="matches env/"):
        check_own_image_name("myenv:1", OwnImagePolicy(True, ("env/*",)))


def test_formats():
    assert format_size(None) == "" and format_size(999) == "999 B" and format_size(3_400_000) == "3.4 MB"
    assert format_age(NOW - 5, NOW) == "just now" and format_age(NOW - 7200, NOW) == "2 hours ago"


def form(**kw):
    base = dict(images={"Lab": "rgs-test/jupyterlab:latest"}, default_image="rgs-test/jupyterlab:latest",
                gpu_policy="shared", max_count=0, default_gpus=0)
    base.update(kw)
    return FormChoices(**base)


def test_form_lists_own_images_after_the_lab_images_escaped():
    html = render_form(form(own_images=[OwnImage("env/<x>:1", 5, None), OwnImage("mine:v1", 2_000_000, NOW)]))
    assert '<optgroup label="Lab images / 实验室镜像"><option value="Lab" selected>Lab</option></optgroup>' in html
    assert 'id="rgs-own-images"' in html and '<option class="rgs-own-image" value="mine:v1">mine:v1 (2.0 MB,' in html
    assert "<x>" not in html and "env/&lt;x&gt;:1" in html


def test_form_without_admin_choices_offers_the_default_and_a_note():
    html = render_form(form(images={}, own_note="Your own images could not be listed: down"))
    assert '<option value="" selected>rgs-test/jupyterlab:latest</option>' in html
    assert 'id="rgs-own-note">Your own images could not be listed: down' in html


def test_parse_form_passes_own_names_to_validation_only_when_allowed():
    assert parse_form({"image": ["mine:v1"]}, {"Lab": "x"}, own_allowed=True) == {"image": "mine:v1"}
    assert parse_form({"image": [""]}, {}, own_allowed=True) == {}
    with pytest.raises(Exception, match="not one of the choices"):
        parse_form({"image": ["mine:v1"]}, {"Lab": "x"}, own_allowed=False)


def test_the_spawners_derived_images_are_not_listed_as_the_students():
    from rootless_gpu_spawner.hub import derived

    ours = dict(entry(["rgs-jupyter/0123456789abcdef01234567:jh-6.1.1"]), Labels={derived.LABEL: "1"})
    theirs = dict(entry(["mine:v1"]), Labels={"maintainer": "me"})
    assert [i.name for i in own_images_from_answer([ours, theirs], ALL, now=NOW)] == ["mine:v1"]
