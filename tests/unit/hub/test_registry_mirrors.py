"""registry_mirrors: mirror specs per registry, the order of sources, precedence, refusals."""

import pytest

from rootless_gpu_spawner.hub.images import parse_image_reference
from rootless_gpu_spawner.hub.registry_mirrors import (
    ALLOW_LIST, DEFAULT_REGISTRY_MIRRORS, NOT_FOUND, UNAUTHORIZED, ConflictingMirrors, PullSource,
    classify_refusal, effective_chains, normalize_lab_caches, normalize_mirror_chains, normalize_registry,
    pull_sources, refusal_message,
)


@pytest.mark.parametrize(
    "image, spec, expected",
    [
        ("python:3.12", "docker.m.daocloud.io", "docker.m.daocloud.io/library/python:3.12"),
        ("quay.io/jupyter/base-notebook", "quay.nju.edu.cn", "quay.nju.edu.cn/jupyter/base-notebook:latest"),
        ("quay.io/jupyter/base-notebook", "m.daocloud.io/quay.io", "m.daocloud.io/quay.io/jupyter/base-notebook:latest"),
        ("nvcr.io/nvidia/pytorch:24.01-py3", "m.daocloud.io/nvcr.io", "m.daocloud.io/nvcr.io/nvidia/pytorch:24.01-py3"),
        ("ghcr.io/org/img:1", "ghcr.nju.edu.cn", "ghcr.nju.edu.cn/org/img:1"),
        ("registry.k8s.io/pause:3.9", "m.daocloud.io/registry.k8s.io", "m.daocloud.io/registry.k8s.io/pause:3.9"),
        ("python:3", "10.0.2.2:5001", "10.0.2.2:5001/library/python:3"),
    ],
)
def test_both_mirror_forms(image, spec, expected):
    ref = parse_image_reference(image)
    sources = pull_sources(ref, {ref.domain: [spec]}, {}, False)
    assert [(s.kind, c.familiar) for s, c in sources] == [("mirror", expected)]


def test_order_lab_cache_mirrors_upstream():
    ref = parse_image_reference("quay.io/jupyter/scipy-notebook:2026-01")
    sources = pull_sources(ref, {"quay.io": ["a.example", "b.example/quay.io"]}, {"quay.io": "10.0.2.2:5002"}, True)
    assert [(s.kind, s.spec, s.label) for s, _ in sources] == [
        ("lab-cache", "10.0.2.2:5002", "the lab cache"),
        ("mirror", "a.example", "mirror a.example"),
        ("mirror", "b.example/quay.io", "mirror b.example/quay.io"),
        ("upstream", None, "quay.io (upstream)"),
    ]
    assert sources[-1][1] == ref


def test_other_registries_mirrors_do_not_apply():
    ref = parse_image_reference("python:3")
    sources = pull_sources(ref, {"quay.io": ["q.example"]}, {"quay.io": "10.0.2.2:5002"}, False)
    assert sources == [(PullSource("upstream", None, "docker.io"), ref)]


def test_the_lab_cache_is_not_asked_twice():
    ref = parse_image_reference("python:3")
    sources = pull_sources(ref, {"docker.io": ["10.0.2.2:5001", "m.example"]}, {"docker.io": "10.0.2.2:5001"}, False)
    assert [s.spec for s, _ in sources] == ["10.0.2.2:5001", "m.example"]


@pytest.mark.parametrize(
    "key, expected",
    [("docker.io", "docker.io"), ("index.docker.io", "docker.io"), ("https://quay.io/", "quay.io"),
     ("Registry.Lab:5000", "registry.lab:5000"), ("localhost:5000", "localhost:5000")],
)
def test_registry_keys(key, expected):
    assert normalize_registry(key) == expected


@pytest.mark.parametrize("key", ["quay", "", "quay.io/path", "bad host", 5])
def test_bad_registry_keys(key):
    with pytest.raises(ValueError):
        normalize_registry(key)


