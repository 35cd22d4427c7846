"""The spawn form: rendering and parsing, and its single validation path with the REST API."""

from types import SimpleNamespace

import pytest
from tornado import web
from traitlets.config import Config

from rootless_gpu_spawner import RootlessGPUSpawner
from rootless_gpu_spawner import gpu_alloc
from rootless_gpu_spawner.gpu_alloc import GPUAllocator, GPUInfo
from rootless_gpu_spawner.options_form import FormChoices, needs_form, parse_form, render_form

IMAGES = {"PyTorch": "pytorch/pytorch:2.3.0", "Lab": "rgs-test/jupyterlab:latest"}


def choices(**kw):
    base = dict(images=IMAGES, default_image="rgs-test/jupyterlab:latest", gpu_policy="exclusive",
                max_count=2, default_gpus=1, gpus=[GPUInfo(str(i)) for i in range(4)], free=["0", "3"])
    base.update(kw)
    return FormChoices(**base)


def test_render_exclusive_form_shows_free_gpus():
    html = render_form(choices())
    assert '<select class="form-control" name="image"' in html
    assert '<option value="Lab" selected>' in html
    assert '<option value="2">2 GPUs / 2 块 GPU</option>' in html and 'value="3"' not in html.split("rgs-gpus")[1].split("</select>")[0]
    assert "2 of 4 GPUs free now" in html
    # every label in both languages
    assert '<label for="rgs-image">Image / 镜像</label>' in html and '<label for="rgs-gpus">GPUs / GPU 数量</label>' in html
    assert "当前空闲 2 / 4 块 GPU" in html
    assert 'value="1" disabled' in html and 'value="0">' in html  # busy GPUs cannot be picked


def test_render_escapes_labels():
    html = render_form(choices(images={"<b>x</b>": "a", "y": "b"}))
    assert "<b>x</b>" not in html and "&lt;b&gt;" in html


def test_no_form_when_nothing_to_choose():
    c = choices(images={}, max_count=0, gpus=[], free=[], gpu_policy="shared", default_gpus=0)
    assert not needs_form(c)
    assert needs_form(choices(images={}, max_count=0, gpu_policy="shared", allow_all=True))


@pytest.mark.parametrize(
    "formdata, expected",
    [
        ({"image": ["Lab"], "gpus": ["2"]}, {"image": "Lab", "gpus": 2}),
        ({"gpus": ["0"]}, {"gpus": 0}),
        ({"gpus": ["all"]}, {"gpus": "all"}),
        ({"gpus": ["1"], "gpu_ids": ["0", "3"]}, {"gpus": ["0", "3"]}),
        ({}, {}),
    ],
)
def test_parse_form(formdata, expected):
    assert parse_form(formdata, IMAGES) == expected


@pytest.mark.parametrize(
    "formdata", [{"image": ["Evil"]}, {"gpus": ["-1"]}, {"gpus": ["two"]}, {"gpus": ["1", "2"]}, {"gpus": ["１"]}]
)
def test_parse_form_rejects(formdata):
    with pytest.raises(web.HTTPError) as info:
        parse_form(formdata, IMAGES)
    assert info.value.status_code == 400


def make(**config):
    c = Config()
    for key, value in config.items():
        setattr(c.RootlessGPUSpawner, key, value)
    user = SimpleNamespace(name="alice", url="/user/alice/", groups=[SimpleNamespace(name="phd")])
    return RootlessGPUSpawner(config=c, user=user, _deprecated_db_session=None)


@pytest.fixture
def fresh_allocator(monkeypatch):
    monkeypatch.setattr(gpu_alloc, "_hub_allocator", None)


EXCLUSIVE = dict(gpu_policy="exclusive", gpu_ids=["0", "1", "2", "3"], allowed_images=IMAGES, gpus=1,
                 max_gpus_per_user=1)


@pytest.mark.parametrize(
    "options, words",
    [
        ({"gpus": "all"}, "ask for a number"),
        ({"gpus": ["7"]}, "no GPU 7"),
        ({"gpus": 5}, "this server has 4"),
        ({"gpus": 2}, "limit is 1"),
        ({"gpus": ["0", "1"]}, "limit is 1"),
        ({"gpus": -1}, "negative"),
        ({"gpus": 1.5}, "gpus must be"),
        ({"image": "NotAllowed"}, "not one of the allowed images"),
        ({"extra": 1}, "unknown option"),
    ],
)
def test_exclusive_validation_is_400(fresh_allocator, options, words):
    s = make(**EXCLUSIVE)
    with pytest.raises(web.HTTPError) as info:
        s.validated_user_options(options)
    assert info.value.status_code == 400 and words in info.value.log_message


def test_group_limit_overrides_user_limit(fresh_allocator):
    s = make(gpu_policy="exclusive", gpu_ids=["0", "1", "2", "3"], gpus="all", max_gpus_per_user=1,
             group_gpu_limits={"phd": 3, "other": 4})
    assert s.gpu_limit() == 3
    assert s.validated_user_options({"gpus": 3}) == {"gpus": 3}
    with pytest.raises(web.HTTPError):
        s.validated_user_options({"gpus": 4})
    assert s.default_gpu_request() == 1  # "all" under exclusive means one GPU by default


def test_shared_limit(fresh_allocator):
    s = make(max_gpus_per_user=2)
    assert s.validated_user_options({"gpus": 2}) == {"gpus": 2}
    for bad in ("all", 3, ["0", "1", "2"]):
        with pytest.raises(web.HTTPError):
            s.validated_user_options({"gpus": bad})


async def test_form_round_trip_goes_through_the_same_validation(fresh_allocator, monkeypatch):
    monkeypatch.setattr(gpu_alloc, "_hub_allocator", GPUAllocator(["0", "1", "2", "3"]))
    gpu_alloc._hub_allocator.allocate(("bob", ""), 1)
    s = make(gpu_policy="exclusive", gpu_ids=["0", "1", "2", "3"], gpus=2, max_gpus_per_user=2,
             allowed_images=IMAGES)
    html = await s.render_options_form()
    assert "3 of 4 GPUs free now" in html and '<option value="2" selected>' in html and '<option value="3">' not in html
    assert s.options_from_formdata({"image": ["PyTorch"], "gpus": ["2"]}) == {"image": "PyTorch", "gpus": 2}
    with pytest.raises(web.HTTPError):
        s.options_from_formdata({"gpus": ["3"]})  # over the limit of 2


def test_exclusive_form_offers_no_gpu_when_none_free():
    html = render_form(choices(max_count=0, free=[], images={}))
    assert '<option value="0" selected>No GPU' in html and "0 of 4 GPUs free now" in html


def test_default_request_is_cut_to_the_limit(fresh_allocator):
    assert make(gpus="all", max_gpus_per_user=2).default_gpu_request() == 2
    assert make(gpus=3, max_gpus_per_user=2).default_gpu_request() == 2
    assert make(gpus=["0", "1", "2"], max_gpus_per_user=1).default_gpu_request() == ["0"]
    assert make(gpus="all").default_gpu_request() == "all"


async def test_group_limit_zero_offers_no_gpu(fresh_allocator):
    s = make(gpu_policy="exclusive", gpu_ids=["0", "1"], group_gpu_limits={"phd": 0})
    html = await s.render_options_form()
    assert '<option value="1">' not in html and '<option value="0" selected>' in html
    with pytest.raises(web.HTTPError):
        s.validated_user_options({"gpus": 1})
