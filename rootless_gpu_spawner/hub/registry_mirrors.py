"""Mirrors for every registry: which sources a pull tries, in which order, and how they are named.

Pure functions only (the pulling is :mod:`rootless_gpu_spawner.hub.pulls`, the
probe and cool-down :mod:`rootless_gpu_spawner.hub.mirrors`).  A mirror spec is
``HOST[:PORT][/PATH]``; the image ``REGISTRY/REPOSITORY:TAG`` is asked of the
mirror as ``HOST[:PORT]/[PATH/]REPOSITORY:TAG`` with REPOSITORY as the registry
knows it (Docker Hub's official images carry ``library/``):

* no path, a host swap: ``quay.nju.edu.cn`` serves ``quay.io/jupyter/x`` as
  ``quay.nju.edu.cn/jupyter/x``;
* with a path, a path prefix: ``m.daocloud.io/quay.io`` serves it as
  ``m.daocloud.io/quay.io/jupyter/x``.

Order of the sources for one image: the lab's pull-through cache for that
registry (``lab_cache_mirrors``), then the registry's mirrors
(``registry_mirrors``), then the registry itself when
``mirror_fallback_to_upstream`` is on (or when no mirror is configured).
A Docker daemon's own ``registry-mirrors`` works for Docker Hub only and is
not relied on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .images import DOCKER_HUB, ImageRef, normalize_mirror_prefix, parse_image_reference

LAB_CACHE = "lab-cache"
MIRROR = "mirror"
UPSTREAM = "upstream"

#: The public mirrors known to work from mainland China in 2026, per registry (docs/*/admin-guide.md).
#: USTC's Docker Hub mirror stays first as before although it has been suspended since 2024 (the probe
#: skips it within ``mirror_probe_timeout`` and its cool-down keeps it out); the entries after it work
#: off USTC's campus.  DaoCloud (``*.m.daocloud.io``) serves an allow-list only: an image not on it is
#: refused (403 "not in allowlist") and the next source is tried.  NJU mirrors whole registries.
DEFAULT_REGISTRY_MIRRORS = {
    "docker.io": ["docker.mirrors.ustc.edu.cn", "docker.m.daocloud.io"],
    "quay.io": ["quay.nju.edu.cn", "m.daocloud.io/quay.io"],
    "ghcr.io": ["ghcr.nju.edu.cn", "m.daocloud.io/ghcr.io"],
    "nvcr.io": ["m.daocloud.io/nvcr.io"],
    "registry.k8s.io": ["m.daocloud.io/registry.k8s.io"],
}


def normalize_registry(name: str) -> str:
    """``index.docker.io`` -> ``docker.io``; ``quay.io`` stays; rejects what is not a registry host."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("a registry must be a host name such as 'quay.io'")
    value = name.strip().lower()
    for scheme in ("https://", "http://"):
        if value.startswith(scheme):
            value = value[len(scheme):]
    value = value.rstrip("/")
    if "/" in value:
        raise ValueError(f"registry {name!r} must be a host[:port] without a path, e.g. 'quay.io'")
    looks_like_host = "." in value or ":" in value or value == "localhost"
    try:
        ref = parse_image_reference(f"{value}/x/y") if looks_like_host else None
    except ValueError:
        ref = None
    if ref is None:
        raise ValueError(f"registry {name!r} is not a host[:port] such as 'quay.io' or 'registry.lab:5000'")
    return ref.domain


def normalize_mirror_chains(value) -> dict[str, list[str]]:
    """Validate ``registry_mirrors``: registry host -> ordered list of mirror specs."""
    if not isinstance(value, dict):
        raise ValueError("must be a dict of registry host -> list of mirrors")
    chains: dict[str, list[str]] = {}
    for registry, specs in value.items():
        key = normalize_registry(registry)
        if isinstance(specs, str) or not isinstance(specs, (list, tuple)):
            raise ValueError(f"the mirrors of {key!r} must be a list of 'HOST[:PORT][/PATH]' strings")
        if key in chains:
            raise ValueError(f"{registry!r} and another key both name the registry {key!r}")
        chains[key] = [_spec(s, key) for s in specs]
    return chains


def normalize_lab_caches(value) -> dict[str, str]:
    """Validate ``lab_cache_mirrors``: registry host -> one ``HOST:PORT`` (optionally with a path)."""
    if not isinstance(value, dict):
        raise ValueError("must be a dict of registry host -> 'HOST:PORT' of the lab cache")
    caches: dict[str, str] = {}
    for registry, spec in value.items():
        key = normalize_registry(registry)
        if not isinstance(spec, str):
            raise ValueError(f"the lab cache of {key!r} must be one 'HOST:PORT' string")
        if key in caches:
            raise ValueError(f"{registry!r} and another key both name the registry {key!r}")
        caches[key] = _spec(spec, key)
    return caches


