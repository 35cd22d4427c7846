"""The lab's pull-through cache on the host: its configuration, files and processes.

One *upstream* per remote registry (distribution's proxy mode proxies exactly
one remote): for each, Debian's ``docker-registry`` in proxy mode on a loopback
*backend* port, and in front of it our single-flight front
(:mod:`.singleflight`) on the *port* students' daemons use, as
``10.0.2.2:PORT`` (slirp4netns maps the host's loopback there).  Both listen
on 127.0.0.1 only: nothing is exposed off the host.

Everything lives under one root (default :data:`DEFAULT_ROOT`)::

    ROOT/cache.json                 what ``cache setup`` chose (this module's CacheConfig)
    ROOT/UPSTREAM/registry.yml      the registry's configuration (proxy.remoteurl = the upstream)
    ROOT/UPSTREAM/data/             its storage (the cached blobs)
    ROOT/UPSTREAM/{registry,front}.{pid,log}

Where systemd runs, each process is a system service
(``rootless-gpu-cache-UPSTREAM-registry.service`` / ``-front.service``);
otherwise it is started by hand: its own session, stdin /dev/null, output
appended to its log, pid in its pid file (checked against /proc/PID/cmdline
before any signal is sent).

Size limit: the registry has no quota.  ``limit_bytes`` is what ``doctor``
compares the storage with (a warning above it) and ``cache prune`` enforces:
it stops the upstream's registry, empties its storage and starts it again
(a cache: the next pull fills it again; students' daemons keep their own
copies).  The registry itself also drops proxied blobs 7 days after their
last fetch (distribution 2.8's fixed proxy TTL).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Optional
from urllib.parse import urlparse

from . import safefs

DEFAULT_ROOT = "/var/lib/rootless-gpu-spawner/cache"
CONFIG_NAME = "cache.json"
#: How students' daemons reach the host's loopback (slirp4netns, host loopback on).
GATEWAY = "10.0.2.2"
REGISTRY_BIN = "/usr/bin/docker-registry"
DEFAULT_PORT_BASE = 5001
BACKEND_OFFSET = 100
DEFAULT_LIMIT = 200 << 30
SYSTEMD_DIR = "/etc/systemd/system"
#: The upstreams a plain ``cache setup`` proxies, in port order (docker.io first: 10.0.2.2:5001).
DEFAULT_UPSTREAMS = (
    ("docker.io", "https://registry-1.docker.io"),
    ("quay.io", "https://quay.io"),
    ("nvcr.io", "https://nvcr.io"),
    ("ghcr.io", "https://ghcr.io"),
)
REGISTRY_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+(:[0-9]{1,5})?$")


class CacheError(RuntimeError):
    """The cache cannot be set up / started / read; the message says what to do."""


@dataclass
class Upstream:
    registry: str  # the name images carry: docker.io, quay.io, ...
    remote: str  # the URL the registry proxies
    port: int  # the front: where daemons connect (10.0.2.2:port)
    backend_port: int  # the registry itself (waiters are redirected here)

    @property
    def mirror(self) -> str:
        return f"{GATEWAY}:{self.port}"

    @property
    def unit_name(self) -> str:
        return "rootless-gpu-cache-" + self.registry.replace(":", "-")


@dataclass
class CacheConfig:
    root: str
    limit_bytes: int = DEFAULT_LIMIT
    upstreams: list[Upstream] = field(default_factory=list)

    # ------------------------------------------------------------ files

    def dir(self, up: Upstream) -> str:
        return os.path.join(self.root, up.registry.replace(":", "_"))

    def data_dir(self, up: Upstream) -> str:
        return os.path.join(self.dir(up), "data")

    def file(self, up: Upstream, name: str) -> str:
        return os.path.join(self.dir(up), name)

    def find(self, registry: str) -> Optional[Upstream]:
        return next((u for u in self.upstreams if u.registry == registry), None)

    def to_json(self) -> str:
        return json.dumps({"limit_bytes": self.limit_bytes, "upstreams": [asdict(u) for u in self.upstreams]}, indent=2) + "\n"

    def lab_cache_mirrors(self) -> dict[str, str]:
        return {u.registry: u.mirror for u in self.upstreams}

    def insecure_entries(self) -> list[str]:
        """What each student's daemon.json lists under insecure-registries (the front and the redirect target)."""
        out = []
        for u in self.upstreams:
            out += [f"{GATEWAY}:{u.port}", f"{GATEWAY}:{u.backend_port}"]
        return out


def validate_upstream(registry: str, remote: str) -> None:
    if not REGISTRY_NAME.match(registry):
        raise CacheError(f"--upstream {registry}=...: {registry!r} is not a registry host name (e.g. docker.io, quay.io)")
    u = urlparse(remote)
    if u.scheme not in ("http", "https") or not u.hostname or u.path not in ("", "/") or u.query or u.username:
        raise CacheError(f"--upstream {registry}={remote}: give the upstream as http(s)://HOST[:PORT] "
                         "(no path, no credentials)")


