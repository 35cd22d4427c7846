"""The hub's API route where a job's node side reports its server: ``POST /hub/api/rootless-gpu-slurm/report``.

Authenticated with the server's own token (``JUPYTERHUB_API_TOKEN``, which only the job has):
the report may only speak for that one server of the token's user, and carries nothing but a
port (or a failure text), and later the job's GPU utilisation (:mod:`.figures`). Where the server runs is Slurm's word (the job's node), never the
report's. Add it to the hub with::

    from rootless_gpu_spawner.slurm.report import REPORT_HANDLER
    c.JupyterHub.extra_handlers = [REPORT_HANDLER]
"""

from __future__ import annotations

import hmac
import json

from jupyterhub.apihandlers.base import APIHandler
from tornado import web

from .figures import ReportTooSoon

ROUTE = r"/api/rootless-gpu-slurm/report"
MAX_BODY = 16384


class ReportHandler(APIHandler):
    async def post(self):
        token = self.get_auth_token() or ""
        user = self.current_user
        if not token or user is None or getattr(user, "kind", "user") != "user":
            raise web.HTTPError(403, "a server's own token is needed")
        if len(self.request.body) > MAX_BODY:
            raise web.HTTPError(413, "report too large")
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "report must be JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, "report must be a JSON object")
        server_name = body.get("server_name", "")
        if not isinstance(server_name, str):
            raise web.HTTPError(400, "server_name must be a string")
        spawner = user.spawners.get(server_name) if server_name in user.orm_spawners else None
        api_token = getattr(spawner, "api_token", "") or ""
        if spawner is None or not hasattr(spawner, "node_reported") or not hmac.compare_digest(
            api_token.encode(), token.encode()
        ):
            # Another server's token, an old one, or a server that is not a Slurm job: nothing to say.
            raise web.HTTPError(403, "this token does not belong to that server")
        try:
            spawner.node_reported(body)
        except ReportTooSoon as e:
            raise web.HTTPError(429, str(e)) from None
        except ValueError as e:
            raise web.HTTPError(400, str(e)) from None
        self.set_status(200)
        self.finish({"ok": True})


REPORT_HANDLER = (ROUTE, ReportHandler)
