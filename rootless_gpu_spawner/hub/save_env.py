"""Save my environment: ``docker commit`` of a student's running server, on their own daemon.

The lab how-to's ``docker run -it IMAGE /bin/bash`` + ``docker commit``, done for the running
JupyterLab: the result is an image on the student's own daemon, under a name they chose,
which the spawn form then lists among their own images (:mod:`.own_images`).

The commit goes only through that server's spawner (its DaemonConnection to the student's
daemon); the hub's handler (:mod:`rootless_gpu_spawner.environments`) finds the spawner of
the logged-in student and never another's.  What the daemon answers is hostile input: ids
are checked, messages made printable and cut.

The saved image must not carry what the hub put into the container: ``docker commit``
merges the container's config into the image, so the hub's variables (``JUPYTERHUB_API_TOKEN``
among them) are overridden with empty values, the image's own ``CMD`` is kept (not the
hub's server arguments), and the hub's labels are emptied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from docker.errors import APIError

from ..errors import DaemonError, DeadlineExceeded, SpawnRefused
from ..safetext import printable
from .images import InvalidImageReference, parse_image_reference
from .own_images import OwnImagePolicy, format_size, matches

LABEL_PREFIX = "org.rootless-gpu-spawner"
_IMAGE_ID = re.compile(r"^sha256:[0-9a-f]{64}$")
MAX_ENV = 4096
MAX_MESSAGE = 300


class SaveRefused(Exception):
    """A save that cannot be done, with the HTTP status and a message for the student."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class SavedImage:
    name: str
    id: str
    size: int | None

    def model(self) -> dict:
        return {"image": self.name, "id": self.id, "size": self.size, "size_text": format_size(self.size)}


def check_save_name(name, policy: OwnImagePolicy, admin_images=()) -> tuple[str, str]:
    """(repository, tag) for ``name`` (``myenv`` -> ``myenv``, ``latest``), or SaveRefused(400)."""
    if not isinstance(name, str) or not name:
        raise SaveRefused(400, "give the environment a name, e.g. 'myenv:v1'")
    if not name.isascii() or printable(name, 600) != name or len(name) > 255:
        raise SaveRefused(400, f"{printable(name, 80)!r} is not a valid image name: use lowercase letters, "
                               "digits and . _ - / with an optional :tag, e.g. 'myenv:v1'")
    try:
        ref = parse_image_reference(name)
    except InvalidImageReference as e:
        raise SaveRefused(400, f"{printable(name, 80)!r} is not a valid image name: {e.reason}. "
                               "Example: 'myenv:v1'") from None
    if ref.digest:
        raise SaveRefused(400, "a saved environment is named repository:tag, not by digest")
    if not policy.enabled:
        raise SaveRefused(403, "starting your own images is turned off here (RootlessGPUSpawner.allow_own_images), "
                               "so a saved environment could not be started: ask the admin")
    if not matches(ref.familiar, policy.patterns):
        raise SaveRefused(400, f"{ref.familiar!r} could not be started later: the admin allows own images "
                               f"only with names matching {', '.join(policy.patterns)[:200]}")
    if ref.familiar in set(admin_images):
        raise SaveRefused(400, f"{ref.familiar!r} is one of the lab's images: saving under its name would "
                               "hide the lab's image on your Docker. Choose another name")
    return ref.familiar_repository, ref.tag


def _env_key(line) -> str | None:
    return line.split("=", 1)[0] if isinstance(line, str) and line and not line.startswith("=") else None


