"""``rootless-gpu-admin cache warm IMAGE...``: fill the lab cache the night before a lesson.

For each image: its registry names the upstream (docker.io when the name has
no registry host), the manifest is read through that upstream's front on the
host's loopback (a manifest list: the entry for ``--platform``), then the
config and every layer blob are read through the front and thrown away,
``parallel`` at a time.  Reading a blob through the front is what makes the
registry fetch and store it (once, whoever else asks meanwhile).  Bounded:
manifests 4 MiB, a blob ``max_blob`` bytes, each request ``timeout`` s of
silence; an answer the registry gives with an error is reported, not raised.
"""

from __future__ import annotations

import http.client
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlparse

from ..host.labcache import CacheConfig, CacheError, Upstream

ACCEPT = ", ".join([
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
])
MANIFEST_LIMIT = 4 << 20
REFERENCE = re.compile(r"^(?:(?P<host>[a-z0-9.-]+\.[a-z0-9.-]+(?::[0-9]+)?|localhost(?::[0-9]+)?)/)?"
                       r"(?P<repo>[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)"
                       r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")


@dataclass
class Warmed:
    image: str
    ok: bool
    blobs: int = 0
    bytes: int = 0
    seconds: float = 0.0
    error: str = ""
    digests: list[str] = field(default_factory=list)


def parse_reference(image: str) -> tuple[str, str, str]:
    """(registry, repository, tag or digest) of *image*, Docker Hub's short names expanded."""
    m = REFERENCE.match(image)
    if not m:
        raise CacheError(f"{image[:200]!r} is not an image name (e.g. quay.io/jupyter/base-notebook:2025-01-06)")
    host = m.group("host") or "docker.io"
    repo = m.group("repo")
    if host in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        host = "docker.io"
        if "/" not in repo:
            repo = "library/" + repo
    return host, repo, m.group("digest") or m.group("tag") or "latest"


class _Client:
    """GETs on one front (127.0.0.1:port), following its 307 to the registry's own loopback port."""

    def __init__(self, up: Upstream, timeout: float):
        self.up, self.timeout = up, timeout

    def get(self, path: str, headers: dict, sink=None, limit: int = MANIFEST_LIMIT) -> tuple[int, dict, bytes, int]:
        port = self.up.port
        for _ in range(3):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=self.timeout)
            try:
                c.request("GET", path, headers=headers)
                r = c.getresponse()
                hdrs = {k.lower(): v for k, v in r.getheaders()}
                if r.status in (301, 302, 307, 308) and "location" in hdrs:
                    loc = urlparse(hdrs["location"])
                    if loc.hostname not in ("127.0.0.1", "localhost", "10.0.2.2") or not loc.port:
                        return r.status, hdrs, b"redirect off the host refused", 0
                    port, path = loc.port, loc.path + (f"?{loc.query}" if loc.query else "")
                    continue
                if sink is None or r.status != 200:
                    body = r.read(limit + 1)
                    return r.status, hdrs, body[:limit], len(body)
                n = 0
                while chunk := r.read(1 << 20):
                    n += len(chunk)
                    if n > limit:
                        raise CacheError(f"{path}: larger than {limit} bytes; stopped")
                return r.status, hdrs, b"", n
            finally:
                c.close()
        return 508, {}, b"too many redirects", 0


def _manifest(client: _Client, repo: str, ref: str, platform: str) -> tuple[dict, str]:
    os_, _, arch = platform.partition("/")
    for _ in range(2):
        code, hdrs, body, _n = client.get(f"/v2/{repo}/manifests/{ref}", {"Accept": ACCEPT})
        if code != 200:
            raise CacheError(f"manifest {repo}:{ref}: HTTP {code} {body[:200].decode('utf-8', 'replace')}")
        doc = json.loads(body)
        if "manifests" not in doc:
            return doc, hdrs.get("docker-content-digest", "")
        pick = [m for m in doc["manifests"] if m.get("platform", {}).get("os") == os_
                and m.get("platform", {}).get("architecture") == arch]
        if not pick:
            raise CacheError(f"{repo}:{ref} has no {platform} image")
        ref = pick[0]["digest"]
    raise CacheError(f"{repo}: a manifest list inside a manifest list")


def warm_image(cfg: CacheConfig, image: str, *, platform: str = "linux/amd64", parallel: int = 3,
               timeout: float = 300.0, max_blob: int = 64 << 30) -> Warmed:
    t0 = time.monotonic()
    try:
        registry, repo, ref = parse_reference(image)
        up = cfg.find(registry)
        if up is None:
            raise CacheError(f"no lab cache for {registry} (the cache proxies: "
                             f"{', '.join(u.registry for u in cfg.upstreams)}); add it with "
                             f"'rootless-gpu-admin cache setup --upstream {registry}=https://{registry}'")
        client = _Client(up, timeout)
        doc, _digest = _manifest(client, repo, ref, platform)
        blobs = [doc["config"]["digest"], *[layer["digest"] for layer in doc.get("layers", [])]]

        def fetch(d: str) -> int:
            code, _h, body, n = client.get(f"/v2/{repo}/blobs/{d}", {}, sink=True, limit=max_blob)
            if code != 200:
                raise CacheError(f"blob {d[:19]}: HTTP {code} {body[:200].decode('utf-8', 'replace')}")
            return n

        with ThreadPoolExecutor(max_workers=max(1, min(parallel, 8))) as pool:
            sizes = list(pool.map(fetch, blobs))
        return Warmed(image, True, len(blobs), sum(sizes), time.monotonic() - t0, digests=blobs)
    except (CacheError, OSError, http.client.HTTPException, ValueError, KeyError, TypeError) as e:
        return Warmed(image, False, seconds=time.monotonic() - t0, error=str(e) or type(e).__name__)