def _spec(spec, registry: str) -> str:
    try:
        return normalize_mirror_prefix(spec)
    except ValueError as e:
        raise ValueError(f"mirror of {registry!r}: {e}") from None


class ConflictingMirrors(ValueError):
    """``mirror_prefixes`` and ``registry_mirrors['docker.io']`` both set, differently."""


def effective_chains(registry_mirrors: dict, mirror_prefixes) -> dict[str, list[str]]:
    """The mirror lists in force: ``mirror_prefixes``, when set (not None), is the docker.io entry.

    Precedence: an explicit ``mirror_prefixes`` replaces the *default* docker.io
    entry; a ``registry_mirrors['docker.io']`` that is neither the default nor the
    same list as ``mirror_prefixes`` is a conflict (:class:`ConflictingMirrors`).
    """
    chains = dict(registry_mirrors)
    if mirror_prefixes is None:
        return chains
    prefixes = list(mirror_prefixes)
    hub = chains.get(DOCKER_HUB)
    if hub is not None and hub != DEFAULT_REGISTRY_MIRRORS[DOCKER_HUB] and hub != prefixes:
        raise ConflictingMirrors(
            f"RootlessGPUSpawner.mirror_prefixes = {prefixes!r} and RootlessGPUSpawner.registry_mirrors"
            f"['docker.io'] = {hub!r} both set the Docker Hub mirrors, differently. Fix: keep one: "
            "remove mirror_prefixes and put its list under registry_mirrors['docker.io']"
        )
    chains[DOCKER_HUB] = prefixes
    return chains


@dataclass(frozen=True)
class PullSource:
    """Where one pull attempt goes: the lab cache, a mirror (by spec) or the registry itself."""

    kind: str  # LAB_CACHE, MIRROR or UPSTREAM
    spec: str | None  # the mirror spec; None for the registry itself
    registry: str

    @property
    def label(self) -> str:
        """The source in the student's words: 'the lab cache', 'mirror quay.nju.edu.cn', 'quay.io (upstream)'."""
        if self.kind == LAB_CACHE:
            return "the lab cache"
        if self.kind == MIRROR:
            return f"mirror {self.spec}"
        return f"{self.registry} (upstream)"


def pull_sources(ref: ImageRef, chains: dict, lab_caches: dict, fallback_to_upstream: bool):
    """``[(PullSource, ImageRef to pull), ...]`` in the order to try them for ``ref``."""
    sources = []
    cache = lab_caches.get(ref.domain)
    if cache:
        sources.append((PullSource(LAB_CACHE, cache, ref.domain), ref.via_mirror(cache)))
    for spec in chains.get(ref.domain, ()):
        if spec != cache:
            sources.append((PullSource(MIRROR, spec, ref.domain), ref.via_mirror(spec)))
    if fallback_to_upstream or not sources:
        sources.append((PullSource(UPSTREAM, None, ref.domain), ref))
    return sources


# ---- what a refusal looks like -------------------------------------------------------------

ALLOW_LIST = "allow-list"
NOT_FOUND = "not found"
UNAUTHORIZED = "unauthorized"

_REFUSALS = (  # first match wins
    (ALLOW_LIST, re.compile(r"allow-?list|allow list|white-?list|not in (the )?allow", re.I)),
    (UNAUTHORIZED, re.compile(r"\b401\b|unauthori[sz]ed|authentication required", re.I)),
    (NOT_FOUND, re.compile(
        r"pull access denied|repository does not exist|\b404\b|manifest unknown|not found|name unknown", re.I)),
    (ALLOW_LIST, re.compile(r"\b403\b|forbidden|\bdenied\b", re.I)),
)


def classify_refusal(message: str) -> str | None:
    """The one place that reads a daemon's pull error: is it the source refusing this image?

    Returns ``ALLOW_LIST`` ("not in allowlist", 403, "denied"), ``UNAUTHORIZED``
    (401) or ``NOT_FOUND`` (404, manifest unknown, Docker's "pull access denied
    ... repository does not exist"), or None for anything else (a network
    error, a timeout, a 5xx): the caller records a typed outcome from this and
    never looks at the text again.  An allow-list named in the message wins
    over Docker's generic "pull access denied" wrapped around it.
    """
    if not isinstance(message, str):
        return None
    for kind, pattern in _REFUSALS:
        if pattern.search(message):
            return kind
    return None


def refusal_message(source: PullSource, refusal: str, has_next: bool) -> str:
    """'mirror X refuses this image (allow-list): trying the next' and its kin."""
    then = ": trying the next" if has_next else ""
    who = source.label
    if refusal == ALLOW_LIST:
        return f"{who} refuses this image (allow-list){then}"
    if refusal == UNAUTHORIZED:
        return f"{who} asks for credentials for this image (refused){then}"
    return f"{who} does not have this image{then}"
