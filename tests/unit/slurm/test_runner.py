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


# ---- the node runs the local spawner's image launch (hub/image_launch.py) -------------------

from jupyterhub import __version__ as HUB_VERSION  # noqa: E402

from rootless_gpu_spawner.hub import probe  # noqa: E402
from rootless_gpu_spawner.hub.launch import ProbeFacts  # noqa: E402
from rootless_gpu_spawner.slurm.nodelaunch import SETTINGS, NodeLaunch  # noqa: E402

STACKS_ID = "sha256:" + "5" * 64
SHELL_ID = "sha256:" + "6" * 64


class FakeConn:
    """Answers image inspects only: the probe comes from the cache, so no container is made."""

    def __init__(self, images):
        self.images, self.calls = images, []

    async def call(self, method, *args, **kwargs):
        self.calls.append(method)
        assert method == "inspect_image", method
        return self.images[args[0]]


def _spec(**over):
    spec = {"cmd": [], "image": "quay.io/jupyter/base-notebook:latest", "hub_user": "alice", "account": "alice",
            "docker_stacks_env": {"NB_USER": "root", "NB_UID": "0", "NB_GID": "0"},
            "install_jupyter_if_missing": True, "lab_pypi_index": "http://10.0.2.2:9/simple",
            "lab_pip_packages": ["jupyterlab"], "derived_build_timeout": 60.0, "host_gateway_ip": "10.0.2.2",
            "mirror_probe_timeout": 1.0}
    spec.update(over)
    return spec


def _inspect(ident, entrypoint, cmd, env=()):
    return {"Id": ident, "Architecture": "amd64", "Os": "linux",
            "Config": {"Entrypoint": entrypoint, "Cmd": cmd, "Env": list(env), "Labels": {}, "User": ""}}


async def test_node_side_starts_images_as_the_local_spawner_decides():
    assert set(SETTINGS) <= set(_spec())
    with_jupyter = ProbeFacts(python="/opt/conda/bin/python", version=(3, 11), prefix="/opt/conda",
                              jupyterhub=HUB_VERSION, singleuser="/opt/conda/bin/jupyterhub-singleuser", answered=True)
    probe.remember("unix:///node.sock", STACKS_ID, with_jupyter)
    probe.remember("unix:///node.sock", SHELL_ID, with_jupyter)
    conn = FakeConn({
        "stacks": _inspect(STACKS_ID, ["tini", "-g", "--", "start.sh"], ["start-notebook.py"], ["NB_USER=jovyan"]),
        "shell": _inspect(SHELL_ID, None, ["/bin/bash"]),
    })
    said = []
    stacks = NodeLaunch(_spec(), conn, "unix:///node.sock", said.append)
    assert await stacks.plan_image("stacks", "stacks") == "stacks"
    assert stacks.launch_env()["NB_USER"] == "root"  # Docker Stacks keep the student as container root
    shell = NodeLaunch(_spec(), conn, "unix:///node.sock", said.append)
    assert await shell.plan_image("shell", "committed") == "shell"
    assert "jupyterhub-singleuser" in " ".join(shell.launch_command(["/bin/bash"]))  # a shell CMD cannot serve
