"""Save my environment: the name check, the commit config (nothing of the hub's kept), daemon answers."""

import pytest
from docker.errors import APIError

from rootless_gpu_spawner.hub.own_images import OwnImagePolicy
from rootless_gpu_spawner.hub.save_env import (
    SaveRefused, _image_id, check_save_name, commit_config, daemon_refusal,
)

ALL = OwnImagePolicy()


@pytest.mark.parametrize("name, expected", [
    ("myenv", ("myenv", "latest")), ("myenv:v1", ("myenv", "v1")), ("env/torch:2.3", ("env/torch", "2.3")),
    ("docker.io/library/myenv:v2", ("myenv", "v2")),
])
def test_names(name, expected):
    assert check_save_name(name, ALL) == expected


@pytest.mark.parametrize("name, status, words", [
    ("", 400, "give the environment a name"), (None, 400, "give the environment a name"),
    ("My Env", 400, "not a valid image name"), ("MyEnv", 400, "lowercase"), ("a\x1b[2J", 400, "not a valid image name"),
    ("x@sha256:" + "a" * 64, 400, "not by digest"), ("../x", 400, "not a valid image name"),
    ("rgs-test/jupyterlab:latest", 400, "one of the lab's images"),
])
def test_bad_names(name, status, words):
    with pytest.raises(SaveRefused) as info:
        check_save_name(name, ALL, {"rgs-test/jupyterlab:latest"})
    assert info.value.status == status and words in info.value.message


def test_names_follow_the_admin_patterns():
    with pytest.raises(SaveRefused, match="matching env/"):
        check_save_name("mine:1", OwnImagePolicy(True, ("env/*",)))
    with pytest.raises(SaveRefused) as info:
        check_save_name("mine:1", OwnImagePolicy(enabled=False))
    assert info.value.status == 403


CONTAINER = {
    "Image": "sha256:" + "b" * 64,
    "Config": {
        "Env": ["PATH=/override", "JUPYTERHUB_API_TOKEN=secret", "JUPYTERHUB_API_URL=http://10.0.2.2:8081", "LANG=C"],
        "Cmd": ["jupyterhub-singleuser", "--allow-root", "--MappingKernelManager.cull_idle_timeout=600"],
        "Labels": {"org.rootless-gpu-spawner.hub-user": "alice", "org.rootless-gpu-spawner.gpus": "0", "maintainer": "x"},
    },
}
IMAGE = {"Config": {"Env": ["PATH=/opt/venv/bin:/usr/bin", "LANG=C"], "Cmd": ["jupyterhub-singleuser"]}}


def test_commit_config_keeps_the_images_env_and_cmd_and_empties_the_hubs():
    conf = commit_config(CONTAINER, IMAGE, [])
    assert conf["Env"] == ["PATH=/opt/venv/bin:/usr/bin", "LANG=C", "JUPYTERHUB_API_TOKEN=", "JUPYTERHUB_API_URL="]
    assert conf["Cmd"] == ["jupyterhub-singleuser"]
    assert conf["Labels"] == {"org.rootless-gpu-spawner.hub-user": "", "org.rootless-gpu-spawner.gpus": ""}
    assert "secret" not in repr(conf)


def test_commit_config_when_the_image_is_gone_empties_what_the_hub_set():
    conf = commit_config(CONTAINER, None, ["JUPYTERHUB_API_TOKEN", "JUPYTERHUB_API_URL", "NOT_SET"])
    assert conf["Env"][:2] == ["PATH=/override", "LANG=C"]
    assert sorted(conf["Env"][2:]) == ["JUPYTERHUB_API_TOKEN=", "JUPYTERHUB_API_URL="]
    assert "Cmd" not in conf and "secret" not in repr(conf)


@pytest.mark.parametrize("container", [None, {}, {"Config": "x"}, {"Config": {"Env": "PATH=/"}},
                                       {"Config": {"Env": [1]}}, {"Config": {"Env": ["A=1"] * 5000}}])
def test_commit_config_refuses_garbled_answers(container):
    with pytest.raises(SaveRefused) as info:
        commit_config(container, IMAGE, [])
    assert info.value.status == 502


@pytest.mark.parametrize("answer", [None, {}, {"Id": 5}, {"Id": "sha256:xyz"}, {"Id": "sha256:" + "a" * 64 + "\n"}])
def test_commit_answer_needs_a_valid_id(answer):
    with pytest.raises(SaveRefused):
        _image_id(answer)
    assert _image_id({"Id": "sha256:" + "c" * 64}) == "sha256:" + "c" * 64


def api_error(text):
    return APIError("500 Server Error", response=None, explanation=text)


def test_disk_full_is_told_apart_and_daemon_text_made_printable():
    full = daemon_refusal(api_error("write /var/lib/docker/x: no space left on device"), "alice")
    assert full.status == 507 and "disk" in full.message and "docker image prune" in full.message
    other = daemon_refusal(api_error("boom\x1b[2J" + "x" * 1000), "alice")
    assert other.status == 502 and "\x1b" not in other.message and len(other.message) < 500
