"""Exclusive GPU allocation through a real hub, on the *simulated GPU host* (bob's daemon).

The stub NVIDIA hook (TESTBED.md) makes Docker accept the device requests and
set NVIDIA_VISIBLE_DEVICES; it proves the request path, not CUDA. Three hub
students are mapped to bob's account (``system_user``) so that all of them
land on the one GPU daemon of the testbed; the allocator is host-wide anyway.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import ARTIFACTS, base_spawner_config, containers_of
from .test_spawn import BOB, container_env, spawn_message

STUDENTS = ["gpu-s1", "gpu-s2", "gpu-s3"]
GPU_IDS = ["0", "1", "2", "3"]


@pytest.fixture(scope="module")
def gpu_hub(testbed, hub_factory):
    config = base_spawner_config(testbed) + f"""
    c.RootlessGPUSpawner.gpu_policy = "exclusive"
    c.RootlessGPUSpawner.gpu_ids = {GPU_IDS!r}
    c.RootlessGPUSpawner.gpus = 1
    c.RootlessGPUSpawner.max_gpus_per_user = 2
    c.RootlessGPUSpawner.system_user = lambda name: {BOB!r} if name.startswith("gpu-") else name
    c.RootlessGPUSpawner.allow_shared_accounts = True  # the gpu-* students all use bob's account
    c.Spawner.poll_interval = 3
    """
    return hub_factory(config, STUDENTS + [BOB])


def visible(daemons, name):
    return set(container_env(daemons[BOB], name)["NVIDIA_VISIBLE_DEVICES"].split(","))


def test_exclusive_allocation_refusal_restart_and_release(gpu_hub, daemons):
    hub = gpu_hub
    s1, s2, s3 = STUDENTS
    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda n: hub.spawn(n, {"gpus": 2}), [s1, s2]))
    assert all(r.status_code in (201, 202) for r in responses), [r.text for r in responses]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(hub.wait_ready, [s1, s2]))
    g1, g2 = visible(daemons, s1), visible(daemons, s2)
    assert len(g1) == len(g2) == 2 and not g1 & g2 and g1 | g2 == set(GPU_IDS)

    # The third student is refused clearly, without learning who holds the GPUs.
    r = hub.spawn(s3, {"gpus": 2})
    message = spawn_message(hub, s3, r)
    assert "not enough free GPUs" in message and "4 of 4 are in use" in message, message
    assert s1 not in message and s2 not in message
    assert containers_of(daemons[BOB], s3) == []

    # A hub restart changes nothing: same containers, and still nothing free.
    ids_before = {n: [c.id for c in containers_of(daemons[BOB], n)] for n in (s1, s2)}
    hub.restart()
    for n in (s1, s2):
        hub.wait_ready(n, timeout=60)
        assert [c.id for c in containers_of(daemons[BOB], n)] == ids_before[n]
    assert visible(daemons, s1) == g1 and visible(daemons, s2) == g2
    message = spawn_message(hub, s3, hub.spawn(s3, {"gpus": 2}))
    assert "not enough free GPUs" in message, message

    # After one stops, the third starts, on exactly the GPUs that were freed.
    hub.stop_server(s1)
    r = hub.spawn(s3, {"gpus": 2})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(s3)
    assert visible(daemons, s3) == g1

    # A container that dies is seen by poll and its GPUs are released.
    (c2,) = containers_of(daemons[BOB], s2)
    c2.kill()
    hub.wait_gone(s2)
    assert containers_of(daemons[BOB], s2) == []  # poll also removed the dead container
    r = hub.spawn(s1, {"gpus": ["%s" % sorted(g2)[0]]})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(s1)
    assert visible(daemons, s1) == {sorted(g2)[0]}
    for n in (s1, s3):
        hub.stop_server(n)


def test_invalid_requests_are_400_and_start_nothing(gpu_hub, daemons):
    hub = gpu_hub
    s1 = STUDENTS[0]
    for options, words in [
        ({"gpus": -1}, "negative"),
        ({"gpus": 3}, "limit is 2"),
        ({"gpus": ["9"]}, "no GPU 9"),
        ({"gpus": "all"}, "ask for a number"),
        ({"gpus": "lots"}, "not understood"),
        ({"image": "evil/miner:latest"}, "not one of the allowed images"),
        ({"shell": "bash"}, "unknown option"),
    ]:
        r = hub.spawn(s1, options)
        assert r.status_code == 400, (options, r.status_code, r.text)
        assert words in r.json()["message"], (options, r.text)
        assert containers_of(daemons[BOB], s1) == []
        assert not hub.server(s1)


def test_browser_login_form_spawn_and_jupyterlab(gpu_hub, testbed, daemons):
    from playwright.sync_api import sync_playwright  # a test dependency: never skipped
    hub = gpu_hub
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "browser-spawn-jupyterlab.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{hub.url}/hub/login", timeout=60_000)
            page.fill("input[name=username]", BOB)
            page.fill("input[name=password]", "testbed-password")
            page.click("input[type=submit], button[type=submit]")
            page.wait_for_url("**/hub/spawn**", timeout=60_000)
            # The form, in both languages: the images, the GPU count, what is free.
            assert page.inner_text("label[for=rgs-image]").strip() == "Image / 镜像"
            assert page.inner_text("label[for=rgs-gpus]").strip() == "GPUs / GPU 数量"
            # The lab's images (the student's own images on their daemon are listed apart).
            images = page.locator("#rgs-image option:not(.rgs-own-image)").all_inner_texts()
            assert testbed["local_image"] in images and len(images) == 2, images
            counts = page.locator("#rgs-gpus option").all_inner_texts()
            assert "No GPU / 不使用 GPU" in counts and "2 GPUs / 2 块 GPU" in counts, counts
            free = page.inner_text("#rgs-gpu-free")
            assert "GPUs free now" in free and "当前空闲" in free, free
            page.select_option("#rgs-image", testbed["local_image"])
            page.select_option("#rgs-gpus", "2")
            page.screenshot(path=str(ARTIFACTS / "browser-spawn-form.png"))
            page.click("input[type=submit], button[type=submit]")
            page.wait_for_selector("#jp-main-dock-panel", timeout=180_000)
            page.wait_for_timeout(2000)  # let JupyterLab finish drawing for the screenshot
            page.screenshot(path=str(shot))
            text = page.inner_text("body")
            for bad in ("Spawn failed", "Internal Server Error", "Traceback"):
                assert bad not in text, text[:500]
            assert page.locator(".jp-Dialog").count() == 0, "JupyterLab shows an error dialog"
        finally:
            browser.close()
    assert shot.exists() and shot.stat().st_size > 10_000
    assert len(visible(daemons, BOB)) == 2
    hub.stop_server(BOB)
    # image and gpus are declared handled (Spawner.apply_user_options): no warning per spawn
    assert "unhandled user_options" not in hub.log_path.read_text(errors="replace")
