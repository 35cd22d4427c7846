# Example JupyterHub configuration for a lab GPU server with rootless Docker per student.
#
# Run as root:  /opt/rootless-gpu-spawner/venv/bin/jupyterhub -f jupyterhub_config.py
#
# Each student needs a system account and a running rootless Docker daemon
# (rootless-gpu-admin bootstrap does both). Every setting below is optional
# unless marked; the values shown are the defaults unless said otherwise.

c = get_config()  # noqa: F821

# --- the hub -------------------------------------------------------------------
# The hub and proxy listen on loopback; put nginx/caddy with TLS in front, or
# set JupyterHub.ip to the server's address. Containers reach the hub through
# rootless networking (host_gateway_ip below), never through hub_connect_url.
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = 8000
c.JupyterHub.hub_ip = "127.0.0.1"

# Students log in with their Linux password (PAM). The hub name is their login name.
c.JupyterHub.authenticator_class = "pam"
# Who may log in: members of this Unix group (create it and add the students).
c.LocalAuthenticator.allowed_groups = {"students"}
c.Authenticator.admin_users = set()  # e.g. {"teacher"}

# --- the spawner (loaded by its entry-point name) -------------------------------
c.JupyterHub.spawner_class = "rootless-gpu"

# Hub user -> login account. A template with {username}, or a callable.
c.RootlessGPUSpawner.system_user = "{username}"
# Each student's own rootless daemon. Fields: {uid}, {username}, {home}.
c.RootlessGPUSpawner.docker_host_template = "unix:///run/user/{uid}/docker.sock"

# The image students get, and the ones they may choose from.
# Choose an image whose jupyterhub version matches the hub's.
c.RootlessGPUSpawner.image = "quay.io/jupyter/pytorch-notebook:cuda12-latest"
c.RootlessGPUSpawner.allowed_images = {
    "PyTorch (CUDA 12)": "quay.io/jupyter/pytorch-notebook:cuda12-latest",
    "SciPy (CPU)": "quay.io/jupyter/scipy-notebook:latest",
}
c.RootlessGPUSpawner.pull_policy = "ifnotpresent"

# Docker Hub images are pulled through these prefix mirrors, in order, and
# tagged with their Docker Hub name afterwards. USTC's mirror has been closed
# to the public since 2024: put your university's or your own pull-through
# cache first (docs/ explain the options).
c.RootlessGPUSpawner.mirror_prefixes = ["docker.mirrors.ustc.edu.cn"]
c.RootlessGPUSpawner.mirror_fallback_to_upstream = True

# GPUs per server, like docker run --gpus: "all", a count, a list of ids, or 0.
# It is also the most a student may ask for in user_options["gpus"].
c.RootlessGPUSpawner.gpus = "all"

# ~/workspace is bind-mounted at /workspace; JupyterLab opens there.
c.RootlessGPUSpawner.workspace_dir = "workspace"
c.RootlessGPUSpawner.workspace_mount = "/workspace"

# Container root is the student on the host (rootless user namespace), so
# files in the workspace stay theirs.
c.RootlessGPUSpawner.run_as_root = True

# slirp4netns's alias for the host's loopback, used in the container's
# JUPYTERHUB_API_URL / JUPYTERHUB_ACTIVITY_URL.
c.RootlessGPUSpawner.host_gateway_ip = "10.0.2.2"

# Never accept a rootful daemon (it would give students root on the host).
c.RootlessGPUSpawner.allow_rootful_daemon = False

# Large CUDA images take a while to pull the first time.
c.Spawner.start_timeout = 600
c.Spawner.http_timeout = 120
