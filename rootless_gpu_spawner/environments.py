"""Hub-side extension: a student saves their running server as an image ("save my environment").

A hub page and a JSON API, both acting on the logged-in student's own servers only::

    GET  /hub/environments                 the page: running servers, "Save as…", own images
    POST /hub/environments                 the page's form (name, server, overwrite; XSRF checked)
    GET  /hub/api/rgs/environments         {"servers": [...], "images": [...], "note": ""}
    POST /hub/api/rgs/environments         {"name": "myenv:v1", "server": "", "overwrite": false}
                                           -> 201 {"image": "myenv:v1", "id": "sha256:…", ...}

There is no user in the path: the handler takes the spawner of the user the cookie or token
belongs to, and only with that user's own ``servers`` scope, so nobody — an admin included —
saves into another student's daemon (an admin can stop a student's server, which is enough to
help; writing images into someone's daemon is not a help an admin needs to give).  The commit
itself is :func:`rootless_gpu_spawner.hub.save_env.save_environment`, on the student's daemon.

Register it in ``jupyterhub_config.py`` (the example config does)::

    from rootless_gpu_spawner import environments
    c.JupyterHub.extra_handlers = environments.extra_handlers()
    c.JupyterHub.template_paths = environments.template_paths()
"""

from __future__ import annotations

import json
from pathlib import Path

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.handlers.base import BaseHandler
from tornado import web

from .hub.own_images import format_age, format_size
from .hub.save_env import SaveRefused, save_environment
from .safetext import printable

PAGE_PATH = r"/environments"
API_PATH = r"/api/rgs/environments"
TEMPLATES = str(Path(__file__).with_name("templates"))
MAX_BODY = 4096


def extra_handlers() -> list:
    return [(PAGE_PATH, EnvironmentsPage), (API_PATH, EnvironmentsAPI)]


def template_paths() -> list:
    """The environments page and the home page with its "Save environment" button."""
    return [TEMPLATES]


class _Environments:
    """What the page and the API share: the student's own spawners, never another's."""

    def own_user(self):
        user = self.current_user
        if user is None or getattr(user, "kind", "user") != "user":
            raise web.HTTPError(403, "only a logged-in student can save their own environment")
        return user

    def may_save(self, user, server: str) -> bool:
        scopes = self.expanded_scopes
        return bool({"servers", f"servers!user={user.name}", f"servers!server={user.name}/{server}"} & scopes)

    def spawner_of(self, user, server: str):
        if not isinstance(server, str) or len(server) > 255:
            raise SaveRefused(400, "'server' must be the name of one of your servers ('' for the default one)")
        if server and server not in user.orm_spawners:
            raise SaveRefused(404, f"you have no server named {printable(server, 60)!r}")
        spawner = user.spawners[server]
        if not hasattr(spawner, "own_image_policy"):
            raise SaveRefused(400, "saving an environment needs RootlessGPUSpawner")
        return spawner

    async def save(self, user, name, server: str, overwrite: bool):
        if not self.may_save(user, server):
            raise SaveRefused(403, "this token may not act on your servers (it needs the 'servers' scope)")
        spawner = self.spawner_of(user, server)
        return await save_environment(spawner, name, bool(overwrite))

    async def overview(self, user) -> dict:
        servers = []
        for name, orm_spawner in sorted(user.orm_spawners.items()):
            spawner = user.spawners[name]
            servers.append({"name": name, "ready": bool(spawner.ready), "image": printable(spawner.image, 200)})
        images, note = [], ""
        spawner = user.spawners[""]
        if hasattr(spawner, "list_own_images"):
            own, note = await spawner.list_own_images()
            images = [{"image": i.name, "size": i.size, "size_text": format_size(i.size),
                       "created": i.created, "age": format_age(i.created)} for i in own]
        return {"servers": servers, "images": images, "note": note}


class EnvironmentsPage(_Environments, BaseHandler):
    @web.authenticated
    async def get(self):
        await self._render(self.own_user())

    @web.authenticated
    async def post(self):
        user = self.own_user()
        name = self.get_body_argument("name", "").strip()
        server = self.get_body_argument("server", "")
        overwrite = self.get_body_argument("overwrite", "") == "yes"
        try:
            saved = await self.save(user, name, server, overwrite)
        except SaveRefused as e:
            self.set_status(e.status)
            await self._render(user, error=e.message, name=name)
            return
        await self._render(user, saved=saved.model())

    async def _render(self, user, error: str = "", saved=None, name: str = ""):
        model = await self.overview(user)
        html = await self.render_template(
            "environments.html", env=model, error=error, saved=saved, entered=name[:255],
        )
        self.finish(html)


class EnvironmentsAPI(_Environments, APIHandler):
    async def get(self):
        user = self.own_user()
        if not self.may_save(user, ""):
            raise web.HTTPError(403, "this token may not read your servers (it needs the 'servers' scope)")
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(await self.overview(user)))

    async def post(self):
        user = self.own_user()
        if len(self.request.body) > MAX_BODY:
            raise web.HTTPError(413, "the request body is too large")
        body = self.get_json_body() or {}
        if not isinstance(body, dict) or set(body) - {"name", "server", "overwrite"}:
            raise web.HTTPError(400, 'send {"name": "myenv:v1", "server": "", "overwrite": false}')
        if not isinstance(body.get("overwrite", False), bool):
            raise web.HTTPError(400, "'overwrite' must be true or false")
        try:
            saved = await self.save(user, body.get("name"), body.get("server", ""), body.get("overwrite", False))
        except SaveRefused as e:
            raise _http_error(e) from None
        self.set_status(201)
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(saved.model()))


def _http_error(refusal: SaveRefused) -> web.HTTPError:
    error = web.HTTPError(refusal.status, refusal.message.replace("%", "%%"))
    error.jupyterhub_message = refusal.message
    return error
