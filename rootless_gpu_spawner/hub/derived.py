"""The derived image: JupyterHub and JupyterLab added to an image that has Python but no Jupyter.

Built on the student's own daemon (legacy builder through the Engine API; the build context is
a tar made in memory, nothing on the host's disk), ``FROM`` the exact base image id, tagged by
(base image id, hub version) and reused on later spawns.  The packages go into the image's OWN
Python environment, so a kernel imports the image's torch:

* ``python -m pip`` when the image's Python has pip (conda, venvs, pytorch/pytorch, NGC);
* ``python -m ensurepip`` first when pip is missing but ensurepip works;
* else (Debian/Ubuntu's system Python: no pip, ensurepip disabled) a venv at
  ``/opt/rgs-jupyter`` made with ``--system-site-packages``: its kernel runs the image's own
  interpreter and sees every package the image has (``sys.base_prefix`` is the image's prefix);
  nothing is installed into the distribution's own ``/usr`` (which its package manager owns).

pip runs with ``--retries 1 --timeout 15`` so an unreachable index fails in seconds, not minutes.
"""

from __future__ import annotations

import io
import re
import tarfile
import time
from urllib.parse import urlsplit

from ..safetext import printable, printable_lines
from .launch import DERIVED_LAUNCHER, ImageProblem
from .pulls import stream_messages

LABEL = "org.rootless-gpu-spawner.derived"
REPOSITORY = "rgs-jupyter"
MAX_BUILD_LINES = 200  # what is kept of the build's output for an error message
PROGRESS_MESSAGE = "preparing your image: installing JupyterLab (first start only)"
_VERSION = re.compile(r"^[0-9A-Za-z.+-]{1,40}$")

INSTALL_SCRIPT = r"""#!/bin/sh
set -e
PY="$1"; INDEX="$2"; TRUSTED="$3"; shift 3
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
if "$PY" -m pip --version >/dev/null 2>&1; then
  echo "rgs: installing into $PY's own environment (pip)"
elif "$PY" -m ensurepip --default-pip >/dev/null 2>&1 && "$PY" -m pip --version >/dev/null 2>&1; then
  echo "rgs: installing into $PY's own environment (ensurepip)"
elif "$PY" -m venv --system-site-packages /opt/rgs-jupyter; then
  echo "rgs: $PY has no pip: venv /opt/rgs-jupyter over the image's own packages"
  PY=/opt/rgs-jupyter/bin/python
else
  echo "rgs-error: $PY has neither pip nor venv: install pip (e.g. apt-get install python3-pip) in the image" >&2
  exit 3
fi
set -- --index-url "$INDEX" --retries 1 --timeout 15 --prefer-binary --progress-bar off "$@"
[ -z "$TRUSTED" ] || set -- --trusted-host "$TRUSTED" "$@"
"$PY" -m pip install "$@"
mkdir -p "$(dirname LAUNCHER)"
printf '#!/bin/sh\nexec %s -m jupyterhub.singleuser "$@"\n' "$PY" > LAUNCHER
chmod 755 LAUNCHER
""".replace("LAUNCHER", DERIVED_LAUNCHER)


class BuildFailed(ImageProblem):
    """pip (or the build) failed: the index unreachable, a package missing, a full disk."""

    status = 502

    def __init__(self, reason: str, lines: list | None = None):
        super().__init__(reason)
        self.reason, self.lines = reason, list(lines or [])


def derived_tag(base_id: str, hub_version: str) -> str:
    """``rgs-jupyter/<24 hex of the base id>:jh-<hub version>``."""
    digest = base_id.split(":", 1)[-1]
    if not re.fullmatch(r"[0-9a-f]{64}", digest) or not _VERSION.match(hub_version):
        raise ValueError(f"cannot name a derived image for {base_id!r}, hub {hub_version!r}")
    return f"{REPOSITORY}/{digest[:24]}:jh-{hub_version.replace('+', '-')}"


