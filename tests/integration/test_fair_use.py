"""Fair use of GPUs through a real hub: GPU-aware idle culling and the GPU board.

GPUs and their utilisation are *simulated*: bob's daemon is the simulated GPU host (a stub
NVIDIA hook, TESTBED.md) and the utilisation figures come from a JSON file this test writes
(``RGS_GPU_UTILISATION_FILE``), which the board labels as simulated.  The hub runs the real
jupyterhub-idle-culler 2.0 and the board as managed services, wired with the same helpers as
the example configuration (rootless_gpu_spawner/culling.py).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pytest
import requests

from .conftest import ARTIFACTS, base_spawner_config, containers_of
from testkit.hub import free_port
from .test_spawn import BOB, container_env

IDLE, BUSY, CPU, NEXT, ADMIN = "fair-idle", "fair-busy", "fair-cpu", "fair-next", "fair-admin"
GPU_IDS = ["0", "1"]
WINDOW, TIMEOUT = 4, 6  # seconds: GPU idle window, activity timeout of the culler
WAIT = 90  # bound for every wait below (not an assertion on time)


def write_utilisation(path, utils):
    doc = {"simulated": True, "gpus": {
        g: {"utilisation": u, "memory_used": int(u) * 2**28, "memory_total": 80 * 2**30,
            "name": "simulated GPU", "node": "localhost"} for g, u in utils.items()}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


@pytest.fixture(scope="module")
def fair(testbed, hub_factory, tmp_path_factory):
    util_file = tmp_path_factory.mktemp("util") / "gpu-utilisation.json"
    write_utilisation(util_file, {g: 50 for g in GPU_IDS})  # busy while the servers start
    board_port = free_port()
    config = base_spawner_config(testbed) + f"""
    from rootless_gpu_spawner import culling, holders
    c.RootlessGPUSpawner.gpu_policy = "exclusive"
    c.RootlessGPUSpawner.gpu_ids = {GPU_IDS!r}
    c.RootlessGPUSpawner.gpus = 1
    c.RootlessGPUSpawner.system_user = lambda name: {BOB!r} if name.startswith("fair-") else name
    c.RootlessGPUSpawner.allow_shared_accounts = True
    c.Spawner.args = culling.kernel_culling_args(600, 60)
    c.Spawner.poll_interval = 3
    c.Authenticator.admin_users = {{{ADMIN!r}}}
    c.JupyterHub.extra_handlers = holders.extra_handlers()
    c.JupyterHub.custom_scopes = holders.custom_scopes()
    c.JupyterHub.services = list(c.JupyterHub.services) + [
        culling.board_service({board_port}, "--GPUBoard.idle_window={WINDOW}", "--GPUBoard.idle_threshold=10",
                              "--GPUBoard.sample_interval=1", "--GPUBoard.refresh_seconds=1",
                              "--GPUBoard.gpu_lease=86400",
                              environment={{"RGS_GPU_UTILISATION_FILE": {str(util_file)!r}}}),
        culling.culler_service({board_port}, {TIMEOUT}, 1),
    ]
    c.JupyterHub.load_roles = list(c.JupyterHub.load_roles) + culling.roles()
    c.JupyterHub.template_vars = {{"announcement": culling.announcement({WINDOW}, 10, 86400)}}
    """
    hub = hub_factory(config, [IDLE, BUSY, CPU, NEXT, ADMIN])
    hub.util_file = util_file
    hub.board_api = f"{hub.url}/services/gpu-board/api"
    return hub


def gpus_of(daemons, name):
    return container_env(daemons[BOB], name)["NVIDIA_VISIBLE_DEVICES"]


def wait_for(predicate, what):
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"not within {WAIT}s: {what}")


def board_get(hub, path, token=None):
    return requests.get(hub.board_api + path, headers={"Authorization": f"token {token or hub.token}"}, timeout=30)


def user_token(hub, name):
    r = hub.request("POST", f"/users/{name}/tokens", json={"note": "fair-use test"})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def test_idle_gpu_server_is_culled_busy_one_kept_cpu_one_culled_by_activity(fair, daemons):
    hub = fair
    for name, gpus in ((IDLE, 1), (BUSY, 1), (CPU, 0)):
        r = hub.spawn(name, {"gpus": gpus})
        assert r.status_code in (201, 202), r.text
        hub.wait_ready(name)
    idle_gpu, busy_gpu = gpus_of(daemons, IDLE), gpus_of(daemons, BUSY)
    assert {idle_gpu, busy_gpu} == set(GPU_IDS)
    # Kernels inside the servers are culled by JupyterLab itself.
    (busy_container,) = containers_of(daemons[BOB], BUSY)
    assert "--MappingKernelManager.cull_idle_timeout=600" in busy_container.attrs["Config"]["Cmd"]

    write_utilisation(hub.util_file, {idle_gpu: 0, busy_gpu: 80})  # simulated figures
    wait_for(lambda: not hub.server(IDLE), f"{IDLE} (GPU at simulated 0 %) culled")
    wait_for(lambda: not hub.server(CPU), f"{CPU} (no GPU) culled by activity")
    assert containers_of(daemons[BOB], IDLE) == []

    # The busy one is kept although it had no browser activity for longer than the timeout:
    # it started before the CPU server, which the activity rule has culled already.
    busy = hub.server(BUSY)
    assert busy and busy["ready"]
    last = datetime.fromisoformat(busy["last_activity"].replace("Z", "+00:00"))
    assert (datetime.now(timezone.utc) - last).total_seconds() > TIMEOUT
    rows = board_get(hub, f"/users/{BUSY}/servers").json()["servers"]
    assert rows[""]["gpus"] == [busy_gpu] and not rows[""]["idle"] and not rows[""]["cull"], rows

    # The freed GPU goes to the next student (busy from now on, so that it stays).
    write_utilisation(hub.util_file, {idle_gpu: 60, busy_gpu: 80})
    r = hub.spawn(NEXT, {"gpus": 1})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(NEXT)
    assert gpus_of(daemons, NEXT) == idle_gpu


def test_board_api_refuses_another_students_servers(fair):
    hub = fair
    token = user_token(hub, NEXT)
    r = board_get(hub, f"/users/{BUSY}/servers", token)
    assert r.status_code == 403, r.text
    assert board_get(hub, f"/users/{NEXT}/servers", token).status_code == 200
    model = board_get(hub, "/board", token).json()
    assert BUSY not in json.dumps(model) and model["simulated"] is True
    assert requests.get(hub.board_api + "/board", timeout=30).status_code == 403  # no token, no board


def launch(p):
    return p.chromium.launch(
        executable_path="/usr/bin/chromium", headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    )


def open_board(browser, hub, name, shot):
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(f"{hub.url}/hub/login?next=%2Fhub%2Fhome", timeout=60_000)
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", "testbed-password")
    page.click("input[type=submit], button[type=submit]")
    page.wait_for_url("**/hub/home", timeout=60_000)
    announcement = page.inner_text("body")
    page.goto(f"{hub.url}/services/gpu-board/", timeout=60_000)
    page.wait_for_selector("#rgs-gpus .rgs-gpu", timeout=60_000)
    first = page.inner_text("#rgs-updated")
    page.wait_for_function(f"document.getElementById('rgs-updated').textContent !== {json.dumps(first)}",
                           timeout=60_000)  # it refreshes itself, without a reload
    page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
    return page, announcement


def test_board_in_a_real_browser_admin_and_student(fair, daemons):
    from playwright.sync_api import sync_playwright  # a test dependency: never skipped
    hub = fair
    if not hub.server(BUSY) or not hub.server(NEXT):  # this test also runs alone
        write_utilisation(hub.util_file, {g: 70 for g in GPU_IDS})
        for name in (BUSY, NEXT):
            if not hub.server(name):
                assert hub.spawn(name, {"gpus": 1}).status_code in (201, 202)
                hub.wait_ready(name)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page, _ = open_board(browser, hub, ADMIN, "gpu-board-admin.png")
            holders = page.locator(".rgs-holder").all_inner_texts()
            assert any(BUSY in h for h in holders) and any(NEXT in h for h in holders), holders
            assert page.is_visible("#rgs-simulated") and "simulated" in page.inner_text("#rgs-simulated")
            assert page.locator(".rgs-plot polyline").count() == len(GPU_IDS)

            page, home = open_board(browser, hub, NEXT, "gpu-board-student.png")
            assert "Fair use of GPUs" in home and "24 h" in home  # the lease, announced in advance
            html = page.content()
            for other in (BUSY, IDLE, CPU, ADMIN):
                assert other not in html, f"{other} appears on {NEXT}'s board"
            holders = page.locator(".rgs-holder").all_inner_texts()
            assert sorted(holders) == ["Holder: in use", "Holder: yours (server default)"], holders
            assert page.is_visible("#rgs-simulated")
            lease = page.locator("#rgs-servers .rgs-lease").all_inner_texts()
            assert len(lease) == 1 and "in 23 h" in lease[0], lease
        finally:
            browser.close()
    for name in ("gpu-board-admin.png", "gpu-board-student.png"):
        assert (ARTIFACTS / name).stat().st_size > 10_000
