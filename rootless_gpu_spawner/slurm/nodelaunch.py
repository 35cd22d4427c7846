"""The local spawner's image launch on a Slurm node: the same plan, probe and derived image.

:class:`~rootless_gpu_spawner.hub.image_launch.ImageLaunch` decides how an image starts
(Docker Stacks keep the student as container root, a shell CMD gets ``jupyterhub-singleuser``,
an image without Jupyter gets the derived image). It is a mixin of the local spawner; here it
runs on the node side's own connection to the student's daemon, with the settings the hub put
into the spec (:mod:`.nodeside`) and progress lines in the job's log. Nothing is copied.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

from ..hub.image_launch import ImageLaunch

#: The spec keys this launch reads (the hub's settings of the same names).
SETTINGS = ("docker_stacks_env", "install_jupyter_if_missing", "lab_pypi_index", "lab_pip_packages",
            "derived_build_timeout", "host_gateway_ip", "mirror_probe_timeout")


def launch_settings(spawner) -> dict:
    """For the spec: the hub's image-launch settings, JSON-ready."""
    return {
        "docker_stacks_env": dict(spawner.docker_stacks_env),
        "install_jupyter_if_missing": bool(spawner.install_jupyter_if_missing),
        "lab_pypi_index": spawner.lab_pypi_index,
        "lab_pip_packages": list(spawner.lab_pip_packages),
        "derived_build_timeout": float(spawner.derived_build_timeout),
        "host_gateway_ip": spawner.host_gateway_ip,
        "mirror_probe_timeout": float(spawner.mirror_probe_timeout),
    }


class _JobLog:
    """Progress events as lines in the job's log (the hub shows its tail when the job fails)."""

    def __init__(self, say):
        self.say = say

    def emit(self, progress, message: str) -> None:
        self.say(message)

    def emit_threadsafe(self, progress, message: str, min_interval: float = 0.5, min_step: int = 5) -> None:
        self.say(message)


class NodeLaunch(ImageLaunch):
    """ImageLaunch over the node side's connection (``conn``: a hub.daemon.DaemonConnection)."""

    remove = True

    def __init__(self, spec: dict, conn, docker_host: str, say):
        self._connection = conn
        self.docker_host = docker_host
        self.cmd = list(spec.get("cmd") or [])
        self.image = spec["image"]
        self.user = SimpleNamespace(name=spec["hub_user"])
        self._account_name = spec["account"]
        self._progress = _JobLog(say)
        self.log = logging.getLogger("rootless-gpu-run")
        for key in SETTINGS:
            setattr(self, key, spec[key])

    async def docker(self, method, *args, **kwargs):
        return await self._connection.call(method, *args, **kwargs)
