"""The GPU board: a JupyterHub service (hub OAuth) that shows every GPU and who holds it.

Run by the hub as a managed service (see ``jupyterhub_config.py``)::

    python -m rootless_gpu_spawner.board --GPUBoard.idle_window=1800 --GPUBoard.gpu_lease=86400

Pages and API, all under the service prefix (``/services/gpu-board/``):

* ``/``                          the board (HTML; refreshes itself from ``api/board``)
* ``api/board``                  the board for the logged-in viewer (JSON)
* ``api/users/NAME/servers``     NAME's GPU-holding servers with idle verdict and lease;
                                 403 unless the viewer is NAME, an admin, or a service
                                 (the idle culler) allowed to reach this one
"""

from __future__ import annotations

import asyncio
import json
import os
import time

from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.ioloop import IOLoop, PeriodicCallback
from traitlets import Float, Unicode
from traitlets.config import Application

from .. import holders as holders_ext
from ..utilisation import FILE_ENV, History, UtilisationError, source_from_env
from .page import render_page
from .view import Policy, Viewer, board_model, job_figures, rows_for


class HoldersUnavailable(RuntimeError):
    """The hub did not say who holds which GPU (the hub is down, or the scope is missing)."""


class BoardState:
    """Readings, their history and the source's health; filled by :meth:`sample`."""

    def __init__(self, source, span: float):
        self.source = source
        self.history = History(span=span)
        self.readings = {}
        self.error = None
        self.job_readings = {}  # NODE:INDEX -> Reading, measured on Slurm jobs' nodes
        self.job_simulated = False
        self._job_at = {}  # NODE:INDEX -> time of the last report added to the history

    async def sample(self):
        try:
            readings = await asyncio.to_thread(self.source.read)
        except UtilisationError as e:
            self.error = str(e)
            return
        self.error = None
        self.readings = readings
        self.history.add(time.time(), readings)

    def add_job_figures(self, holders: list[dict]) -> None:
        """Slurm jobs' figures (reported by their nodes, listed with the holders) into the history."""
        found = job_figures(holders)
        for gpu, (at, reading, _) in found.items():
            if at > self._job_at.get(gpu, float("-inf")):
                self._job_at[gpu] = at
                self.history.add(at, {gpu: reading})
        self._job_at = {g: self._job_at[g] for g in found}
        self.job_readings = {g: r for g, (_, r, _) in found.items()}
        self.job_simulated = any(sim for _, _, sim in found.values())


async def fetch_holders(api_url: str, token: str) -> dict:
    request = HTTPRequest(
        url_path_join(api_url, "rgs/gpu-holders"), headers={"Authorization": f"token {token}"},
        request_timeout=10,
    )
    try:
        response = await AsyncHTTPClient().fetch(request)
        return json.loads(response.body)
    except (HTTPClientError, OSError, ValueError) as e:
        raise HoldersUnavailable(f"the hub did not list the GPU holders ({holders_ext.SCOPE}): {e}") from None


class BoardHandler(HubOAuthenticated, web.RequestHandler):
    @property
    def board(self) -> "GPUBoard":
        return self.settings["board"]

    def viewer(self) -> Viewer:
        model = self.current_user
        return Viewer(model["name"], bool(model.get("admin")), model.get("kind", "user"))

    async def holders(self) -> dict:
        try:
            return await fetch_holders(self.board.api_url, self.board.api_token)
        except HoldersUnavailable as e:
            raise web.HTTPError(503, str(e)) from None


class APIHandler(BoardHandler):
    def get_login_url(self):
        raise web.HTTPError(403, "log in to the hub, or send a token allowed to reach this service")

    def write_json(self, model):
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.write(json.dumps(model))

    def write_error(self, status_code, **kwargs):
        reason = self._reason
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            reason = exc.log_message
        self.write_json({"status": status_code, "message": reason})


class BoardAPI(APIHandler):
    @web.authenticated
    async def get(self):
        self.write_json(self.board.model_for(self.viewer(), await self.holders()))


class ServersAPI(APIHandler):
    @web.authenticated
    async def get(self, user):
        viewer = self.viewer()
        if not (viewer.admin or viewer.kind == "service" or viewer.name == user):
            raise web.HTTPError(403, "you may only ask about your own servers")
        found = await self.holders()
        self.board.state.add_job_figures(found["holders"])
        rows = rows_for(viewer, [h for h in found["holders"] if h["user"] == user],
                        self.board.state.history, self.board.policy(), time.time())
        self.write_json({"user": user, "servers": {r["server"]: r for r in rows}})


