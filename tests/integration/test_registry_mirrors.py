"""Mirrors for every registry through the real hub, on loopback only.

An "upstream" docker-registry of the test's own (TLS, on a free port) sits
behind a bandwidth-limiting, byte-counting TCP proxy; it holds one multi-layer
image (the lab image plus three layers of random bytes) under Docker Hub-,
quay.io- and nvcr.io-style names, and the same under ``quay.io/...`` and
``nvcr.io/...`` paths for path-prefix mirrors. Mirror chains: a dead mirror
(a closed port), one that refuses every image with 403 "not in allowlist",
then the proxy as a host-swap mirror (docker.io), a path-prefix mirror
(quay.io) and the lab cache (nvcr.io). Upstream fallback is off: nothing here
leaves the machine, the "upstream" is reached only as a mirror entry.

Per spawn the test asserts: ready; the image on alice's daemon under its
canonical name only (no mirror tags); progress naming the skipped, refusing
and serving sources; the bytes counted at the proxy (each new blob once).
"""

from __future__ import annotations

import shutil

import docker
import pytest

from testkit.loopback_registries import (
    ImageBuilder, RefusingMirror, RegistryProcess, free_port, make_certificate, trust_for_daemon,
)
from testkit.netproxy import CountingProxy

from .conftest import base_spawner_config
from .test_spawn import ALICE

RATE = 40e6 / 8  # 40 Mbit/s: slow enough to be an "upstream", fast enough for CI
GATEWAY = "10.0.2.2"
IMAGES = {
    "docker.io": "rgsmirror:latest",
    "quay.io": "quay.io/jupyter/rgsmirror:latest",
    "nvcr.io": "nvcr.io/nvidia/rgsmirror:latest",
}
REPOS = ["library/rgsmirror", "jupyter/rgsmirror", "nvidia/rgsmirror", "quay.io/jupyter/rgsmirror",
         "nvcr.io/nvidia/rgsmirror"]


@pytest.fixture(scope="module")
def chain(testbed, tmp_path_factory):
    """The upstream registry behind the proxy, the refusing mirror, a dead port; alice's daemon trusts them."""
    work = str(tmp_path_factory.mktemp("mirror-chain"))
    cert, key = make_certificate(work)
    registry = RegistryProcess(work, cert, key).start()
    refusing = proxy = None
    trusted = []
    try:
        image = ImageBuilder(registry).build(testbed["registry"], testbed["mirror_repo"], "latest", REPOS)
        proxy = CountingProxy(registry.port, RATE).start()
        refusing = RefusingMirror(cert, key).start()
        alice = testbed["users"][ALICE]
        for port in (proxy.port, refusing.port):
            trusted.append(trust_for_daemon(alice["home"], alice["uid"], alice["gid"], f"{GATEWAY}:{port}", cert))
        yield {
            "proxy": proxy, "refusing": refusing, "image": image,
            "upstream": f"{GATEWAY}:{proxy.port}", "forbidden": f"{GATEWAY}:{refusing.port}",
            "dead": f"{GATEWAY}:{free_port()}",
        }
    finally:
        for path in trusted:
            shutil.rmtree(path, ignore_errors=True)
        for server in (refusing, proxy):
            if server is not None:
                server.stop()
        registry.stop()


@pytest.fixture(scope="module")
def mirror_hub(testbed, hub_factory, chain):
    up, forbidden, dead = chain["upstream"], chain["forbidden"], chain["dead"]
    config = base_spawner_config(testbed) + f'''
    c.RootlessGPUSpawner.allowed_images = {[testbed['local_image'], *IMAGES.values()]!r}
    c.RootlessGPUSpawner.mirror_prefixes = None  # registry_mirrors says it all
    c.RootlessGPUSpawner.registry_mirrors = {{
        "docker.io": [{dead!r}, {forbidden!r}, {up!r}],
        "quay.io": [{forbidden!r}, "{up}/quay.io"],
    }}
    c.RootlessGPUSpawner.lab_cache_mirrors = {{"nvcr.io": {up!r}}}
    c.RootlessGPUSpawner.mirror_fallback_to_upstream = False
    c.RootlessGPUSpawner.gpus = 0
    c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0.1}}
    '''
    return hub_factory(config, [ALICE])


