"""An "upstream" registry on loopback holding a synthetic multi-layer image (test and bench helper).

``UpstreamRegistry(tmpdir)`` runs Debian's ``docker-registry`` (no proxy
section: it never talks to anything) on a free 127.0.0.1 port;
``push_image(port, repo, tag, layer_sizes)`` builds an image of gzip'd tar
layers of random (incompressible) bytes and pushes it with the registry API
(monolithic uploads, schema 2 manifest), returning the digests and sizes the
tests count against.  Real daemons pull and extract it; it has no program to run.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import os
import random
import socket
import subprocess
import tarfile
import time
from dataclasses import dataclass, field

REGISTRY_BIN = "/usr/bin/docker-registry"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_call(port: int, method: str, path: str, body: bytes = b"", headers=None, timeout: float = 60.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body or None, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


class UpstreamRegistry:
    """A plain registry on 127.0.0.1:PORT storing under *root*; stop() ends it."""

    def __init__(self, root: str, port: int = 0):
        self.root = root
        self.port = port or free_port()
        self.proc = None

    def start(self, timeout: float = 30.0) -> "UpstreamRegistry":
        os.makedirs(self.root, exist_ok=True)
        cfg = os.path.join(self.root, "config.yml")
        with open(cfg, "w") as f:
            f.write("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
                    f"    rootdirectory: {self.root}/data\nhttp:\n  addr: 127.0.0.1:{self.port}\n")
        self.log = open(os.path.join(self.root, "registry.log"), "ab")
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", cfg], stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if http_call(self.port, "GET", "/v2/", timeout=2)[0] == 200:
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"upstream registry did not start on 127.0.0.1:{self.port}; see {self.root}/registry.log")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "log", None):
            self.log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


@dataclass
class PushedImage:
    repo: str
    tag: str
    manifest_digest: str
    layers: list[tuple[str, int]] = field(default_factory=list)  # (digest, size)
    config: tuple[str, int] = ("", 0)

    @property
    def blob_bytes(self) -> int:
        return sum(s for _, s in self.layers) + self.config[1]


def _layer(size: int, seed: int) -> tuple[bytes, str]:
    """A gzip'd tar holding one file of *size* pseudo-random bytes; (blob, diff_id)."""
    data = random.Random(f"layer-{seed}").randbytes(size)  # deterministic, incompressible
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"data/layer{seed}.bin")
        info.size, info.mtime, info.mode = size, 0, 0o644
        tar.addfile(info, io.BytesIO(data))
    raw = tar_buf.getvalue()
    return gzip.compress(raw, compresslevel=1, mtime=0), "sha256:" + hashlib.sha256(raw).hexdigest()


def _put_blob(port: int, repo: str, blob: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    code, hdr, _ = http_call(port, "POST", f"/v2/{repo}/blobs/uploads/")
    if code != 202:
        raise RuntimeError(f"upload start for {repo}: HTTP {code}")
    loc = hdr["location"]
    loc = loc.split("127.0.0.1:%d" % port, 1)[-1] if "://" in loc else loc
    sep = "&" if "?" in loc else "?"
    code, _, body = http_call(port, "PUT", f"{loc}{sep}digest={digest}", blob,
                              {"Content-Type": "application/octet-stream", "Content-Length": str(len(blob))}, timeout=600)
    if code != 201:
        raise RuntimeError(f"upload of {digest} to {repo}: HTTP {code} {body[:200]!r}")
    return digest


def push_image(port: int, repo: str, tag: str, layer_sizes: list[int], seed: int = 0) -> PushedImage:
    """Push a fresh image (different *seed* = different blobs) and return what was pushed."""
    layers, diff_ids = [], []
    for i, size in enumerate(layer_sizes):
        blob, diff_id = _layer(size, seed * 1000 + i)
        layers.append((_put_blob(port, repo, blob), len(blob)))
        diff_ids.append(diff_id)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/data/none"], "Labels": {"rgs.test": "synthetic"}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }).encode()
    cdigest = _put_blob(port, repo, config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST_V2,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": len(config), "digest": cdigest},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": s, "digest": d}
                   for d, s in layers],
    }).encode()
    code, hdr, body = http_call(port, "PUT", f"/v2/{repo}/manifests/{tag}", manifest, {"Content-Type": MANIFEST_V2})
    if code != 201:
        raise RuntimeError(f"manifest {repo}:{tag}: HTTP {code} {body[:200]!r}")
    return PushedImage(repo, tag, hdr.get("docker-content-digest", ""), layers, (cdigest, len(config)))
