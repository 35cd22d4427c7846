"""Each student's image storage: how big (``doctor``/``status``) and what may go (``prune-images``).

Every fact comes from the student's own daemon (its socket, the listener's
uid verified, each answer bounded and parsed with boundedjson: hostile input),
and every removal goes through it too (``DELETE /images/NAME``, never forced),
so root never walks a data-root the student controls.

What ``prune-images`` may remove (the policy, docs/en/lab-cache.md):

* never the image of a container, running or stopped (Docker would refuse a
  stopped one's without force anyway; we never force);
* never an image the student *saved*: one without a registry digest
  (``RepoDigests`` empty: built, committed, imported or loaded), or one with a
  tag whose repository has no digest (the student tagged it);
* only an image pulled from a registry and not used for ``unused_days``:
  its last use is the newest of its last tag time (a ``docker tag`` sets it;
  docker 20.10's pull does not), the creation of any container from it, and
  the first time ``prune-images`` saw it (a dry run counts: noted in a
  root-owned state file, :class:`SeenStore`), so run it regularly (e.g. a
  weekly cron dry run) and the clock starts for images nobody used.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Optional
from urllib.parse import quote

from .. import boundedjson
from ..safetext import printable
from ..transport import CallGuard
from . import daemonctl, safefs

IMAGE_ID = re.compile(r"^sha256:[0-9a-f]{64}$")
TAG = re.compile(r"^[a-z0-9][a-z0-9._/:-]{0,254}$")
LIST_LIMIT = 8 << 20
#: Where prune-images notes when it first saw each student's images (root only).
SEEN_DIR = "/var/lib/rootless-gpu-spawner/image-seen"


class StoreError(RuntimeError):
    """The daemon cannot be asked or answered nonsense; the message says what to do."""


def api_call(pw, method: str, path: str, timeout: float = 30.0, limit: int = LIST_LIMIT) -> tuple[int, bytes]:
    """One request to *pw*'s daemon through the verified transport (see daemonctl.api_get)."""
    paths = daemonctl.daemon_paths(pw.pw_uid)
    with CallGuard(timeout, None):
        conn = http.client.HTTPConnection("localhost", timeout=timeout)
        conn.sock = daemonctl._open_socket(paths.socket, timeout, pw.pw_uid, pw.pw_name)
        try:
            conn.request(method, path, headers={"Host": "docker"})
            resp = conn.getresponse()
            body = resp.read(limit + 1)
        finally:
            conn.close()
    if len(body) > limit:
        raise daemonctl.AnswerTooLarge(f"{pw.pw_name}'s daemon sent more than {limit} bytes for {method} {path}")
    return resp.status, body


def _get_json(pw, path: str, kind: type):
    try:
        code, body = api_call(pw, "GET", path)
        doc = boundedjson.loads(body)
    except daemonctl.ASK_ERRORS as e:
        raise StoreError(f"{pw.pw_name}'s daemon did not answer GET {path}: {printable(e, 300)}") from None
    except boundedjson.UntrustedJSONError as e:
        raise StoreError(f"{pw.pw_name}'s daemon answered GET {path} with a document that is {e}") from None
    if code != 200 or not isinstance(doc, kind):
        raise StoreError(f"{pw.pw_name}'s daemon answered GET {path} with HTTP {code}")
    return doc


def _int(v) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def _strs(v) -> list[str]:
    return [x for x in v if isinstance(x, str) and len(x) < 512] if isinstance(v, list) else []


def storage(pw) -> dict:
    """{"user", "layers_bytes", "images", "error"} from the daemon's /system/df."""
    try:
        df = _get_json(pw, "/system/df", dict)
    except StoreError as e:
        return {"user": pw.pw_name, "layers_bytes": None, "images": None, "error": str(e)}
    images = df.get("Images") if isinstance(df.get("Images"), list) else []
    return {"user": pw.pw_name, "layers_bytes": _int(df.get("LayersSize")), "images": len(images), "error": None}


def _when(text) -> float:
    """Seconds since the epoch of a Docker timestamp ('2026-11-30T10:00:00.123456789Z'); 0 for none/zero."""
    if not isinstance(text, str) or text.startswith("0001-"):
        return 0.0
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)$", text)
    if not m:
        return 0.0
    tz = "+00:00" if m.group(2) == "Z" else m.group(2)
    return datetime.fromisoformat(m.group(1) + tz).astimezone(timezone.utc).timestamp()


@dataclass
class Verdict:
    image_id: str
    tags: list[str]
    bytes: int
    remove: bool
    reason: str


def _repo(ref: str) -> str:
    """The repository of NAME:TAG or NAME@DIGEST (a registry port's colon kept)."""
    ref = ref.split("@", 1)[0]
    head, _, last = ref.rpartition("/")
    return (head + "/" if head else "") + last.split(":", 1)[0]


