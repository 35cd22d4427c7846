"""Getting an image onto a student's daemon: pull policy, mirror prefixes, canonical tags."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from docker.errors import APIError, NotFound

from .daemon import is_connection_error
from .daemon_errors import AnswerTooLarge, DaemonError
from .images import ImageRef, pull_candidates
from .safetext import printable

log = logging.getLogger(__name__)


class ImageError(RuntimeError):
    """The image could not be made available; the message lists what was tried."""


@dataclass
class PullResult:
    image: str  # the local name to create the container from
    pulled_from: str | None = None  # None when the image was already present
    attempts: list = field(default_factory=list)  # (reference, error or None)


#: Bounds on one pull's progress stream (a real one has tens of layers and lines of ~200 bytes).
MAX_PULL_LAYERS = 1000
MAX_STREAM_LINE = 2**20
MAX_LAYER_BYTES = 2**50


class PullProgress:
    """Per-layer byte counts from a pull stream, summed into one figure.

    Layers report "Downloading" with current/total bytes, then "Download
    complete" / "Pull complete"; a layer already present reports "Already
    exists" and counts as done without bytes.  A stream announcing more than
    ``MAX_PULL_LAYERS`` layers is cut off: it is not a real image.
    """

    def __init__(self):
        self.layers: dict[str, list] = {}  # id -> [current, total, done]

    LAYER_STATUSES = {"Pulling fs layer", "Waiting", "Downloading", "Verifying Checksum",
                      "Download complete", "Extracting", "Pull complete", "Already exists"}

    def feed(self, chunk: dict) -> bool:
        """Account for one stream message; True when the figures changed."""
        layer, status = chunk.get("id"), chunk.get("status", "")
        if not isinstance(layer, str) or not layer or status not in self.LAYER_STATUSES:
            return False  # "Pulling from …", "Digest: …", "Status: …"
        if layer not in self.layers and len(self.layers) >= MAX_PULL_LAYERS:
            raise AnswerTooLarge(f"reported more than {MAX_PULL_LAYERS} layers in one pull")
        entry = self.layers.setdefault(layer[:80], [0, 0, False])
        detail = chunk.get("progressDetail")
        detail = detail if isinstance(detail, dict) else {}
        total, current = _byte_count(detail.get("total")), _byte_count(detail.get("current"))
        if status == "Downloading" and total:
            entry[0], entry[1] = min(current, total), total
        elif status in ("Download complete", "Pull complete", "Already exists"):
            if entry[1]:
                entry[0] = entry[1]
            entry[2] = True
        return True

    @property
    def done_bytes(self) -> int:
        return sum(e[0] for e in self.layers.values())

    @property
    def total_bytes(self) -> int:
        return sum(e[1] for e in self.layers.values())

    @property
    def fraction(self) -> float:
        """0..1 over the layers to fetch (those already present don't count).

        Docker announces every layer ("Pulling fs layer") before downloading,
        so the denominator is known early and the figure only grows.
        """
        todo = [e for e in self.layers.values() if not (e[2] and not e[1])]  # skip "Already exists"
        if not todo:
            return 0.0  # nothing announced to fetch yet
        return sum(1.0 if e[2] else (e[0] / e[1] if e[1] else 0.0) for e in todo) / len(todo)


def _byte_count(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return min(value, MAX_LAYER_BYTES)


def stream_messages(read1, max_line: int = MAX_STREAM_LINE):
    """JSON objects from a newline-delimited stream, one line at most ``max_line`` bytes.

    ``read1(n)`` returns what has arrived (b"" at the end).  A line that is
    not a JSON object is skipped; one that is too long ends the stream with
    :class:`AnswerTooLarge`, so memory stays bounded whatever the daemon sends.
    """
    buffer = b""
    while True:
        data = read1(65536)
        if not data:
            break
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        if len(buffer) > max_line:
            raise AnswerTooLarge(f"sent a pull progress line larger than {max_line // 2**20} MiB")
        for line in lines:
            message = _json_object(line)
            if message is not None:
                yield message
    message = _json_object(buffer)
    if message is not None:
        yield message


def _json_object(line: bytes):
    line = line.strip()
    if not line:
        return None
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _drain_pull(client, repository: str, tag: str, on_progress=None) -> None:
    """Run a streamed pull to the end, raising on an error reported mid-stream.

    The Engine API answers 200 and reports most pull failures (manifest
    unknown, unauthorized, network) inside the JSON stream. Runs on the
    daemon's thread under the pull's deadline; no credentials are sent
    (root's Docker config is never used for a student's daemon).
    ``on_progress(PullProgress)`` must be thread-safe.
    """
    params = {"fromImage": repository, "tag": tag}
    response = client._post(client._url("/images/create"), params=params, stream=True)
    try:
        client._raise_for_status(response)
        progress = PullProgress()
        for chunk in stream_messages(response.raw.read1):
            if chunk.get("error") or chunk.get("errorDetail"):
                detail = chunk.get("errorDetail")
                detail = detail.get("message") if isinstance(detail, dict) else detail
                raise ImageError(printable(chunk.get("error") or detail or "pull failed", 300))
            if progress.feed(chunk) and on_progress is not None:
                on_progress(progress)
    finally:
        response.close()


async def _present(conn, names) -> str | None:
    for name in names:
        try:
            await conn.call("inspect_image", name)
            return name
        except NotFound:
            continue
    return None


async def ensure_image(
    conn,
    ref: ImageRef,
    *,
    policy: str,
    mirror_prefixes,
    fallback_to_upstream: bool,
    account: str,
    skip_mirror=None,
    on_attempt=None,
    on_progress=None,
    pull_timeout: float = 3600.0,
) -> PullResult:
    """Make ``ref`` available on the daemon behind ``conn``; return the local name to use.

    ``ifnotpresent``: an image already present under its canonical name (or,
    for digests, under a mirror name from an earlier pull) costs no network.
    After a pull through a mirror the image is tagged with its canonical name,
    so ``docker images`` and the next spawn find it as the student asked.
    """
    policy = policy.lower()
    candidates = pull_candidates(ref, mirror_prefixes, fallback_to_upstream)
    prefixes = list(mirror_prefixes) if ref.is_docker_hub else []
    sources = [(prefixes[i] if i < len(prefixes) else None, c) for i, c in enumerate(candidates)]
    if policy == "skip":
        return PullResult(ref.familiar)
    if policy != "always":
        local_names = [ref.familiar]
        if ref.digest:
            local_names += [c.familiar for c in candidates if c != ref]
        present = await _present(conn, local_names)
        if present:
            return PullResult(present)
        if policy == "never":
            raise ImageError(
                f"image {ref.familiar} is not on {account}'s Docker daemon and pull_policy is "
                f"'never': ask the admin to load it (docker pull/load as {account}) or allow pulls"
            )

    result = PullResult(ref.familiar)
    for prefix, candidate in sources:
        if prefix is not None and skip_mirror is not None:
            reason = await skip_mirror(prefix)
            if reason:
                result.attempts.append((candidate.familiar, reason))
                if on_attempt:
                    on_attempt(candidate.familiar, prefix, reason)
                continue
        repository, tag = candidate.pull_args
        log.info("pulling %s for %s (as %s)", ref.familiar, account, candidate.familiar)
        report = (lambda p, name=candidate.familiar: on_progress(name, p)) if on_progress else None
        try:
            await conn.run(_drain_pull, repository, tag, report, seconds=pull_timeout, max_bytes=None)
        except DaemonError:
            raise  # the daemon itself failed (gone, too slow, too much, a lie): no next source helps
        except Exception as e:  # one failed source: note it and try the next
            if is_connection_error(e):
                raise
            reason = printable(e.explanation if isinstance(e, APIError) and e.explanation else str(e), 300)
            log.warning("pull of %s failed: %s", candidate.familiar, reason)
            result.attempts.append((candidate.familiar, reason))
            if on_attempt:
                on_attempt(candidate.familiar, prefix, reason)
            continue
        result.attempts.append((candidate.familiar, None))
        if on_attempt:
            on_attempt(candidate.familiar, prefix, None)
        result.pulled_from = candidate.familiar
        if candidate != ref:
            result.image = await _adopt_canonical_name(conn, ref, candidate)
        return result

    tried = "; ".join(f"{name}: {reason}" for name, reason in result.attempts)
    hint = (
        "check RootlessGPUSpawner.mirror_prefixes (a mirror may be down or not carry the image)"
        if ref.is_docker_hub
        else "check that the registry is reachable from the student's daemon"
    )
    raise ImageError(f"could not pull {ref.familiar} for {account}. Tried {tried}. Fix: {hint}.")


async def _adopt_canonical_name(conn, ref: ImageRef, mirrored: ImageRef) -> str:
    """Tag a mirror-pulled image with its canonical name and drop the mirror's name."""
    if ref.tag:
        await conn.call("tag", mirrored.familiar, ref.familiar_repository, ref.tag)
        name = ref.familiar_repository + ":" + ref.tag
        if ref.digest:
            return mirrored.familiar  # docker cannot tag by digest; the mirror name stays usable
        try:
            # noprune: only the extra name goes, the image stays.
            await conn.call("remove_image", mirrored.familiar, noprune=True)
        except APIError as e:
            log.debug("could not untag %s: %s", mirrored.familiar, e)
        return name
    # A digest-only reference cannot be re-tagged; keep the mirror's name.
    return mirrored.familiar
