"""Getting an image onto a student's daemon: pull policy, lab cache and mirrors, canonical tags."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from docker.errors import APIError, NotFound

from .daemon import is_connection_error
from ..errors import AnswerTooLarge, DaemonError
from .images import ImageRef
from .registry_mirrors import PullSource, classify_refusal, pull_sources, refusal_message
from ..safetext import printable

log = logging.getLogger(__name__)


class ImageError(RuntimeError):
    """The image could not be made available; the message lists what was tried."""


@dataclass
class PullAttempt:
    """One source tried for a pull: what happened is the ``outcome``, never parsed from ``reason``."""

    PULLED = "pulled"
    SKIPPED = "skipped"  # a mirror left out before asking the daemon (cooling down, unreachable)
    REFUSED = "refused"  # the source answered but will not serve this image (allow-list, 401, 404)
    FAILED = "failed"

    source: str  # the reference pulled (a mirror's name for it, or the canonical one)
    mirror: str | None  # the mirror spec (lab cache or mirror), None for the registry itself
    outcome: str
    reason: str | None = None  # why it was skipped or failed, for the student (printable)
    via: PullSource | None = None  # which kind of source (lab cache, mirror, upstream), for messages
    refusal: str | None = None  # REFUSED only: registry_mirrors.ALLOW_LIST, UNAUTHORIZED or NOT_FOUND
    more: bool = False  # another source comes after this one


@dataclass
class PullResult:
    image: str  # the local name to create the container from
    pulled_from: str | None = None  # None when the image was already present
    attempts: list[PullAttempt] = field(default_factory=list)


def attempt_message(attempt: PullAttempt) -> str:
    """A progress line for a source that did not give the image.

    "mirror m.example refuses this image (allow-list): trying the next (denied: not in allowlist)",
    "mirror 10.0.2.2:1 (10.0.2.2:1/library/python:3): skipped: no answer from ...".
    The daemon's words are shown (printable, cut), never acted on beyond the typed outcome.
    """
    reason = printable(attempt.reason or "", 160)
    label = attempt.via.label if attempt.via is not None else attempt.source
    if attempt.outcome == PullAttempt.REFUSED and attempt.via is not None:
        return f"{refusal_message(attempt.via, attempt.refusal, attempt.more)} ({reason})"
    return f"{label} ({attempt.source}): {reason}"


def pulled_message(image: str, result: PullResult) -> str:
    """"pulled python:3 from the lab cache" / "from mirror m.example" / "from docker.io (upstream)"."""
    last = result.attempts[-1] if result.attempts else None
    label = last.via.label if last is not None and last.via is not None else result.pulled_from
    return f"pulled {image} from {label}"


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
    mirrors: dict,
    fallback_to_upstream: bool,
    account: str,
    lab_caches: dict | None = None,
    skip_mirror=None,
    on_attempt=None,
    on_progress=None,
    pull_timeout: float = 3600.0,
) -> PullResult:
    """Make ``ref`` available on the daemon behind ``conn``; return the local name to use.

    ``mirrors``: registry -> mirror specs (``registry_mirrors`` in force);
    ``lab_caches``: registry -> the lab cache's spec, tried first.
    ``ifnotpresent``: an image already present under its canonical name (or,
    for digests, under a mirror name from an earlier pull) costs no network.
    After a pull through a mirror the image is tagged with its canonical name,
    so ``docker images`` and the next spawn find it as the student asked.
    ``on_progress(PullSource, PullProgress)`` is called from the daemon's thread.
    """
    policy = policy.lower()
    sources = pull_sources(ref, mirrors, lab_caches or {}, fallback_to_upstream)
    if policy == "skip":
        return PullResult(ref.familiar)
    if policy != "always":
        local_names = [ref.familiar]
        if ref.digest:
            local_names += [c.familiar for _, c in sources if c != ref]
        present = await _present(conn, local_names)
        if present:
            return PullResult(present)
        if policy == "never":
            raise ImageError(
                f"image {ref.familiar} is not on {account}'s Docker daemon and pull_policy is "
                f"'never': ask the admin to load it (docker pull/load as {account}) or allow pulls"
            )

    result = PullResult(ref.familiar)

    def attempted(attempt: PullAttempt) -> None:
        result.attempts.append(attempt)
        if on_attempt:
            on_attempt(attempt)

    for index, (source, candidate) in enumerate(sources):
        more = index + 1 < len(sources)
        if source.spec is not None and skip_mirror is not None:
            reason = await skip_mirror(source.spec)
            if reason:
                attempted(PullAttempt(candidate.familiar, source.spec, PullAttempt.SKIPPED, reason, source, more=more))
                continue
        attempt = await _pull_one(conn, ref, source, candidate, account, on_progress, pull_timeout)
        attempt.more = more
        attempted(attempt)
        if attempt.outcome == PullAttempt.PULLED:
            result.pulled_from = candidate.familiar
            if candidate != ref:
                result.image = await _adopt_canonical_name(conn, ref, candidate)
            return result

    tried = "; ".join(f"{a.source}: {a.reason}" for a in result.attempts)
    hint = (
        f"check RootlessGPUSpawner.registry_mirrors['{ref.domain}'] and lab_cache_mirrors (a mirror may be "
        "down, or serve an allow-list without this image)"
        if any(s.spec for s, _ in sources)
        else "check that the registry is reachable from the student's daemon"
    )
    raise ImageError(f"could not pull {ref.familiar} for {account}. Tried {tried}. Fix: {hint}.")


async def _pull_one(conn, ref, source, candidate, account, on_progress, pull_timeout) -> PullAttempt:
    """One pull from one source, as a record; raises only when the daemon itself failed."""
    repository, tag = candidate.pull_args
    log.info("pulling %s for %s (as %s, from %s)", ref.familiar, account, candidate.familiar, source.label)
    report = (lambda p: on_progress(source, p)) if on_progress else None
    try:
        await conn.run(_drain_pull, repository, tag, report, seconds=pull_timeout, max_bytes=None)
    except DaemonError:
        raise  # the daemon itself failed (gone, too slow, too much, a lie): no next source helps
    except Exception as e:  # one failed source: note it and try the next
        if is_connection_error(e):
            raise
        reason = printable(e.explanation if isinstance(e, APIError) and e.explanation else str(e), 300)
        log.warning("pull of %s failed: %s", candidate.familiar, reason)
        refusal = classify_refusal(reason)
        outcome = PullAttempt.REFUSED if refusal else PullAttempt.FAILED
        return PullAttempt(candidate.familiar, source.spec, outcome, reason, source, refusal)
    return PullAttempt(candidate.familiar, source.spec, PullAttempt.PULLED, None, source)


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
