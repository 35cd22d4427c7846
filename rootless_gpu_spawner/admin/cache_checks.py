"""``doctor``'s checks of the lab cache and of each student's image storage (Check records with a fix).

Host (only when ``cache setup`` left a configuration under the cache root):
each upstream's front and registry answer on loopback, the storage is within
the size limit, and the upstream answers (any HTTP answer: 401 from Docker Hub
is "reachable").  Per student: the daemon has the cache's addresses among its
loaded insecure registries (``/info`` RegistryConfig, through the verified
socket) and runs with host loopback (checked by ``host loopback``); and how
many bytes its image storage holds (``/system/df``).
"""

from __future__ import annotations

import http.client
import ssl
from typing import Optional
from urllib.parse import urlparse

from ..host import daemonctl, imagestore, labcache
from ..host.labcache import CacheConfig, CacheError
from ..safetext import printable
from .checks import ADMIN, Check, daemon_facts, failed, passed, skipped, warned


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def check_upstream_reachable(up: labcache.Upstream, timeout: float = 5.0) -> Check:
    name = f"cache {up.registry} upstream"
    u = urlparse(up.remote)
    port = u.port or (443 if u.scheme == "https" else 80)
    conn_cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    kwargs = {"context": ssl.create_default_context()} if u.scheme == "https" else {}
    c = conn_cls(u.hostname, port, timeout=timeout, **kwargs)
    try:
        c.request("GET", "/v2/")
        code = c.getresponse().status
    except (OSError, http.client.HTTPException) as e:
        return warned(name, f"{up.remote} does not answer ({printable(e, 200)}): the cache serves only what it "
                            "holds; a miss fails (the spawner then tries the next mirror)",
                      f"check the host's network/proxy to {u.hostname}, or 'cache setup --upstream "
                      f"{up.registry}=URL' with a mirror that answers", )
    finally:
        c.close()
    return passed(name, f"{up.remote} answers /v2/ (HTTP {code})")


def cache_host_checks(cfg: CacheConfig, upstream_probe: bool = True) -> list[Check]:
    out = []
    used = 0
    for up in cfg.upstreams:
        front, reg = labcache.answers(up.port), labcache.answers(up.backend_port)
        name = f"cache {up.registry}"
        if front is None or reg is None:
            down = " and ".join(w for w, a in (("front (127.0.0.1:%d)" % up.port, front),
                                               ("registry (127.0.0.1:%d)" % up.backend_port, reg)) if a is None)
            out.append(failed(name, f"the lab cache of {up.registry}: {down} does not answer; students' pulls "
                                    "skip it (slower, one download each)",
                              f"{ADMIN} cache setup --root {cfg.root} --host-only  (logs: {cfg.dir(up)}/*.log)"))
        else:
            out.append(passed(name, f"up: daemons pull {up.registry} images from {up.mirror} (proxies {up.remote})"))
        if upstream_probe:
            out.append(check_upstream_reachable(up))
        used += labcache.disk_use(cfg.data_dir(up))
    if used > cfg.limit_bytes:
        out.append(warned("cache disk", f"{_gib(used)} under {cfg.root}, over the limit of {_gib(cfg.limit_bytes)}",
                          f"{ADMIN} cache prune --root {cfg.root} --apply  (empties it; the next pulls refill it)"))
    else:
        out.append(passed("cache disk", f"{_gib(used)} under {cfg.root} of {_gib(cfg.limit_bytes)} limit"))
    return out


def check_cache_in_daemon(pw, cfg: CacheConfig, facts=None) -> Check:
    name = "lab cache"
    facts = facts or daemon_facts(pw)
    if not facts.up or not facts.info:
        return skipped(name, "daemon not running (see 'daemon')", pw.pw_name)
    reg = facts.info.get("RegistryConfig")
    index = reg.get("IndexConfigs") if isinstance(reg, dict) else None
    loaded = {k for k, v in index.items() if isinstance(v, dict) and v.get("Secure") is False} if isinstance(index, dict) else set()
    missing = [e for e in cfg.insecure_entries() if e not in loaded]
    if missing:
        return failed(name, f"the daemon does not list {', '.join(missing)} as insecure registries: its pulls "
                            "from the lab cache fail (plain HTTP on the host's loopback)",
                      f"{ADMIN} cache setup --root {cfg.root} --user {pw.pw_name}  (restarts the daemon)", pw.pw_name)
    return passed(name, "the daemon reaches the lab cache at " + ", ".join(u.mirror for u in cfg.upstreams)
                        + " (insecure-registries loaded; host loopback: see below)", pw.pw_name)


def check_image_storage(pw) -> Check:
    name = "image storage"
    st = imagestore.storage(pw)
    if st["error"]:
        return skipped(name, st["error"], pw.pw_name)
    return passed(name, f"{_gib(st['layers_bytes'])} in {st['images']} image(s) in the daemon's own store "
                        f"(reclaim: {ADMIN} prune-images --user {pw.pw_name})", pw.pw_name)


def run(users, root: str, upstream_probe: bool = True) -> list[Check]:
    try:
        cfg: Optional[CacheConfig] = labcache.load(root)
    except CacheError as e:
        return [failed("lab cache", str(e), f"{ADMIN} cache setup --root {root}")]
    out = cache_host_checks(cfg, upstream_probe) if cfg else []
    for pw in users:
        facts = daemon_facts(pw)
        if cfg:
            out.append(check_cache_in_daemon(pw, cfg, facts))
        if facts.up:
            out.append(check_image_storage(pw))
    return out


def status_line(pw) -> Optional[str]:
    st = imagestore.storage(pw)
    if st["error"]:
        return None
    return f"  image storage: {_gib(st['layers_bytes'])} in {st['images']} image(s)"


__all__ = ["run", "status_line", "check_image_storage", "check_cache_in_daemon", "cache_host_checks", "Check",
           "daemonctl"]
