"""RootlessGPUSpawner: each student's JupyterLab on their own rootless Docker daemon."""

from __future__ import annotations

import asyncio

from dockerspawner import DockerSpawner
from docker.errors import APIError
from docker.types import HostConfig
from traitlets import Int, List, Unicode, default, validate

from . import answers
from .accounts import Account
from .config import SpawnerConfig
from .errors import SpawnRefused
from .safetext import printable
from .host.workspace import WorkspaceError, ensure_workspace
from .hub import gpu_alloc, mirrors
from .hub.admission import start_slot
from .hub.connecting import DaemonLink
from .hub.container import (
    build_container_request, check_container_port, is_port_clash, pick_host_port, rewrite_hub_urls,
    server_args,
)
from .hub.daemon import BadAnswer, DaemonError, DaemonNotRunning, LyingAnswer
from .hub.gpu_holding import GPUHolding
from .hub.gpus import device_requests, gpu_driver_error_message, is_gpu_driver_error
from .hub.image_launch import ImageLaunch
from .hub.progress import ProgressFeed, pull_message
from .hub.pulls import ImageError, PullAttempt, attempt_message, ensure_image, pulled_message
from .hub.readiness import wait_until_answering
from .hub.spawn_options import SpawnOptions

LABEL_PREFIX = "org.rootless-gpu-spawner"
PORT_ATTEMPTS = 5  # container create+start tries when the host port is taken meanwhile
# system account -> hub users with a server on it (see allow_shared_accounts)
_account_users: dict[str, set] = {}


class RootlessGPUSpawner(DaemonLink, SpawnOptions, GPUHolding, ImageLaunch, DockerSpawner, SpawnerConfig):
    """Start each user's server in a container on that user's own rootless Docker daemon."""

    @classmethod
    def class_own_traits(cls, **metadata):
        """The settings declared in :class:`SpawnerConfig` are this class's own.

        ``SpawnerConfig`` is this class's declaration split into its own file, not a parent
        class with settings of its own: ``jupyterhub --generate-config``, ``--help-all`` and
        docs/*/config-reference.md list them under ``RootlessGPUSpawner`` as before.
        """
        own = super().class_own_traits(**metadata)
        if cls is RootlessGPUSpawner:
            own.update(SpawnerConfig.class_own_traits(**metadata))
        return own

    # ---- inherited settings this spawner sets differently ------------------------

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

    @default("notebook_dir")
    def _default_notebook_dir(self):
        return self.workspace_mount

    @default("remove")
    def _default_remove(self):
        # A stopped server leaves no container behind (nor a GPU held by one);
        # the student's files live in the bind-mounted workspace.
        return True

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

    # ---- the one call into host/: starting a stopped daemon -------------------------

    def _start_daemon_blocking(self, name: str):
        from .host import daemonctl
        from .host import service

        try:
            # The same code as `rootless-gpu-admin start-daemon` (systemd user unit or by hand).
            return service.start_daemon_for(name, self.docker_api_timeout)
        except daemonctl.DaemonError as e:
            raise SpawnRefused(
                503, f"rootless Docker for {name} was not running and could not be started: "
                f"{printable(e, 400)}"
            ) from None

    # ---- options: hooks JupyterHub reads ---------------------------------------------

    @default("apply_user_options")
    def _default_apply_user_options(self):
        # JupyterHub >= 5.3 calls this hook before start() and, when none is set, logs
        # "Received unhandled user_options" for every key. Ours are handled: start()
        # validates them (validated_user_options, an HTTP 400 logged as one line) and
        # applies them. Validating here too would make the hub log a traceback for every
        # refused request, so the hook only declares them handled.
        return lambda spawner, user_options: None

    @default("options_form")
    def _default_options_form(self):
        return lambda spawner: spawner.render_options_form()

    @default("options_from_form")
    def _default_options_from_form(self):
        return lambda formdata: self.options_from_formdata(formdata)

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

    async def _start_container(self, ref, options, gpus, account, workspace):
        if self._own_image:  # the student's own image: on their daemon or refused, never pulled
            pulled = await self.own_image_present(ref, account)
        if options.get("image"):
            # Like DockerSpawner: remember the student's choice (JUPYTER_IMAGE_SPEC).
            self.image = ref.familiar
        feed = self._progress
        feed.emit(10, f"checking image {ref.familiar}")
        if not self._own_image:
            pulled = await self._ensure_admin_image(ref, account)
        if pulled.pulled_from:
            self.log.info("image %s for %s pulled from %s", ref.familiar, account.name, pulled.pulled_from)
            feed.emit(70, pulled_message(ref.familiar, pulled))
        # How this image starts (Docker Stacks, no Jupyter, a shell CMD): outside the start slot,
        # since a first start may build the derived image.
        self._launch_image = await self.plan_image(pulled.image, ref.familiar)

        async with start_slot(self.max_concurrent_starts, self._progress):
            return await self._run_container(pulled, workspace, gpus, account)

    async def _ensure_admin_image(self, ref, account):
        feed = self._progress
        try:
            return await ensure_image(
                self._connection,
                ref,
                policy=self.pull_policy,
                mirrors=self.mirror_chains(),
                lab_caches=self.lab_cache_mirrors,
                fallback_to_upstream=self.mirror_fallback_to_upstream,
                account=account.name,
                skip_mirror=self._skip_mirror,
                on_attempt=self._pull_attempt,
                on_progress=lambda source, p: feed.emit_threadsafe(
                    10 + int(60 * p.fraction), pull_message(ref.familiar, source.label, p.done_bytes, p.total_bytes)
                ),
                pull_timeout=self.image_pull_timeout,
            )
        except ImageError as e:
            raise SpawnRefused(500, str(e)) from None

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
            image = getattr(self, "_launch_image", None) or pulled.image
            self.object_id = await self._create(image, workspace, gpus, account, self.host_port)
            self.log.info(
                "created container %s (%s) for %s on %s from %s, port %s:%s",
                self.object_name, self.object_id[:12], account.name, self.docker_host,
                image, self.host_ip, self.host_port,
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
        if not obj.running:
            await self.watch_container()  # exited at once: its own words, not a port mismatch
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
        base_url = getattr(getattr(self, "server", None), "base_url", None) or "/"
        await wait_until_answering(f"http://{ip}:{port}{base_url}api", self.http_timeout, watch=self.watch_container)

    async def _skip_mirror(self, prefix):
        """Why a mirror is left out now (cooling down after a failure, or unreachable), or None."""
        if not mirrors.health.usable(prefix):
            return f"skipped: failed recently (cool-down {int(self.mirror_cooldown)} s)"
        host, port = mirrors.mirror_address(prefix, self.host_gateway_ip)
        if not await mirrors.reachable(host, port, self.mirror_probe_timeout):
            mirrors.health.failed(prefix, self.mirror_cooldown)
            return f"skipped: no answer from {host}:{port} within {self.mirror_probe_timeout:g} s"
        return None

    def _pull_attempt(self, attempt: PullAttempt):
        # What the daemon reports about a mirror is the student's word: it shows on this
        # student's progress page only. Shared mirror health changes on the hub's own probe.
        if attempt.outcome != PullAttempt.PULLED:
            self._progress.emit(None, attempt_message(attempt))

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
        command = self.cmd or self.launch_command(answers.image_command(await self.docker("inspect_image", image)))
        env = rewrite_hub_urls({**self.get_env(), **self.launch_env()}, self.host_gateway_ip)
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
