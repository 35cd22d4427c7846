"""How to start an image as a JupyterHub server: pure decisions from its inspect data and probe.

Students bring images that were not built for this hub: Jupyter Docker Stacks (their start
scripts switch to the user ``jovyan``, a subordinate uid on the host), framework images with a
Python but no Jupyter (``pytorch/pytorch``, CUDA runtime images, NGC), and their own
``docker commit`` environments whose command is ``/bin/bash``.  :func:`plan_launch` turns what
the daemon says about an image (checked by :func:`image_facts`) and what the probe container
found inside it (:func:`probe_facts`) into a :class:`LaunchPlan`, or an :class:`ImageProblem`
that says what is wrong with the image and what to do.  Nothing here talks to a daemon.
"""

from __future__ import annotations

import json
import platform
import posixpath
from dataclasses import dataclass, field

from ..answers import _dict, _optional_dict, _str_list, _text
from ..errors import UnusableAnswer
from ..safetext import printable

#: The oldest Python a derived image is built for: JupyterLab 4 and JupyterHub 5+ need 3.9
#: (3.8 is past its end of life and current wheels are no longer published for it).
MIN_PYTHON = (3, 9)
#: Commands that do not serve HTTP: the server is started by the hub instead.
NOT_SERVERS = frozenset({
    "bash", "sh", "dash", "zsh", "ash", "fish", "ksh", "tcsh", "csh",
    "python", "python2", "python3", "ipython", "ipython3", "sleep", "true", "cat",
})
#: What identifies the Jupyter Docker Stacks layout (their ENTRYPOINT and CMDs).
STACKS_SCRIPTS = frozenset({"start.sh", "start-notebook.py", "start-notebook.sh", "start-singleuser.py",
                            "start-singleuser.sh"})
SINGLEUSER = "jupyterhub-singleuser"
#: The launcher a derived image carries (written by :mod:`.derived`).
DERIVED_LAUNCHER = "/usr/local/bin/rgs-singleuser"
_ARCH_ALIASES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
                 "ppc64le": "ppc64le", "s390x": "s390x", "armv7l": "arm", "arm": "arm"}


class ImageProblem(RuntimeError):
    """The image cannot become a server as it is; the message says why and what to do."""

    status = 422


class NoPython(ImageProblem):
    pass


class PythonTooOld(ImageProblem):
    pass


class WrongArchitecture(ImageProblem):
    pass


class IncompatibleJupyterHub(ImageProblem):
    """The image's own jupyterhub-singleuser is a version this hub cannot talk to (item 7)."""


class InstallImpossible(ImageProblem):
    """JupyterLab would have to be installed, and the admin turned that off."""


@dataclass(frozen=True)
class ImageFacts:
    """The parts of ``GET /images/NAME/json`` that decide how the image starts."""

    id: str
    command: list
    entrypoint: list
    env: dict
    architecture: str
    user: str
    labels: dict


def image_facts(answer) -> ImageFacts:
    data = _dict(answer, "the image inspect")
    config = _optional_dict(data, "Config", "image Config")
    env = {}
    for line in _str_list(config.get("Env"), "image Env", 4096):
        key, _, value = line.partition("=")
        env[key] = value
    labels = _optional_dict(config, "Labels", "image Labels")
    ident = _text(data.get("Id"), "image Id")
    if not ident.startswith("sha256:") or len(ident) != 71:
        raise UnusableAnswer("the image inspect has no valid Id")
    return ImageFacts(
        id=ident,
        command=_str_list(config.get("Cmd"), "image Cmd"),
        entrypoint=_str_list(config.get("Entrypoint"), "image Entrypoint"),
        env=env,
        architecture=_text(data.get("Architecture"), "image Architecture"),
        user=_text(config.get("User"), "image User"),
        labels={str(k): v for k, v in labels.items() if isinstance(v, str)},
    )


@dataclass(frozen=True)
class ProbeFacts:
    """What the probe container found: a Python, its version, a jupyterhub-singleuser."""

    python: str = ""  # absolute path, "" when none was found
    version: tuple = ()
    prefix: str = ""
    jupyterhub: str = ""  # the version its ``import jupyterhub`` gives, "" when none
    singleuser: str = ""  # the path of jupyterhub-singleuser on the image's PATH, "" when none
    answered: bool = False  # the probe printed its line (False: it said nothing the hub can read)


PROBE_MARK = "RGS-PROBE "


def probe_facts(output: str) -> ProbeFacts:
    """The probe's last ``RGS-PROBE {json}`` line, checked (the output is the student's word)."""
    lines = [line for line in output.splitlines() if line.startswith(PROBE_MARK)]
    if not lines:
        return ProbeFacts()
    try:
        data = json.loads(lines[-1][len(PROBE_MARK):])
    except ValueError:
        return ProbeFacts()
    if not isinstance(data, dict):
        return ProbeFacts()
    if not data:
        return ProbeFacts(answered=True)  # the probe's "no Python found"
    version = data.get("version")
    if not (isinstance(version, list) and len(version) == 3 and all(isinstance(v, int) for v in version)):
        version = []
    return ProbeFacts(
        python=_short(data.get("python")),
        version=tuple(version),
        prefix=_short(data.get("prefix")),
        jupyterhub=_short(data.get("jupyterhub"), 40),
        singleuser=_short(data.get("singleuser")),
        answered=True,
    )