def trusted_host(index_url: str) -> str:
    """pip refuses a plain-http index unless its host is trusted: the lab's own index is."""
    parts = urlsplit(index_url)
    return (parts.hostname or "") if parts.scheme == "http" else ""


def dockerfile(base_id: str, python: str, index_url: str, hub_version: str, packages: list,
               original_user: str) -> str:
    args = [python, index_url, trusted_host(index_url), f"jupyterhub=={hub_version}", *packages]
    quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in args)
    lines = [
        f"FROM {base_id}",
        "USER 0",
        "COPY rgs-install.sh /tmp/rgs-install.sh",
        f"RUN sh /tmp/rgs-install.sh {quoted} && rm -f /tmp/rgs-install.sh",
        f'LABEL {LABEL}="1" {LABEL}.from="{base_id}" {LABEL}.hub-version="{hub_version}"',
    ]
    if original_user and re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", original_user):
        lines.append(f"USER {original_user}")
    return "\n".join(lines) + "\n"


def build_context(dockerfile_text: str) -> bytes:
    """The build context as an in-memory tar: the Dockerfile and the install script."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text, mode in (("Dockerfile", dockerfile_text, 0o644), ("rgs-install.sh", INSTALL_SCRIPT, 0o755)):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def run_build(client, context: bytes, tag: str, on_line=None) -> list:
    """POST /build (legacy builder) and read its stream to the end, on the daemon's thread.

    Returns the kept output lines; raises :class:`BuildFailed` with them when the build fails.
    """
    params = {"t": tag, "rm": "1", "forcerm": "1", "pull": "0", "nocache": "0"}
    response = client._post(
        client._url("/build"), params=params, data=context, stream=True,
        headers={"Content-Type": "application/x-tar"},
    )
    kept: list[str] = []
    try:
        client._raise_for_status(response)
        for chunk in stream_messages(response.raw.read1):
            error = chunk.get("error") or chunk.get("errorDetail")
            text = chunk.get("stream") if isinstance(chunk.get("stream"), str) else ""
            for line in text.splitlines():
                if line.strip():
                    kept.append(line)
                    if on_line is not None:
                        on_line(line)
            del kept[:-MAX_BUILD_LINES]
            if error:
                if isinstance(error, dict):
                    error = error.get("message", "")
                raise BuildFailed(printable(error, 300), kept)
    finally:
        response.close()
    return kept


def explain_failure(name: str, index_url: str, reason: str, lines: list) -> str:
    tail = "\n".join(printable_lines([l for l in lines if not l.startswith("Step ")], 12, 240))
    return (
        f"image {name} has no JupyterHub, and installing it on its first start failed: "
        f"{printable(reason, 300)}. The lab's package index is {index_url} "
        "(RootlessGPUSpawner.lab_pypi_index): if it cannot be reached from your Docker daemon, ask "
        f"the admin; or install jupyterhub and jupyterlab in your image yourself.\nLast lines:\n{tail}"
    )


def stale(images: list, hub_version: str, present_ids: set) -> list:
    """Derived images to remove: built for another hub version, or whose base is gone."""
    out = []
    for image in images:
        labels = (image.get("Labels") or {}) if isinstance(image, dict) else {}
        if not isinstance(labels, dict) or labels.get(LABEL) != "1":
            continue
        ident = image.get("Id")
        if not isinstance(ident, str):
            continue
        if labels.get(f"{LABEL}.hub-version") != hub_version or labels.get(f"{LABEL}.from") not in present_ids:
            out.append(ident)
    return out


class BuildThrottle:
    """Progress lines from the build stream, at most one every ``interval`` seconds."""

    def __init__(self, emit, interval: float = 1.0):
        self.emit, self.interval, self._last = emit, interval, 0.0

    def __call__(self, line: str) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self.emit(f"{PROGRESS_MESSAGE}: {printable(line, 120)}")
