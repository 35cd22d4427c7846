# Example JupyterHub configuration for a lab GPU server with rootless Docker per student.
#
# Run as root:  /opt/rootless-gpu-spawner/venv/bin/jupyterhub -f jupyterhub_config.py
#
# Each student needs a system account and a running rootless Docker daemon
# (rootless-gpu-admin bootstrap does both). Every setting below is optional
# unless marked; the values shown are the defaults unless said otherwise.
# Line-by-line explanation: docs/en/jupyterhub-config.md (中文: docs/zh/jupyterhub-config.md).
# Every setting: docs/en/config-reference.md.

c = get_config()  # noqa: F821

# --- the hub -------------------------------------------------------------------
# The hub and proxy listen on loopback; put nginx/caddy with TLS in front, or
# set JupyterHub.ip to the server's address. Containers reach the hub through
# rootless networking (host_gateway_ip below), never through hub_connect_url.
c.JupyterHub.ip = "127.0.0.1"    # the proxy's public side (default: all interfaces)
c.JupyterHub.port = 8000
c.JupyterHub.hub_ip = "127.0.0.1"  # the hub's API (port 8081); containers see it as 10.0.2.2:8081

# Students log in with their Linux password (PAM). The hub name is their login name.
c.JupyterHub.authenticator_class = "pam"
# Who may log in: members of this Unix group (create it and add the students).
c.LocalAuthenticator.allowed_groups = {"students"}
c.Authenticator.admin_users = set()  # e.g. {"teacher"}

# JupyterHub stops every student's server when the hub shuts down (its default,
# cleanup_servers = True); files in ~/workspace are kept either way. To keep
# servers running across a hub restart (they are found again from the hub's
# database, GPUs included):
# c.JupyterHub.cleanup_servers = False

# --- the spawner (loaded by its entry-point name) -------------------------------
c.JupyterHub.spawner_class = "rootless-gpu"

# Hub user -> login account. A template with {username}, or a callable.
c.RootlessGPUSpawner.system_user = "{username}"
# Each student's own rootless daemon. Fields: {uid}, {username}, {home}.
c.RootlessGPUSpawner.docker_host_template = "unix:///run/user/{uid}/docker.sock"
# Start a student's daemon at spawn time when it is down (default: refuse with
# a message naming the fix). Useful on hosts without systemd after a reboot:
# c.RootlessGPUSpawner.start_daemon_if_down = True

# The image students get, and the ones they may choose from.
# Any image with Python 3.9+ works (docs/en/images.md).
# (The default here is not DockerSpawner's: it is set on purpose.)
c.RootlessGPUSpawner.image = "quay.io/jupyter/pytorch-notebook:cuda12-latest"
# Labels shown in the spawn form -> images. A student's choice (form or
# user_options["image"]) is the label.
c.RootlessGPUSpawner.allowed_images = {
    "PyTorch (CUDA 12)": "quay.io/jupyter/pytorch-notebook:cuda12-latest",
    "SciPy (CPU)": "quay.io/jupyter/scipy-notebook:latest",
}
# Students may also start any image already on their own rootless daemon
# (their own `docker commit`s, images they built or pulled themselves): listed
# in the form as "Your own images", never pulled, same mounts and GPU limits.
# Narrow it with glob patterns, or turn it off (docs/en/admin-guide.md, "Images"):
# c.RootlessGPUSpawner.own_image_patterns = ["env/*"]
# c.RootlessGPUSpawner.allow_own_images = False
# "Save environment": /hub/environments (and a button on the home page) saves
# a student's running server as an image on their own daemon (docker commit);
# the page and its API are added to extra_handlers below, the home page button
# comes with these templates (keep them first if you add template paths).
from rootless_gpu_spawner import environments  # noqa: E402

