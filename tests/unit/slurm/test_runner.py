"""The node side's own decisions (rootless_gpu_spawner.slurm.runner), without a daemon."""

import io
import json

from rootless_gpu_spawner.slurm import runner


def test_job_gpus_are_the_node_local_indices():
    assert runner.job_gpus({"SLURM_JOB_GPUS": "0,1"}) == ["0", "1"]
    assert runner.job_gpus({"SLURM_JOB_GPUS": "2, 3"}) == ["2", "3"]
    assert runner.job_gpus({}) == []
    assert runner.job_gpus({"SLURM_JOB_GPUS": "0,$(x)"}) == ["0"]


def test_a_spec_of_another_version_is_refused(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"version": 99})))
    assert runner.main() == 2
    assert "same version on every node" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("not json"))
    assert runner.main() == 2
