"""Trait validation and user_options checks on a spawner object (no hub, no daemon)."""

from types import SimpleNamespace

import pytest
from tornado import web
from traitlets.config import Config

from rootless_gpu_spawner import RootlessGPUSpawner


def make(user_options=None, **config):
    c = Config()
    for key, value in config.items():
        setattr(c.RootlessGPUSpawner, key, value)
    spawner = RootlessGPUSpawner(config=c, user=SimpleNamespace(name="alice", url="/user/alice/"), _deprecated_db_session=None)
    spawner.user_options = user_options or {}
    return spawner


def test_defaults():
    s = make()
    assert s.docker_host_template == "unix:///run/user/{uid}/docker.sock"
    assert s.gpus == "all"
    assert s.mirror_prefixes is None
    assert s.mirror_chains()["docker.io"] == ["docker.mirrors.ustc.edu.cn", "docker.m.daocloud.io"]
    assert s.lab_cache_mirrors == {}
    assert s.mirror_fallback_to_upstream is True
    assert s.host_gateway_ip == "10.0.2.2"
    assert s.workspace_dir == "workspace" and s.workspace_mount == "/workspace"
    assert s.notebook_dir == "/workspace"
    assert s.run_as_root is True and s.allow_rootful_daemon is False
    assert s.host_ip == "127.0.0.1" and s.port == 8888
    assert s.remove is True
    assert "--allow-root" in s.get_args()


def test_host_ip_ignores_docker_host(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "tcp://203.0.113.9:2375")
    assert make().host_ip == "127.0.0.1"


@pytest.mark.parametrize(
    "trait, value, words",
    [
        ("port", 80, "RootlessGPUSpawner.port=80 is below 1024"),
        ("gpus", -2, "RootlessGPUSpawner.gpus"),
        ("gpus", "many", "RootlessGPUSpawner.gpus"),
        ("mirror_prefixes", ["bad host"], "RootlessGPUSpawner.mirror_prefixes"),
        ("registry_mirrors", {"quay.io": ["bad host"]}, "RootlessGPUSpawner.registry_mirrors: mirror of 'quay.io'"),
        ("registry_mirrors", {"quay": ["q.example"]}, "RootlessGPUSpawner.registry_mirrors: registry 'quay'"),
        ("lab_cache_mirrors", {"docker.io": "bad host"}, "RootlessGPUSpawner.lab_cache_mirrors"),
        ("workspace_mount", "relative", "RootlessGPUSpawner.workspace_mount"),
        ("workspace_mount", "/", "RootlessGPUSpawner.workspace_mount"),
    ],
)
def test_invalid_config_names_the_trait(trait, value, words):
    with pytest.raises(Exception) as info:
        make(**{trait: value})
    assert words in str(info.value)


def test_mirror_prefixes_and_registry_mirrors_conflict_names_both():
    for order in (0, 1):
        settings = [("mirror_prefixes", ["a.example"]), ("registry_mirrors", {"docker.io": ["b.example"]})]
        with pytest.raises(Exception) as info:
            make(**dict(settings[::-1] if order else settings))
        assert "RootlessGPUSpawner.mirror_prefixes" in str(info.value)
        assert "RootlessGPUSpawner.registry_mirrors['docker.io']" in str(info.value)


def test_mirror_prefixes_is_the_docker_hub_entry():
    s = make(mirror_prefixes=["a.example"], registry_mirrors={"quay.io": ["q.example"]})
    assert s.mirror_chains() == {"docker.io": ["a.example"], "quay.io": ["q.example"]}
    assert make(lab_cache_mirrors={"index.docker.io": "10.0.2.2:5001"}).lab_cache_mirrors == {"docker.io": "10.0.2.2:5001"}


def test_mirror_prefix_urls_normalised():
    assert make(mirror_prefixes=["https://mirror.example.org/"]).mirror_prefixes == ["mirror.example.org"]


@pytest.mark.parametrize(
    "options, expected",
    [
        ({}, {}),
        ({"image": "python:3"}, {"image": "python:3"}),
        ({"gpus": 0}, {"gpus": 0}),
        ({"gpus": "2"}, {"gpus": 2}),
        ({"gpus": [1, 3]}, {"gpus": ["1", "3"]}),
    ],
)
def test_user_options_ok(options, expected):
    assert make(options, allowed_images=["python:3"]).validated_user_options() == expected


