"""Registries on loopback for mirror tests: a TLS docker-registry of our own, a refusing one, images built by HTTP.

A rootless daemon reaches the host's loopback as 10.0.2.2, which is not an
insecure registry for it (only 127.0.0.0/8 is, inside its own namespace), so
these servers speak TLS with a throw-away certificate for 10.0.2.2 and
127.0.0.1; :func:`trust_for_daemon` puts it where a rootless daemon looks
(``~/.config/docker/certs.d/HOST:PORT/ca.crt``, read at each pull: no restart,
no change to the daemon's configuration).

The shared testbed registry on 127.0.0.1:5000 is only read from here (the lab
image's blobs are copied out of it), never written.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

REGISTRY_BIN = "/usr/bin/docker-registry"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"


def _session(verify) -> requests.Session:
    """Loopback only: no proxy or CA bundle from the environment (it would override ``verify``)."""
    session = requests.Session()
    session.trust_env = False
    session.verify = verify
    return session


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certificate(directory: str) -> tuple[str, str]:
    """A self-signed certificate for 10.0.2.2 and 127.0.0.1 (valid two days); (cert, key) paths."""
    cert, key = os.path.join(directory, "tls.crt"), os.path.join(directory, "tls.key")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", key, "-out", cert,
         "-subj", "/CN=rgs-test-registry", "-addext", "subjectAltName=IP:10.0.2.2,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def trust_for_daemon(home: str, uid: int, gid: int, hostport: str, cert: str) -> str:
    """Make a rootless daemon (of the user with this home) trust ``cert`` for ``hostport``; returns the dir made."""
    base = os.path.join(home, ".config", "docker", "certs.d")
    made = []
    path = base
    for part in (os.path.join(home, ".config"), os.path.join(home, ".config", "docker"), base):
        if not os.path.isdir(part):
            os.mkdir(part, 0o755)
            made.append(part)
    path = os.path.join(base, hostport)
    os.mkdir(path, 0o755)
    shutil.copyfile(cert, os.path.join(path, "ca.crt"))
    for p in (*made, path, os.path.join(path, "ca.crt")):
        os.chown(p, uid, gid)
    return path


class RegistryProcess:
    """``docker-registry`` serving TLS on 127.0.0.1:port with its own storage; never talks to an upstream."""

    def __init__(self, workdir: str, cert: str, key: str, port: int | None = None):
        self.port = port or free_port()
        self.storage = os.path.join(workdir, "storage")
        self.config = os.path.join(workdir, "registry.yml")
        self.log_path = os.path.join(workdir, "registry.log")
        self.cert = cert
        os.makedirs(self.storage, exist_ok=True)
        with open(self.config, "w") as f:
            f.write(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
                f"    rootdirectory: {self.storage}\n  delete:\n    enabled: true\n"
                f"http:\n  addr: 127.0.0.1:{self.port}\n  tls:\n    certificate: {cert}\n    key: {key}\n"
            )
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> "RegistryProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", self.config], stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if _session(self.cert).get(self.url + "/v2/", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"docker-registry did not answer on {self.url} within 30 s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


class _Refusing(BaseHTTPRequestHandler):
    """Like an allow-list mirror: /v2/ answers, every image is refused with 403 "not in allowlist"."""

    def do_GET(self):
        if self.path.rstrip("/") == "/v2":
            body, status = b"{}", 200
        else:
            self.server.refused.append(self.path)
            body = json.dumps({"errors": [{"code": "DENIED", "message": "not in allowlist", "detail": None}]}).encode()
            status = 403
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


class RefusingMirror:
    """A tiny TLS HTTP server on 127.0.0.1 that refuses every image (403, "not in allowlist")."""

    def __init__(self, cert: str, key: str):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
        self.httpd.refused = []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)

    @property
    def refused(self) -> list:
        return self.httpd.refused

    def start(self) -> "RefusingMirror":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


# ---- an image built over HTTP: the lab image's blobs plus small layers of our own -------------


def _random_layer(index: int, size: int) -> tuple[bytes, str]:
    """A gzip'd tar holding one file of random bytes; (blob, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo(f"rgsmirror-layer{index}")
        info.size, info.mtime, info.mode = size, 0, 0o644
        tar.addfile(info, io.BytesIO(os.urandom(size)))
    data = raw.getvalue()
    return gzip.compress(data, compresslevel=1, mtime=0), "sha256:" + hashlib.sha256(data).hexdigest()


