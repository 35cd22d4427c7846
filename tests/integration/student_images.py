"""Offline test images shaped like the ones students bring, and a wheel index on loopback.

All are built on a test user's own rootless daemon FROM the testbed's lab image (Debian
bookworm, python3 + python3-venv, JupyterHub in /opt/venv), so nothing is fetched:

* ``stacks``: the Jupyter Docker Stacks layout, with the UNMODIFIED upstream start scripts
  read at build time from ``../shared/fixtures/docker-stacks`` (jovyan uid 1000, group 100,
  ``ENTRYPOINT tini -g -- start.sh``, ``CMD start-notebook.py``, ``USER 1000``); the Python
  with Jupyter is at /opt/conda; ``tini`` is a small exec shim (the same argv contract);
* ``python-only``: Debian's python3 (no pip, ensurepip disabled) and nothing of Jupyter;
* ``conda-style``: a Python environment at /opt/conda (a venv, with pip), no Jupyter, with a
  module only it has (``labonly``);
* ``no-python``: no Python at all;
* ``committed``: ``docker commit`` of a container of the lab image, as the lab how-to teaches
  (``docker run -it IMAGE /bin/bash``, install, commit): CMD ``/bin/bash``;
* ``exits``: an entrypoint that prints an error (with an escape sequence) and exits 3;
* ``old-jupyterhub``: a jupyterhub whose major version is not the hub's.

Images are rebuilt only when missing (the build cache makes a rebuild of the same recipe give
the same image id, so derived images made from them stay valid across test runs).
"""

from __future__ import annotations

import html
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jupyterhub

