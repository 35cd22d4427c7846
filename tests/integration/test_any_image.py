"""Any image a student brings starts (issue 12): Docker Stacks, no Jupyter, committed, or a clear error.

Through the real hub on alice's real rootless daemon: for each image a notebook saved through the
contents API lands in ~/workspace owned by alice, and code run in a kernel (REST + websocket, as a
notebook does) reports the image's own Python environment and imports a module only that image
has.  Images without Jupyter get the derived image (JupyterHub installed from a wheel index served
on 127.0.0.1, reached as 10.0.2.2); the cold build happens once per session, the second spawn of
the same image reuses it.  Broken images fail with the reason within seconds, before http_timeout.
"""

from __future__ import annotations

import json
import os
import pwd
import time

import pytest

from . import student_images
from .conftest import base_spawner_config, containers_of
from .kernels import run_in_kernel
from .test_spawn import ALICE, spawn_message

HTTP_TIMEOUT = 120  # testkit.hub's c.Spawner.http_timeout
PROBE = "import sys, json; print(json.dumps({'prefix': sys.prefix, 'base': sys.base_prefix, 'exe': sys.executable, 'mod': __import__(%r).WHERE}))"


@pytest.fixture(scope="module")
def images(testbed, daemons):
    client = daemons[ALICE]
    built = student_images.ensure_images(client, testbed["local_image"])
    # Every session builds one derived image cold (the conda-style one: pip into the image's own
    # environment); the python-only one (the venv path) is built when missing and reused across
    # sessions, which keeps this module within its time budget on a warm machine.
    student_images.remove_derived(client, client.images.get(built["conda-style"]).id)
    return built


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel-index")
    student_images.write_simple_index(student_images.ensure_wheels(), root)
    with student_images.WheelIndex(root) as served:
        yield served


@pytest.fixture(scope="module")
def any_hub(testbed, hub_factory, images, index):
    allowed = [testbed["local_image"]] + sorted(v for k, v in images.items() if k != "stacks-missing")
    config = base_spawner_config(testbed) + f"""
    c.RootlessGPUSpawner.allowed_images = {allowed!r}
    c.RootlessGPUSpawner.lab_pypi_index = {index.url_from_container(testbed.get('gateway', '10.0.2.2'))!r}
    """
    return hub_factory(config, [ALICE])


def _workspace(testbed) -> str:
    return os.path.join(pwd.getpwnam(ALICE).pw_dir, "workspace")


def _serve_and_check(hub, testbed, image, module, expect_prefix):
    r = hub.spawn(ALICE, {"image": image, "gpus": 0})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(ALICE)
    try:
        # A notebook saved as a student's JupyterLab does lands in ~/workspace, owned by the student.
        nb_name = f"any-image-{image.split('/')[-1].split(':')[0]}.ipynb"
        notebook = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
        r = hub.user_put(ALICE, f"/api/contents/{nb_name}", json={"type": "notebook", "content": notebook})
        assert r.status_code in (200, 201), r.text
        path = os.path.join(_workspace(testbed), nb_name)
        assert os.stat(path).st_uid == testbed["users"][ALICE]["uid"]
        os.unlink(path)
        # The kernel runs on the image's own environment and sees its own module; cwd is the workspace.
        out = json.loads(run_in_kernel(hub, ALICE, PROBE % module).strip().splitlines()[-1])
        assert out["mod"] == module_where(module), out
        assert out["prefix"].startswith(expect_prefix) or out["base"].startswith(expect_prefix), out
        cwd = run_in_kernel(hub, ALICE, "import os; print(os.getcwd())").strip()
        assert cwd == "/workspace", cwd
        return out
    finally:
        hub.stop_server(ALICE)


def module_where(module):
    return {"stacksonly": "stacks", "pyonly": "python-only", "labonly": "conda-style", "mine": "committed"}[module]


def _log_count(hub, text: str) -> int:
    return hub.log_path.read_text(errors="replace").count(text)


BUILDING = "preparing your image: installing JupyterLab (first start only)"
REUSING = "reusing derived image"


def test_docker_stacks_image_keeps_the_student_as_container_root(any_hub, testbed, images):
    assert "stacks-missing" not in images, images.get("stacks-missing")
    # The module lives only in the image's /opt/venv (the stacks' /opt/conda links to it).
    out = _serve_and_check(any_hub, testbed, images["stacks"], "stacksonly", "/opt/")
    assert out["prefix"] in ("/opt/conda", "/opt/venv"), out
    assert _log_count(any_hub, BUILDING) == 0


def test_committed_image_with_bash_cmd_runs_the_server_itself(any_hub, testbed, images):
    _serve_and_check(any_hub, testbed, images["committed"], "mine", "/opt/venv")
    assert _log_count(any_hub, BUILDING) == 0


def test_conda_style_image_gets_jupyter_in_its_own_environment(any_hub, testbed, images, daemons):
    out = _serve_and_check(any_hub, testbed, images["conda-style"], "labonly", "/opt/conda")
    assert out["prefix"] == "/opt/conda" and out["exe"].startswith("/opt/conda/bin/python"), out
    built, reused = _log_count(any_hub, BUILDING), _log_count(any_hub, REUSING)
    # Warm: the same image again reuses the derived image (no build).
    out2 = _serve_and_check(any_hub, testbed, images["conda-style"], "labonly", "/opt/conda")
    assert out2["prefix"] == "/opt/conda"
    assert _log_count(any_hub, BUILDING) == built and _log_count(any_hub, REUSING) == reused + 1
    derived = daemons[ALICE].images.list(filters={"label": "org.rootless-gpu-spawner.derived"})
    bases = [i.labels["org.rootless-gpu-spawner.derived.from"] for i in derived]
    assert bases.count(daemons[ALICE].images.get(images["conda-style"]).id) == 1, bases


def test_python_only_image_gets_a_venv_over_its_own_python(any_hub, testbed, images):
    out = _serve_and_check(any_hub, testbed, images["python-only"], "pyonly", "/usr")
    # Debian's python3 has no pip and ensurepip is disabled for it: a --system-site-packages
    # venv on the image's own interpreter, which imports the image's own module.
    assert out["base"] == "/usr" and out["prefix"] == "/opt/rgs-jupyter", out


def _refused(hub, image):
    start = time.monotonic()
    r = hub.spawn(ALICE, {"image": image, "gpus": 0})
    message = spawn_message(hub, ALICE, r)
    elapsed = time.monotonic() - start
    hub.wait_gone(ALICE, 30)
    return message, elapsed


def test_image_without_python_is_refused_with_the_reason(any_hub, images, daemons):
    message, elapsed = _refused(any_hub, images["no-python"])
    assert "has no Python" in message and "3.9 or newer" in message, message
    assert elapsed < HTTP_TIMEOUT, elapsed
    assert containers_of(daemons[ALICE], ALICE) == []


def test_image_whose_jupyterhub_the_hub_cannot_talk_to_is_named(any_hub, images):
    message, elapsed = _refused(any_hub, images["old-jupyterhub"])
    assert "jupyterhub 1.5.0" in message and "cannot talk to" in message, message
    assert elapsed < HTTP_TIMEOUT, elapsed


def test_container_that_exits_while_starting_fails_fast_with_its_last_lines(any_hub, images, daemons):
    message, elapsed = _refused(any_hub, images["exits"])
    assert "exited with code 3" in message, message
    assert "no module named labstuff" in message and "\\x1b[31m" in message and "\x1b" not in message, message
    assert elapsed < HTTP_TIMEOUT, elapsed
    assert containers_of(daemons[ALICE], ALICE) == []