class ImageBuilder:
    """Writes one multi-layer image into a registry (by its HTTP API) under several repository names."""

    def __init__(self, registry: RegistryProcess):
        self.registry = registry
        self.session = _session(registry.cert)

    def _upload(self, repo: str, digest: str, data) -> None:
        url = self.registry.url
        if self.session.head(f"{url}/v2/{repo}/blobs/{digest}", timeout=30).status_code == 200:
            return
        r = self.session.post(f"{url}/v2/{repo}/blobs/uploads/", timeout=30)
        r.raise_for_status()
        location = r.headers["Location"]
        location = location if location.startswith("http") else url + location
        sep = "&" if "?" in location else "?"
        r = self.session.put(f"{location}{sep}digest={digest}", data=data,
                             headers={"Content-Type": "application/octet-stream"}, timeout=600)
        r.raise_for_status()

    def _mount(self, repo: str, digest: str, source_repo: str) -> None:
        r = self.session.post(f"{self.registry.url}/v2/{repo}/blobs/uploads/",
                              params={"mount": digest, "from": source_repo}, timeout=30)
        if r.status_code != 201:
            raise RuntimeError(f"could not mount {digest} into {repo}: HTTP {r.status_code} {r.text[:200]}")

    def build(self, base_registry: str, base_repo: str, base_tag: str, repos: list[str],
              layers: int = 3, layer_bytes: int = 3_000_000) -> dict:
        """Copy ``base_repo:base_tag`` from the plain-HTTP ``base_registry`` (host:port), add
        ``layers`` random layers, push the manifest as ``latest`` under every name in ``repos``.
        Returns ``{"manifest": ..., "added_bytes": size of the new layers, "total_bytes": all blobs}``."""
        source = f"http://{base_registry}/v2/{base_repo}"
        plain = _session(True)
        manifest = plain.get(f"{source}/manifests/{base_tag}", headers={"Accept": MANIFEST_V2}, timeout=30)
        manifest.raise_for_status()
        manifest = manifest.json()
        config = plain.get(f"{source}/blobs/{manifest['config']['digest']}", timeout=60)
        config.raise_for_status()
        config = config.json()
        first = repos[0]
        for layer in manifest["layers"]:
            with plain.get(f"{source}/blobs/{layer['digest']}", stream=True, timeout=600) as r:
                r.raise_for_status()
                self._upload(first, layer["digest"], r.iter_content(1 << 20))
        added = []
        for i in range(layers):
            blob, diff_id = _random_layer(i, layer_bytes)
            digest = "sha256:" + hashlib.sha256(blob).hexdigest()
            self._upload(first, digest, blob)
            added.append({"mediaType": LAYER_GZIP, "size": len(blob), "digest": digest})
            config["rootfs"]["diff_ids"].append(diff_id)
            config.setdefault("history", []).append({"created": "2026-01-01T00:00:00Z",
                                                     "created_by": f"rgsmirror test layer {i}"})
        config_blob = json.dumps(config).encode()
        config_digest = "sha256:" + hashlib.sha256(config_blob).hexdigest()
        self._upload(first, config_digest, config_blob)
        new = {"schemaVersion": 2, "mediaType": MANIFEST_V2,
               "config": {"mediaType": CONFIG_V1, "size": len(config_blob), "digest": config_digest},
               "layers": manifest["layers"] + added}
        body = json.dumps(new).encode()
        for repo in repos:
            if repo != first:
                for blob in [new["config"], *new["layers"]]:
                    self._mount(repo, blob["digest"], first)
            r = self.session.put(f"{self.registry.url}/v2/{repo}/manifests/latest", data=body,
                                 headers={"Content-Type": MANIFEST_V2}, timeout=30)
            r.raise_for_status()
        return {
            "manifest": new,
            "added_bytes": sum(layer["size"] for layer in added),
            "total_bytes": sum(layer["size"] for layer in new["layers"]) + len(config_blob),
        }
