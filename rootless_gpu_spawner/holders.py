"""Hub-side extension: who holds which GPU, readable with one custom scope and nothing else.

The GPU assignments live in the hub process (:mod:`rootless_gpu_spawner.hub.gpu_alloc`), and the
REST API shows a server's spawner state only to tokens with ``admin:server_state`` — which
also exposes (and, by its definition, writes) every other field of that state: accounts,
daemon sockets, ports.  This handler answers one question, with one scope::

    GET /hub/api/rgs/gpu-holders     (scope: custom:rgs:gpu-holders:read)
    {"inventory": ["0", "1"], "policy_exclusive": true,
     "holders": [{"user": "alice", "server": "", "gpus": ["0"], "started": "2026-...Z"}]}

Register it in ``jupyterhub_config.py`` (see the example config)::

    from rootless_gpu_spawner import holders
    c.JupyterHub.extra_handlers = holders.extra_handlers()
    c.JupyterHub.custom_scopes = holders.custom_scopes()
"""

from __future__ import annotations

import json

from jupyterhub.apihandlers.base import APIHandler
from tornado import web

from .hub import gpu_alloc

SCOPE = "custom:rgs:gpu-holders:read"
PATH = r"/api/rgs/gpu-holders"


def custom_scopes() -> dict:
    return {SCOPE: {"description": "Read which server holds which GPU (names, GPU ids, start times)."}}


def extra_handlers() -> list:
    return [(PATH, GPUHoldersHandler)]


def holders_model(snapshot: dict, started_of) -> list[dict]:
    """Allocator snapshot ``{(user, server): ids}`` -> sorted rows; ``started_of(user, server)``."""
    rows = [
        {"user": user, "server": server, "gpus": list(ids), "started": started_of(user, server)}
        for (user, server), ids in snapshot.items() if ids
    ]
    return sorted(rows, key=lambda r: (r["user"], r["server"]))


class GPUHoldersHandler(APIHandler):
    def get(self):
        # Checked here rather than with @needs_scope: custom scopes are registered when the
        # hub loads its config, after this module may have been imported.
        if SCOPE not in self.expanded_scopes:
            raise web.HTTPError(403, f"this needs the scope {SCOPE}")
        allocator = gpu_alloc.existing_allocator()
        snapshot = allocator.snapshot() if allocator else {}
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps({
            "inventory": list(allocator.inventory or []) if allocator else [],
            "policy_exclusive": allocator is not None,
            "holders": holders_model(snapshot, self._started) + self._job_holders(),
        }))

    def _job_holders(self) -> list[dict]:
        """Servers whose GPUs another ledger holds (RootlessGPUSlurmSpawner: Slurm's), by duck typing."""
        rows = []
        for user in list(self.users.values()):
            for server, spawner in list(getattr(user, "spawners", {}).items()):
                holder = getattr(spawner, "gpu_holder", None)
                row = holder() if callable(holder) else None
                if row:
                    rows.append({"user": user.name, "server": server, **row,
                                 "started": self._started(user.name, server)})
        return sorted(rows, key=lambda r: (r["user"], r["server"]))

    def _started(self, user: str, server: str):
        orm_user = self.find_user(user)
        spawner = orm_user.orm_spawners.get(server) if orm_user is not None else None
        started = getattr(spawner, "started", None)
        return started.isoformat() + "Z" if started is not None else None
