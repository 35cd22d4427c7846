"""The spawner's link to the student's daemon: resolve the account, connect (pooled,
peer-verified), start a stopped daemon once however many spawns ask, check it is rootless.

:class:`DaemonLink` is a mixin of :class:`~rootless_gpu_spawner.spawner.RootlessGPUSpawner`
(placed before ``DockerSpawner``, whose ``client``, ``executor`` and ``docker()`` it replaces).
It runs in the hub's event loop and starts no process: the blocking start itself is the
spawner's ``_start_daemon_blocking`` (host code, run here in a worker thread).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from .. import answers
from ..accounts import Account, AccountError, lookup_account, system_username
from ..errors import SpawnRefused
from ..safetext import printable
from . import daemon as daemons
from .daemon import BadAnswer, DaemonError, DaemonNotRunning, render_docker_host, socket_target
from .gpus import detect_device_mode

#: Daemon starts (start_daemon_if_down) run here, never on the default executor that
#: account lookups use: a start that hangs can only hold these threads.
_daemon_starts = ThreadPoolExecutor(4, thread_name_prefix="rgs-daemon-start")
_starting: dict[str, asyncio.Future] = {}  # account -> the one start in flight


class DaemonLink:
    """Connecting to this server's student daemon (a mixin of RootlessGPUSpawner)."""

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
            checked = answers.daemon_info(info)
        except BadAnswer as e:
            raise SpawnRefused.from_daemon(e.for_account(account.name, "answering docker info")) from None
        self._cdi_enabled = checked.cdi_enabled
        if checked.rootless:
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