def make_config(root: str, upstreams, limit_bytes: int, port_base: int) -> CacheConfig:
    ups = []
    for i, (registry, remote) in enumerate(upstreams):
        validate_upstream(registry, remote)
        port = port_base + i
        if not (1024 <= port and port + BACKEND_OFFSET < 65536):
            raise CacheError(f"--port-base {port_base}: ports must lie in 1024..65435")
        ups.append(Upstream(registry, remote.rstrip("/"), port, port + BACKEND_OFFSET))
    if len({u.registry for u in ups}) != len(ups):
        raise CacheError("each --upstream registry may be given once")
    if limit_bytes <= 0:
        raise CacheError("--limit must be a positive size, e.g. 200G")
    return CacheConfig(os.path.abspath(root), limit_bytes, ups)


def load(root: str = DEFAULT_ROOT) -> Optional[CacheConfig]:
    """The configuration ``cache setup`` saved under *root*, None when there is none."""
    path = os.path.join(root, CONFIG_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CacheError(f"{path} cannot be read ({e}); run 'rootless-gpu-admin cache setup' again") from None
    try:
        ups = [Upstream(str(u["registry"]), str(u["remote"]), int(u["port"]), int(u["backend_port"])) for u in raw["upstreams"]]
        return CacheConfig(os.path.abspath(root), int(raw["limit_bytes"]), ups)
    except (KeyError, TypeError, ValueError):
        raise CacheError(f"{path} is not a lab cache configuration; run 'rootless-gpu-admin cache setup' again") from None


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)i?B?\s*", text, re.I)
    if not m:
        raise CacheError(f"{text!r} is not a size: give e.g. 500G, 2T or 800M")
    return int(float(m.group(1)) * (1 << (10 * " KMGT".index(m.group(2).upper() or " "))))


def registry_yaml(cfg: CacheConfig, up: Upstream) -> str:
    return (
        "# Written by 'rootless-gpu-admin cache setup': a pull-through cache of one upstream.\n"
        "version: 0.1\n"
        "log:\n  level: info\n  accesslog:\n    disabled: true\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {cfg.data_dir(up)}\n"
        "  delete:\n    enabled: true\n"
        "http:\n"
        f"  addr: 127.0.0.1:{up.backend_port}\n"
        "  headers:\n    X-Content-Type-Options: [nosniff]\n"
        "proxy:\n"
        f"  remoteurl: {up.remote}\n"
    )


# ------------------------------------------------------------------ processes


def registry_cmd(cfg: CacheConfig, up: Upstream) -> list[str]:
    return [REGISTRY_BIN, "serve", cfg.file(up, "registry.yml")]


def front_cmd(cfg: CacheConfig, up: Upstream) -> list[str]:
    return [sys.executable, "-m", "rootless_gpu_spawner.host.singleflight", "--listen", f"127.0.0.1:{up.port}",
            "--backend", f"127.0.0.1:{up.backend_port}", "--storage", cfg.data_dir(up)]