def judge(image: dict, used_by: dict[str, str], last_tag: float, unused_days: float, now: float) -> Verdict:
    """The policy for one image of /images/json (pure: the tests call it with made-up answers)."""
    iid = image.get("Id") if isinstance(image.get("Id"), str) else ""
    tags = [t for t in _strs(image.get("RepoTags")) if t != "<none>:<none>"]
    digests = _strs(image.get("RepoDigests"))
    size = _int(image.get("Size"))
    keep = lambda why: Verdict(iid, tags, size, False, why)  # noqa: E731
    if not IMAGE_ID.match(iid):
        return keep("the daemon gave no valid image id")
    if iid in used_by:
        return keep(f"used by a {used_by[iid]} container")
    if not digests:
        return keep("saved by the student (no registry digest: built, committed, imported or loaded)")
    pulled = {_repo(d) for d in digests}
    own = [t for t in tags if _repo(t) not in pulled]
    if own:
        return keep(f"tagged by the student ({', '.join(printable(t, 100) for t in own[:3])})")
    if not last_tag:
        return keep("no record of when it was pulled or used")  # only without a SeenStore
    age = (now - last_tag) / 86400
    if age < unused_days:
        return keep(f"used {age:.1f} days ago (keeps images used within {unused_days:g} days)")
    return Verdict(iid, tags, size, True, f"pulled from a registry, unused for {age:.0f} days")


def _in_repos(image: dict, repos: Optional[list[str]]) -> bool:
    if not repos:
        return True
    names = {_repo(r) for r in _strs(image.get("RepoTags")) + _strs(image.get("RepoDigests"))}
    return bool(names & set(repos))


class SeenStore:
    """``DIR/USER.json``: image id -> when prune-images first saw it (root's own files, bounded)."""

    MAX_BYTES = 4 << 20

    def __init__(self, directory: str):
        self.directory = directory

    def _path(self, user: str) -> str:
        return os.path.join(self.directory, user + ".json")

    def load(self, user: str) -> dict[str, float]:
        try:
            with open(self._path(user), "rb") as f:
                doc = boundedjson.loads(f.read(self.MAX_BYTES))
        except (OSError, boundedjson.UntrustedJSONError):
            return {}
        if not isinstance(doc, dict):
            return {}
        return {k: float(v) for k, v in doc.items() if IMAGE_ID.match(str(k)) and isinstance(v, (int, float))}

    def save(self, user: str, seen: dict[str, float]) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        dfd = os.open(self.directory, safefs.O_DIR)
        try:
            safefs.atomic_write(dfd, user + ".json", json.dumps(seen, sort_keys=True).encode(), mode=0o600,
                                owner=None, shown=self._path(user))
        finally:
            os.close(dfd)


def plan(pw, unused_days: float, now: Optional[float] = None, repos: Optional[list[str]] = None,
         seen: Optional[dict[str, float]] = None) -> list[Verdict]:
    """The verdict on each image of *pw*'s daemon (only those of *repos* when given).

    *seen* (image id -> first seen) is updated in place: images gone are
    dropped, new ones noted at *now*."""
    now = time.time() if now is None else now
    seen = {} if seen is None else seen
    images = _get_json(pw, "/images/json", list)[:5000]
    containers = _get_json(pw, "/containers/json?all=1", list)[:5000]
    used_by: dict[str, str] = {}
    last_use: dict[str, float] = {}
    for c in containers:
        if not isinstance(c, dict) or not isinstance(c.get("ImageID"), str):
            continue
        running = c.get("State") == "running"
        if running or c["ImageID"] not in used_by:
            used_by[c["ImageID"]] = "running" if running else "stopped"
        last_use[c["ImageID"]] = max(last_use.get(c["ImageID"], 0.0), float(_int(c.get("Created"))))
    present = {i.get("Id") for i in images if isinstance(i, dict) and IMAGE_ID.match(str(i.get("Id")))}
    for gone in set(seen) - present:
        del seen[gone]
    for iid in present:
        seen.setdefault(iid, now)
    out = []
    for image in images:
        if not isinstance(image, dict) or not _in_repos(image, repos):
            continue
        iid = image.get("Id") if isinstance(image.get("Id"), str) else ""
        tagged = 0.0
        if IMAGE_ID.match(iid) and iid not in used_by:
            meta = _get_json(pw, f"/images/{iid}/json", dict).get("Metadata")
            tagged = _when(meta.get("LastTagTime")) if isinstance(meta, dict) else 0.0
        out.append(judge(image, used_by, max(tagged, last_use.get(iid, 0.0), seen.get(iid, 0.0)), unused_days, now))
    return out


def remove(pw, v: Verdict) -> Optional[str]:
    """Remove *v*'s image through the daemon (each tag, then the id; never forced); None or the error."""
    names = [t for t in v.tags if TAG.match(t)] or [v.image_id]
    for name in names:
        try:
            code, body = api_call(pw, "DELETE", "/images/" + quote(name, safe=":/@"), timeout=120)
        except daemonctl.ASK_ERRORS as e:
            return printable(e, 300)
        if code == 404 and name != names[0]:
            continue  # the last tag removed the image already
        if code != 200:
            return f"HTTP {code}: {printable(body[:300].decode('utf-8', 'replace'), 300)}"
    return None


def to_dict(v: Verdict) -> dict:
    return asdict(v)
