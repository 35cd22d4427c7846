"""RootlessGPUSpawner: each student's JupyterLab on their own rootless Docker daemon."""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor

from dockerspawner import DockerSpawner
from docker.errors import APIError
from docker.types import HostConfig
from tornado import web
from traitlets import (
    Any, Bool, CaselessStrEnum, Callable, Dict, Float, Int, List, Unicode, Union, default, validate,
)

from . import answers
from . import daemon as daemons
from .accounts import Account, AccountError, lookup_account, system_username
from .container import (
    build_container_request, check_container_port, is_port_clash, pick_host_port, rewrite_hub_urls,
    server_args,
)
from .daemon import BadAnswer, DaemonError, DaemonNotRunning, LyingAnswer, render_docker_host, socket_target
from . import gpu_alloc
from .gpu_alloc import GPURequestError, InventoryUnknown, NoFreeGPU
from .gpus import (
    InvalidGPURequest,
    detect_device_mode,
    device_requests,
    gpu_driver_error_message,
    is_gpu_driver_error,
    normalize_gpus,
)
from .options_form import FormChoices, needs_form, parse_form, render_form
from .user_options import GPUPolicy, student_gpu_limit, validate_user_options
from .admission import start_slot
from .images import InvalidImageReference, normalize_mirror_prefix, parse_image_reference
from . import mirrors
from .progress import ProgressFeed, pull_message
from .pulls import ImageError, ensure_image
from .safetext import printable
from .workspace import WorkspaceError, ensure_workspace

LABEL_PREFIX = "org.rootless-gpu-spawner"
PORT_ATTEMPTS = 5  # container create+start tries when the host port is taken meanwhile
#: Daemon starts (start_daemon_if_down) run here, never on the default executor that
#: account lookups use: a start that hangs can only hold these threads.
_daemon_starts = ThreadPoolExecutor(4, thread_name_prefix="rgs-daemon-start")
_starting: dict[str, asyncio.Future] = {}  # account -> the one start in flight
# system account -> hub users with a server on it (see allow_shared_accounts)
_account_users: dict[str, set] = {}


class SpawnRefused(web.HTTPError):
    """A spawn that must not go ahead, with a message for the student or admin.

    ``jupyterhub_message`` is what JupyterHub shows on the spawn page and in
    REST API errors instead of a generic "Internal Server Error".
    """

    def __init__(self, status_code: int, message: str, cause: Exception | None = None):
        super().__init__(status_code, message.replace("%", "%%"))
        self.jupyterhub_message = message
        self.cause = cause  # the typed error behind it (e.g. a DaemonError), for callers to branch on

    @classmethod
    def from_daemon(cls, error: DaemonError) -> "SpawnRefused":
        return cls(error.status, str(error), cause=error)

    def __str__(self):
        return self.jupyterhub_message


def _bad_config(trait: str, message: str) -> ValueError:
    return ValueError(f"RootlessGPUSpawner.{trait}: {message}")


