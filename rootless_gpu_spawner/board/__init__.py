"""The GPU board service (see :mod:`rootless_gpu_spawner.board.app`)."""
