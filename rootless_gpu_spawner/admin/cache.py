"""``rootless-gpu-admin cache setup|stop|status|warm|prune``: the lab's pull-through cache.

    rootless-gpu-admin cache setup [--root DIR] [--limit SIZE] [--upstream REGISTRY=URL ...] [--port-base N]
                                   [--user NAME ... | --group GROUP] [--no-restart] [--json]
    rootless-gpu-admin cache status [--root DIR] [--json]
    rootless-gpu-admin cache stop [--root DIR]
    rootless-gpu-admin cache warm IMAGE... [--root DIR] [--platform OS/ARCH] [--parallel N] [--json]
    rootless-gpu-admin cache prune [--root DIR] [--registry NAME ...] [--apply]

``setup`` is idempotent: the cache's files (host/labcache.py), its processes
(systemd services where systemd runs, started by hand otherwise), and, for each
student (named, or every student with a daemon), the cache's loopback
addresses in ``insecure-registries`` of ``~/.config/docker/daemon.json``
(merged with what is there, through the same steps as ``bootstrap``; a running
daemon restarts to read it unless ``--no-restart``).  It ends with the hub
configuration lines that make the spawner try the cache first.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd

from ..host import daemonctl, labcache, service
from ..host.labcache import CacheConfig, CacheError
from ..layout import DAEMON_JSON_REL
from ..safetext import printable
from .. import boundedjson
from . import bootstrap as bootstrap_mod
from . import cachewarm

ROOT_ENV = "RGS_CACHE_ROOT"


def default_root() -> str:
    return os.environ.get(ROOT_ENV) or labcache.DEFAULT_ROOT


def _shown(text) -> str:
    return "\n  ".join(printable(line, 2000) for line in str(text).split("\n"))


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 28 else f"{n / (1 << 20):.1f} MiB"


def _loaded(cfg_root: str) -> CacheConfig:
    cfg = labcache.load(cfg_root)
    if cfg is None:
        raise CacheError(f"no lab cache under {cfg_root} (no {labcache.CONFIG_NAME}): set one up with "
                         "'rootless-gpu-admin cache setup'")
    return cfg


def _upstreams(args) -> list[tuple[str, str]]:
    out = []
    for item in args.upstream or []:
        registry, sep, url = item.partition("=")
        if not sep:
            raise CacheError(f"--upstream {item!r}: give REGISTRY=URL, e.g. quay.io=https://quay.io")
        out.append((registry.strip().lower(), url.strip()))
    return out


def config_from_args(args) -> CacheConfig:
    saved = labcache.load(args.root)
    ups = _upstreams(args)
    limit = labcache.parse_size(args.limit) if args.limit else (saved.limit_bytes if saved else labcache.DEFAULT_LIMIT)
    if not ups and saved and args.port_base is None:
        return CacheConfig(saved.root, limit, saved.upstreams)
    ups = ups or list(labcache.DEFAULT_UPSTREAMS)
    return labcache.make_config(args.root, ups, limit, args.port_base or labcache.DEFAULT_PORT_BASE)


# ------------------------------------------------------------------ setup


def _current_insecure(pw: pwd.struct_passwd) -> list[str]:
    raw = daemonctl.read_user_file(pw, DAEMON_JSON_REL)
    if not raw or not raw.strip():
        return []
    try:
        doc = boundedjson.loads(raw)
    except boundedjson.UntrustedJSONError as e:
        raise CacheError(f"~{pw.pw_name}/{DAEMON_JSON_REL} is {e}; fix it first") from None
    old = doc.get("insecure-registries") if isinstance(doc, dict) else None
    return [str(v) for v in old] if isinstance(old, list) else []


def start_processes(cfg: CacheConfig, changed: list[str], systemd: bool, run=service._run) -> list[bootstrap_mod.Step]:
    steps = []
    if systemd:
        written = [n for n, text in labcache.systemd_units(cfg).items()
                   if labcache._write(os.path.join(labcache.SYSTEMD_DIR, n), text.encode(), 0o644)]
        if written:
            run(["systemctl", "daemon-reload"], timeout=60)
        for up in cfg.upstreams:
            names = [up.unit_name + "-registry.service", up.unit_name + "-front.service"]
            restart = bool(written) or any(p.startswith(cfg.dir(up) + "/") for p in changed)
            p = run(["systemctl", "enable", "--now", *names], timeout=120)
            if restart and p.returncode == 0:
                p = run(["systemctl", "restart", *names], timeout=120)
            ok = p.returncode == 0
            steps.append(bootstrap_mod.Step(f"cache {up.registry}", bool(written) or restart,
                                            ("systemd: " + ", ".join(names)) if ok else
                                            f"systemctl failed: {(p.stderr or p.stdout).strip()[-400:]}", ok=ok))
        return steps
    for up in cfg.upstreams:
        restart = any(p.startswith(cfg.dir(up) + "/") for p in changed)
        try:
            detail = labcache.ensure_running(cfg, up, restart=restart)
            steps.append(bootstrap_mod.Step(f"cache {up.registry}", "started" in detail,
                                            f"{detail}; daemons use {up.mirror} (proxies {up.remote})"))
        except (CacheError, OSError) as e:
            steps.append(bootstrap_mod.Step(f"cache {up.registry}", False, str(e), ok=False))
    return steps


def hub_lines(cfg: CacheConfig) -> str:
    mirrors = cfg.lab_cache_mirrors()
    return "\n".join(["# jupyterhub_config.py: the spawner tries the lab cache first (per registry)",
                      f"c.RootlessGPUSpawner.lab_cache_mirrors = {json.dumps(mirrors)}"])


def cmd_setup(args, users: list[pwd.struct_passwd]) -> int:
    cfg = config_from_args(args)
    changed = labcache.ensure_files(cfg)
    systemd = service.systemd_running()
    steps = [bootstrap_mod.Step("cache files", bool(changed), ("wrote " + ", ".join(changed)) if changed
                                else f"{cfg.root}: configuration in place already")]
    steps += start_processes(cfg, changed, systemd)
    b = bootstrap_mod.Bootstrapper(restart=not args.no_restart, timeout=args.timeout)
    for pw in users:
        try:
            want = _current_insecure(pw)
        except (CacheError, daemonctl.DaemonError) as e:
            steps.append(bootstrap_mod.Step("daemon.json", False, str(e), pw.pw_name, ok=False))
            continue
        want += [e for e in cfg.insecure_entries() if e not in want]
        steps += b.user(pw, None, want, start=daemonctl.daemon_status(pw, timeout=3)["running"] or not args.no_restart)
    ok = all(s.ok for s in steps)
    if args.json:
        print(json.dumps({"ok": ok, "root": cfg.root, "lab_cache_mirrors": cfg.lab_cache_mirrors(),
                          "insecure_registries": cfg.insecure_entries(), "users": [u.pw_name for u in users],
                          "steps": [s.to_dict() for s in steps]}, indent=2))
    else:
        from .cli import format_steps
        print(format_steps(steps, False))
        print(hub_lines(cfg))
    return 0 if ok else 1


# ------------------------------------------------------------------ status, stop, prune, warm


def cmd_status(args) -> int:
    cfg = _loaded(args.root)
    rows = labcache.status(cfg)
    if args.json:
        print(json.dumps({"root": cfg.root, "limit_bytes": cfg.limit_bytes, "upstreams": rows}, indent=2))
    else:
        total = sum(r["disk_bytes"] for r in rows)
        print(f"lab cache under {cfg.root}: {_gib(total)} of {_gib(cfg.limit_bytes)} limit")
        for r in rows:
            up = r["front_answers"] is not None and r["registry_answers"] is not None
            print(f"  {r['registry']}: {'up' if up else 'DOWN'} at {r['mirror']} (front pid {r['front_pid']}, "
                  f"registry pid {r['registry_pid']}), proxies {r['remote']}, {_gib(r['disk_bytes'])} in {r['storage']}")
    return 0 if all(r["front_answers"] is not None and r["registry_answers"] is not None for r in rows) else 1


def cmd_stop(args) -> int:
    cfg = _loaded(args.root)
    if service.systemd_running():
        names = [n for up in cfg.upstreams for n in (up.unit_name + "-front.service", up.unit_name + "-registry.service")]
        p = service._run(["systemctl", "stop", *names], timeout=120)
        print(f"systemctl stop {' '.join(names)}: " + ("done" if p.returncode == 0 else _shown(p.stderr)))
        return 0 if p.returncode == 0 else 1
    for up in cfg.upstreams:
        stopped = labcache.stop(cfg, up)
        print(f"{up.registry}: " + (("stopped " + ", ".join(stopped)) if stopped else "was not running"))
    return 0


def cmd_prune(args) -> int:
    cfg = _loaded(args.root)
    chosen = [u for u in cfg.upstreams if not args.registry or u.registry in args.registry]
    unknown = set(args.registry or []) - {u.registry for u in cfg.upstreams}
    if unknown:
        raise CacheError(f"no lab cache for {', '.join(sorted(unknown))}; the cache proxies "
                         + ", ".join(u.registry for u in cfg.upstreams))
    for up in chosen:
        used = labcache.disk_use(cfg.data_dir(up))
        if not args.apply:
            print(f"{up.registry}: would empty {cfg.data_dir(up)} ({_gib(used)}); the registry is stopped meanwhile")
            continue
        was = labcache._pid_of(cfg, up, "registry") is not None
        labcache.stop(cfg, up)
        freed = labcache.empty_storage(cfg, up)
        detail = labcache.ensure_running(cfg, up) if was else "not running before: left stopped"
        print(f"{up.registry}: emptied {cfg.data_dir(up)}, freed {_gib(freed)}; {detail}")
    if not args.apply:
        print("dry run: nothing removed; add --apply. Students' daemons keep their own copies; the next pull refills the cache.")
    return 0


def cmd_warm(args) -> int:
    cfg = _loaded(args.root)
    results = [cachewarm.warm_image(cfg, image, platform=args.platform, parallel=args.parallel) for image in args.images]
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=2))
    else:
        for r in results:
            if r.ok:
                rate = r.bytes / r.seconds / (1 << 20) if r.seconds > 0 else 0
                print(f"{r.image}: {r.blobs} blobs, {_gib(r.bytes)} in {r.seconds:.1f} s ({rate:.1f} MiB/s) -- in the lab cache")
            else:
                print(f"{r.image}: FAILED after {r.seconds:.1f} s: {_shown(r.error)}")
    return 0 if all(r.ok for r in results) else 1


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("cache", help="the lab's pull-through registry cache on this host (root)")
    csub = p.add_subparsers(dest="cache_command", required=True, metavar="ACTION")

    def common(q):
        q.add_argument("--root", default=default_root(), help=f"the cache's directory (default {labcache.DEFAULT_ROOT})")
        q.add_argument("--json", action="store_true", help="machine-readable output")
        return q

    q = common(csub.add_parser("setup", help="set up and start the cache; add it to each student's daemon.json"))
    q.add_argument("--limit", help="size limit of the cache's storage, e.g. 500G (doctor warns above it; "
                                   "'cache prune --apply' empties it)")
    q.add_argument("--upstream", action="append", metavar="REGISTRY=URL",
                   help="proxy this registry (repeatable; default docker.io, quay.io, nvcr.io, ghcr.io)")
    q.add_argument("--port-base", type=int, help=f"first loopback port (default {labcache.DEFAULT_PORT_BASE}; "
                                                 f"registries on PORT+{labcache.BACKEND_OFFSET})")
    who = q.add_mutually_exclusive_group()
    who.add_argument("--user", action="append", metavar="NAME", help="set up this student's daemon (repeatable)")
    who.add_argument("--group", metavar="GROUP", help="every member of this group")
    who.add_argument("--host-only", action="store_true", help="only the cache on the host: no student's daemon.json")
    q.add_argument("--no-restart", action="store_true", help="do not restart running daemons (say what to run)")
    q.add_argument("--timeout", type=float, default=60)
    q.set_defaults(cache_func="setup")
    q = common(csub.add_parser("status", help="is each upstream's cache up; its disk use"))
    q.set_defaults(cache_func=cmd_status)
    q = common(csub.add_parser("stop", help="stop the cache"))
    q.set_defaults(cache_func=cmd_stop)
    q = common(csub.add_parser("warm", help="fill the cache with IMAGE... (the night before a lesson)"))
    q.add_argument("images", nargs="+", metavar="IMAGE")
    q.add_argument("--platform", default="linux/amd64")
    q.add_argument("--parallel", type=int, default=3, help="blobs fetched at once (1-8)")
    q.set_defaults(cache_func=cmd_warm)
    q = common(csub.add_parser("prune", help="empty the cache's storage (dry run unless --apply)"))
    q.add_argument("--registry", action="append", metavar="NAME", help="only this upstream (repeatable)")
    q.add_argument("--apply", action="store_true")
    q.set_defaults(cache_func=cmd_prune)
    return p