def unit_text(what: str, cmd: list[str], up: Upstream) -> str:
    return (
        f"# Written by 'rootless-gpu-admin cache setup': the lab cache of {up.registry} ({what}).\n"
        "[Unit]\n"
        f"Description=rootless-gpu-spawner lab cache {up.registry} ({what})\n"
        "After=network-online.target\n\n"
        "[Service]\n"
        f"ExecStart={' '.join(cmd)}\n"
        "Restart=on-failure\n"
        "NoNewPrivileges=yes\nPrivateTmp=yes\nProtectHome=yes\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )


def _pid_of(cfg: CacheConfig, up: Upstream, what: str) -> Optional[int]:
    """The live pid in ROOT/UPSTREAM/WHAT.pid, only if its command line is ours."""
    try:
        with open(cfg.file(up, f"{what}.pid")) as f:
            pid = int(f.read().split()[0])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().split(b"\0")
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                return None
    except (OSError, ValueError, IndexError):
        return None
    want = (registry_cmd if what == "registry" else front_cmd)(cfg, up)
    return pid if [c.decode("utf-8", "replace") for c in cmd if c][-len(want) + 1:] == want[1:] else None


def answers(port: int, timeout: float = 3.0) -> Optional[int]:
    """The HTTP status of GET /v2/ on 127.0.0.1:*port*, None when nothing answers."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", "/v2/")
        r = c.getresponse()
        r.read(4096)
        return r.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        c.close()


def _spawn(cfg: CacheConfig, up: Upstream, what: str, cmd: list[str]) -> int:
    fd = os.open(cfg.file(up, f"{what}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
    try:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, cwd="/", start_new_session=True,
                             close_fds=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                                                  "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    finally:
        os.close(fd)
    _write(cfg.file(up, f"{what}.pid"), f"{p.pid}\n".encode(), 0o644)
    return p.pid


def _wait_answer(port: int, pid: int, log: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while answers(port, 1.0) is None:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if not _alive(pid) or time.monotonic() > deadline:
            tail = _tail(log)
            raise CacheError(f"the lab cache process for 127.0.0.1:{port} did not answer within {timeout:g} s; "
                             f"last lines of {log}:\n{tail}")
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _tail(path: str, n: int = 8) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 8192))
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _write(path: str, data: bytes, mode: int) -> bool:
    """Write *path* (root-owned cache files) atomically when its content differs; True when it did."""
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return False
    except FileNotFoundError:
        pass
    d, name = os.path.split(path)
    dfd = os.open(d, safefs.O_DIR)
    try:
        safefs.atomic_write(dfd, name, data, mode=mode, owner=None, shown=path)
    finally:
        os.close(dfd)
    return True


def _port_taken(port: int) -> bool:
    return answers(port, 1.0) is not None


def ensure_files(cfg: CacheConfig) -> list[str]:
    """ROOT, cache.json and each upstream's directory and registry.yml; the paths it changed."""
    changed = []
    os.makedirs(cfg.root, mode=0o755, exist_ok=True)
    if _write(os.path.join(cfg.root, CONFIG_NAME), cfg.to_json().encode(), 0o644):
        changed.append(os.path.join(cfg.root, CONFIG_NAME))
    for up in cfg.upstreams:
        os.makedirs(cfg.data_dir(up), mode=0o750, exist_ok=True)
        if _write(cfg.file(up, "registry.yml"), registry_yaml(cfg, up).encode(), 0o644):
            changed.append(cfg.file(up, "registry.yml"))
    return changed


def ensure_running(cfg: CacheConfig, up: Upstream, restart: bool = False, timeout: float = 30.0) -> str:
    """Start the upstream's registry and front by hand unless they run; say what happened."""
    done = []
    for what, cmd, port in (("registry", registry_cmd(cfg, up), up.backend_port), ("front", front_cmd(cfg, up), up.port)):
        pid = _pid_of(cfg, up, what)
        if pid and restart:
            stop_pid(pid)
            pid = None
        if pid and answers(port) is not None:
            done.append(f"{what} running (pid {pid})")
            continue
        if not pid and _port_taken(port):
            raise CacheError(f"something else answers on 127.0.0.1:{port}; stop it (ss -ltnp 'sport = :{port}') "
                             "or choose other ports with --port-base")
        pid = pid or _spawn(cfg, up, what, cmd)
        _wait_answer(port, pid, cfg.file(up, f"{what}.log"), timeout)
        done.append(f"{what} started (pid {pid})")
    return ", ".join(done)


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            except ChildProcessError:
                pass
            if not _alive(pid):
                return
            time.sleep(0.1)


def stop(cfg: CacheConfig, up: Upstream) -> list[str]:
    """Stop the front, then the registry, started by hand; what was stopped."""
    out = []
    for what in ("front", "registry"):
        pid = _pid_of(cfg, up, what)
        if pid:
            stop_pid(pid)
            out.append(f"{what} (pid {pid})")
        try:
            os.unlink(cfg.file(up, f"{what}.pid"))
        except FileNotFoundError:
            pass
    return out


def disk_use(path: str) -> int:
    """Bytes allocated under *path*, not following links (the cache's own root-owned tree)."""
    total = 0
    stack = [path]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                for e in it:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
        except OSError:
            continue
    return total


def empty_storage(cfg: CacheConfig, up: Upstream) -> int:
    """Remove the upstream's cached blobs (its registry must be stopped); the bytes freed."""
    data = cfg.data_dir(up)
    before = disk_use(data)
    for entry in os.listdir(data):
        p = os.path.join(data, entry)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)
    return before


def status(cfg: CacheConfig) -> list[dict]:
    out = []
    for up in cfg.upstreams:
        out.append({
            "registry": up.registry, "remote": up.remote, "mirror": up.mirror,
            "front_pid": _pid_of(cfg, up, "front"), "registry_pid": _pid_of(cfg, up, "registry"),
            "front_answers": answers(up.port), "registry_answers": answers(up.backend_port),
            "disk_bytes": disk_use(cfg.data_dir(up)), "storage": cfg.data_dir(up),
        })
    return out


def systemd_units(cfg: CacheConfig) -> dict[str, str]:
    """unit file name -> text, for a host where systemd runs."""
    units = {}
    for up in cfg.upstreams:
        units[up.unit_name + "-registry.service"] = unit_text("registry", registry_cmd(cfg, up), up)
        units[up.unit_name + "-front.service"] = unit_text("single-flight front", front_cmd(cfg, up), up)
    return units