class PageHandler(BoardHandler):
    @web.authenticated
    def get(self):
        viewer = self.viewer()
        prefix = self.board.prefix
        self.set_header("Cache-Control", "no-store")
        self.write(render_page(
            hub=self.board.hub_prefix, api=url_path_join(prefix, "api/board"), name=viewer.name,
            role="admin" if viewer.admin else "student", refresh_ms=int(self.board.refresh_seconds * 1000),
            source=self.board.state.source.description, xsrf=_text(self.xsrf_token),
        ))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GPUBoard(Application):
    name = "rgs-gpu-board"
    description = "The GPU board: every GPU, its utilisation and who holds it (a JupyterHub service)."

    utilisation_file = Unicode(
        os.environ.get(FILE_ENV, ""),
        help=f"""JSON file with (simulated) utilisation figures instead of NVML.

        Empty: NVML on this host. Also read from ${FILE_ENV}. Figures from a file are shown as
        simulated unless the file says "simulated": false (e.g. a Slurm node's exporter).
        Example: --GPUBoard.utilisation_file=/run/rgs/gpu-utilisation.json
        """,
    ).tag(config=True)

    idle_threshold = Float(
        10.0,
        help="""Utilisation (percent) under which a GPU counts as idle.

        Example: --GPUBoard.idle_threshold=5
        """,
    ).tag(config=True)

    idle_window = Float(
        1800.0,
        help="""Seconds a server's GPUs must all stay under idle_threshold before the culler stops it.

        Example: --GPUBoard.idle_window=3600
        """,
    ).tag(config=True)

    gpu_lease = Float(
        0.0,
        help="""Maximum lease of exclusive GPUs, in seconds from the server's start; 0: none.

        A server holding GPUs is stopped when its lease ends, busy or not. Shown to the student
        on the board (when it ends) and, with culling.announcement(), on the hub's pages.
        Example: --GPUBoard.gpu_lease=86400
        """,
    ).tag(config=True)

    sample_interval = Float(
        10.0,
        help="""Seconds between two utilisation samples.

        Example: --GPUBoard.sample_interval=5
        """,
    ).tag(config=True)

    history_span = Float(
        3600.0,
        help="""Seconds of utilisation history kept (and plotted); at least idle_window.

        Example: --GPUBoard.history_span=7200
        """,
    ).tag(config=True)

    refresh_seconds = Float(
        10.0,
        help="""How often the page refreshes its figures, without reloading.

        Example: --GPUBoard.refresh_seconds=5
        """,
    ).tag(config=True)

    aliases = {"utilisation-file": "GPUBoard.utilisation_file"}

    def policy(self) -> Policy:
        return Policy(self.idle_threshold, self.idle_window, self.gpu_lease)

    def model_for(self, viewer: Viewer, found: dict) -> dict:
        self.state.add_job_figures(found.get("holders", []))
        model = board_model(
            viewer, {**self.state.readings, **self.state.job_readings}, found.get("inventory", []),
            found.get("holders", []),
            self.state.history, self.policy(), time.time(), self.history_span,
        )
        model["simulated"] = bool(self.state.source.simulated) or self.state.job_simulated
        model["source"] = self.state.source.description + (
            "; Slurm jobs' nodes (their reports)" if self.state.job_readings else "")
        model["source_error"] = self.state.error
        return model

    async def sample(self):
        """This host's GPUs, then the figures Slurm jobs' nodes reported (through the hub)."""
        await self.state.sample()
        try:
            found = await fetch_holders(self.api_url, self.api_token)
        except HoldersUnavailable as e:
            self.log.warning("%s", e)
            return
        self.state.add_job_figures(found.get("holders", []))

    def initialize(self, argv=None):
        super().initialize(argv)
        self.api_url = os.environ["JUPYTERHUB_API_URL"]
        self.api_token = os.environ["JUPYTERHUB_API_TOKEN"]
        self.prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/gpu-board/")
        self.hub_prefix = url_path_join(os.environ.get("JUPYTERHUB_BASE_URL", "/"), "hub/")
        self.state = BoardState(source_from_env(self.utilisation_file),
                                max(self.history_span, self.idle_window))

    def make_app(self) -> web.Application:
        p = self.prefix
        return web.Application(
            [
                (p, PageHandler),
                (url_path_join(p, "api/board"), BoardAPI),
                (url_path_join(p, r"api/users/([^/]+)/servers"), ServersAPI),
                (url_path_join(p, "oauth_callback"), HubOAuthCallbackHandler),
            ],
            board=self, cookie_secret=os.urandom(32), xsrf_cookies=False,
        )

    def start(self):
        url = os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")
        host, _, port = url.split("://", 1)[1].split("/", 1)[0].rpartition(":")
        self.make_app().listen(int(port), address=host)
        loop = IOLoop.current()
        loop.add_callback(self.sample)
        PeriodicCallback(self.sample, 1000 * self.sample_interval).start()
        self.log.info("GPU board on %s%s, figures from %s", url, self.prefix, self.state.source.description)
        try:
            loop.start()
        except KeyboardInterrupt:  # the hub stops its services with SIGINT
            self.log.info("GPU board stopped")


main = GPUBoard.launch_instance
