"""The GPU board and GPU-idle culling for a Slurm server, through a real hub and a real Slurm.

The job's node side (``rootless-gpu-run``, run by Slurm as the student) reads its GPUs'
utilisation ON THE NODE and reports it to the hub with the server's own token; the hub's
GPU-holders API lists it for the server's ``NODE:INDEX`` GPUs and the board keeps its history
and feeds it into the same idle verdict as the local spawner's GPUs. GPUs and figures are
*simulated*: the stub NVIDIA hook on bob's daemon, and a JSON file this test writes that the
hub names with ``c.RootlessGPUSlurmSpawner.slurm_utilisation_file``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from .conftest import base_spawner_config
from .test_fair_use import board_get, wait_for, write_utilisation
from .test_slurm import job_of, slurm  # noqa: F401  (the module's two-node Slurm)
from .test_spawn import BOB
from testkit.hub import free_port

STUDENT = "slurmboard-s1"
WINDOW, TIMEOUT = 4, 600  # the GPU idle window; a long activity timeout (the GPU verdict decides)


@pytest.fixture(scope="module")
def util_file():
    # The job runs as the student: the file must be readable by them (not under pytest's 0700 tmp).
    workdir = Path(tempfile.mkdtemp(prefix="rgs-test-slurm-util-"))
    os.chmod(workdir, 0o755)
    path = workdir / "gpu-utilisation.json"
    write_utilisation(path, {"0": 55, "1": 55})
    os.chmod(path, 0o644)
    yield path
    for p in workdir.iterdir():
        p.unlink()
    workdir.rmdir()


def set_utilisation(path, value):
    write_utilisation(path, {"0": value, "1": value})
    os.chmod(path, 0o644)


@pytest.fixture(scope="module")
def board_hub(testbed, slurm, util_file, hub_factory):  # noqa: F811
    board_port = free_port()
    config = base_spawner_config(testbed) + f"""
    from rootless_gpu_spawner import culling, holders
    from rootless_gpu_spawner.slurm.report import REPORT_HANDLER
    c.JupyterHub.spawner_class = "rootless-gpu-slurm"
    c.JupyterHub.extra_handlers = [REPORT_HANDLER] + holders.extra_handlers()
    c.JupyterHub.custom_scopes = holders.custom_scopes()
    c.RootlessGPUSlurmSpawner.slurm_conf = {slurm['SLURM_CONF']!r}
    c.RootlessGPUSlurmSpawner.slurm_publish_ip = "127.0.0.1"
    c.RootlessGPUSlurmSpawner.slurm_node_gpu_stub_dir = {testbed['gpu_stub_dir']!r}
    c.RootlessGPUSlurmSpawner.slurm_gpus = 1
    c.RootlessGPUSlurmSpawner.slurm_status_interval = 0.5
    c.RootlessGPUSlurmSpawner.slurm_utilisation_file = {str(util_file)!r}  # simulated figures
    c.RootlessGPUSlurmSpawner.slurm_utilisation_interval = 2
    c.RootlessGPUSpawner.system_user = lambda name: {BOB!r}
    c.RootlessGPUSpawner.allow_shared_accounts = True
    c.Spawner.poll_interval = 3
    c.JupyterHub.services = list(c.JupyterHub.services) + [
        culling.board_service({board_port}, "--GPUBoard.idle_window={WINDOW}", "--GPUBoard.idle_threshold=10",
                              "--GPUBoard.sample_interval=1"),
        culling.culler_service({board_port}, {TIMEOUT}, 1),
    ]
    c.JupyterHub.load_roles = list(c.JupyterHub.load_roles) + culling.roles() + [
        {{"name": "gpu-holders-reader", "services": ["testbed"], "scopes": [holders.SCOPE]}}]
    """
    hub = hub_factory(config, [STUDENT])
    hub.board_api = f"{hub.url}/services/gpu-board/api"
    return hub


def node_gpu_figures(hub):
    """The holders API's figures for the student's server: {NODE:INDEX: figure}."""
    r = hub.request("GET", "/rgs/gpu-holders")
    assert r.status_code == 200, r.text
    rows = [h for h in r.json()["holders"] if h["user"] == STUDENT]
    return (rows[0]["gpus"], rows[0].get("utilisation") or {}) if rows else ([], {})


def test_slurm_server_gpu_utilisation_on_the_board_and_idle_culling(board_hub, slurm, util_file):  # noqa: F811
    hub = board_hub
    r = hub.spawn(STUDENT, {"gpus": 1})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(STUDENT)
    _, _, node = job_of(slurm, STUDENT)

    # The node's figures (simulated 55 %) for the job's NODE:INDEX GPU, in the holders API ...
    gpus, figures = wait_for(lambda: (lambda g, f: (g, f) if f else None)(*node_gpu_figures(hub)),
                             "the node reported its GPU utilisation")
    assert len(gpus) == 1 and gpus[0].startswith(f"{node}:"), gpus
    assert set(figures) == set(gpus), figures
    assert figures[gpus[0]]["utilisation"] == 55 and figures[gpus[0]]["simulated"] is True, figures

    # ... and on the board, with history, marked simulated; the server is busy: kept.
    def card():
        model = board_get(hub, "/board").json()
        cards = [c for c in model["gpus"] if c["id"] == gpus[0]]
        return (model, cards[0]) if cards and len(cards[0]["history"]) >= 2 else None
    model, gpu_card = wait_for(card, "the board shows the Slurm GPU with history")
    assert gpu_card["utilisation"] == 55 and gpu_card["state"] == "in use" and gpu_card["node"] == node
    assert model["simulated"] is True
    rows = board_get(hub, f"/users/{STUDENT}/servers").json()["servers"]
    assert rows[""]["gpus"] == gpus and not rows[""]["cull"], rows

    # At simulated 0 % for the window the culler stops the Slurm server, and its job ends.
    set_utilisation(util_file, 0)
    wait_for(lambda: not hub.server(STUDENT), f"{STUDENT} (Slurm GPU at simulated 0 %) culled")
    wait_for(lambda: job_of(slurm, STUDENT) is None, "the Slurm job ended")
    assert node_gpu_figures(hub) == ([], {})