c.JupyterHub.template_paths = environments.template_paths()
# ifnotpresent: an image already on the student's daemon costs no network.
c.RootlessGPUSpawner.pull_policy = "ifnotpresent"
# Jupyter Docker Stacks images (quay.io/jupyter/...) get their NB_* variables that
# keep the server as root (= the student) automatically; images without Jupyter
# get it installed on the first start (docs/en/images.md). Default:
# c.RootlessGPUSpawner.docker_stacks_env = {"NB_USER": "root", "NB_UID": "0", "NB_GID": "0", "CHOWN_HOME": "no"}

# Images are pulled through mirrors of their registry (docker.io, quay.io,
# nvcr.io, ghcr.io, ...), in order, and tagged with the name the student asked
# for afterwards. The defaults list public mirrors reachable from China in 2026
# (USTC's, first for Docker Hub, has been suspended since 2024; the next ones
# work off its campus). Put your own pull-through cache first with
# lab_cache_mirrors, e.g. {"docker.io": "10.0.2.2:5001"} (docs/ explain it).
c.RootlessGPUSpawner.registry_mirrors.update({
    "quay.io": ["quay.nju.edu.cn", "m.daocloud.io/quay.io"],
})
# c.RootlessGPUSpawner.lab_cache_mirrors = {"docker.io": "10.0.2.2:5001", "quay.io": "10.0.2.2:5002"}
c.RootlessGPUSpawner.mirror_fallback_to_upstream = True

# GPUs per server, like docker run --gpus: "all", a count, a list of ids, or 0.
# It is also the most a student may ask for in user_options["gpus"].
c.RootlessGPUSpawner.gpus = "all"
# "shared" (above: every server gets what gpus says) or "exclusive" (each GPU
# goes to one running server at a time; gpus is then the default request).
# See docs/en/admin-guide.md, "GPU policies", for a worked example:
# c.RootlessGPUSpawner.gpu_policy = "exclusive"
# c.RootlessGPUSpawner.gpu_ids = ["0", "1", "2", "3"]  # only where NVML is missing
# c.RootlessGPUSpawner.max_gpus_per_user = 2
# c.RootlessGPUSpawner.group_gpu_limits = {"phd": 4}

# --- fair use of GPUs: idle culling, leases, the GPU board ----------------------
# (docs/en/admin-guide.md, "Fair use of GPUs"). Needs gpu_policy = "exclusive":
# only then does the hub know which server holds which GPU.
from rootless_gpu_spawner import culling, holders  # noqa: E402

# A hub-side API that says who holds which GPU, behind one custom scope (the
# REST API shows spawner state only with admin:server_state, which is far more).
c.JupyterHub.extra_handlers = holders.extra_handlers() + environments.extra_handlers()
c.JupyterHub.custom_scopes = holders.custom_scopes()
# The GPU board (a service on 127.0.0.1:10101, at /services/gpu-board/) and
# jupyterhub-idle-culler: a server holding GPUs is stopped when its GPUs stay
# under 10 % for 30 min, or 24 h after it started (the lease); a server without
# GPUs after 1 h without activity. Where NVML is missing, name a JSON file of
# (simulated) figures with environment={"RGS_GPU_UTILISATION_FILE": PATH}.
c.JupyterHub.services = [
    culling.board_service(10101, "--GPUBoard.idle_threshold=10", "--GPUBoard.idle_window=1800",
                          "--GPUBoard.gpu_lease=86400"),
    culling.culler_service(10101, timeout=3600, cull_every=300),
]
# Least privilege: the culler's usual scopes plus reaching the board; the board
# only the custom scope; every user may open the board.
c.JupyterHub.load_roles = culling.roles()
# The rule and the lease, announced on every hub page before anything is stopped.
c.JupyterHub.template_vars = {"announcement": culling.announcement(1800, 10, lease=86400)}
# Idle kernels inside each JupyterLab are culled too (after 1 h).
c.Spawner.args = culling.kernel_culling_args(idle_timeout=3600)

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
c.Spawner.start_timeout = 600  # seconds for start(), the pull included
c.Spawner.http_timeout = 120  # seconds for the started server to answer
