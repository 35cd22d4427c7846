"""What the hub tells the node side (``rootless-gpu-run``): the spec, a JSON object on the job's stdin.

Built on the hub from the same settings and functions the local spawner uses (the server's
env with the hub URLs rewritten for the rootless network, its arguments, the workspace, the
image and mirror settings), so that the node runs the container the local spawner would.
The node side adds only what only the node knows: its daemon, the job's GPUs, a free port.
"""

from __future__ import annotations

from ..hub.container import rewrite_hub_urls
from .nodelaunch import launch_settings

SPEC_VERSION = 2


def node_spec(spawner, ref, workspace: str, account) -> dict:
    """The spec for one server (``spawner`` is a RootlessGPUSlurmSpawner about to submit)."""
    from ..spawner import LABEL_PREFIX  # the local spawner's labels

    env = spawner.get_env()
    return {
        "version": SPEC_VERSION,
        "server_name": spawner.name,
        "hub_user": spawner.user.name,
        "account": account.name,
        # The node side reports to the hub from the node itself (not from inside the container).
        "hub_api_url": env.get("JUPYTERHUB_API_URL", ""),
        "image": ref.canonical,
        "pull_policy": spawner.pull_policy,
        "mirrors": spawner.mirror_chains(),
        "lab_caches": dict(spawner.lab_cache_mirrors),
        "mirror_fallback_to_upstream": bool(spawner.mirror_fallback_to_upstream),
        "image_pull_timeout": float(spawner.image_pull_timeout),
        "container_name": spawner.object_name,
        "cmd": list(spawner.cmd or []),
        "args": list(spawner.get_args()),
        "env": rewrite_hub_urls(env, spawner.host_gateway_ip),
        "port": int(spawner.port),
        "publish_ip": spawner.slurm_publish_ip,
        "workspace": workspace,
        "workspace_mount": spawner.workspace_mount,
        "run_as_root": bool(spawner.run_as_root),
        "extra_binds": dict(spawner.volume_binds or {}),
        "network_mode": spawner.network_name,
        "labels": {
            f"{LABEL_PREFIX}.hub-user": spawner.user.name,
            f"{LABEL_PREFIX}.server-name": spawner.name,
            f"{LABEL_PREFIX}.account": account.name,
            f"{LABEL_PREFIX}.slurm": "1",
        },
        "docker_host_template": spawner.docker_host_template,
        "docker_api_timeout": float(spawner.docker_api_timeout),
        "gpu_device_mode": spawner.gpu_device_mode,
        "gpu_stub_dir": spawner.slurm_node_gpu_stub_dir,
        "utilisation_file": spawner.slurm_utilisation_file,
        "utilisation_interval": float(spawner.slurm_utilisation_interval),
        **launch_settings(spawner),
    }
