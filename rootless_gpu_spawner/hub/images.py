"""Image references and mirror names for them.

Pure functions only: parsing follows the distribution reference grammar
(github.com/distribution/reference) with Docker's normalisation rules, so that
what we call "a Docker Hub image" is exactly what ``docker pull`` would fetch
from Docker Hub.  The pulling itself lives in :mod:`rootless_gpu_spawner.hub.pulls`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DOCKER_HUB = "docker.io"
# Aliases Docker itself folds into docker.io.
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}

NAME_TOTAL_MAX = 255  # distribution's NameTotalLengthMax

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = re.compile(rf"^{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*$")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?$"
)
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(
    r"^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$"
)


class InvalidImageReference(ValueError):
    """An image name that Docker would refuse, with the reason in words."""

    def __init__(self, reference, reason):
        self.reference = reference
        self.reason = reason
        shown = reference if len(reference) <= 80 else reference[:77] + "..."
        super().__init__(f"invalid image reference {shown!r}: {reason}")


@dataclass(frozen=True)
class ImageRef:
    """A normalised image reference: ``domain/path[:tag][@digest]``."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def is_docker_hub(self) -> bool:
        return self.domain == DOCKER_HUB

    @property
    def repository(self) -> str:
        """Fully qualified repository, e.g. ``docker.io/library/python``."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_repository(self) -> str:
        """The repository as ``docker images`` shows it (``python``, ``me/app``)."""
        if self.is_docker_hub:
            if self.path.startswith("library/") and self.path.count("/") == 1:
                return self.path[len("library/") :]
            return self.path
        return self.repository

    def _suffix(self) -> str:
        suffix = ""
        if self.tag:
            suffix += ":" + self.tag
        if self.digest:
            suffix += "@" + self.digest
        return suffix

    @property
    def canonical(self) -> str:
        """``docker.io/library/python:3.11``; an untagged name gets ``:latest``."""
        return self.repository + self._suffix()

    @property
    def familiar(self) -> str:
        """``python:3.11``: the short form Docker prints and stores tags under."""
        return self.familiar_repository + self._suffix()

    def via_mirror(self, prefix: str) -> "ImageRef":
        """This image as served by a mirror of its registry.

        ``docker.io/library/python:3`` through ``mirror.example:5000`` becomes
        ``mirror.example:5000/library/python:3`` (a host swap);
        ``quay.io/jupyter/base-notebook`` through ``m.daocloud.io/quay.io``
        becomes ``m.daocloud.io/quay.io/jupyter/base-notebook`` (a path prefix,
        for mirrors and pull-through caches that host several upstreams).
        Which mirror serves which registry is
        :mod:`rootless_gpu_spawner.hub.registry_mirrors`' business.
        """
        domain, _, base = normalize_mirror_prefix(prefix).partition("/")
        path = f"{base}/{self.path}" if base else self.path
        return ImageRef(domain, path, self.tag, self.digest)

    @property
    def pull_args(self) -> tuple[str, str]:
        """(repository, tag-or-digest) for the Engine API's ``/images/create``."""
        return self.repository, (self.digest or self.tag or "latest")


def parse_image_reference(reference: str) -> ImageRef:
    """Parse and normalise like ``docker pull`` does.

    Raises :class:`InvalidImageReference` with a reason a person can act on.
    """
    if not isinstance(reference, str):
        raise InvalidImageReference(repr(reference), "an image name must be a string")
    if not reference:
        raise InvalidImageReference(reference, "the name is empty")
    if reference != reference.strip() or any(c.isspace() for c in reference):
        raise InvalidImageReference(reference, "whitespace is not allowed")
    if len(reference) > 2 * NAME_TOTAL_MAX:
        raise InvalidImageReference(reference, "the name is far too long")

    remainder, digest = reference, None
    if "@" in remainder:
        remainder, _, digest = remainder.partition("@")
        _check_digest(reference, digest)

    name, tag = remainder, None
    # A ':' after the last '/' starts the tag; one before it belongs to a port.
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG.match(tag):
            raise InvalidImageReference(
                reference,
                f"tag {tag!r} must be 1-128 letters, digits, '_', '.' or '-' "
                "and may not start with '.' or '-'",
            )

    if not name:
        raise InvalidImageReference(reference, "the repository name is empty")
    if len(name) > NAME_TOTAL_MAX:
        raise InvalidImageReference(
            reference, f"the repository name is longer than {NAME_TOTAL_MAX} characters"
        )

    domain, path = _split_domain(name)
    if not _DOMAIN.match(domain):
        raise InvalidImageReference(reference, f"{domain!r} is not a valid registry host")
    if domain in _HUB_ALIASES:
        domain = DOCKER_HUB
    if domain == DOCKER_HUB and "/" not in path:
        path = "library/" + path

    for component in path.split("/"):
        if not component:
            raise InvalidImageReference(reference, "empty path component ('//' or trailing '/')")
        if component in (".", ".."):
            raise InvalidImageReference(reference, "'.' and '..' are not allowed in image names")
        if component != component.lower() and _PATH_COMPONENT.match(component.lower()):
            raise InvalidImageReference(reference, "repository names must be lowercase")
        if not _PATH_COMPONENT.match(component):
            raise InvalidImageReference(
                reference,
                f"path component {component!r} may only contain lowercase letters, digits "
                "and single separators ('.', '_', '__', '-') between them",
            )

    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(domain, path, tag, digest)


def _split_domain(name: str) -> tuple[str, str]:
    # Docker's rule: the first component is a registry host when it contains
    # '.' or ':', is 'localhost', or has uppercase letters (repository paths
    # cannot); otherwise the image is on Docker Hub.
    first, sep, rest = name.partition("/")
    if not sep:
        return DOCKER_HUB, name
    if "." in first or ":" in first or first == "localhost" or first.lower() != first:
        return first, rest
    return DOCKER_HUB, name


def _check_digest(reference: str, digest: str) -> None:
    if not _DIGEST.match(digest):
        raise InvalidImageReference(
            reference, f"digest {digest!r} must look like sha256:<64 hex characters>"
        )
    algorithm, _, hexpart = digest.partition(":")
    if algorithm == "sha256" and not re.fullmatch(r"[0-9a-f]{64}", hexpart):
        raise InvalidImageReference(
            reference, "a sha256 digest has exactly 64 lowercase hex characters"
        )
    if algorithm == "sha512" and not re.fullmatch(r"[0-9a-f]{128}", hexpart):
        raise InvalidImageReference(
            reference, "a sha512 digest has exactly 128 lowercase hex characters"
        )


def normalize_mirror_prefix(prefix: str) -> str:
    """``https://mirror.example/`` -> ``mirror.example``; validates the host part.

    Docker's own ``registry-mirrors`` setting takes URLs, so admins paste them
    here too; a prefix mirror is addressed by host (and optional path) only.
    """
    if not isinstance(prefix, str) or not prefix.strip():
        raise ValueError("a mirror prefix must be a non-empty string like 'mirror.example.org'")
    value = prefix.strip()
    for scheme in ("https://", "http://"):
        if value.startswith(scheme):
            value = value[len(scheme) :]
    value = value.strip("/")
    domain, _, path = value.partition("/")
    if not _DOMAIN.match(domain):
        raise ValueError(f"mirror prefix {prefix!r}: {domain!r} is not a registry host")
    for component in path.split("/") if path else []:
        if not _PATH_COMPONENT.match(component):
            raise ValueError(f"mirror prefix {prefix!r}: bad path component {component!r}")
    return value
