"""The Slurm spawner's own checks on what the node side reports and on the student's options."""

import asyncio

import pytest
from tornado import web

from rootless_gpu_spawner.slurm.spawner import RootlessGPUSlurmSpawner


async def test_only_a_port_or_a_failure_text_is_taken_from_the_report():
    spawner = RootlessGPUSlurmSpawner()
    with pytest.raises(ValueError, match="not waiting"):
        spawner.node_reported({"port": 8888})
    spawner._report = asyncio.get_running_loop().create_future()
    for bad in ({"port": "8888"}, {"port": 80}, {"port": True}, {"port": 70000}, {}):
        with pytest.raises(ValueError, match="port must be"):
            spawner.node_reported(bad)
    spawner.node_reported({"port": 40000, "host": "10.9.9.9"})
    assert spawner._report.result() == {"port": 40000}  # the host is never taken from the report
    spawner._report = asyncio.get_running_loop().create_future()
    spawner.node_reported({"error": "x\x1b[2J" * 1000})
    text = spawner._report.result()["error"]
    assert "\x1b" not in text and len(text) <= 1500


class FakeUser:
    name = "stu"
    groups = []


def test_user_options_split_between_the_image_and_the_job():
    spawner = RootlessGPUSlurmSpawner(slurm_max_gpus=2, slurm_form_options=["gpus", "time"])
    spawner.user = FakeUser()
    got = spawner.validated_user_options({"gpus": "2", "time": 30})
    assert got["job"]["gpus"] == 2 and got["job"]["time"] == 30 and "image" not in got
    for bad in ({"gpus": 3}, {"partition": "gpu"}, {"nodes": 2}, {"image": "evil/x"}):
        with pytest.raises(web.HTTPError) as e:
            spawner.validated_user_options(bad)
        assert e.value.status_code == 400, bad
