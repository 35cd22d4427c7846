"""``python -m rootless_gpu_spawner.admin``: the same as ``rootless-gpu-admin``."""

import sys

from .cli import main

sys.exit(main())
