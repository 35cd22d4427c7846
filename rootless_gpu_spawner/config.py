"""Every ``c.RootlessGPUSpawner.*`` setting: the trait, its help text, its check.

:class:`SpawnerConfig` only declares; :class:`~rootless_gpu_spawner.spawner.RootlessGPUSpawner`
inherits it (after ``DockerSpawner``, so that nothing here shadows a DockerSpawner trait) and
holds the lifecycle.  ``SpawnerConfig`` is a plain ``HasTraits``, not a ``Configurable``: the
settings are read from the ``RootlessGPUSpawner`` section only, as before.  The ``# ---- name ----``
comments group the settings on docs/*/config-reference.md (scripts/gen_config_reference.py).
"""

from __future__ import annotations

import os

from traitlets import (
    Any, Bool, CaselessStrEnum, Callable, Dict, Float, HasTraits, Int, List, Unicode, Union, default, validate,
)

from .hub.gpus import InvalidGPURequest, normalize_gpus
from .hub.images import normalize_mirror_prefix
from .hub.registry_mirrors import (
    DEFAULT_REGISTRY_MIRRORS, effective_chains, normalize_lab_caches, normalize_mirror_chains,
)
from .layout import DOCKER_HOST_TEMPLATE, MIN_UID


def _bad_config(trait: str, message: str) -> ValueError:
    return ValueError(f"RootlessGPUSpawner.{trait}: {message}")