def forget(client, image):
    """Remove the image from alice's daemon, and so its own layers (the lab image's layer stays)."""
    try:
        client.images.remove(image)
    except docker.errors.ImageNotFound:
        pass


def spawn_pulling(hub, client, chain, image):
    for name in IMAGES.values():  # one image under three names: none may be left from an earlier test
        forget(client, name)
    chain["proxy"].reset()
    r = hub.spawn(ALICE, {"image": image})
    assert r.status_code == 202, r.text
    events = hub.progress_events(ALICE, timeout=240)
    assert events and events[-1].get("ready"), events[-4:]
    return [e.get("message", "") for e in events], chain["proxy"].bytes_down


def assert_canonical_only(client, image):
    tags = client.images.get(image).tags
    assert tags == [image], tags  # the mirror's names are gone
    assert not [t for i in client.images.list() for t in i.tags if "rgsmirror" in t and t != image]


def assert_each_blob_once(bytes_down, chain):
    added, total = chain["image"]["added_bytes"], chain["image"]["total_bytes"]
    # The new layers crossed the proxy (the lab image's layer is already on the daemon); no blob twice.
    assert added <= bytes_down <= total + added // 2 + 1_000_000, (bytes_down, added, total)


def test_docker_hub_host_swap_after_a_dead_and_a_refusing_mirror(mirror_hub, daemons, chain):
    client, image = daemons[ALICE], IMAGES["docker.io"]
    messages, bytes_down = spawn_pulling(mirror_hub, client, chain, image)
    try:
        up = chain["upstream"]
        assert any(f"mirror {chain['dead']}" in m and "no answer from 127.0.0.1" in m for m in messages), messages
        assert any(f"mirror {chain['forbidden']} refuses this image (allow-list): trying the next" in m
                   for m in messages), messages
        assert any(m.startswith(f"pulling {image} from mirror {up}: ") for m in messages), messages
        assert f"pulled {image} from mirror {up}" in messages, messages
        assert chain["refusing"].refused, "the refusing mirror was asked"
        assert_canonical_only(client, image)
        assert_each_blob_once(bytes_down, chain)
    finally:
        mirror_hub.stop_server(ALICE)


def test_quay_path_prefix_after_a_refusing_mirror(mirror_hub, daemons, chain):
    client, image = daemons[ALICE], IMAGES["quay.io"]
    messages, bytes_down = spawn_pulling(mirror_hub, client, chain, image)
    try:
        mirror = f"{chain['upstream']}/quay.io"
        assert any(f"mirror {chain['forbidden']} refuses this image (allow-list): trying the next" in m
                   for m in messages), messages
        assert f"pulled {image} from mirror {mirror}" in messages, messages
        assert_canonical_only(client, image)
        assert_each_blob_once(bytes_down, chain)
    finally:
        mirror_hub.stop_server(ALICE)


def test_nvcr_from_the_lab_cache(mirror_hub, daemons, chain):
    client, image = daemons[ALICE], IMAGES["nvcr.io"]
    messages, bytes_down = spawn_pulling(mirror_hub, client, chain, image)
    try:
        assert any(m.startswith(f"pulling {image} from the lab cache") for m in messages), messages
        assert f"pulled {image} from the lab cache" in messages, messages
        assert not any("refuses" in m or "skipped" in m for m in messages), messages
        assert_canonical_only(client, image)
        assert_each_blob_once(bytes_down, chain)
    finally:
        mirror_hub.stop_server(ALICE)
        for name in IMAGES.values():
            forget(client, name)
