"""A student's own images and "save my environment", through a real hub on the real daemons.

The own images here are made the way students make them, on their own daemon: ``docker tag`` of
the lab image, and a commit of a running lab server (which keeps the lab's CMD, so it starts
with today's spawner). Bob's daemon is the simulated GPU host (stub NVIDIA hook), unused here.
"""

from __future__ import annotations

import docker
import pytest
import requests

from .conftest import ARTIFACTS, base_spawner_config, containers_of
from .test_fair_use import launch
from .test_spawn import ALICE, BOB

PREFIX = "rgs12b-"
ALICE_OWN = f"{PREFIX}alice/own:v1"
BOB_OWN = f"{PREFIX}bob/own:v1"
SAVED = f"{PREFIX}alice/saved:v1"
FROM_WEB = f"{PREFIX}alice/fromweb:v1"
MARKER = "/opt/rgs12b-installed.txt"


def remove_test_images(client):
    for image in client.images.list():
        for tag in image.tags:
            if tag.startswith(PREFIX):
                try:
                    client.images.remove(tag, force=True)
                except docker.errors.APIError:
                    pass


@pytest.fixture(scope="module")
def env_hub(testbed, daemons, hub_factory):
    for name, tag in ((ALICE, ALICE_OWN), (BOB, BOB_OWN)):
        remove_test_images(daemons[name])
        daemons[name].images.get(testbed["local_image"]).tag(tag)
    config = base_spawner_config(testbed) + f"""
    from rootless_gpu_spawner import environments
    c.RootlessGPUSpawner.own_image_patterns = [{PREFIX + "*"!r}]
    c.JupyterHub.extra_handlers = environments.extra_handlers()
    c.JupyterHub.template_paths = environments.template_paths()
    """
    hub = hub_factory(config, [ALICE, BOB])
    yield hub
    for name in (ALICE, BOB):
        if hub.server(name):
            hub.stop_server(name)
        remove_test_images(daemons[name])


def user_token(hub, name):
    r = hub.request("POST", f"/users/{name}/tokens", json={"note": "own images test"})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def env_api(hub, token, method="POST", **body):
    return requests.request(method, f"{hub.url}/hub/api/rgs/environments",
                            headers={"Authorization": f"token {token}"}, json=body or None, timeout=120)


def the_container(client, name):
    (container,) = containers_of(client, name)
    return container


def test_rest_spawn_of_an_own_image_same_mounts_never_pulled(env_hub, testbed, daemons):
    hub = env_hub
    r = hub.spawn(ALICE, {"image": ALICE_OWN, "gpus": 0})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(ALICE)
    container = the_container(daemons[ALICE], ALICE)
    assert container.attrs["Config"]["Image"] == ALICE_OWN
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    assert "/workspace" in mounts and mounts["/workspace"]["Source"].endswith("/workspace")
    log = hub.log_path.read_text(errors="replace")
    assert f"image {ALICE_OWN} for {ALICE} pulled" not in log
    hub.stop_server(ALICE)


@pytest.mark.parametrize("image, words", [
    (BOB_OWN, "has no image of that name"),  # on Bob's daemon only: never another student's
    (f"{PREFIX}alice/absent:v1", "has no image of that name"),
    ("other/thing:1", "matches rgs12b-*"),
    ("Bad/Name", "lowercase"),
    (f"{PREFIX}alice/own@sha256:" + "a" * 64, "not by digest"),
])
def test_bad_own_image_names_are_400_and_start_nothing(env_hub, daemons, image, words):
    hub = env_hub
    r = hub.spawn(ALICE, {"image": image})
    assert r.status_code == 400, r.text
    message = r.json()["message"]
    assert words in message and "not one of the allowed images" in message, message
    assert not hub.server(ALICE) and containers_of(daemons[ALICE], ALICE) == []
    if image in (BOB_OWN, f"{PREFIX}alice/absent:v1"):  # own images are never pulled
        assert daemons[ALICE].images.list(name=image.rsplit(":", 1)[0]) == []