class SpawnerConfig(HasTraits):
    """The settings of :class:`~rootless_gpu_spawner.spawner.RootlessGPUSpawner` (``config=True`` traits)."""

    # ---- which daemon -----------------------------------------------------

    system_user = Union(
        [Unicode(), Callable()],
        default_value="{username}",
        config=True,
        help="""
        The system (login) account that owns a hub user's daemon and workspace.

        A template with ``{username}`` (the hub user name), or a callable taking
        the hub user name and returning the login name, for labs whose hub
        names differ from login names::

            c.RootlessGPUSpawner.system_user = "s{username}"
            c.RootlessGPUSpawner.system_user = lambda name: name.split("@")[0]
        """,
    )

    allow_shared_accounts = Bool(
        False,
        config=True,
        help="""
        Let two hub users whose ``system_user`` mapping gives the same login
        account run servers at the same time (they would share that account's
        daemon and files). Off: the second is refused, since a mapping that
        folds two people into one account is usually a mistake::

            c.RootlessGPUSpawner.allow_shared_accounts = False
        """,
    )

    min_uid = Int(
        MIN_UID,
        config=True,
        help="""
        Refuse system accounts with a uid below this (root and system accounts)::

            c.RootlessGPUSpawner.min_uid = 1000
        """,
    )

    docker_host_template = Unicode(
        DOCKER_HOST_TEMPLATE,
        config=True,
        help="""
        Where each student's rootless Docker daemon listens. Fields: ``{uid}``,
        ``{username}`` (system account) and ``{home}``. ``DOCKER_HOST`` and
        ``/var/run/docker.sock`` are never used::

            c.RootlessGPUSpawner.docker_host_template = "unix:///run/user/{uid}/docker.sock"
        """,
    )

    allow_rootful_daemon = Bool(
        False,
        config=True,
        help="""
        Admin only: accept a daemon that does not report rootless mode. A rootful
        daemon gives every student root on the host, so this is off; turn it on
        only for a single-user test machine::

            c.RootlessGPUSpawner.allow_rootful_daemon = False
        """,
    )

    start_daemon_if_down = Bool(
        False,
        config=True,
        help="""
        When a student's rootless daemon is not running at spawn time, start it
        with the same code as ``rootless-gpu-admin start-daemon`` (Docker's
        systemd user service where it is installed, by hand otherwise) instead
        of refusing. Off by default: a daemon that keeps dying is something the
        admin should see::

            c.RootlessGPUSpawner.start_daemon_if_down = True
        """,
    )

    docker_api_timeout = Float(
        60.0,
        config=True,
        help="""
        Seconds one call to a student's daemon may take, all of it (a wall-clock
        deadline, not a per-read timeout: a daemon that answers a byte a minute
        is cut off too). Pulls have their own ``image_pull_timeout``::

            c.RootlessGPUSpawner.docker_api_timeout = 60
        """,
    )

    image_pull_timeout = Float(
        3600.0,
        config=True,
        help="""
        Seconds one image pull may take on a student's daemon, all of it; a
        pull still running then fails with a clear message (the next spawn
        resumes the layers already downloaded)::

            c.RootlessGPUSpawner.image_pull_timeout = 3600
        """,
    )

    # ---- networking -----------------------------------------------------------

    host_gateway_ip = Unicode(
        "10.0.2.2",
        config=True,
        help="""
        The host's loopback as seen from inside a rootless container
        (slirp4netns's host alias). The container's ``JUPYTERHUB_API_URL`` and
        ``JUPYTERHUB_ACTIVITY_URL`` use it when the hub listens on loopback; the
        hub's own ``hub_connect_url`` is not changed::

            c.RootlessGPUSpawner.host_gateway_ip = "10.0.2.2"
        """,
    )

    # ---- container user, workspace ----------------------------------------------

    run_as_root = Bool(
        True,
        config=True,
        help="""
        Run the server as container root, which a rootless daemon maps to the
        student's own uid on the host, so files in the workspace belong to the
        student; ``--allow-root`` is passed to the single-user server. With
        False the image's user is used and its files on the host belong to a
        subordinate uid the student cannot manage::

            c.RootlessGPUSpawner.run_as_root = True
        """,
    )

    workspace_dir = Unicode(
        "workspace",
        config=True,
        help="""
        The student's workspace on the host, relative to their home (an absolute
        path must be inside the home). Created if missing, owned by the student;
        never deleted::

            c.RootlessGPUSpawner.workspace_dir = "workspace"
        """,
    )

    workspace_mount = Unicode(
        "/workspace",
        config=True,
        help="""
        Where the workspace appears in the container; JupyterLab opens there::

            c.RootlessGPUSpawner.workspace_mount = "/workspace"
        """,
    )

    @validate("workspace_mount")
    def _validate_workspace_mount(self, proposal):
        value = proposal.value
        if not value.startswith("/") or value.rstrip("/") in ("", "/proc", "/sys", "/dev", "/etc"):
            raise _bad_config(
                "workspace_mount", f"{value!r} must be an absolute path such as '/workspace'"
            )
        return value.rstrip("/")

    # ---- GPUs ---------------------------------------------------------------------

    gpus = Any(
        "all",
        config=True,
        help="""
        GPUs for each server, like ``docker run --gpus``: ``"all"``, a count
        (``2``), a list of device ids (``[0, 3]``) or ``0`` for none. Under
        ``gpu_policy="shared"`` it is also the most a student may ask for
        through ``user_options["gpus"]``; under ``"exclusive"`` it is only the
        default request (``"all"`` then meaning 1)::

            c.RootlessGPUSpawner.gpus = "all"
        """,
    )

    @validate("gpus")
    def _validate_gpus(self, proposal):
        try:
            return normalize_gpus(proposal.value)
        except InvalidGPURequest as e:
            raise _bad_config("gpus", f"{e}. Example: 'all', 1, [0, 2] or 0") from None

    gpu_policy = CaselessStrEnum(
        ["shared", "exclusive"],
        default_value="shared",
        config=True,
        help="""
        ``"shared"``: every server gets what ``gpus`` says (several servers may
        use the same GPU). ``"exclusive"``: each GPU is given to at most one
        running server; a server gets ``gpus`` GPUs by default (``"all"`` then
        means 1) and students may ask for more in the form, up to their limit::

            c.RootlessGPUSpawner.gpu_policy = "exclusive"
        """,
    )

    gpu_ids = List(
        Unicode(),
        config=True,
        help="""
        The host's GPU ids (indices as ``nvidia-smi`` shows them). Empty:
        discovered through NVML (``pip install nvidia-ml-py``). Needed for
        ``gpu_policy="exclusive"`` on hosts without NVML::

            c.RootlessGPUSpawner.gpu_ids = ["0", "1", "2", "3"]
        """,
    )

    @validate("gpu_ids")
    def _validate_gpu_ids(self, proposal):
        try:
            ids = normalize_gpus([str(g) for g in proposal.value]) if proposal.value else []
        except InvalidGPURequest as e:
            raise _bad_config("gpu_ids", f"{e}. Example: ['0', '1']") from None
        return ids

    max_gpus_per_user = Int(
        0,
        config=True,
        help="""
        The most GPUs one student may ask for (all their servers together under
        ``exclusive``); a default ``gpus`` above it is cut down to it. 0: no
        limit beyond ``gpus`` and the inventory::

            c.RootlessGPUSpawner.max_gpus_per_user = 2
        """,
    )

    group_gpu_limits = Dict(
        key_trait=Unicode(),
        value_trait=Int(),
        config=True,
        help="""
        Limits per JupyterHub group (the hub's groups, not Unix groups),
        overriding ``max_gpus_per_user`` for members; a member of several
        groups gets the largest. Here 0 means no GPU for that group::

            c.RootlessGPUSpawner.group_gpu_limits = {"phd": 4, "course-2026": 1}
        """,
    )

    gpu_device_mode = CaselessStrEnum(
        ["auto", "nvidia", "cdi"],
        default_value="auto",
        config=True,
        help="""
        How GPUs are requested from Docker: ``"nvidia"`` (the NVIDIA Container
        Toolkit hook, like ``--gpus``), ``"cdi"`` (``nvidia.com/gpu=ID``, Docker
        25+ with CDI specs from ``nvidia-ctk cdi generate``) or ``"auto"``
        (CDI when the daemon reports CDI spec dirs holding an NVIDIA spec)::

            c.RootlessGPUSpawner.gpu_device_mode = "auto"
        """,
    )

    # ---- images ---------------------------------------------------------------------

    mirror_prefixes = List(
        Unicode(),
        default_value=None,
        allow_none=True,
        config=True,
        help="""
        Docker Hub mirrors to pull through, tried in order (host, optionally
        with a path; a leading ``https://`` is accepted and dropped): the
        ``docker.io`` entry of ``registry_mirrors``, kept for existing configs.
        Unset (None, the default): ``registry_mirrors["docker.io"]`` applies.
        Set: it replaces that entry; setting both to different lists is an
        error. The image is tagged with its canonical name afterwards::

            c.RootlessGPUSpawner.mirror_prefixes = ["docker.mirrors.ustc.edu.cn", "docker.m.daocloud.io"]
        """,
    )

    @validate("mirror_prefixes")
    def _validate_mirror_prefixes(self, proposal):
        if proposal.value is None:
            return None
        try:
            value = [normalize_mirror_prefix(p) for p in proposal.value]
        except ValueError as e:
            raise _bad_config("mirror_prefixes", f"{e}. Example: ['mirror.example.org']") from None
        effective_chains(self.registry_mirrors, value)  # ConflictingMirrors names both settings
        return value

    mirror_fallback_to_upstream = Bool(
        True,
        config=True,
        help="""
        After the lab cache and every mirror failed, pull from the registry
        itself (Docker Hub, quay.io, ...). A registry without any mirror is
        always pulled from directly::

            c.RootlessGPUSpawner.mirror_fallback_to_upstream = True
        """,
    )

    mirror_probe_timeout = Float(
        1.5,
        config=True,
        help="""
        Seconds a mirror has to answer HTTP (``/v2/``, over TLS or plain) before
        it is skipped; a dead or hung mirror would otherwise cost each pull the
        daemon's own 10-30 s timeout::

            c.RootlessGPUSpawner.mirror_probe_timeout = 1.5
        """,
    )

    mirror_cooldown = Float(
        300.0,
        config=True,
        help="""
        Seconds a mirror that failed is left out before it is tried again::

            c.RootlessGPUSpawner.mirror_cooldown = 300
        """,
    )

    max_concurrent_starts = Int(
        config=True,
        help="""
        How many servers may be starting (container start until the server
        answers) at once on this host; the others wait their turn, so when a
        class presses Start together students become ready one after another
        instead of all late. Default: the number of CPU cores. 0: no limit::

            c.RootlessGPUSpawner.max_concurrent_starts = 4
        """,
    )

    @default("max_concurrent_starts")
    def _default_max_concurrent_starts(self):
        return max(1, os.cpu_count() or 1)

    # ---- registry mirrors ------------------------------------------------------------

    registry_mirrors = Dict(
        key_trait=Unicode(),
        value_trait=List(Unicode()),
        default_value={k: list(v) for k, v in DEFAULT_REGISTRY_MIRRORS.items()},
        config=True,
        help="""
        Mirrors per registry, tried in order after the lab cache and before
        the registry itself. Keys: ``docker.io``, ``quay.io``, ``nvcr.io``,
        ``ghcr.io``, ``registry.k8s.io`` or any ``host[:port]``. A mirror is
        ``HOST[:PORT][/PATH]``: without a path the image keeps its repository on
        another host (``quay.nju.edu.cn/jupyter/base-notebook``), with one the
        path comes first (``m.daocloud.io/quay.io/jupyter/base-notebook``);
        Docker Hub's official images keep ``library/``. A mirror that answers
        403 / "not in allowlist" is reported and the next one is tried.
        Assigning a dict replaces all defaults; ``.update`` keeps the others.
        The defaults (mirrors reachable from China in 2026; DaoCloud's serve an
        allow-list only) are in docs/en/admin-guide.md::

            c.RootlessGPUSpawner.registry_mirrors.update({
                "quay.io": ["quay.nju.edu.cn", "m.daocloud.io/quay.io"],
                "nvcr.io": ["m.daocloud.io/nvcr.io"],
            })
        """,
    )

    @validate("registry_mirrors")
    def _validate_registry_mirrors(self, proposal):
        try:
            value = normalize_mirror_chains(proposal.value)
        except ValueError as e:
            raise _bad_config(
                "registry_mirrors", f"{e}. Example: {{'quay.io': ['quay.nju.edu.cn', 'm.daocloud.io/quay.io']}}"
            ) from None
        effective_chains(value, self.mirror_prefixes)  # ConflictingMirrors names both settings
        return value

    lab_cache_mirrors = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        config=True,
        help="""
        The lab's pull-through cache per registry, as the students' daemons
        reach it (``HOST:PORT``; 10.0.2.2 is the host's loopback seen from a
        rootless daemon). Tried first for that registry, before
        ``registry_mirrors``, with the same probe and cool-down; the progress
        bar then says "from the lab cache". ``rootless-gpu-admin`` sets the
        cache up and makes the daemons trust it. Empty: no lab cache::

            c.RootlessGPUSpawner.lab_cache_mirrors = {"docker.io": "10.0.2.2:5001", "quay.io": "10.0.2.2:5002"}
        """,
    )

    @validate("lab_cache_mirrors")
    def _validate_lab_cache_mirrors(self, proposal):
        try:
            return normalize_lab_caches(proposal.value)
        except ValueError as e:
            raise _bad_config("lab_cache_mirrors", f"{e}. Example: {{'docker.io': '10.0.2.2:5001'}}") from None

    def mirror_chains(self) -> dict:
        """registry -> mirror specs in force (``mirror_prefixes`` as the docker.io entry when set)."""
        return effective_chains(self.registry_mirrors, self.mirror_prefixes)


    # ---- images students bring (hub/launch.py, hub/derived.py) ---------------------

    docker_stacks_env = Dict(
        {"NB_USER": "root", "NB_UID": "0", "NB_GID": "0", "CHOWN_HOME": "no"},
        config=True,
        help="""
        Environment for images with the Jupyter Docker Stacks layout (their
        ``start.sh``; e.g. ``quay.io/jupyter/*-notebook``). Upstream's "rootless
        triplet" keeps the server as container root, which a rootless daemon maps
        to the student, so files in the workspace stay the student's (their
        default user jovyan is a subordinate uid on the host)::

            c.RootlessGPUSpawner.docker_stacks_env = {"NB_USER": "root", "NB_UID": "0", "NB_GID": "0"}
        """,
    )

    install_jupyter_if_missing = Bool(
        True,
        config=True,
        help="""
        For an image with Python (3.9 or newer) but no JupyterHub single-user
        server: build, on the student's own daemon and once per (image, hub
        version), a thin derived image that pip-installs ``jupyterhub==<the hub's
        version>`` and ``lab_pip_packages`` into the image's own Python
        environment. Off: such images are refused with a clear message::

            c.RootlessGPUSpawner.install_jupyter_if_missing = True
        """,
    )

    lab_pypi_index = Unicode(
        "https://pypi.org/simple",
        config=True,
        help="""
        The PyPI index (simple API) derived images install from, as reached from
        inside a student's container build (the host's loopback is
        ``host_gateway_ip``). Usual mirrors in China: TUNA
        ``https://pypi.tuna.tsinghua.edu.cn/simple``, USTC
        ``https://mirrors.ustc.edu.cn/pypi/simple``, Aliyun
        ``https://mirrors.aliyun.com/pypi/simple/``, Tencent
        ``https://mirrors.cloud.tencent.com/pypi/simple``, or the lab's own
        (plain http is trusted for it)::

            c.RootlessGPUSpawner.lab_pypi_index = "https://pypi.tuna.tsinghua.edu.cn/simple"
        """,
    )

    lab_pip_packages = List(
        Unicode(),
        ["jupyterlab"],
        config=True,
        help="""
        What a derived image installs besides ``jupyterhub==<the hub's version>``::

            c.RootlessGPUSpawner.lab_pip_packages = ["jupyterlab", "ipywidgets"]
        """,
    )

    derived_build_timeout = Float(
        900.0,
        config=True,
        help="""
        Seconds building one derived image may take, all of it; then the spawn
        fails with what pip printed last::

            c.RootlessGPUSpawner.derived_build_timeout = 900
        """,
    )

    # ---- own images, saved environments ----
    # (issue 12: hub/own_images.py, environments.py)

    allow_own_images = Bool(
        True,
        config=True,
        help="""
        Let a student start any image that is already on their own rootless
        daemon (``docker images`` as that student), besides ``allowed_images``:
        the form lists them (name, size, age) and ``user_options["image"]``
        takes their ``repository:tag``. On by default: the daemon is the
        student's own and rootless, so such a container can do nothing the
        student cannot do with ``docker run`` already; it gets the same
        workspace mount, GPU policy and limits as an allowed image, and is never
        pulled. ``own_image_patterns`` narrows it; False turns it off::

            c.RootlessGPUSpawner.allow_own_images = True
        """,
    )

    own_image_patterns = List(
        Unicode(),
        default_value=["*"],
        config=True,
        help="""
        Glob patterns (``fnmatch``, case-sensitive) an own image's name must
        match, as ``docker images`` shows it (``myenv:v1``) or fully qualified
        (``docker.io/library/myenv:v1``). Saved environments must match too.
        For example, only images the student saved or built under their own
        prefix::

            c.RootlessGPUSpawner.own_image_patterns = ["env/*", "my-*:*"]
        """,
    )

    environment_save_timeout = Float(
        900.0,
        config=True,
        help="""
        Seconds one "save my environment" (``docker commit`` of the running
        server's container, on the student's own daemon) may take before it is
        given up with a clear error; large environments take minutes::

            c.RootlessGPUSpawner.environment_save_timeout = 900
        """,
    )

    @validate("own_image_patterns")
    def _validate_own_image_patterns(self, proposal):
        patterns = list(proposal.value)
        for pattern in patterns:
            if not pattern.strip() or pattern != pattern.strip() or len(pattern) > 255:
                raise _bad_config(
                    "own_image_patterns",
                    f"{pattern!r} is not a usable glob pattern: use names like 'env/*' or '*' (no spaces)",
                )
        return patterns

    @validate("environment_save_timeout")
    def _validate_environment_save_timeout(self, proposal):
        if not proposal.value > 0:
            raise _bad_config("environment_save_timeout", f"{proposal.value!r} must be a number of seconds > 0, e.g. 900")
        return proposal.value
