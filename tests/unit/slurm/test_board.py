"""Slurm servers on the GPU board: the job's GPUs as NODE:INDEX, the same privacy rule."""

import time

from rootless_gpu_spawner.board.view import Policy, Viewer, board_model
from rootless_gpu_spawner.slurm.spawner import RootlessGPUSlurmSpawner
from rootless_gpu_spawner.utilisation import History


def test_a_running_job_holds_its_node_local_gpus():
    spawner = RootlessGPUSlurmSpawner()
    assert spawner.gpu_holder() is None
    spawner.job_id, spawner.job_node, spawner.job_gpus, spawner.host_port = "7", "gpu2", ["0", "1"], 40000
    assert spawner.gpu_holder() == {"gpus": ["gpu2:0", "gpu2:1"], "node": "gpu2", "utilisation": {}}
    spawner.clear_state()
    assert spawner.gpu_holder() is None


def test_board_shows_slurm_gpus_with_the_privacy_rule():
    holders = [{"user": "alice", "server": "", "gpus": ["gpu1:0", "gpu1:1"], "node": "gpu1", "started": None}]
    now = time.time()
    admin = board_model(Viewer("root", admin=True), {}, [], holders, History(), Policy(), now)
    assert [(c["id"], c["state"], c["holder"]) for c in admin["gpus"]] == [
        ("gpu1:0", "in use", "alice"), ("gpu1:1", "in use", "alice")]
    student = board_model(Viewer("bob"), {}, [], holders, History(), Policy(), now)
    assert all(c["state"] == "in use" and c["holder"] is None for c in student["gpus"])
    assert "alice" not in repr(student)
    mine = board_model(Viewer("alice"), {}, [], holders, History(), Policy(), now)
    assert all(c["mine"] and c["holder"] == "alice" for c in mine["gpus"])