@pytest.mark.parametrize(
    "options, words",
    [
        ({"cmd": "bash"}, "unknown option"),
        ({"image": 5}, "must be a string"),
        ({"gpus": -1}, "negative"),
        ({"gpus": "lots"}, "not understood"),
        ({"gpus": {"n": 1}}, "gpus must be"),
        ({"image": "Python:3"}, "not one of the allowed images"),
        ({"image": "python:3\n"}, "not one of the allowed images"),
    ],
)
def test_user_options_bad(options, words):
    with pytest.raises(web.HTTPError) as info:
        make(options).validated_user_options()
    assert info.value.status_code == 400 and words in info.value.log_message


@pytest.mark.parametrize(
    "ceiling, asked, result",
    [(2, 1, 1), (2, 2, 2), ([0, 1, 2], ["2"], ["2"]), ([0, 1, 2], 2, ["0", "1"]), (1, 0, 0)],
)
def test_gpus_ceiling_allows(ceiling, asked, result):
    assert make({"gpus": asked}, gpus=ceiling).validated_user_options()["gpus"] == result


@pytest.mark.parametrize(
    "ceiling, asked", [(2, 3), (2, "all"), (1, [0]), ([0, 1], ["3"]), ([0, 1], 3), (0, 1)]
)
def test_gpus_ceiling_refuses(ceiling, asked):
    with pytest.raises(web.HTTPError) as info:
        make({"gpus": asked}, gpus=ceiling).validated_user_options()
    assert info.value.status_code == 400


async def test_image_not_in_allow_list_is_400_without_own_images():
    s = make({"image": "evil/miner"}, allowed_images=["python:3"], allow_own_images=False)
    with pytest.raises(web.HTTPError) as info:
        s.validated_user_options()
    assert info.value.status_code == 400 and "turned off" in info.value.log_message
    with pytest.raises(web.HTTPError) as info:
        await s._resolve_image("evil/miner")
    assert info.value.status_code == 400


async def test_other_image_is_an_own_image_never_the_admins():
    s = make({"image": "myenv"}, allowed_images=["python:3"])
    assert s.validated_user_options() == {"image": "myenv:latest", "own_image": True}
    ref = await s._resolve_image("myenv:latest")
    assert s._own_image and ref.familiar == "myenv:latest"
    await s._resolve_image("python:3")
    assert not s._own_image


@pytest.mark.parametrize("patterns, name, ok", [
    (["env/*"], "env/torch:v1", True),
    (["env/*"], "torch:v1", False),
    (["docker.io/library/*"], "torch:v1", True),
    (["*:saved-*"], "lab:saved-1", True),
])
def test_own_image_patterns_narrow(patterns, name, ok):
    s = make({"image": name}, own_image_patterns=patterns)
    if ok:
        assert s.validated_user_options()["own_image"] is True
    else:
        with pytest.raises(web.HTTPError) as info:
            s.validated_user_options()
        assert info.value.status_code == 400 and "matches env/*" in info.value.log_message


@pytest.mark.parametrize("bad", [[""], [" x"], ["a" * 300]])
def test_own_image_patterns_bad_config(bad):
    with pytest.raises(Exception) as info:
        make(own_image_patterns=bad)
    assert "RootlessGPUSpawner.own_image_patterns" in str(info.value)


async def test_allowed_but_malformed_image_is_400():
    s = make({"image": "Bad/Name"}, allowed_images="*")
    with pytest.raises(web.HTTPError) as info:
        await s._resolve_image("Bad/Name")
    assert info.value.status_code == 400 and "lowercase" in info.value.jupyterhub_message


async def test_user_options_are_declared_handled(caplog):
    # JupyterHub >= 5.3 warns "Received unhandled user_options" unless apply_user_options is set;
    # image and gpus are validated and applied in start() (validated_user_options).
    s = make({"image": "rgs-test/jupyterlab:latest", "gpus": 1}, allowed_images=["rgs-test/jupyterlab:latest"])
    assert callable(s.apply_user_options)
    with caplog.at_level("DEBUG"):
        await s._run_apply_user_options(s.user_options)
    assert "unhandled user_options" not in caplog.text
    assert s.validated_user_options() == {"image": "rgs-test/jupyterlab:latest", "gpus": 1}