def test_chains_normalised_and_checked():
    assert normalize_mirror_chains({"https://quay.io": ["https://quay.nju.edu.cn/"]}) == {"quay.io": ["quay.nju.edu.cn"]}
    assert normalize_mirror_chains(DEFAULT_REGISTRY_MIRRORS) == DEFAULT_REGISTRY_MIRRORS
    for bad, words in [
        ({"quay.io": "quay.nju.edu.cn"}, "must be a list"),
        ({"quay.io": ["bad host"]}, "mirror of 'quay.io'"),
        ({"docker.io": [], "index.docker.io": []}, "both name the registry 'docker.io'"),
        (["quay.io"], "must be a dict"),
    ]:
        with pytest.raises(ValueError, match=words):
            normalize_mirror_chains(bad)


def test_lab_caches_checked():
    assert normalize_lab_caches({"docker.io": "http://10.0.2.2:5001"}) == {"docker.io": "10.0.2.2:5001"}
    with pytest.raises(ValueError, match="one 'HOST:PORT' string"):
        normalize_lab_caches({"docker.io": ["10.0.2.2:5001"]})


def test_precedence_of_mirror_prefixes():
    defaults = {k: list(v) for k, v in DEFAULT_REGISTRY_MIRRORS.items()}
    # Unset: registry_mirrors' docker.io entry.
    assert effective_chains(defaults, None)["docker.io"] == DEFAULT_REGISTRY_MIRRORS["docker.io"]
    # Set: it replaces the default docker.io entry, the others stay.
    got = effective_chains(defaults, ["mine.example"])
    assert got["docker.io"] == ["mine.example"] and got["quay.io"] == DEFAULT_REGISTRY_MIRRORS["quay.io"]
    assert effective_chains({"docker.io": ["mine.example"]}, ["mine.example"])["docker.io"] == ["mine.example"]
    with pytest.raises(ConflictingMirrors) as info:
        effective_chains({"docker.io": ["a.example"]}, ["b.example"])
    assert "RootlessGPUSpawner.mirror_prefixes" in str(info.value)
    assert "RootlessGPUSpawner.registry_mirrors['docker.io']" in str(info.value)


@pytest.mark.parametrize(
    "message, kind",
    [
        ("error from registry: not in allowlist", ALLOW_LIST),
        # What docker 20.10 says for a 403 {"errors": [{"code": "DENIED", "message": "not in allowlist"}]}:
        ("pull access denied for 10.0.2.2:40001/library/rgsmirror, repository does not exist or may require "
         "'docker login': denied: not in allowlist", ALLOW_LIST),
        ("denied: requested access to the resource is denied", ALLOW_LIST),
        ("unexpected status code 403 Forbidden", ALLOW_LIST),
        ("Error response from daemon: image is not in the allow list", ALLOW_LIST),
        ("unauthorized: authentication required", UNAUTHORIZED),
        ("unexpected status code 401 Unauthorized", UNAUTHORIZED),
        ("manifest for m.example/library/python:3 not found: manifest unknown", NOT_FOUND),
        ("pull access denied for m.example/x, repository does not exist or may require 'docker login'", NOT_FOUND),
        ("unexpected status code 404 Not Found", NOT_FOUND),
        ("Get https://10.0.2.2:1/v2/: dial tcp 10.0.2.2:1: connect: connection refused", None),
        ("net/http: TLS handshake timeout", None),
        ("received unexpected HTTP status: 502 Bad Gateway", None),
        ("", None),
        (None, None),
    ],
)
def test_classify_refusal(message, kind):
    assert classify_refusal(message) == kind


def test_refusal_messages():
    mirror = PullSource("mirror", "m.example", "quay.io")
    cache = PullSource("lab-cache", "10.0.2.2:5002", "quay.io")
    assert refusal_message(mirror, ALLOW_LIST, True) == "mirror m.example refuses this image (allow-list): trying the next"
    assert refusal_message(mirror, ALLOW_LIST, False) == "mirror m.example refuses this image (allow-list)"
    assert refusal_message(cache, NOT_FOUND, True) == "the lab cache does not have this image: trying the next"
    assert refusal_message(mirror, UNAUTHORIZED, True).startswith("mirror m.example asks for credentials")
