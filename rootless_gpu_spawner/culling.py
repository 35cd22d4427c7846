"""Idle servers give their GPUs back: jupyterhub-idle-culler with a GPU-aware arbiter.

jupyterhub-idle-culler 2.0 calls ``IdleCuller.cull_arbiter_hook(inactive=, inactive_limit=,
server=)`` for every ready server and culls when it returns True (it may be a coroutine).
``server`` is the REST API's server model: no spawner state, so no GPUs.  The hook asks the
GPU board, with the culler's own token (``JUPYTERHUB_API_TOKEN``), for that user's servers:

* a server holding GPUs: culled when the board says so (utilisation under the threshold for
  the window, or the lease ended), whatever its browser activity;
* a server without GPUs: the culler's usual rule, ``inactive >= inactive_limit``;
* the board does not answer: nothing is culled this round (a broken board never stops a
  server that may be training).

The helpers below build the two services and their least-privilege roles, so that the example
configuration and the tests use the same wiring.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from urllib.parse import quote

from . import tether

log = logging.getLogger("rootless_gpu_spawner.culling")

BOARD = "gpu-board"
CULLER = "idle-culler"
BOARD_URL_ENV = "RGS_GPU_BOARD_URL"
CULLER_CONFIG = str(Path(__file__).with_name("idle_culler_config.py"))


class BoardUnavailable(RuntimeError):
    """The GPU board did not answer the culler (down, refused, or garbled)."""


def decide(row: dict | None, inactive_seconds: float, inactive_limit: float) -> bool:
    """Cull or keep: the board's verdict for a GPU server, the activity rule for the others."""
    if row is not None and row.get("gpus"):
        return bool(row.get("cull"))
    return inactive_seconds >= inactive_limit


def split_full_name(server: dict) -> tuple[str, str]:
    """``"alice/"`` -> ("alice", ""); hub user names never contain "/"."""
    user, _, name = server["full_name"].partition("/")
    return user, name


async def board_rows(board_url: str, user: str, token: str) -> dict:
    from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
    url = board_url.rstrip("/") + f"/api/users/{quote(user, safe='')}/servers"
    request = HTTPRequest(url, headers={"Authorization": f"token {token}"}, request_timeout=10)
    try:
        response = await AsyncHTTPClient().fetch(request)
        return json.loads(response.body)["servers"]
    except (HTTPClientError, OSError, ValueError, KeyError, TypeError) as e:
        raise BoardUnavailable(f"the GPU board at {board_url} did not answer: {e}") from None


def gpu_aware_arbiter(board_url: str | None = None, token: str | None = None):
    """The ``cull_arbiter_hook`` (see the module doc). Defaults come from the culler's env."""

    async def arbiter(*, inactive, inactive_limit, server, **kwargs):
        url = board_url or os.environ[BOARD_URL_ENV]
        user, name = split_full_name(server)
        try:
            rows = await board_rows(url, user, token or os.environ["JUPYTERHUB_API_TOKEN"])
        except BoardUnavailable as e:
            log.warning("keeping %s/%s this round: %s", user, name, e)
            return False
        return decide(rows.get(name), inactive.total_seconds(), inactive_limit)

    return arbiter


# ---- wiring for jupyterhub_config.py ---------------------------------------------


def board_service(port: int, *args: str, python: str = sys.executable, environment=None) -> dict:
    """The GPU board as a hub-managed service on 127.0.0.1:port (OAuth: students and admins)."""
    return {
        "name": BOARD, "url": f"http://127.0.0.1:{port}", "display": True,
        "command": tether.command("rootless_gpu_spawner.board", *args, python=python),
        "environment": dict(environment or {}), "oauth_no_confirm": True,
    }


def culler_service(board_port: int, timeout: int = 3600, cull_every: int = 300,
                   *args: str, python: str = sys.executable) -> dict:
    """jupyterhub-idle-culler with the GPU-aware arbiter (``idle_culler_config.py``)."""
    return {
        "name": CULLER,
        "command": tether.command("jupyterhub_idle_culler", f"--timeout={timeout}",
                                  f"--cull-every={cull_every}", f"--config={CULLER_CONFIG}", *args,
                                  python=python),
        "environment": {BOARD_URL_ENV: f"http://127.0.0.1:{board_port}/services/{BOARD}/"},
    }


def roles() -> list[dict]:
    """Least privilege: what each of them needs, nothing more."""
    from .holders import SCOPE
    return [
        # The culler's standard scopes, plus reaching the board for the GPU verdicts.
        {"name": CULLER, "services": [CULLER], "scopes": [
            "list:users", "read:users:activity", "read:servers", "delete:servers",
            f"access:services!service={BOARD}",
        ]},
        # The board reads who holds which GPU (one custom scope), nothing of anyone's state.
        {"name": BOARD, "services": [BOARD], "scopes": [SCOPE]},
        # Every user may open the board (it shows them only what is theirs to see).
        {"name": "user", "scopes": ["self", f"access:services!service={BOARD}"]},
    ]


def kernel_culling_args(idle_timeout: int = 3600, interval: int = 300) -> list[str]:
    """``Spawner.args`` that make each JupyterLab cull its own idle kernels (jupyter-server)."""
    return [
        f"--MappingKernelManager.cull_idle_timeout={idle_timeout}",
        f"--MappingKernelManager.cull_interval={interval}",
        "--MappingKernelManager.cull_connected=True",
    ]


def announcement(window: float, threshold: float, lease: float = 0, board_path: str = f"/services/{BOARD}/") -> str:
    """Text for ``c.JupyterHub.template_vars["announcement"]``: shown on every hub page."""
    text = (f"Fair use of GPUs: a server whose GPUs stay under {threshold:g} % for "
            f"{_duration(window)} is stopped and its GPUs go to the next student")
    if lease:
        text += f"; a server holding GPUs is stopped {_duration(lease)} after it started, busy or not"
    return text + f". See when yours ends on the GPU board: {board_path}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds % 3600 == 0 and seconds >= 3600:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0 and seconds >= 60:
        return f"{seconds // 60} min"
    return f"{seconds} s"
