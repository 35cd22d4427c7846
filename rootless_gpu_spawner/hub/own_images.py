"""The student's own images: what is on their daemon, checked, and which of it they may start.

The daemon is the student's own and rootless, so starting an image that is already on it
grants nothing the student could not do with ``docker run`` themselves; the admin may narrow
it with glob patterns (``own_image_patterns``) or turn it off (``allow_own_images``).

``docker images`` comes from a hostile daemon: :func:`own_images_from_answer` keeps at most
``MAX_OWN_IMAGES`` well-formed ``repository:tag`` names (each a valid, printable, ASCII
reference), and sizes and dates only as display figures, never as anything the hub acts on.
Pure functions only; the spawner asks the daemon through its DaemonConnection.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass

from ..safetext import printable
from .images import InvalidImageReference, parse_image_reference

MAX_OWN_IMAGES = 200  # names listed in the form and the environments page
MAX_ENTRIES = 5000  # entries of the daemon's answer looked at (its byte size is capped too)
MAX_TAGS_PER_IMAGE = 50
MAX_NAME = 255
MAX_SIZE = 2**50  # bytes; anything larger is not shown
EARLIEST = 946684800  # 2000-01-01: older "Created" dates are not shown


@dataclass(frozen=True)
class OwnImage:
    name: str  # "repository:tag" as ``docker images`` shows it (familiar form)
    size: int | None  # bytes, for display only
    created: int | None  # epoch seconds, for display only

    def describe(self, now: float | None = None) -> str:
        parts = [p for p in (format_size(self.size), format_age(self.created, now)) if p]
        return f"{self.name} ({', '.join(parts)})" if parts else self.name


@dataclass(frozen=True)
class OwnImagePolicy:
    enabled: bool = True
    patterns: tuple = ("*",)

    def allows(self, name: str) -> bool:
        return self.enabled and matches(name, self.patterns)


def matches(name: str, patterns) -> bool:
    """Glob match on the familiar name and the fully qualified one (``docker.io/library/x:1``)."""
    try:
        ref = parse_image_reference(name)
    except InvalidImageReference:
        return False
    forms = {name, ref.familiar, ref.canonical}
    return any(fnmatch.fnmatchcase(form, pattern) for pattern in patterns for form in forms)


def check_own_image_name(name, policy: OwnImagePolicy) -> str:
    """The requested own image as its familiar name, or ValueError saying what is wrong."""
    if not policy.enabled:
        raise ValueError("starting your own images is turned off here (RootlessGPUSpawner.allow_own_images)")
    if not isinstance(name, str):
        raise ValueError("an image name must be a string")
    if not name.isascii() or printable(name, MAX_NAME * 2) != name:
        raise ValueError("an image name has only lowercase letters, digits and . _ - / :")
    try:
        ref = parse_image_reference(name)
    except InvalidImageReference as e:
        raise ValueError(e.reason) from None
    if ref.digest:
        raise ValueError("name your own image by repository:tag, not by digest")
    if not matches(name, policy.patterns):
        shown = ", ".join(policy.patterns)[:200]
        raise ValueError(f"the admin allows only own images whose name matches {shown}")
    return ref.familiar


def _tag_name(value) -> str | None:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME or not value.isascii():
        return None
    if value == "<none>:<none>" or printable(value, MAX_NAME) != value:
        return None
    try:
        ref = parse_image_reference(value)
    except InvalidImageReference:
        return None
    return ref.familiar if ref.tag and not ref.digest else None


def _figure(value, low: int, high: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return None
    return value


#: Images the spawner itself made on the student's daemon (the derived images that add Jupyter to
#: an image without it): started through the image they were made from, not listed as the student's.
SPAWNER_LABELS = ("org.rootless-gpu-spawner.derived",)


def _is_ours(entry: dict) -> bool:
    labels = entry.get("Labels")
    return isinstance(labels, dict) and any(key in labels for key in SPAWNER_LABELS)


def own_images_from_answer(answer, policy: OwnImagePolicy, exclude=(), now: float | None = None) -> list[OwnImage]:
    """``GET /images/json`` -> the student's images they may start, newest first, at most MAX_OWN_IMAGES.

    Entries of the wrong shape are skipped, not trusted; ``exclude`` are names shown elsewhere
    (the admin's images).
    """
    if not isinstance(answer, list) or not policy.enabled:
        return []
    latest = int(now or time.time()) + 86400
    found: dict[str, OwnImage] = {}
    excluded = set(exclude)
    for entry in answer[:MAX_ENTRIES]:
        if not isinstance(entry, dict):
            continue
        tags = entry.get("RepoTags")
        if not isinstance(tags, list) or _is_ours(entry):
            continue
        size = _figure(entry.get("Size"), 0, MAX_SIZE)
        created = _figure(entry.get("Created"), EARLIEST, latest)
        for tag in tags[:MAX_TAGS_PER_IMAGE]:
            name = _tag_name(tag)
            if name and name not in excluded and name not in found and matches(name, policy.patterns):
                found[name] = OwnImage(name, size, created)
    ordered = sorted(found.values(), key=lambda image: (-(image.created or 0), image.name))
    return ordered[:MAX_OWN_IMAGES]


def format_size(size: int | None) -> str:
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit in ("B", "KB") else f"{value:.1f} {unit}"
        value /= 1000
    return ""


def format_age(created: int | None, now: float | None = None) -> str:
    if created is None:
        return ""
    seconds = max(0, int((now or time.time()) - created))
    for unit, length in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= length:
            count = seconds // length
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "just now"
