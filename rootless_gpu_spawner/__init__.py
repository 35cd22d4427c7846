"""JupyterHub spawner: each student's JupyterLab on their own rootless Docker daemon, with GPUs."""

from .errors import SpawnRefused
from .spawner import RootlessGPUSpawner

__all__ = ["RootlessGPUSpawner", "SpawnRefused"]
__version__ = "0.1.0"
