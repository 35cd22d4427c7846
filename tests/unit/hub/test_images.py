"""Image reference parsing and mirror rewriting (pure logic, no daemon)."""

import pytest

from rootless_gpu_spawner.hub.images import (
    ImageRef,
    InvalidImageReference,
    normalize_mirror_prefix,
    parse_image_reference,
)

SHA = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    "reference, domain, path, tag, digest, familiar",
    [
        ("python", "docker.io", "library/python", "latest", None, "python:latest"),
        ("python:3.11", "docker.io", "library/python", "3.11", None, "python:3.11"),
        ("library/python:3", "docker.io", "library/python", "3", None, "python:3"),
        ("docker.io/library/python", "docker.io", "library/python", "latest", None, "python:latest"),
        ("docker.io/python:3", "docker.io", "library/python", "3", None, "python:3"),
        ("index.docker.io/library/ubuntu:22.04", "docker.io", "library/ubuntu", "22.04", None, "ubuntu:22.04"),
        ("registry-1.docker.io/pytorch/pytorch", "docker.io", "pytorch/pytorch", "latest", None, "pytorch/pytorch:latest"),
        ("pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime", "docker.io", "pytorch/pytorch",
         "2.3.0-cuda12.1-cudnn8-runtime", None, "pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime"),
        ("quay.io/jupyter/scipy-notebook:2024-01-15", "quay.io", "jupyter/scipy-notebook",
         "2024-01-15", None, "quay.io/jupyter/scipy-notebook:2024-01-15"),
        ("localhost/app", "localhost", "app", "latest", None, "localhost/app:latest"),
        ("localhost:5000/team/app:v1", "localhost:5000", "team/app", "v1", None, "localhost:5000/team/app:v1"),
        ("10.0.2.2:5000/library/rgs-lab", "10.0.2.2:5000", "library/rgs-lab", "latest", None,
         "10.0.2.2:5000/library/rgs-lab:latest"),
        ("registry.lab:443/a/b/c/d:tag", "registry.lab:443", "a/b/c/d", "tag", None, "registry.lab:443/a/b/c/d:tag"),
        ("nvcr.io/nvidia/pytorch:24.01-py3", "nvcr.io", "nvidia/pytorch", "24.01-py3", None,
         "nvcr.io/nvidia/pytorch:24.01-py3"),
        ("team/sub/app", "docker.io", "team/sub/app", "latest", None, "team/sub/app:latest"),
        ("python@" + SHA, "docker.io", "library/python", None, SHA, "python@" + SHA),
        ("python:3.11@" + SHA, "docker.io", "library/python", "3.11", SHA, "python:3.11@" + SHA),
        ("ghcr.io/org/img@" + SHA, "ghcr.io", "org/img", None, SHA, "ghcr.io/org/img@" + SHA),
        ("Registry.Example.com/app", "Registry.Example.com", "app", "latest", None,
         "Registry.Example.com/app:latest"),
        ("a__b/c-d--e.f_g", "docker.io", "a__b/c-d--e.f_g", "latest", None, "a__b/c-d--e.f_g:latest"),
        ("[::1]:5000/app", "[::1]:5000", "app", "latest", None, "[::1]:5000/app:latest"),
        ("python:Latest_1.x", "docker.io", "library/python", "Latest_1.x", None, "python:Latest_1.x"),
    ],
)
def test_parse_valid(reference, domain, path, tag, digest, familiar):
    ref = parse_image_reference(reference)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (domain, path, tag, digest)
    assert ref.familiar == familiar
    # Parsing what we print gives the same reference back.
    assert parse_image_reference(ref.canonical) == ref
    assert parse_image_reference(ref.familiar) == ref


@pytest.mark.parametrize(
    "reference, reason",
    [
        ("", "empty"),
        ("Python", "lowercase"),
        ("library/Python:3", "lowercase"),
        ("python:", "tag"),
        ("python:-bad", "tag"),
        ("python:" + "x" * 129, "tag"),
        ("python@sha256:abc", "digest"),
        ("python@sha256:" + "A" * 64, "64 lowercase"),
        ("python@md5", "digest"),
        ("../../etc/passwd", "'..'"),
        ("library/../python", "'..'"),
        ("a//b", "empty path"),
        ("app/", "empty path"),
        ("py thon", "whitespace"),
        ("python;rm", "path component"),
        ("python;rm -rf /", "whitespace"),
        ("$(reboot)", "path component"),
        ("python`id`", "path component"),
        ("a" * 300, "longer than 255"),
        ("a" * 600, "far too long"),
        ("-app", "path component"),
        ("app_", "path component"),
        ("bad_host:5000/app", "registry host"),
        ("reg.io:port/app", "registry host"),
    ],
)
def test_parse_invalid(reference, reason):
    with pytest.raises(InvalidImageReference) as info:
        parse_image_reference(reference)
    assert reason in str(info.value)


def test_non_string_is_invalid():
    with pytest.raises(InvalidImageReference):
        parse_image_reference(["python"])


def test_long_reference_is_shortened_in_message():
    with pytest.raises(InvalidImageReference) as info:
        parse_image_reference("x" * 1000)
    assert len(str(info.value)) < 200


@pytest.mark.parametrize(
    "image, prefix, expected",
    [
        ("python:3.11", "docker.mirrors.ustc.edu.cn", "docker.mirrors.ustc.edu.cn/library/python:3.11"),
        ("pytorch/pytorch", "https://mirror.example.org/", "mirror.example.org/pytorch/pytorch:latest"),
        ("python@" + SHA, "10.0.2.2:5000", "10.0.2.2:5000/library/python@" + SHA),
        ("ubuntu", "registry.lab:5000/dockerhub", "registry.lab:5000/dockerhub/library/ubuntu:latest"),
    ],
)
def test_via_mirror(image, prefix, expected):
    assert parse_image_reference(image).via_mirror(prefix).familiar == expected


def test_via_mirror_for_any_registry():
    ref = parse_image_reference("quay.io/jupyter/base-notebook:2026-01")
    assert ref.via_mirror("quay.nju.edu.cn").familiar == "quay.nju.edu.cn/jupyter/base-notebook:2026-01"
    assert ref.via_mirror("m.daocloud.io/quay.io").familiar == "m.daocloud.io/quay.io/jupyter/base-notebook:2026-01"


def test_pull_args():
    assert parse_image_reference("python").pull_args == ("docker.io/library/python", "latest")
    assert parse_image_reference("python@" + SHA).pull_args == ("docker.io/library/python", SHA)


@pytest.mark.parametrize("prefix", ["", "  ", "bad host", "http://", "mirror.example/UPPER"])
def test_bad_mirror_prefix(prefix):
    with pytest.raises(ValueError):
        normalize_mirror_prefix(prefix)


def test_imageref_is_hashable_value():
    assert ImageRef("docker.io", "library/x", "1") == parse_image_reference("x:1")
