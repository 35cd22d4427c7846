# Config file for jupyterhub-idle-culler (passed as --config=...; see rootless_gpu_spawner.culling).
# A server holding GPUs is culled on the GPU board's verdict, the others by activity.
from rootless_gpu_spawner.culling import gpu_aware_arbiter

c = get_config()  # noqa: F821
c.IdleCuller.cull_arbiter_hook = gpu_aware_arbiter()
