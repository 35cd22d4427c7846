"""What the hub takes from a daemon's answers, checked field by field (pure functions).

A student's daemon may answer anything: wrong types, missing keys, huge
numbers, strings with escape sequences.  The hub reads daemon answers only
through these functions; each returns plain checked values or raises
:class:`~rootless_gpu_spawner.errors.UnusableAnswer` saying what was
wrong.  None of their results is ever used as a host path, a pattern, or a
port to route to (the published port is *compared* with the hub's own choice).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import UnusableAnswer

_CONTAINER_ID = re.compile(r"^[0-9a-f]{12,64}$")
MAX_COMMAND_ITEMS = 256
MAX_TEXT = 64 * 1024


def _dict(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise UnusableAnswer(f"{what} is {type(value).__name__}, not an object")
    return value


def _optional_dict(parent: dict, key: str, what: str) -> dict:
    value = parent.get(key)
    return {} if value is None else _dict(value, what)


def _text(value, what: str, default: str = "") -> str:
    if value is None:
        return default
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise UnusableAnswer(f"{what} is not a short string")
    return value


def _str_list(value, what: str, limit: int = MAX_COMMAND_ITEMS) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [_text(value, what)]
    if not isinstance(value, list) or len(value) > limit:
        raise UnusableAnswer(f"{what} is not a list of strings")
    return [_text(item, what) for item in value]


@dataclass(frozen=True)
class DaemonInfo:
    """The parts of ``GET /info`` the hub uses."""

    rootless: bool
    cdi_enabled: bool  # only a yes/no: the dirs the daemon names are never used


def daemon_info(info) -> DaemonInfo:
    """``docker info``, checked: ``SecurityOptions`` a list of strings, ``CDISpecDirs`` a list."""
    data = _dict(info, "/info")
    options = _str_list(data.get("SecurityOptions"), "/info SecurityOptions", 64)
    dirs = data.get("CDISpecDirs")
    if dirs is not None and not isinstance(dirs, list):
        raise UnusableAnswer("/info CDISpecDirs is not a list")
    return DaemonInfo(
        rootless=any("name=rootless" in option.split(",") for option in options),
        cdi_enabled=bool(dirs),
    )


def is_rootless(info) -> bool:
    """``docker info`` lists ``name=rootless`` among its security options.

    The one test of "this is not the rootful daemon", for the admin CLI's
    checks: an answer of the wrong shape is not rootless (the hub refuses it
    as unusable through :func:`daemon_info`).
    """
    try:
        return daemon_info(info).rootless
    except UnusableAnswer:
        return False


def container_id(answer) -> str:
    """The id from ``POST /containers/create``."""
    ident = _dict(answer, "the create answer").get("Id")
    if not isinstance(ident, str) or not _CONTAINER_ID.match(ident):
        raise UnusableAnswer("the create answer has no valid container Id")
    return ident


def image_command(answer) -> list[str]:
    """The image's ``Cmd`` from ``GET /images/NAME/json`` (empty when it has none)."""
    config = _optional_dict(_dict(answer, "the image inspect"), "Config", "image Config")
    return _str_list(config.get("Cmd"), "image Cmd")


def image_entrypoint(answer) -> list[str]:
    config = _optional_dict(_dict(answer, "the image inspect"), "Config", "image Config")
    return _str_list(config.get("Entrypoint"), "image Entrypoint")


@dataclass(frozen=True)
class ContainerView:
    """The parts of ``GET /containers/ID/json`` the hub uses."""

    id: str
    running: bool
    exit_code: int
    error: str
    finished_at: str
    labels: dict
    env: list
    published: tuple  # ((host_ip, host_port), ...) for the server's port


def container_view(answer, container_port: int) -> ContainerView:
    data = _dict(answer, "the container inspect")
    ident = data.get("Id")
    if not isinstance(ident, str) or not _CONTAINER_ID.match(ident):
        raise UnusableAnswer("the container inspect has no valid Id")
    state = _optional_dict(data, "State", "container State")
    running = state.get("Running", False)
    exit_code = state.get("ExitCode", 0)
    if not isinstance(running, bool) or isinstance(exit_code, bool) or not isinstance(exit_code, int):
        raise UnusableAnswer("container State has wrong types")
    config = _optional_dict(data, "Config", "container Config")
    labels = _optional_dict(config, "Labels", "container Labels")
    return ContainerView(
        id=ident,
        running=running,
        exit_code=max(-(2**31), min(exit_code, 2**31)),
        error=_text(state.get("Error"), "container State Error"),
        finished_at=_text(state.get("FinishedAt"), "container State FinishedAt"),
        labels={str(k): v for k, v in labels.items() if isinstance(v, str)},
        env=_str_list(config.get("Env"), "container Env", 4096),
        published=_published(data, container_port),
    )


def _published(data: dict, container_port: int) -> tuple:
    settings = _optional_dict(data, "NetworkSettings", "container NetworkSettings")
    ports = _optional_dict(settings, "Ports", "container Ports")
    bindings = ports.get(f"{container_port}/tcp")
    if bindings is None:
        return ()
    if not isinstance(bindings, list) or len(bindings) > 16:
        raise UnusableAnswer("container port bindings are not a short list")
    out = []
    for binding in bindings:
        binding = _dict(binding, "a port binding")
        out.append((_text(binding.get("HostIp"), "HostIp"), _text(binding.get("HostPort"), "HostPort")))
    return tuple(out)


def env_value(env: list, name: str) -> str | None:
    prefix = name + "="
    for line in env:
        if line.startswith(prefix):
            return line[len(prefix):]
    return None
