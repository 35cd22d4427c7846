"""GPU utilisation measured on a Slurm job's node: the node's report, the hub's checks (hostile
input), the holders API's figures and the board's history and idle verdict for NODE:INDEX GPUs."""

import asyncio
import json
import time

import pytest

from rootless_gpu_spawner.board.app import BoardState
from rootless_gpu_spawner.board.view import Policy, Viewer, board_model, job_figures, server_row
from rootless_gpu_spawner.slurm import runner
from rootless_gpu_spawner.slurm.figures import (
    MIN_INTERVAL, ReportTooSoon, holder_figures, node_figures, validate_figures)
from rootless_gpu_spawner.slurm.spawner import RootlessGPUSlurmSpawner
from rootless_gpu_spawner.utilisation import FileSource, Reading


def body(**gpus):
    return {"utilisation": {g: {"utilisation": u, "memory_used": 1 << 20, "memory_total": 1 << 30,
                                "name": "simulated GPU"} for g, u in gpus.items()}, "simulated": True}


def test_node_reports_only_the_jobs_gpus():
    readings = {g: Reading(g, u) for g, u in (("0", 5.0), ("1", 90.0), ("2", 40.0))}
    out = node_figures(readings, ["1", "2", "3"], True)
    assert set(out["utilisation"]) == {"1", "2"} and out["simulated"] is True
    assert out["utilisation"]["1"]["utilisation"] == 90.0


@pytest.mark.parametrize("bad, expected", [
    ({"utilisation": {"2": {"utilisation": 1}}}, "not this job's"),
    ({"utilisation": {"0": {"utilisation": 101}}}, "between 0 and 100"),
    ({"utilisation": {"0": {"utilisation": -1}}}, "between 0 and 100"),
    ({"utilisation": {"0": {"utilisation": float("nan")}}}, "between 0 and 100"),
    ({"utilisation": {"0": {"utilisation": True}}}, "between 0 and 100"),
    ({"utilisation": {"0": {"utilisation": "50"}}}, "between 0 and 100"),
    ({"utilisation": {"0": {"utilisation": 5, "memory_used": float("inf")}}}, "memory_used"),
    ({"utilisation": {"0": {"utilisation": 5, "memory_total": -3}}}, "memory_total"),
    ({"utilisation": {"0": "x"}}, "must be an object"),
    ({"utilisation": [1]}, "at most"),
    ({"utilisation": {str(i): {"utilisation": 1} for i in range(65)}}, "at most 64"),
    ({"utilisation": {"0": {"utilisation": 5}}, "simulated": "yes"}, "true or false"),
])
def test_hub_refuses_malformed_or_foreign_figures(bad, expected):
    with pytest.raises(ValueError, match=expected):
        validate_figures(bad, ["0", "1"], None, 100.0)


def test_hub_rate_limits_reports():
    assert validate_figures(body(**{"0": 3}), ["0"], None, 100.0)["gpus"]["0"].utilisation == 3.0
    with pytest.raises(ReportTooSoon):
        validate_figures(body(**{"0": 3}), ["0"], 100.0, 100.0 + MIN_INTERVAL / 2)
    assert validate_figures(body(**{"0": 3}), ["0"], 100.0, 100.0 + MIN_INTERVAL)["at"] == 100.0 + MIN_INTERVAL


def test_spawner_keeps_the_latest_figures_in_memory_not_in_the_state():
    spawner = RootlessGPUSlurmSpawner()
    with pytest.raises(ValueError, match="not running"):
        spawner.node_reported(body(**{"0": 10}))
    spawner.job_id, spawner.job_node, spawner.job_gpus, spawner.host_port = "7", "gpu2", ["1"], 40000
    with pytest.raises(ValueError, match="not this job's"):
        spawner.node_reported(body(**{"0": 10}))
    spawner.node_reported(body(**{"1": 42}))
    figures = spawner.gpu_holder()["utilisation"]
    assert list(figures) == ["gpu2:1"] and figures["gpu2:1"]["utilisation"] == 42.0
    assert figures["gpu2:1"]["node"] == "gpu2" and figures["gpu2:1"]["simulated"] is True
    assert "42" not in json.dumps(spawner.get_state())
    with pytest.raises(ReportTooSoon):
        spawner.node_reported(body(**{"1": 43}))
    spawner.clear_state()
    assert spawner.gpu_holder() is None and spawner._figures is None


def holder(values_at, started):
    """A holders-API row of a Slurm server on gpu1 with one figure report."""
    at, util = values_at
    figures = {"at": at, "simulated": True, "gpus": {"0": Reading("0", util)}}
    return {"user": "alice", "server": "", "gpus": ["gpu1:0"], "node": "gpu1", "started": started,
            "utilisation": holder_figures(figures, "gpu1")}


def test_board_history_and_the_same_idle_verdict_for_slurm_gpus(tmp_path):
    state = BoardState(FileSource(str(tmp_path / "none.json")), 3600)
    t0 = time.time() - 100
    started = "1970-01-01T00:00:00Z"
    for dt, util in ((0, 50), (10, 0), (10, 0), (20, 0), (40, 0)):  # a repeated report is added once
        state.add_job_figures([holder((t0 + dt, util), started)])
    assert [u for _, u in state.history.series("gpu1:0")] == [50, 0, 0, 0]
    assert state.job_readings["gpu1:0"].utilisation == 0 and state.job_simulated
    h = holder((t0 + 40, 0), started)
    assert server_row(h, state.history, Policy(10, 30, 0), t0 + 41)["cull"]  # 0 % for 31 s
    assert not server_row(h, state.history, Policy(10, 45, 0), t0 + 41)["cull"]  # 50 % within 45 s
    model = board_model(Viewer("bob"), state.job_readings, [], [h], state.history, Policy(), t0 + 41)
    (card,) = model["gpus"]
    assert card["utilisation"] == 0 and card["node"] == "gpu1" and len(card["history"]) == 4
    assert "alice" not in repr(model)
    state.add_job_figures([])  # the server stopped: its figures go
    assert state.job_readings == {} and not state.job_simulated


def test_board_ignores_figures_for_gpus_the_holder_does_not_hold():
    row = holder((time.time(), 5), None)
    row["gpus"] = ["gpu1:1"]
    assert job_figures([row]) == {}
    row["utilisation"] = {"gpu1:1": {"utilisation": 500, "at": 1.0}}
    assert job_figures([row]) == {}


def test_runner_reports_the_simulated_file_periodically(tmp_path, monkeypatch):
    path = tmp_path / "u.json"
    path.write_text(json.dumps({"simulated": True, "gpus": {"0": {"utilisation": 7}, "1": {"utilisation": 9}}}))
    sent = []
    monkeypatch.setattr(runner, "report", lambda spec, b: sent.append(b))

    async def go():
        stop = asyncio.Event()
        task = asyncio.create_task(runner.report_utilisation(
            {"utilisation_file": str(path), "utilisation_interval": 0}, ["1"], stop))
        while not sent:
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 5)
    monkeypatch.setattr(runner, "MIN_UTILISATION_INTERVAL", 0.05)
    asyncio.run(go())
    assert sent[0] == {"utilisation": {"1": {"utilisation": 9.0, "memory_used": None, "memory_total": None,
                                             "name": ""}}, "simulated": True}

