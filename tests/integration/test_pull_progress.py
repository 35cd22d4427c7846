"""Pull progress on the spawn page and dead mirrors skipped, against the local registry.

The registry gets a multi-layer image (the lab image plus two committed
layers of random bytes) under a Docker Hub-style name; the mirror list puts
a dead mirror (a loopback port nobody listens on, seen by the daemon as
10.0.2.2:1) before the working one.
"""

from __future__ import annotations

import re

import docker
import pytest
import requests

from .conftest import base_spawner_config
from .test_spawn import ALICE

SHORT = "rgs-multilayer:latest"


@pytest.fixture(scope="module")
def multilayer_image(testbed, daemons):
    registry, from_daemon = testbed["registry"], testbed["registry_from_daemon"]
    repo = f"{from_daemon}/library/rgs-multilayer"
    have = requests.head(
        f"http://{registry}/v2/library/rgs-multilayer/manifests/latest",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"}, timeout=10,
    )
    client = daemons[ALICE]
    if have.status_code != 200:
        image = testbed["local_image"]
        for i in (1, 2):
            c = client.containers.run(image, ["sh", "-c", f"head -c 20000000 /dev/urandom > /layer{i}"],
                                      detach=True, user="0:0")
            assert c.wait(timeout=120)["StatusCode"] == 0
            image = c.commit(repository=repo, tag=f"step{i}", changes=['CMD ["jupyterhub-singleuser"]']).id
            c.remove()
        client.images.get(image).tag(repo, "latest")
        for line in client.images.push(repo, tag="latest", stream=True, decode=True):
            assert "error" not in line, line
        for tag in ("step1", "step2", "latest"):
            client.images.remove(f"{repo}:{tag}")
    return SHORT


@pytest.fixture(scope="module")
def progress_hub(testbed, hub_factory, multilayer_image):
    config = base_spawner_config(testbed) + f'''
    c.RootlessGPUSpawner.allowed_images = [{testbed['local_image']!r}, {SHORT!r}]
    c.RootlessGPUSpawner.mirror_prefixes = ["{testbed['registry_from_daemon'].split(':')[0]}:1", {testbed['registry_from_daemon']!r}]
    c.RootlessGPUSpawner.gpus = 0
    # Answer the spawn request at once, so the test follows the progress stream from the start.
    c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0.1}}
    '''
    return hub_factory(config, [ALICE])


def remove_local(client, name, testbed):
    """Forget the image on the daemon, under its own and its mirror's name, so it is pulled again."""
    for ref in (name, f"{testbed['registry_from_daemon']}/library/{name}"):
        try:
            client.images.remove(ref)
        except docker.errors.ImageNotFound:
            pass


def spawn_and_follow(hub, name, options):
    r = hub.spawn(name, options)
    assert r.status_code == 202, r.text
    events = hub.progress_events(name, timeout=240)
    assert events and events[-1].get("ready"), events[-3:]
    return events


def test_pull_progress_and_dead_mirror(progress_hub, daemons, testbed):
    hub, client = progress_hub, daemons[ALICE]
    remove_local(client, SHORT, testbed)
    events = spawn_and_follow(hub, ALICE, {"image": SHORT})
    messages = [e.get("message", "") for e in events]
    dead = f"{testbed['registry_from_daemon'].split(':')[0]}:1"

    # The dead mirror was skipped quickly, and the log says which mirror served the image.
    assert any(dead in m and "no answer from 127.0.0.1:1" in m for m in messages), messages
    byte_lines = [m for m in messages if re.search(
        rf"pulling {re.escape(SHORT)} from mirror {re.escape(testbed['registry_from_daemon'])}: [\d.]+ [kMG]?B of [\d.]+ [kMG]?B", m)]
    assert byte_lines, messages
    assert any(f"pulled {SHORT} from mirror {testbed['registry_from_daemon']}" in m for m in messages), messages
    percents = [e["progress"] for e in events if "progress" in e]
    assert percents == sorted(percents) and percents[-1] == 100, percents
    assert SHORT in client.images.get(SHORT).tags
    hub.stop_server(ALICE)

    # Pulled again: the dead mirror is now in its cool-down and not even probed.
    remove_local(client, SHORT, testbed)
    messages = [e.get("message", "") for e in spawn_and_follow(hub, ALICE, {"image": SHORT})]
    assert any(dead in m and "failed recently" in m for m in messages), messages
    hub.stop_server(ALICE)