class RootlessGPUSpawner(DockerSpawner):
    """Start each user's server in a container on that user's own rootless Docker daemon."""

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
        1000,
        config=True,
        help="""
        Refuse system accounts with a uid below this (root and system accounts)::

            c.RootlessGPUSpawner.min_uid = 1000
        """,
    )

    docker_host_template = Unicode(
        "unix:///run/user/{uid}/docker.sock",
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

    @default("host_ip")
    def _default_host_ip(self):
        # Publish on loopback only (rootlesskit forwards it); ignore DOCKER_HOST.
        return "127.0.0.1"

    @validate("port")
    def _validate_port(self, proposal):
        try:
            return check_container_port(proposal.value)
        except ValueError as e:
            raise ValueError(str(e)) from None

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

    @default("notebook_dir")
    def _default_notebook_dir(self):
        return self.workspace_mount

    @default("remove")
    def _default_remove(self):
        # A stopped server leaves no container behind (nor a GPU held by one);
        # the student's files live in the bind-mounted workspace.
        return True

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
        default_value=["docker.mirrors.ustc.edu.cn"],
        config=True,
        help="""
        Docker Hub mirrors to pull through, tried in order (host, optionally
        with a path; a leading ``https://`` is accepted and dropped). Used only
        for Docker Hub images; the image is tagged with its canonical name
        afterwards. USTC's mirror (the default) has been closed to the public
        since 2024: put your own pull-through cache or another mirror first::

            c.RootlessGPUSpawner.mirror_prefixes = ["docker.mirrors.ustc.edu.cn"]
        """,
    )

    @validate("mirror_prefixes")
    def _validate_mirror_prefixes(self, proposal):
        try:
            return [normalize_mirror_prefix(p) for p in proposal.value]
        except ValueError as e:
            raise _bad_config("mirror_prefixes", f"{e}. Example: ['mirror.example.org']") from None

    mirror_fallback_to_upstream = Bool(
        True,
        config=True,
        help="""
        After every mirror failed, pull from Docker Hub itself::

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

    # ---- per-server state ----------------------------------------------------------------

    account: Account | None = None
    docker_host = Unicode("")  # the daemon this server's container lives on (persisted)
    gpu_assignment = List()  # GPUs held under the exclusive policy (persisted)
    _connection = None
    _cdi_enabled = False
    _gpus_kept = False
    host_port = Int(0)  # the 127.0.0.1 port the hub chose for this server (persisted)
    _progress: ProgressFeed | None = None

    def _user_key(self):
        return (self.user.name, self.name)

    def load_state(self, state):
        super().load_state(state)
        self.docker_host = state.get("docker_host", "")
        self.host_port = int(state.get("host_port") or 0)
        if state.get("account"):
            _account_users.setdefault(state["account"], set()).add(self.user.name)
        self.gpu_assignment = list(state.get("gpu_ids") or [])
        if self.gpu_assignment and self.gpu_policy == "exclusive":
            # Hub restart: re-record what this running server holds before any new spawn is served.
            allocator = gpu_alloc.hub_allocator(self.gpu_ids)
            self.gpu_assignment = allocator.restore(self._user_key(), self.gpu_assignment)

    def get_state(self):
        state = super().get_state()
        if self.object_id and self.docker_host:
            state["docker_host"] = self.docker_host
            if self.host_port:
                state["host_port"] = self.host_port
            if self.account:
                state["account"] = self.account.name
        if self.object_id and self.gpu_assignment:
            state["gpu_ids"] = list(self.gpu_assignment)
        return state

    def clear_state(self):
        super().clear_state()
        self.docker_host = ""
        self.host_port = 0
        self._release_gpus()
        self._release_account()

    def _claim_account(self, account: Account):
        users = _account_users.setdefault(account.name, set())
        others = users - {self.user.name}
        if others and not self.allow_shared_accounts:
            raise SpawnRefused(
                409,
                f"the system account {account.name} is already in use by another hub user's "
                "server: two hub users map to the same login. Ask the admin to check "
                "RootlessGPUSpawner.system_user (or allow_shared_accounts).",
            )
        users.add(self.user.name)

    def _release_account(self):
        if self.account is not None:
            users = _account_users.get(self.account.name)
            if users is not None and not self._other_servers_of_user_on(self.account.name):
                users.discard(self.user.name)

    def _other_servers_of_user_on(self, account_name: str) -> bool:
        # A hub user's named servers share the account; keep the claim while one still runs.
        spawners = getattr(self.user, "spawners", {}) or {}
        for name, other in spawners.items():
            if other is self or name == self.name:
                continue
            if getattr(other, "account", None) and other.account.name == account_name and other.active:
                return True
        return False

    def _release_gpus(self):
        if self._gpus_kept:
            # Still in use as far as the hub can see: the allocator keeps them for this
            # server's key (its next start gets them back; nobody else does).
            self._gpus_kept = False
            self.gpu_assignment = []
            return
        if self.gpu_assignment or self.gpu_policy == "exclusive":
            allocator = gpu_alloc.existing_allocator()
            released = allocator.release(self._user_key()) if allocator else []
            if released:
                self.log.info("GPUs %s of %s released", ",".join(released), self._log_name)
        self.gpu_assignment = []

    # DockerSpawner calls self.client / self.executor / self.docker(); point them
    # at this student's daemon instead of the class-wide client.
    @property
    def client(self):
        client = self._connection.client if self._connection is not None else None
        if client is None:
            raise SpawnRefused(503, f"not connected to {self._account_name}'s rootless Docker")
        return client

    @property
    def executor(self):
        return self._connection.executor

    async def docker(self, method, *args, **kwargs):
        """A call on this student's daemon; a failing daemon becomes a clear refusal."""
        if self._connection is None:
            raise SpawnRefused(503, f"not connected to {self._account_name}'s rootless Docker")
        try:
            return await self._connection.call(method, *args, **kwargs)
        except BadAnswer as e:
            raise SpawnRefused.from_daemon(e.for_account(self._account_name, f"answering {method}")) from None
        except DaemonError as e:
            raise SpawnRefused.from_daemon(e) from None

    @property
    def _account_name(self) -> str:
        return self.account.name if self.account else self.user.name

    # ---- connecting -----------------------------------------------------------------------

    async def resolve_account(self) -> Account:
        hub_name = self.user.name
        try:
            name = system_username(hub_name, self.system_user)
            # pwd may ask LDAP/NSS: keep it off the event loop.
            account = await asyncio.to_thread(lookup_account, hub_name, name, self.min_uid)
        except AccountError as e:
            raise SpawnRefused(403, str(e)) from None
        self.account = account
        return account

    async def connect(
        self, docker_host: str | None = None, check_rootless: bool = True, may_start: bool = False
    ):
        """Verify and connect to the student's daemon (``docker_host`` from state when given).

        With ``may_start`` and ``start_daemon_if_down``, a daemon that is not
        running is started once (the same code as ``rootless-gpu-admin start-daemon``).
        """
        account = self.account or await self.resolve_account()
        if not docker_host:
            try:
                docker_host = render_docker_host(
                    self.docker_host_template, account.uid, account.name, account.home
                )
            except ValueError as e:
                raise SpawnRefused(500, str(e)) from None
        try:
            conn = await self._open_connection(account, docker_host)
        except SpawnRefused as e:
            if not (may_start and self.start_daemon_if_down and isinstance(e.cause, DaemonNotRunning)):
                raise
            await self._start_daemon(account, reason=str(e))
            conn = await self._open_connection(account, docker_host)
        if self._connection is not None and self._connection is not conn:
            daemons.pool.release(self._connection.target, self._user_key())
        self._connection = conn
        self.docker_host = docker_host
        if check_rootless:
            await self._check_rootless(account, docker_host)
        return conn

    async def _open_connection(self, account: Account, docker_host: str):
        """The pooled, peer-verified connection (every new socket is checked, see transport.py)."""
        try:
            target = socket_target(docker_host, account.uid, account.name)
        except ValueError as e:
            raise SpawnRefused(500, str(e)) from None
        try:
            return await daemons.pool.connect(target, docker_host, self.docker_api_timeout, self._user_key())
        except BadAnswer as e:
            raise SpawnRefused.from_daemon(e.for_account(account.name, "connecting")) from None
        except DaemonError as e:
            raise SpawnRefused.from_daemon(e) from None

    async def _start_daemon(self, account: Account, reason: str):
        """Start the student's daemon once, however many spawns ask at the same time."""
        pending = _starting.get(account.name)
        if pending is None:
            self.log.warning("starting rootless Docker for %s (%s)", account.name, printable(reason, 300))
            loop = asyncio.get_running_loop()
            pending = loop.run_in_executor(_daemon_starts, self._start_daemon_blocking, account.name)
            _starting[account.name] = pending
            pending.add_done_callback(lambda _f: _starting.pop(account.name, None))
        pid = await asyncio.shield(pending)
        self.log.info("rootless Docker for %s started (pid %s)", account.name, pid)

    def _start_daemon_blocking(self, name: str):
        from . import daemonctl, service

        try:
            # The same code as `rootless-gpu-admin start-daemon` (systemd user unit or by hand).
            return service.start_daemon_for(name, self.docker_api_timeout)
        except daemonctl.DaemonError as e:
            raise SpawnRefused(
                503, f"rootless Docker for {name} was not running and could not be started: "
                f"{printable(e, 400)}"
            ) from None

    async def _device_mode(self) -> str:
        if self.gpu_device_mode != "auto":
            return self.gpu_device_mode
        if not self._cdi_enabled:
            return "nvidia"
        # Only the well-known spec dirs on the hub's host, never a path the daemon named.
        return await asyncio.to_thread(detect_device_mode, True)

    async def _check_rootless(self, account: Account, docker_host: str):
        info = await self.docker("info")
        try:
            rootless = answers.is_rootless(info)
            self._cdi_enabled = answers.cdi_enabled(info)
        except BadAnswer as e:
            raise SpawnRefused.from_daemon(e.for_account(account.name, "answering docker info")) from None
        if rootless:
            return
        if self.allow_rootful_daemon:
            self.log.warning(
                "daemon %s for %s is not rootless; allowed by allow_rootful_daemon",
                docker_host,
                account.name,
            )
            return
        raise SpawnRefused(
            403,
            f"the Docker daemon at {docker_host} for {account.name} is not running in rootless "
            "mode (docker info shows no 'rootless' security option): a container there would "
            f"have root on the host. Ask the admin to set up rootless Docker for {account.name} "
            "('rootless-gpu-admin bootstrap'); RootlessGPUSpawner.allow_rootful_daemon exists "
            "only for single-user test machines.",
        )

    def _disconnect(self):
        if self._connection is not None:
            daemons.pool.release(self._connection.target, self._user_key())
            self._connection = None

    # ---- user options ---------------------------------------------------------------------

    def gpu_limit(self):
        """This student's GPU limit: the largest of their groups' limits, else max_gpus_per_user."""
        groups = [getattr(g, "name", g) for g in (getattr(self.user, "groups", None) or [])]
        return student_gpu_limit(groups, self.group_gpu_limits, self.max_gpus_per_user)

    def gpu_settings(self) -> GPUPolicy:
        return GPUPolicy(self.gpu_policy, self.gpus, self.gpu_limit(), list(self.gpu_ids))

    def validated_user_options(self, options=None) -> dict:
        """Check ``user_options`` (form or REST API); HTTP 400 on anything wrong."""
        options = self.user_options if options is None else options
        return validate_user_options(options, self.gpu_settings(), self._get_allowed_images())

    @default("apply_user_options")
    def _default_apply_user_options(self):
        # JupyterHub >= 5.3 calls this hook before start() and, when none is set, logs
        # "Received unhandled user_options" for every key. Ours are handled: start()
        # validates them (validated_user_options, an HTTP 400 logged as one line) and
        # applies them. Validating here too would make the hub log a traceback for every
        # refused request, so the hook only declares them handled.
        return lambda spawner, user_options: None

    def default_gpu_request(self):
        return self.gpu_settings().default_request

    async def _resolve_image(self, requested: str | None):
        image = self.image
        if requested:
            # DockerSpawner's allow-list check (raises HTTP 400), then our grammar.
            image = await self.check_allowed(requested)
        try:
            return parse_image_reference(image)
        except InvalidImageReference as e:
            status = 400 if requested else 500
            raise SpawnRefused(status, str(e)) from None

    # ---- options form ------------------------------------------------------------------------

    @default("options_form")
    def _default_options_form(self):
        return lambda spawner: spawner.render_options_form()

    @default("options_from_form")
    def _default_options_from_form(self):
        return lambda formdata: self.options_from_formdata(formdata)

    def _image_choices(self) -> dict:
        allowed = self._get_allowed_images()
        return {} if allowed == "*" else dict(allowed or {})

    async def form_choices(self) -> FormChoices:
        gpus, free = [], []
        if self.gpu_policy == "exclusive":
            allocator = await self._allocator_with_inventory()
            free = allocator.free()
            gpus = await asyncio.to_thread(gpu_alloc.gpu_details, allocator.inventory)
            limit = self.gpu_limit()
            held = allocator.held_by_user(self.user.name)
            max_count = min(len(free), (limit - held) if limit is not None else len(free))
            allow_all = False
        else:
            ceiling = self.gpus
            limit = self.gpu_limit()
            known = len(self.gpu_ids)
            if ceiling == "all":
                max_count = known if limit is None else (min(limit, known) if known else limit)
            else:
                max_count = ceiling if isinstance(ceiling, int) else len(ceiling)
                if limit is not None:
                    max_count = min(max_count, limit)
            allow_all = ceiling == "all" and limit is None
        return FormChoices(
            images=self._image_choices(),
            default_image=self.image,
            gpu_policy=self.gpu_policy,
            max_count=max(0, max_count),
            default_gpus=self.default_gpu_request(),
            allow_all=allow_all,
            gpus=gpus,
            free=free,
        )

    async def render_options_form(self) -> str:
        choices = await self.form_choices()
        return render_form(choices) if needs_form(choices) else ""

    def options_from_formdata(self, formdata) -> dict:
        """The form's answer, checked by the same validation as REST API ``user_options``."""
        options = parse_form(formdata, self._image_choices())
        self.validated_user_options(options)
        return options

    # ---- lifecycle ---------------------------------------------------------------------------

    def get_args(self):
        return server_args(super().get_args(), self.run_as_root)

    async def progress(self):
        feed = self._progress
        if feed is None:
            yield {"progress": 10, "message": "starting..."}
            return
        async for event in feed.follow():
            yield event

    async def start(self):
        self._progress = ProgressFeed(self.log, self._log_name)
        try:
            return await self._start()
        finally:
            self._progress.close()

    async def _start(self):
        options = self.validated_user_options()
        ref = await self._resolve_image(options.get("image"))
        gpus = options.get("gpus", self.default_gpu_request())
        account = await self.resolve_account()
        self._claim_account(account)
        try:
            return await self._start_claimed(ref, options, gpus, account)
        except BaseException as e:
            # A failed start holds no claim on the account, and no GPU once its server is gone.
            if isinstance(e, Exception):
                await self._settle_gpus()
            self._release_gpus()
            self._release_account()
            raise

    async def _start_claimed(self, ref, options, gpus, account):
        try:
            try:
                workspace = await asyncio.to_thread(
                    ensure_workspace, account.home, self.workspace_dir, account.uid, account.gid
                )
            except WorkspaceError as e:
                raise SpawnRefused(403, f"workspace for {account.name}: {e}") from None
            self._progress.emit(5, f"connecting to {account.name}'s rootless Docker")
            await self.connect(may_start=True)
            if self.gpu_policy == "exclusive":
                gpus = await self._allocate_gpus(gpus)
            return await self._start_container(ref, options, gpus, account, workspace)
        except DaemonError as e:  # raised outside self.docker() (pulls, the pool)
            if isinstance(e, BadAnswer):
                e = e.for_account(account.name, "starting the server")
            raise SpawnRefused.from_daemon(e) from None
        except APIError as e:  # the daemon refused a request: its words, made printable
            raise SpawnRefused(
                502,
                f"rootless Docker for {account.name} refused to start the server: "
                f"{printable(e.explanation or e, 300)}. If this repeats, ask the admin to check "
                f"{account.name}'s daemon ('rootless-gpu-admin doctor --user {account.name}').",
            ) from None

    async def _allocator_with_inventory(self):
        try:
            return await gpu_alloc.allocator_with_inventory(self.gpu_ids)
        except InventoryUnknown as e:
            raise SpawnRefused(500, str(e)) from None

    async def _allocate_gpus(self, request):
        allocator = await self._allocator_with_inventory()
        try:
            ids = allocator.allocate(self._user_key(), request, limit=self.gpu_limit())
        except GPURequestError as e:
            raise SpawnRefused(400, str(e)) from None
        except NoFreeGPU as e:
            raise SpawnRefused(409, str(e)) from None
        self.gpu_assignment = ids
        if ids:
            self.log.info("GPUs %s assigned to %s", ",".join(ids), self._log_name)
        return ids or 0

    async def _start_container(self, ref, options, gpus, account, workspace):
        if options.get("image"):
            # Like DockerSpawner: remember the student's choice (JUPYTER_IMAGE_SPEC).
            self.image = ref.familiar
        feed = self._progress
        feed.emit(10, f"checking image {ref.familiar}")
        try:
            pulled = await ensure_image(
                self._connection,
                ref,
                policy=self.pull_policy,
                mirror_prefixes=self.mirror_prefixes,
                fallback_to_upstream=self.mirror_fallback_to_upstream,
                account=account.name,
                skip_mirror=self._skip_mirror,
                on_attempt=self._pull_attempt,
                on_progress=lambda source, p: feed.emit_threadsafe(
                    10 + int(60 * p.fraction), pull_message(ref.familiar, source, p.done_bytes, p.total_bytes)
                ),
                pull_timeout=self.image_pull_timeout,
            )
        except ImageError as e:
            raise SpawnRefused(500, str(e)) from None
        if pulled.pulled_from:
            self.log.info("image %s for %s pulled from %s", ref.familiar, account.name, pulled.pulled_from)
            feed.emit(70, f"pulled {ref.familiar} from {pulled.pulled_from}")

        async with start_slot(self.max_concurrent_starts, self._progress):
            return await self._run_container(pulled, workspace, gpus, account)

    async def _run_container(self, pulled, workspace, gpus, account):
        feed = self._progress

        obj = await self.get_object()
        if obj is not None and (self.remove or not self.host_port):
            # Leftover (or from before the hub chose ports itself): never adopt its port.
            self.log.warning("removing leftover container %s of %s", self.object_name, account.name)
            await self.remove_object()
            obj = None
        if obj is not None:
            self.log.info("found existing container %s of %s", self.object_name, account.name)
            token = answers.env_value(obj.env, "JUPYTERHUB_API_TOKEN")
            if token:
                self.api_token = token
            await self._start_or_explain(gpus, account)
        else:
            await self._create_and_start(pulled, workspace, gpus, account)
        if self.post_start_cmd:
            await self.post_start_exec()
        ip, port = await self.get_ip_and_port()
        feed.emit(90, "container started, waiting for JupyterLab to answer")
        await self._wait_until_listening(ip, port)
        return ip, port

    async def _create_and_start(self, pulled, workspace, gpus, account):
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self.host_port = pick_host_port(self.host_ip)
            self.object_id = await self._create(pulled.image, workspace, gpus, account, self.host_port)
            self.log.info(
                "created container %s (%s) for %s on %s from %s, port %s:%s",
                self.object_name, self.object_id[:12], account.name, self.docker_host,
                pulled.image, self.host_ip, self.host_port,
            )
            try:
                await self._start_or_explain(gpus, account)
                return
            except APIError as e:
                if not is_port_clash(str(e.explanation or e)) or attempt == PORT_ATTEMPTS:
                    raise
                # Taken on the host between our pick and the daemon's bind: new port.
                self.log.warning("port %s was taken, retrying: %s", self.host_port, printable(e.explanation, 200))
                await self._remove_quietly()

    async def get_ip_and_port(self):
        """The address the hub chose; the daemon's report is only compared with it, never used.

        A daemon that says the container's port is published elsewhere (the
        hub's API, another student's server) is lying or broken: the container
        is removed and the spawn refused.
        """
        expected = (self.host_ip, str(self.host_port))
        obj = await self.get_object()
        if obj is None:
            raise SpawnRefused(502, f"the container of {self._account_name} disappeared right after it started")
        if obj.published != (expected,):
            reported = ", ".join(f"{printable(ip, 40)}:{printable(port, 8)}" for ip, port in obj.published) or "nothing"
            await self._remove_quietly()
            error = LyingAnswer(
                f"reported the server on {reported}, not on {expected[0]}:{expected[1]} as the hub set it up"
            )
            raise SpawnRefused.from_daemon(error.for_account(self._account_name, "starting the container"))
        return self.host_ip, self.host_port

    async def _start_or_explain(self, gpus, account):
        try:
            await self.start_object()
        except APIError as e:
            message = printable(e.explanation or e, 600)
            if is_gpu_driver_error(message):
                await self._remove_quietly()
                raise SpawnRefused(
                    500, gpu_driver_error_message(account.name, self.docker_host, gpus, message)
                ) from None
            raise

    async def _wait_until_listening(self, ip, port):
        """Return as soon as the server answers HTTP at all (any status).

        The hub then finds it up at its first check instead of after an
        exponential back-off step, and the admission slot is held exactly
        while the server is starting. Bounded by ``http_timeout``; on timeout
        the hub's own wait reports the usual error.
        """
        from tornado.httpclient import AsyncHTTPClient, HTTPClientError

        base_url = getattr(getattr(self, "server", None), "base_url", None) or "/"
        url = f"http://{ip}:{port}{base_url}api"
        client = AsyncHTTPClient()
        deadline = time.monotonic() + self.http_timeout
        while time.monotonic() < deadline:
            try:
                await client.fetch(url, connect_timeout=1, request_timeout=2, follow_redirects=False)
                return
            except HTTPClientError as e:
                if e.code != 599:
                    return  # an HTTP answer, even 403 or 302: the server is up
            except (OSError, ConnectionError):
                pass
            await asyncio.sleep(0.05)

    async def _skip_mirror(self, prefix):
        """Why a mirror is left out now (cooling down after a failure, or unreachable), or None."""
        if not mirrors.health.usable(prefix):
            return f"skipped: failed recently (cool-down {int(self.mirror_cooldown)} s)"
        host, port = mirrors.mirror_address(prefix, self.host_gateway_ip)
        if not await mirrors.reachable(host, port, self.mirror_probe_timeout):
            mirrors.health.failed(prefix, self.mirror_cooldown)
            return f"skipped: no answer from {host}:{port} within {self.mirror_probe_timeout:g} s"
        return None

    def _pull_attempt(self, name, prefix, error):
        # What the daemon reports about a mirror is the student's word: it shows on this
        # student's progress page only. Shared mirror health changes on the hub's own probe.
        if error is not None:
            self._progress.emit(None, f"{name}: {printable(error, 160)}")

    def template_namespace(self):
        namespace = super().template_namespace()
        namespace["userid"] = getattr(self.user, "id", "")
        return namespace

    @default("name_template")
    def _default_name_template(self):
        # The hub's user id makes names unique even when two hub names escape alike.
        if self.name:
            return "{prefix}-{username}-{userid}--{servername}"
        return "{prefix}-{username}-{userid}"

    async def get_object(self):
        """This server's container as a checked :class:`answers.ContainerView`, or None when gone."""
        try:
            raw = await self.docker("inspect_container", self.object_id or self.object_name)
        except APIError as e:
            if e.status_code in (404, 500):
                self.object_id = ""
                return None
            raise
        try:
            obj = answers.container_view(raw, self.port)
        except BadAnswer as e:
            raise SpawnRefused.from_daemon(e.for_account(self._account_name, "inspecting the container")) from None
        owner = obj.labels.get(f"{LABEL_PREFIX}.hub-user")
        if owner is not None and owner != self.user.name:
            # Two hub names can escape to the same container name ("a.b" and "a-2eb");
            # never adopt, stop or remove another hub user's container.
            self.object_id = ""
            raise SpawnRefused(
                409,
                f"container {self.object_name} on {self._account_name}'s "
                f"daemon belongs to another hub user: the two names escape to the same container "
                "name. Ask the admin to make RootlessGPUSpawner.name_template unique "
                "(the default includes {userid}).",
            )
        self.object_id = obj.id
        return obj

    async def _create(self, image: str, workspace: str, gpus, account: Account, host_port=None):
        command = self.cmd or answers.image_command(await self.docker("inspect_image", image))
        env = rewrite_hub_urls(self.get_env(), self.host_gateway_ip)
        create_kwargs, host_kwargs = build_container_request(
            name=self.object_name,
            image=image,
            command=list(command) + self.get_args(),
            env=env,
            port=self.port,
            host_ip=self.host_ip,
            workspace_source=workspace,
            workspace_mount=self.workspace_mount,
            run_as_root=self.run_as_root,
            device_requests=device_requests(gpus, await self._device_mode()),
            labels={
                f"{LABEL_PREFIX}.hub-user": self.user.name,
                f"{LABEL_PREFIX}.server-name": self.name,
                f"{LABEL_PREFIX}.account": account.name,
                f"{LABEL_PREFIX}.gpus": _gpus_label(gpus),
            },
            extra_binds=self.volume_binds,
            auto_remove=False,
            network_mode=self.network_name,
            mem_limit=self.mem_limit,
            cpu_limit=self.cpu_limit,
            host_port=host_port,
        )
        extra_create = await self._maybe_await(self._eval_if_callable(self.extra_create_kwargs))
        extra_host = await self._maybe_await(self._eval_if_callable(self.extra_host_config))
        _merge(create_kwargs, self._render_templates(extra_create))
        _merge(host_kwargs, self._render_templates(extra_host))
        create_kwargs["host_config"] = HostConfig(self._connection.api_version, **host_kwargs)
        created = await self.docker("create_container", **create_kwargs)
        try:
            return answers.container_id(created)
        except BadAnswer as e:
            raise SpawnRefused.from_daemon(e.for_account(account.name, "creating the container")) from None

    @staticmethod
    async def _maybe_await(value):
        if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
            return await value
        return value

    async def _remove_quietly(self):
        try:
            await self.remove_object()
        except Exception:  # best effort: the next start removes leftovers too
            self.log.warning("could not remove container %s", self.object_name, exc_info=True)
        self.object_id = ""

    async def poll(self):
        if not self.object_id and not self.docker_host:
            return 0
        try:
            await self.connect(self.docker_host or None, check_rootless=False)
            obj = await self.get_object()
        except SpawnRefused as e:
            return await self._poll_without_daemon(e)
        if obj is not None and obj.running:
            return None
        # The hub will not call stop() for a dead server: clean up here. An exited
        # container is removed (files live in the workspace), its GPUs released.
        if obj is not None and self.remove:
            await self._remove_quietly()
        status = 0 if obj is None else (
            f"ExitCode={obj.exit_code}, Error='{printable(obj.error, 200)}', "
            f"FinishedAt={printable(obj.finished_at, 40)}"
        )
        await self._settle_gpus()
        self._release_gpus()
        self._disconnect()
        return status

    async def _poll_without_daemon(self, refusal: SpawnRefused):
        """The daemon cannot be asked (gone, refused, garbled): decide on what the hub sees itself."""
        self.log.warning("poll for %s: %s", self._log_name, printable(refusal, 300))
        if not isinstance(refusal.cause, DaemonNotRunning) and not await self._server_gone():
            return None  # the daemon misbehaves, but the server still answers on its port
        await self._settle_gpus()
        self._release_gpus()
        self._disconnect()
        return 1

    async def stop(self, now=False):
        try:
            await self.connect(self.docker_host or None, check_rootless=False)
            await self.stop_object()
            if self.remove:
                await self.remove_object()
                self.object_id = ""
        except (SpawnRefused, APIError) as e:
            # Nothing more to do on a daemon that is gone or misbehaves; the workspace is untouched.
            self.log.warning("stop for %s: %s", self._log_name, printable(e, 300))
        finally:
            await self._settle_gpus()
            self.clear_state()
            self._disconnect()

    async def _server_gone(self) -> bool:
        """The hub's own observation: nothing accepts connections on the server's port now."""
        if not self.host_port:
            return True
        try:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host_ip, self.host_port), timeout=2
            )
        except asyncio.TimeoutError:
            return False  # cannot tell: keep what it holds
        except OSError:
            return True
        writer.close()
        return False

    async def _settle_gpus(self):
        """Keep a server's GPUs held while its server still answers, whatever its daemon says."""
        if self.gpu_assignment and not await self._server_gone():
            self._gpus_kept = True
            self.log.warning(
                "GPUs %s of %s stay held: its server still answers on %s:%s",
                ",".join(self.gpu_assignment), self._log_name, self.host_ip, self.host_port,
            )


def _gpus_label(gpus) -> str:
    if isinstance(gpus, list):
        return ",".join(gpus) or "0"
    return str(gpus)


def _merge(dest: dict, src: dict | None) -> None:
    for key, value in (src or {}).items():
        if isinstance(value, dict) and isinstance(dest.get(key), dict):
            _merge(dest[key], value)
        else:
            dest[key] = value
