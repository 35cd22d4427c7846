"""The probe: a short-lived container that says which Python and which JupyterHub an image has.

It runs the image's own ``/bin/sh`` (entrypoint replaced, no network, as container root) for a
few seconds at most, and prints one ``RGS-PROBE {json}`` line; what it prints is the student's
word, read through :func:`.launch.probe_facts`.  Results are kept per (daemon, image id) in the
hub's memory: image ids are content addresses, so a later spawn of the same image starts
without a probe.
"""

from __future__ import annotations

from collections import OrderedDict

from docker.errors import APIError

from ..safetext import printable, printable_lines
from .launch import PROBE_MARK, NoPython, ProbeFacts, probe_facts

PROBE_SECONDS = 20
_CACHE_SIZE = 512
_cache: "OrderedDict[tuple, ProbeFacts]" = OrderedDict()

PROBE_SCRIPT = r"""
py=""
for c in python3 python /opt/conda/bin/python3 /opt/conda/bin/python /usr/local/bin/python3 /usr/bin/python3; do
  p=$(command -v "$c" 2>/dev/null) && [ -n "$p" ] && { py=$p; break; }
done
[ -n "$py" ] || { echo 'MARK{}'; exit 0; }
"$py" -c '
import json, sys
try:
    import shutil
    su = shutil.which("jupyterhub-singleuser") or ""
except Exception:
    su = ""
try:
    from jupyterhub import __version__ as jh
except Exception:
    jh = ""
print("MARK" + json.dumps({"python": sys.executable, "version": list(sys.version_info[:3]),
      "prefix": sys.prefix, "jupyterhub": jh, "singleuser": su}))
' 2>&1 || echo 'MARK{"python": "'"$py"'", "version": []}'
""".replace("MARK", PROBE_MARK)


def cached(docker_host: str, image_id: str) -> ProbeFacts | None:
    facts = _cache.get((docker_host, image_id))
    if facts is not None:
        _cache.move_to_end((docker_host, image_id))
    return facts


def remember(docker_host: str, image_id: str, facts: ProbeFacts) -> None:
    _cache[(docker_host, image_id)] = facts
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)


async def probe_image(docker, logs, image_id: str, name: str, labels: dict) -> ProbeFacts:
    """Run the probe container of *image_id* (``docker`` is the spawner's bounded call,
    ``logs(ident, tail)`` reads a container's last lines, bounded)."""
    created = await docker(
        "create_container", image=image_id, entrypoint=["/bin/sh", "-c"], command=[PROBE_SCRIPT],
        user="0:0", network_disabled=True, labels=labels, environment={"PYTHONDONTWRITEBYTECODE": "1"},
    )
    ident = created.get("Id") if isinstance(created, dict) else None
    if not isinstance(ident, str):
        raise NoPython(f"image {name}: the probe container could not be created")
    try:
        try:
            await docker("start", ident)
        except APIError as e:
            raise NoPython(
                f"image {name} cannot run /bin/sh ({printable(e.explanation or e, 200)}), so the hub "
                "cannot look for a Python in it: an image without a shell and Python cannot run "
                "JupyterLab. Use an image with Python 3.9 or newer."
            ) from None
        await docker("wait", ident, timeout=PROBE_SECONDS)
        raw = await logs(ident, 50)
    finally:
        try:
            await docker("remove_container", ident, force=True)
        except Exception:  # best effort: labelled, removed with the next leftovers
            pass
    text = "\n".join(printable_lines(raw, 50, 2000))
    return probe_facts(text)
