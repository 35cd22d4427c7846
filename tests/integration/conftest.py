"""Fixtures for the integration suite: the real rootless testbed and a real JupyterHub."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import docker
import pytest

from testkit.hub import Hub

from .fakes import FAKE_SOURCE

TESTBED_JSON = Path("/run/rootless-gpu-spawner-testbed/testbed.json")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def pytest_collection_modifyitems(items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def testbed():
    if not TESTBED_JSON.exists():
        message = (
            f"no testbed ({TESTBED_JSON} missing): run 'python -m tests.testbed up' as root "
            "(scripts/test.sh does it)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)  # the integration suite must run in CI, never be skipped
        pytest.skip(message)
    return json.loads(TESTBED_JSON.read_text())


@pytest.fixture(scope="session")
def daemons(testbed):
    """docker-py clients on each test user's daemon (the test itself talks to them as root)."""
    clients = {
        name: docker.DockerClient(base_url=u["docker_host"], timeout=60)
        for name, u in testbed["users"].items()
        if u.get("daemon", True) and u.get("docker_host") and os.path.exists(u["docker_host"][7:])
    }
    yield clients
    for c in clients.values():
        c.close()


def base_spawner_config(testbed) -> str:
    return f"""
    c.RootlessGPUSpawner.image = {testbed['local_image']!r}
    c.RootlessGPUSpawner.allowed_images = [{testbed['local_image']!r}, {testbed['mirror_image_short']!r}]
    c.RootlessGPUSpawner.pull_policy = "ifnotpresent"
    # The local registry plays the Docker Hub mirror; never fall back to the internet in a test.
    c.RootlessGPUSpawner.mirror_prefixes = [{testbed['registry_from_daemon']!r}]
    c.RootlessGPUSpawner.mirror_fallback_to_upstream = False
    # A daemon that never answers fails the spawn after this long (tests/integration/test_refusals.py).
    c.RootlessGPUSpawner.docker_api_timeout = 30
    """


def remove_leftover_containers(testbed):
    """Each test hub has a fresh database: containers of an earlier hub would only confuse it."""
    for user in testbed["users"].values():
        path = user["docker_host"][len("unix://"):]
        if not os.path.exists(path):
            continue
        client = docker.DockerClient(base_url=user["docker_host"], timeout=60)
        try:
            for c in client.containers.list(all=True, filters={"label": "org.rootless-gpu-spawner.hub-user"}):
                c.remove(force=True)
        finally:
            client.close()


@pytest.fixture(scope="module")
def hub_factory(testbed, tmp_path_factory):
    """Start real hubs for a test module; all are stopped (servers first) at its end."""
    started = []
    remove_leftover_containers(testbed)

    def start(spawner_config: str, users):
        workdir = tmp_path_factory.mktemp("hub")
        h = Hub(workdir, spawner_config, users)
        started.append(h)
        return h.start()

    yield start
    for h in started:
        h.stop()
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / f"jupyterhub-{h.workdir.name}.log").write_text(h.log_tail(100000))


@pytest.fixture(scope="module")
def hub(testbed, hub_factory):
    return hub_factory(base_spawner_config(testbed), list(testbed["users"]))


def containers_of(client, hub_user=None):
    filters = {"label": "org.rootless-gpu-spawner.hub-user" + (f"={hub_user}" if hub_user else "")}
    return client.containers.list(all=True, filters=filters)


@pytest.fixture
def carol_socket(testbed):
    """The path where carol's daemon socket would be (she has no daemon); cleaned up after."""
    carol = testbed["users"]["rgstest-carol"]
    rundir = f"/run/user/{carol['uid']}"
    made = not os.path.isdir(rundir)
    if made:
        os.makedirs(rundir, mode=0o700)
        os.chown(rundir, carol["uid"], carol["gid"])
    path = os.path.join(rundir, "docker.sock")
    assert not os.path.lexists(path), f"{path} should not exist before the test"
    yield path
    if os.path.lexists(path):
        os.unlink(path)
    if made:
        os.rmdir(rundir)


class ReliabilityRecorder:
    """Collects every reliability/security case with its result, for docs/reliability.md.

    Each case is recorded before it is asserted, so a failing case still shows
    up in the table as failed (scripts/reliability_report.py renders it).
    """

    def __init__(self):
        self.cases = []
        self.figures = {}

    def record(self, section, case, expected, observed, ok):
        self.cases.append(
            {"section": section, "case": case, "expected": expected, "observed": str(observed)[:300], "ok": bool(ok)}
        )
        return ok

    def figure(self, name, value):
        self.figures[name] = value


RELIABILITY_JSON = ARTIFACTS / "reliability.json"


@pytest.fixture(scope="session")
def reliability():
    recorder = ReliabilityRecorder()
    yield recorder
    if recorder.cases:
        ARTIFACTS.mkdir(exist_ok=True)
        RELIABILITY_JSON.write_text(json.dumps({"cases": recorder.cases, "figures": recorder.figures}, indent=2))


@pytest.fixture(scope="module")
def fake_home():
    """A directory everyone may read, holding a copy of the fake (the checkout may not be readable
    by the test users) and the fakes' logs."""
    d = Path(f"/run/rgs-hostile-daemons-{os.getpid()}")
    d.mkdir(mode=0o755, exist_ok=True)
    os.chmod(d, 0o755)
    shutil.copy(FAKE_SOURCE, d / "hostile_daemon.py")
    os.chmod(d / "hostile_daemon.py", 0o644)
    yield d
    # The fakes' request logs are kept with the other artifacts (tail only: some are large).
    keep = ARTIFACTS / "hostile-daemons"
    keep.mkdir(parents=True, exist_ok=True)
    for log in d.glob("*.log"):
        with open(log, "rb") as f:
            f.seek(max(0, log.stat().st_size - (256 << 10)))
            (keep / log.name).write_bytes(f.read())
    shutil.rmtree(d, ignore_errors=True)