def _checked_env(value, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_ENV or not all(isinstance(v, str) for v in value):
        raise SaveRefused(502, f"your Docker daemon gave an unusable {what}: try again, or ask the admin")
    return list(value)


def commit_config(container: dict, image: dict | None, hub_env_keys) -> dict:
    """The ``conf`` for ``POST /commit``: the image's own env and CMD, the hub's variables emptied.

    ``container`` / ``image`` are the inspect answers (hostile: checked here); ``image`` is None
    when the container's image is gone, then only ``hub_env_keys`` (what the hub set) are emptied.
    """
    config = container.get("Config") if isinstance(container, dict) else None
    if not isinstance(config, dict):
        raise SaveRefused(502, "your Docker daemon gave an unusable container inspect: try again")
    container_env = _checked_env(config.get("Env"), "container Env")
    labels = config.get("Labels") if isinstance(config.get("Labels"), dict) else {}
    image_config = image.get("Config") if isinstance(image, dict) else None
    if isinstance(image_config, dict):
        env = _checked_env(image_config.get("Env"), "image Env")
        known = {_env_key(line) for line in env}
        blank = [k for k in dict.fromkeys(map(_env_key, container_env)) if k and k not in known]
        cmd = image_config.get("Cmd")
    else:
        hub = set(hub_env_keys)
        env = [line for line in container_env if _env_key(line) not in hub]
        blank = [k for k in hub if k in {_env_key(line) for line in container_env}]
        cmd = None
    conf = {"Env": env + [f"{key}=" for key in blank]}
    if isinstance(cmd, list) and cmd and all(isinstance(c, str) for c in cmd) and len(cmd) <= 256:
        conf["Cmd"] = cmd
    conf["Labels"] = {str(k): "" for k in labels if isinstance(k, str) and k.startswith(LABEL_PREFIX + ".")}
    return conf


def _image_id(answer) -> str:
    ident = answer.get("Id") if isinstance(answer, dict) else None
    if not isinstance(ident, str) or not _IMAGE_ID.fullmatch(ident):
        raise SaveRefused(502, "your Docker daemon saved the environment but gave no valid image id: "
                               "check 'docker images' and try again")
    return ident


def daemon_refusal(error: APIError, account: str) -> SaveRefused:
    """What the daemon said, for the student: disk full told apart, the rest made printable."""
    said = printable(getattr(error, "explanation", None) or error, MAX_MESSAGE)
    if "no space left on device" in said.lower():
        return SaveRefused(507, f"{account}'s disk (or the Docker data directory) is full, so the environment "
                                "could not be saved. Delete images you no longer need ('docker image prune', "
                                f"'docker rmi NAME') and try again. The daemon said: {said}")
    return SaveRefused(502, f"{account}'s Docker daemon refused to save the environment: {said}")


async def save_environment(spawner, name: str, overwrite: bool = False) -> SavedImage:
    """Commit ``spawner``'s running container as ``name`` on the student's own daemon."""
    account = spawner.account.name if spawner.account else spawner.user.name
    repository, tag = check_save_name(name, spawner.own_image_policy(), spawner.admin_image_names())
    full = f"{repository}:{tag}"
    if not (spawner.active and spawner.ready):
        raise SaveRefused(409, "your server is not running: start it, install what you need, then save it")
    try:
        if spawner._connection is None:
            await spawner.connect(spawner.docker_host or None, check_rootless=False)
        obj = await spawner.get_object()
        if obj is None or not obj.running:
            raise SaveRefused(409, "your server's container is not running any more: start your server again")
        if await _image_exists(spawner, full) and not overwrite:
            raise SaveRefused(409, f"an image named {full!r} is already on your Docker: choose another name, "
                                   "or save again with 'overwrite' to replace it (the old one stays as <none>)")
        container = await spawner.docker("inspect_container", obj.id)
        image = await _image_of(spawner, container)
        conf = commit_config(container, image, spawner.hub_env_keys() if image is None else ())
        answer = await spawner._connection.run(
            _commit, obj.id, repository, tag, conf, seconds=spawner.environment_save_timeout
        )
        ident = _image_id(answer)
        saved = await spawner.docker("inspect_image", ident)
    except DeadlineExceeded:
        raise SaveRefused(504, f"saving took longer than {spawner.environment_save_timeout:g} s "
                               "(RootlessGPUSpawner.environment_save_timeout) and was given up: an environment "
                               "this large may need more time, ask the admin") from None
    except DaemonError as e:
        raise SaveRefused(e.status, printable(e, MAX_MESSAGE)) from None
    except SpawnRefused as e:
        raise SaveRefused(e.status_code if e.status_code < 500 else 502, printable(e, MAX_MESSAGE)) from None
    except APIError as e:
        raise daemon_refusal(e, account) from None
    size = saved.get("Size") if isinstance(saved, dict) else None
    size = size if isinstance(size, int) and not isinstance(size, bool) and 0 <= size < 2**50 else None
    spawner.log.info("saved the environment of %s as %s (%s) on %s's daemon", spawner._log_name, full, ident[:19], account)
    return SavedImage(full, ident, size)


def _commit(client, container_id, repository, tag, conf):
    return client.commit(container_id, repository=repository, tag=tag, conf=conf, pause=True,
                         message="saved from JupyterHub (rootless-gpu-spawner)")


async def _image_exists(spawner, name: str) -> bool:
    try:
        await spawner.docker("inspect_image", name)
    except APIError as e:
        if e.status_code == 404:
            return False
        raise
    return True


async def _image_of(spawner, container: dict):
    ident = container.get("Image") if isinstance(container, dict) else None
    if not isinstance(ident, str) or not _IMAGE_ID.fullmatch(ident):
        return None
    try:
        return await spawner.docker("inspect_image", ident)
    except APIError as e:
        if e.status_code == 404:
            return None  # the image it started from was removed meanwhile
        raise