def test_save_environment_via_api_then_start_from_it(env_hub, testbed, daemons):
    hub = env_hub
    token = user_token(hub, ALICE)
    r = env_api(hub, token, name=SAVED)
    assert r.status_code == 409 and "not running" in r.json()["message"], r.text

    assert hub.spawn(ALICE, {"gpus": 0}).status_code in (201, 202)
    hub.wait_ready(ALICE)
    container = the_container(daemons[ALICE], ALICE)
    assert container.exec_run(["sh", "-c", f"echo installed-before-saving > {MARKER}"]).exit_code == 0

    r = env_api(hub, token, name=SAVED)
    assert r.status_code == 201, r.text
    assert r.json()["image"] == SAVED and r.json()["id"].startswith("sha256:")
    saved = daemons[ALICE].images.get(SAVED).attrs["Config"]
    lab = daemons[ALICE].images.get(testbed["local_image"]).attrs["Config"]
    assert saved["Cmd"] == lab["Cmd"]  # the image's own CMD, not the hub's server arguments
    hub_token = [e for e in container.attrs["Config"]["Env"] if e.startswith("JUPYTERHUB_API_TOKEN=")][0]
    assert hub_token not in saved["Env"] and "JUPYTERHUB_API_TOKEN=" in saved["Env"]
    assert saved["Labels"].get("org.rootless-gpu-spawner.hub-user") == ""

    for body, status, words in [
        ({"name": SAVED}, 409, "already on your Docker"),
        ({"name": "Bad Name"}, 400, "not a valid image name"),
        ({"name": "other/name:1"}, 400, "matching rgs12b-*"),
        ({"name": testbed["local_image"]}, 400, "matching"),
        ({"name": SAVED, "overwrite": "yes"}, 400, "true or false"),
        ({"name": SAVED, "server": "nope"}, 404, "no server named"),
        ({"name": SAVED, "cmd": "x"}, 400, "send"),
    ]:
        r = env_api(hub, token, **body)
        assert r.status_code == status and words in r.json()["message"], (body, r.status_code, r.text)
    assert env_api(hub, token, name=SAVED, overwrite=True).status_code == 201
    # Bob's token acts on Bob's servers only (he has none running); the hub's admin service not at all.
    r = env_api(hub, user_token(hub, BOB), name=f"{PREFIX}bob/saved:v1")
    assert r.status_code == 409 and "not running" in r.json()["message"], r.text
    assert env_api(hub, hub.token, name=f"{PREFIX}x:1").status_code == 403
    assert daemons[BOB].images.list(name=f"{PREFIX}bob/saved") == []
    listing = env_api(hub, token, "GET").json()
    assert SAVED in [i["image"] for i in listing["images"]] and BOB_OWN not in repr(listing)

    hub.stop_server(ALICE)
    assert hub.spawn(ALICE, {"image": SAVED, "gpus": 0}).status_code in (201, 202)
    hub.wait_ready(ALICE)
    container = the_container(daemons[ALICE], ALICE)
    out = container.exec_run(["cat", MARKER])
    assert out.exit_code == 0 and out.output.decode().strip() == "installed-before-saving"
    env = container.attrs["Config"]["Env"]
    assert [e for e in env if e.startswith("JUPYTERHUB_API_TOKEN=")] != ["JUPYTERHUB_API_TOKEN="]
    hub.stop_server(ALICE)


def test_browser_form_lists_own_images_and_the_page_saves(env_hub, testbed, daemons):
    from playwright.sync_api import sync_playwright  # a test dependency: never skipped
    hub = env_hub
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{hub.url}/hub/login?next=%2Fhub%2Fspawn", timeout=60_000)
            page.fill("input[name=username]", ALICE)
            page.fill("input[name=password]", "testbed-password")
            page.click("input[type=submit], button[type=submit]")
            page.wait_for_url("**/hub/spawn**", timeout=60_000)
            own = page.locator("#rgs-image option.rgs-own-image").all_inner_texts()
            assert any(t.startswith(ALICE_OWN + " (") and "ago" in t for t in own), own
            assert not any(BOB_OWN in t for t in own) and BOB_OWN not in page.content(), own
            lab = page.locator("#rgs-image option:not(.rgs-own-image)").all_inner_texts()
            assert testbed["local_image"] in lab, lab
            page.select_option("#rgs-image", ALICE_OWN)
            page.select_option("#rgs-gpus", "0")  # Alice's daemon has no GPU driver
            page.screenshot(path=str(ARTIFACTS / "own-images-form.png"), full_page=True)
            page.click("input[type=submit], button[type=submit]")
            page.wait_for_selector("#jp-main-dock-panel", timeout=180_000)
            assert the_container(daemons[ALICE], ALICE).attrs["Config"]["Image"] == ALICE_OWN

            page.goto(f"{hub.url}/hub/home", timeout=60_000)
            page.click("#rgs-save-environment")
            page.wait_for_url("**/hub/environments", timeout=60_000)
            page.fill(".rgs-env-name", FROM_WEB)
            page.click(".rgs-env-submit")
            page.wait_for_selector("#rgs-env-saved", timeout=120_000)
            assert FROM_WEB in page.inner_text("#rgs-env-saved")
            assert FROM_WEB in page.inner_text("#rgs-env-images")
            page.screenshot(path=str(ARTIFACTS / "save-environment.png"), full_page=True)
            page.fill(".rgs-env-name", FROM_WEB)  # the same name again: refused, clearly
            page.click(".rgs-env-submit")
            page.wait_for_selector("#rgs-env-error", timeout=60_000)
            assert "already on your Docker" in page.inner_text("#rgs-env-error")
            assert "Traceback" not in page.content()
            page.screenshot(path=str(ARTIFACTS / "save-environment-taken.png"), full_page=True)
        finally:
            browser.close()
    assert daemons[ALICE].images.get(FROM_WEB).attrs["Config"]["Cmd"]
    hub.stop_server(ALICE)
    for name in ("own-images-form.png", "save-environment.png"):
        assert (ARTIFACTS / name).stat().st_size > 10_000