REPO_ROOT = Path(__file__).resolve().parents[2]
def _stacks_dir() -> Path:
    """The project's shared fixtures: RGS_DOCKER_STACKS_DIR, else ``../shared`` next to this clone,
    else next to the checkout it was cloned from (CI clones into a folder of its own choosing)."""
    if os.environ.get("RGS_DOCKER_STACKS_DIR"):
        return Path(os.environ["RGS_DOCKER_STACKS_DIR"])
    rel = Path("shared") / "fixtures" / "docker-stacks"
    roots = [REPO_ROOT]
    try:
        origin = subprocess.run(["git", "-C", str(REPO_ROOT), "config", "--get", "remote.origin.url"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        origin = ""
    if origin.startswith("/") or origin.startswith("file://"):
        roots.append(Path(origin.removeprefix("file://")).resolve())
    for root in roots:
        if (root.parent / rel).is_dir():
            return root.parent / rel
    return REPO_ROOT.parent / rel


STACKS_DIR = _stacks_dir()
STACKS_FILES = ("start.sh", "run-hooks.sh", "_docker_stacks_log.sh", "start-notebook.py", "start-singleuser.py")
WHEEL_CACHE = Path("/var/cache/rootless-gpu-spawner/wheels") / f"jupyterhub-{jupyterhub.__version__}"
PREFIX = "rgs-test"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SITE = "lib/python3.11/site-packages"

TINI = """#!/bin/sh
# tini stand-in for an offline test image: `tini [-g] -- CMD...` runs CMD (same argv contract)
while [ $# -gt 0 ] && [ "$1" != "--" ]; do shift; done
[ "$1" = "--" ] && shift
exec "$@"
"""

#: The entrypoint of the image that exits while starting (an escape sequence in its error line).
ENTRY = """#!/bin/sh
echo "starting the lab image"
printf 'error: \\033[31mno module named labstuff\\033[0m\\n' >&2
exit 3
"""


def name(kind: str) -> str:
    return f"{PREFIX}/{kind}:latest"


def _dockerfiles(base: str) -> dict:
    return {
        "stacks": (base, f"""
            RUN useradd --no-log-init --create-home --uid 1000 --gid 100 --shell /bin/bash jovyan \\
             && chmod g+w /etc/passwd && ln -s /opt/venv /opt/conda \\
             && mkdir -p /etc/sudoers.d /usr/local/bin/start-notebook.d /usr/local/bin/before-notebook.d \\
             && echo 'Defaults secure_path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"' > /etc/sudoers \\
             && echo 'WHERE = "stacks"' > /opt/venv/{SITE}/stacksonly.py
            COPY tini /usr/bin/tini
            COPY {' '.join(STACKS_FILES)} /usr/local/bin/
            ENV NB_USER=jovyan NB_UID=1000 NB_GID=100 CONDA_DIR=/opt/conda HOME=/home/jovyan PATH=/opt/conda/bin:{PATH}
            ENTRYPOINT ["tini", "-g", "--", "start.sh"]
            CMD ["start-notebook.py"]
            USER 1000
            WORKDIR /home/jovyan
        """),
        "python-only": (base, f"""
            RUN rm -rf /opt/venv && mkdir -p /usr/local/lib/python3.11/dist-packages \\
             && echo 'WHERE = "python-only"' > /usr/local/lib/python3.11/dist-packages/pyonly.py
            ENV PATH={PATH}
            CMD ["python3"]
        """),
        "conda-style": (name("python-only"), f"""
            RUN python3 -m venv /opt/conda && echo 'WHERE = "conda-style"' > /opt/conda/{SITE}/labonly.py
            ENV PATH=/opt/conda/bin:{PATH}
            CMD ["python3"]
        """),
        "no-python": (name("python-only"), """
            RUN rm -f /usr/bin/python3*
            CMD ["/bin/bash"]
        """),
        "exits": (base, """
            COPY entry.sh /entry.sh
            ENTRYPOINT ["/entry.sh"]
            CMD ["jupyterhub-singleuser"]
        """),
        "old-jupyterhub": (base, f"""
            RUN sed -i 's/^version_info = .*/version_info = (1, 5, 0, "", "")/' /opt/venv/{SITE}/jupyterhub/_version.py
        """),
    }


def _context(dockerfile: str) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        files = {"Dockerfile": (dockerfile.encode(), 0o644), "tini": (TINI.encode(), 0o755),
                 "entry.sh": (ENTRY.encode(), 0o755)}
        if "COPY tini" in dockerfile:  # the Docker Stacks look-alike only
            for f in STACKS_FILES:
                files[f] = ((STACKS_DIR / f).read_bytes(), 0o755)
        for fname, (data, mode) in files.items():
            info = tarfile.TarInfo(fname)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def ensure_images(client, base: str) -> dict:
    """Build the test images on ``client``'s daemon; returns kind -> image name.

    Without the upstream Docker Stacks scripts the other images are still built, and
    ``out["stacks-missing"]`` says what is missing (the Docker Stacks test fails with it)."""
    out = {}
    missing = stacks_scripts_missing()
    if missing:
        out["stacks-missing"] = missing
    for kind, (parent, body) in _dockerfiles(base).items():
        if kind == "stacks" and missing:
            continue
        text = f"FROM {parent}\n" + "\n".join(line.strip() for line in body.strip().splitlines()) + "\n"
        client.images.build(fileobj=_context(text), custom_context=True, tag=name(kind), rm=True, forcerm=True,
                            labels={"org.rootless-gpu-spawner.test-image": kind})
        out[kind] = name(kind)
    out["committed"] = ensure_committed(client, base)
    return out


def stacks_scripts_missing() -> str:
    """'' when the upstream scripts are there, else what is missing and where to put them."""
    missing = [f for f in STACKS_FILES if not (STACKS_DIR / f).is_file()]
    if not missing:
        return ""
    return (f"the upstream Docker Stacks scripts {missing} are missing in {STACKS_DIR}: put the project's shared "
            "fixtures next to the clone (../shared/fixtures/docker-stacks) or name their folder in "
            "RGS_DOCKER_STACKS_DIR")


def ensure_committed(client, base: str) -> str:
    """What the how-to's `docker run -it IMAGE /bin/bash`, install, `docker commit` gives."""
    target = name("committed")
    try:
        client.images.get(target)
        return target
    except Exception:  # docker.errors.ImageNotFound: make it
        pass
    script = f"echo 'WHERE = \"committed\"' > /opt/venv/{SITE}/mine.py"
    container = client.containers.run(base, ["/bin/bash", "-c", script], detach=True)
    try:
        container.wait(timeout=60)
        container.commit(repository=f"{PREFIX}/committed", tag="latest", changes=['CMD ["/bin/bash"]'])
    finally:
        container.remove(force=True)
    return target


def remove_derived(client, base_id: str | None = None) -> None:
    """Remove the derived images (of ``base_id`` only, when given)."""
    for image in client.images.list(filters={"label": "org.rootless-gpu-spawner.derived"}):
        if base_id is None or image.labels.get("org.rootless-gpu-spawner.derived.from") == base_id:
            client.images.remove(image.id, force=True)


# ---- the lab's wheel index, served on loopback ---------------------------------------------


def ensure_wheels() -> Path:
    """The hub version's wheels (scripts/build-lab-image.sh fills this cache; else pip download)."""
    if not (WHEEL_CACHE / ".complete").exists():
        partial_dir = WHEEL_CACHE.with_name(WHEEL_CACHE.name + ".partial")
        shutil.rmtree(partial_dir, ignore_errors=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", "3.11.2",
             "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform",
             "manylinux_2_28_x86_64", "--platform", "any", "-d", str(partial_dir),
             f"jupyterhub=={jupyterhub.__version__}", "jupyterlab"],
            check=True, timeout=1800,
        )
        (partial_dir / ".complete").touch()
        shutil.rmtree(WHEEL_CACHE, ignore_errors=True)
        partial_dir.rename(WHEEL_CACHE)
    return WHEEL_CACHE


def write_simple_index(wheels: Path, root: Path) -> None:
    """A PEP 503 simple index of ``wheels`` under ``root/simple`` (files linked from ``root/files``)."""
    (root / "files").mkdir(parents=True, exist_ok=True)
    projects: dict[str, list] = {}
    for wheel in sorted(wheels.glob("*.whl")):
        link = root / "files" / wheel.name
        if not link.exists():
            os.symlink(wheel, link)
        project = re.sub(r"[-_.]+", "-", wheel.name.split("-", 1)[0]).lower()
        projects.setdefault(project, []).append(wheel.name)
    for project, files in projects.items():
        d = root / "simple" / project
        d.mkdir(parents=True, exist_ok=True)
        links = "".join(f'<a href="../../files/{html.escape(f)}">{html.escape(f)}</a><br>\n' for f in files)
        (d / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")


class WheelIndex:
    """A static simple index on 127.0.0.1 (a container build reaches it as 10.0.2.2:PORT)."""

    def __init__(self, root: Path):
        handler = partial(_QuietHandler, directory=str(root))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def url_from_container(self, gateway: str = "10.0.2.2") -> str:
        return f"http://{gateway}:{self.port}/simple"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
