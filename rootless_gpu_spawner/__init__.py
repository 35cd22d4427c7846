"""JupyterHub spawner: each student's JupyterLab on their own rootless Docker daemon, with GPUs.

The face of the package: ``RootlessGPUSpawner`` (the ``rootless-gpu`` entry point) and
``SpawnRefused``.  The spawner is imported on first use, so that ``rootless-gpu-admin``
(``rootless_gpu_spawner.admin``) loads the host side only, never the hub's event-loop code.
"""

from .errors import SpawnRefused

__all__ = ["RootlessGPUSpawner", "SpawnRefused"]
__version__ = "0.1.0"


def __getattr__(name):
    if name == "RootlessGPUSpawner":
        from .spawner import RootlessGPUSpawner

        return RootlessGPUSpawner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