def _short(value, limit: int = 400) -> str:
    return value if isinstance(value, str) and len(value) <= limit else ""


@dataclass(frozen=True)
class LaunchPlan:
    """How to create the server's container from an image."""

    command: list | None  # None: the image's own command is a server
    env: dict = field(default_factory=dict)  # added to the container's environment
    derive: bool = False  # JupyterHub must be installed first (a derived image)
    docker_stacks: bool = False
    python: str = ""  # the image's Python (for a derived image)


def host_architecture() -> str:
    machine = platform.machine().lower()
    return _ARCH_ALIASES.get(machine, machine)


def check_architecture(facts: ImageFacts, name: str, host_arch: str | None = None) -> None:
    host_arch = host_arch or host_architecture()
    image_arch = _ARCH_ALIASES.get(facts.architecture.lower(), facts.architecture.lower())
    if image_arch and image_arch != host_arch:
        raise WrongArchitecture(
            f"image {name} is built for {printable(image_arch, 20)}, but this server runs {host_arch}: "
            f"it cannot start here. Pull or build the {host_arch} variant "
            f"(e.g. 'docker pull --platform linux/{host_arch} {name}')."
        )


def is_docker_stacks(facts: ImageFacts) -> bool:
    words = [posixpath.basename(w) for w in facts.entrypoint + facts.command[:1]]
    return any(w in STACKS_SCRIPTS for w in words) and "NB_USER" in facts.env


def serves(facts: ImageFacts) -> bool:
    """The image's command (after its entrypoint's wrappers) may start a server."""
    command = facts.command
    if not command:
        # Docker Stacks' start.sh runs bash without a command; other entrypoints are the command.
        return bool(facts.entrypoint) and not is_docker_stacks(facts) and _word(facts.entrypoint) not in NOT_SERVERS
    return _word(command) not in NOT_SERVERS


def _word(command: list) -> str:
    first = command[0].strip() if command else ""
    return posixpath.basename(first.split()[0]) if first.split() else ""


def check_python(probe: ProbeFacts, name: str) -> None:
    if not probe.python:
        raise NoPython(
            f"image {name} has no Python (looked for python3 and python on its PATH and in "
            "/opt/conda/bin, /usr/local/bin, /usr/bin), so JupyterLab cannot run in it. Use an image "
            "with Python 3.9 or newer (e.g. pytorch/pytorch, a CUDA 'runtime' image with python3 "
            "installed, a Jupyter Docker Stacks image), or install python3 in yours and commit it."
        )
    if not probe.version or tuple(probe.version) < MIN_PYTHON:
        found = ".".join(map(str, probe.version)) or "unknown"
        raise PythonTooOld(
            f"image {name} has Python {found} at {printable(probe.python, 120)}; JupyterLab needs Python "
            f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer. Use a newer image, or install a newer Python "
            "in yours (e.g. conda create) and commit it."
        )


def check_jupyterhub(probe: ProbeFacts, hub_version: str, name: str) -> None:
    """An image's own jupyterhub must have the hub's major version (their REST/OAuth contract)."""
    if not probe.jupyterhub:
        return
    theirs, ours = _major(probe.jupyterhub), _major(hub_version)
    if theirs is None or theirs != ours:
        raise IncompatibleJupyterHub(
            f"image {name} has jupyterhub {printable(probe.jupyterhub, 40)}, which this hub "
            f"(JupyterHub {hub_version}) cannot talk to: the single-user server must have the hub's "
            f"major version {ours}. Install 'jupyterhub=={hub_version}' in the image (pip install), "
            "or uninstall jupyterhub from it and the hub installs the right version on the first start."
        )


def _major(version: str) -> int | None:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def plan_launch(facts: ImageFacts, probe: ProbeFacts, *, name: str, hub_version: str,
                stacks_env: dict, may_install: bool) -> LaunchPlan:
    """The plan for this image, or the :class:`ImageProblem` that stops it."""
    check_architecture(facts, name)
    stacks = is_docker_stacks(facts)
    env = dict(stacks_env) if stacks else {}
    if not probe.answered:
        # The probe said nothing readable (its output lost, an odd shell): start the image as
        # before; the start watch reports its last lines if it cannot serve.
        return LaunchPlan(command=None if serves(facts) else [SINGLEUSER], env=env, docker_stacks=stacks)
    has_server = bool(probe.singleuser) and bool(probe.jupyterhub)
    if has_server:
        check_jupyterhub(probe, hub_version, name)
        if serves(facts):
            return LaunchPlan(command=None, env=env, docker_stacks=stacks)
        return LaunchPlan(command=[SINGLEUSER], env=env, docker_stacks=stacks)
    check_python(probe, name)
    if not may_install:
        raise InstallImpossible(
            f"image {name} has no JupyterHub single-user server (jupyterhub-singleuser), and this hub "
            "does not install it (RootlessGPUSpawner.install_jupyter_if_missing is off). Install "
            f"'jupyterhub=={hub_version}' and 'jupyterlab' in the image, or ask the admin."
        )
    return LaunchPlan(command=[DERIVED_LAUNCHER], env=env, derive=True, docker_stacks=stacks,
                      python=probe.python)
