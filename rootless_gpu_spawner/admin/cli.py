"""rootless-gpu-admin: set up and check a host for rootless per-student Docker.

    rootless-gpu-admin doctor [--user NAME ...] [--json]
    rootless-gpu-admin bootstrap [--user NAME ... | --group GROUP] [--mirror URL ...] [--gpu] [--dry-run] [--json]
    rootless-gpu-admin start-daemon NAME [--gpu-stub-dir DIR]
    rootless-gpu-admin stop-daemon NAME
    rootless-gpu-admin status [NAME ...] [--json]
    rootless-gpu-admin cache setup|status|stop|warm|prune ...   (admin/cache.py)
    rootless-gpu-admin prune-images [--user NAME ...] [--unused-days N] [--image REPO ...] [--apply] [--json]

``status`` without a name, as root, lists every student (uid >= 1000) who
has a rootless daemon or its configuration; run by a student, it checks
their own daemon.
``doctor`` checks the host (and each named user) and prints the exact fix
for every problem; it exits 0 only when nothing fails.  ``bootstrap`` makes
the host and the users right, idempotently (a second run changes nothing;
``--dry-run`` only says what it would do).  Everything but ``doctor`` for
oneself and ``status`` needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import sys
from urllib.parse import urlparse

from . import bootstrap as bootstrap_mod
from . import cache as cache_mod
from . import cache_checks
from ..host import imagestore
from ..host.labcache import CacheError
from ..host import daemonctl
from . import checks as hostchecks
from ..host import service
from ..accounts import SYSTEM_USERNAME, AccountError, login_account
from ..layout import DAEMON_JSON_REL, MIN_UID, RUN_USER_DIR, SOCKET_NAME, UNIT_REL, runtime_dir
from ..safetext import printable

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


class AdminError(RuntimeError):
    pass


def _accounts(names) -> list[pwd.struct_passwd]:
    """The accounts named on the command line, once each (accounts.login_account resolves)."""
    out, seen = [], set()
    for n in names or []:
        pw = login_account(n)
        if pw.pw_name not in seen:
            seen.add(pw.pw_name)
            out.append(pw)
    return out


def _require_root(what: str):
    if os.geteuid() != 0:
        raise AdminError(f"'{what}' changes the host or other users' accounts: run it as root (sudo)")


def _me() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


# ------------------------------------------------------------------ doctor

_MARK = {"pass": "ok", "fail": "FAIL", "warn": "warn", "skip": "skip"}


def _shown(text, indent: str = "") -> str:
    """Text that may hold a student's bytes (daemon strings, log lines, file names), for the terminal.

    Every line is made printable (safetext: escapes, no CR, bounded) and every
    line after the first is indented, so nothing a student wrote can pass for
    a line of ours."""
    return ("\n" + indent).join(printable(line, 2000) for line in str(text).split("\n"))


def format_checks(checks: list) -> str:
    out, scope = [], None
    for c in checks:
        if c.scope != scope:
            scope = c.scope
            out.append("host" if scope == "host" else f"user {scope}")
        out.append(f"  [{_MARK[c.status]:>4}] {c.name}: {_shown(c.detail, '         ')}")
        if c.fix and c.status != "pass":
            first, *rest = c.fix.split("\n")
            out.append("         fix: " + _shown(first))
            out += ["              " + _shown(line) for line in rest]
    fails = [c for c in checks if c.status == "fail"]
    warns = [c for c in checks if c.status == "warn"]
    if fails:
        out.append(f"{len(fails)} problem(s): " + ", ".join(f"{c.scope}/{c.name}" for c in fails)
                   + f"; {len(warns)} warning(s). Apply the fixes above (or run 'rootless-gpu-admin bootstrap').")
    else:
        out.append(f"all checks passed ({len(warns)} warning(s)).")
    return "\n".join(out)


def cmd_doctor(args) -> int:
    names = args.user or []
    if os.geteuid() != 0:
        me = _me()
        others = [n for n in names if n != me]
        if others:
            raise AdminError(f"doctor for other users ({', '.join(others)}) needs root; without root you can check yourself: "
                             "rootless-gpu-admin doctor")
        names = names or [me]
    users = _accounts(names)
    paths = hostchecks.HostPaths.from_env(args.nvidia_config)
    checks = _with_cache_checks(hostchecks.run_doctor(users, paths), users, args.cache_root)
    ok = all(c.ok for c in checks)
    if args.json:
        print(json.dumps({"ok": ok, "users": [u.pw_name for u in users], "checks": [c.to_dict() for c in checks]}, indent=2))
    else:
        print(format_checks(checks))
    return EXIT_OK if ok else EXIT_PROBLEMS


def _with_cache_checks(checks: list, users, cache_root: str) -> list:
    """The lab cache's checks after the host's, each student's image storage after theirs."""
    extra = cache_checks.run(users, cache_root)
    order = ["host"] + [u.pw_name for u in users]
    return sorted(checks + extra, key=lambda c: order.index(c.scope) if c.scope in order else len(order))


# ------------------------------------------------------------------ bootstrap


def _mirror(url: str) -> str:
    u = urlparse(url)
    if u.scheme not in ("http", "https") or not u.hostname or u.path not in ("", "/") or u.query or u.fragment \
            or u.username or u.password:
        raise AdminError(f"--mirror {url!r}: give a registry mirror as http(s)://HOST[:PORT] (no path, no credentials)")
    return url


def _insecure(value: str) -> str:
    if not value or "://" in value or any(ch.isspace() for ch in value):
        raise AdminError(f"--insecure-registry {value!r}: give HOST[:PORT] or a CIDR, without a scheme")
    return value




def format_steps(steps: list, dry_run: bool) -> str:
    out = []
    for s in steps:
        mark = "FAILED" if not s.ok else ("would" if s.changed and dry_run else ("changed" if s.changed else "done"))
        out.append(f"[{mark:>7}] {s.scope}: {s.name}: {_shown(s.detail, '          ')}")
    failed = [s for s in steps if not s.ok]
    changed = [s for s in steps if s.changed and s.ok]
    if failed:
        out.append(f"{len(failed)} step(s) FAILED: " + ", ".join(f"{s.scope}/{s.name}" for s in failed))
    elif dry_run:
        out.append(f"dry run: {len(changed)} step(s) would change something; nothing was changed.")
    else:
        out.append(f"{len(changed)} step(s) changed something; the rest was already done.")
    return "\n".join(out)


def cmd_bootstrap(args) -> int:
    _require_root("bootstrap")
    if args.user and args.group:
        raise AdminError("give either --user NAME ... or --group GROUP, not both")
    names = list(args.user or [])
    if args.group:
        if not SYSTEM_USERNAME.match(args.group):
            raise AdminError(f"{args.group[:64]!r} is not a valid group name")
        try:
            names = bootstrap_mod.group_members(args.group)
        except bootstrap_mod.BootstrapError as e:
            raise AdminError(str(e)) from None
        if not names:
            raise AdminError(f"group {args.group!r} has no members")
    users = _accounts(names)
    for pw in users:
        if pw.pw_uid < MIN_UID:
            raise AdminError(f"{pw.pw_name} (uid {pw.pw_uid}) is a system account; bootstrap sets up students (uid >= {MIN_UID})")
    mirrors = [_mirror(m) for m in args.mirror] if args.mirror else None
    insecure = [_insecure(i) for i in args.insecure_registry] if args.insecure_registry else None
    if args.gpu_stub_dir and not os.path.isabs(args.gpu_stub_dir):
        raise AdminError("--gpu-stub-dir must be an absolute path")
    b = bootstrap_mod.Bootstrapper(
        dry_run=args.dry_run,
        paths=hostchecks.HostPaths.from_env(args.nvidia_config),
        timeout=args.timeout,
        restart=not args.no_restart,
    )
    steps = b.host(gpu=args.gpu)
    for pw in users:
        steps += b.user(pw, mirrors, insecure, start=not args.no_start, gpu_stub_dir=args.gpu_stub_dir)
    ok = all(s.ok for s in steps)
    if args.json:
        print(json.dumps({
            "ok": ok,
            "dry_run": args.dry_run,
            "changed": any(s.changed for s in steps),
            "users": [u.pw_name for u in users],
            "steps": [s.to_dict() for s in steps],
        }, indent=2))
    else:
        print(format_steps(steps, args.dry_run))
    return EXIT_OK if ok else EXIT_PROBLEMS


# ------------------------------------------------------------------ daemons


def cmd_start(args) -> int:
    _require_root("start-daemon")
    pw = login_account(args.name)
    daemonctl.check_tun(pw)
    daemonctl.check_subids(pw)
    pid = service.start_daemon_for(pw, args.timeout, gpu_stub_dir=args.gpu_stub_dir)
    print(f"rootless Docker for {pw.pw_name} is running (pid {pid}, {daemonctl.daemon_paths(pw.pw_uid).docker_host})")
    return EXIT_OK


def cmd_stop(args) -> int:
    _require_root("stop-daemon")
    pw = login_account(args.name)
    stopped = service.stop_daemon_for(pw, timeout=args.timeout)
    print(f"rootless Docker for {pw.pw_name} " + ("stopped" if stopped else "was not running"))
    return EXIT_OK


#: What marks an account as having a rootless daemon (``status`` without names):
#: its socket, or the files ``bootstrap`` / Docker's setup tool write in the home.
DAEMON_MARKERS = (DAEMON_JSON_REL, UNIT_REL)
STATUS_USAGE = "usage: rootless-gpu-admin status [NAME ...] [--json]"


def _exists_in_home(pw: pwd.struct_passwd, rel: str) -> bool:
    """Does ``~pw/rel`` exist? Reached by daemonctl's one safe walk (no link out of the
    home followed); the last entry is only lstat-ed."""
    try:
        with daemonctl.user_file(pw, rel, create=False) as found:
            if found is None:
                return False
            os.stat(found[1], dir_fd=found[0], follow_symlinks=False)
            return True
    except (daemonctl.DaemonError, OSError):
        return False


def has_daemon(pw: pwd.struct_passwd, run_dir: str = RUN_USER_DIR) -> bool:
    """The account has a daemon socket in its runtime dir, or a daemon.json / user service."""
    try:
        os.lstat(os.path.join(runtime_dir(pw.pw_uid, run_dir), SOCKET_NAME))
        return True
    except OSError:
        pass
    return any(_exists_in_home(pw, rel) for rel in DAEMON_MARKERS)


def students_with_daemons(accounts=None, run_dir: str = RUN_USER_DIR,
                          min_uid: int = MIN_UID) -> list[pwd.struct_passwd]:
    """Every account (uid >= min_uid, by name) that :func:`has_daemon`."""
    seen, out = set(), []
    for pw in sorted(pwd.getpwall() if accounts is None else accounts, key=lambda p: p.pw_name):
        if pw.pw_uid < min_uid or pw.pw_name in seen or not SYSTEM_USERNAME.match(pw.pw_name):
            continue
        seen.add(pw.pw_name)
        if has_daemon(pw, run_dir):
            out.append(pw)
    return out


def format_status(st: dict) -> str:
    """One user's daemon_status for the terminal; the daemon's strings and log lines made printable."""
    state = "running" if st["running"] else "not running"
    extra = f", rootless={st['rootless']}, docker {st['server_version']}" if st["running"] else ""
    line = f"{st['user']}: {state}{extra}" + (f" -- {st['error']}" if st["error"] else "")
    if not st.get("log_tail"):
        return _shown(line, "  ")
    tail = [f"  last lines of {st['log_file']}:", *(daemonctl.LOG_LINE_MARK + l for l in st["log_tail"])]
    return _shown(line, "  ") + "\n" + "\n".join(_shown(t) for t in tail)


def cmd_status(args) -> int:
    if args.names:
        users = [login_account(n) for n in args.names]
    elif os.geteuid() != 0:
        users = [login_account(_me())]  # a student checks their own daemon
    else:
        users = students_with_daemons()
        if not users:
            if args.json:
                print("[]")
            print(f"rootless-gpu-admin status: no student (uid >= {MIN_UID}) has a rootless Docker "
                  f"daemon here (no {RUN_USER_DIR}/UID/docker.sock, no ~/.config/docker/daemon.json); set one up "
                  "with 'rootless-gpu-admin bootstrap --user NAME', or name the users to check.\n" + STATUS_USAGE,
                  file=sys.stderr)
            return EXIT_USAGE
    results = [daemonctl.daemon_status(pw) for pw in users]
    for pw, st in zip(users, results):
        if st["running"] and st["rootless"]:
            store = imagestore.storage(pw)
            st["image_bytes"], st["images"] = store["layers_bytes"], store["images"]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for st in results:
            print(format_status(st))
            if st.get("image_bytes") is not None:
                print(f"  image storage: {st['image_bytes'] / (1 << 30):.2f} GiB in {st['images']} image(s)")
    return EXIT_OK if all(st["running"] and st["rootless"] for st in results) else EXIT_PROBLEMS


# ------------------------------------------------------------------ prune-images


def cmd_prune_images(args) -> int:
    _require_root("prune-images")
    users = _accounts(args.user) if args.user else students_with_daemons()
    report, ok = [], True
    store = imagestore.SeenStore(args.state_dir)
    for pw in users:
        try:
            seen = store.load(pw.pw_name)
            verdicts = imagestore.plan(pw, args.unused_days, repos=args.image, seen=seen)
            store.save(pw.pw_name, seen)
        except imagestore.StoreError as e:
            report.append({"user": pw.pw_name, "error": str(e), "images": []})
            ok = False
            continue
        rows = []
        for v in verdicts:
            row = imagestore.to_dict(v)
            if v.remove and args.apply:
                row["error"] = imagestore.remove(pw, v)
                row["removed"] = row["error"] is None
                ok = ok and row["removed"]
            rows.append(row)
        report.append({"user": pw.pw_name, "error": None, "images": rows})
    if args.json:
        print(json.dumps({"apply": args.apply, "unused_days": args.unused_days, "users": report}, indent=2))
        return EXIT_OK if ok else EXIT_PROBLEMS
    for r in report:
        if r["error"]:
            print(f"{r['user']}: {_shown(r['error'], '  ')}")
            continue
        gone = [i for i in r["images"] if i["remove"]]
        total = sum(i["bytes"] for i in gone)
        verb = "removed" if args.apply else "would remove"
        print(f"{r['user']}: {verb} {len(gone)} image(s), {total / (1 << 30):.2f} GiB")
        for i in r["images"]:
            name = ", ".join(i["tags"]) or i["image_id"][:19]
            mark = ("FAILED: " + i["error"]) if i.get("error") else (verb if i["remove"] else "keep")
            print(f"  [{mark}] {_shown(name)} ({i['bytes'] / (1 << 20):.0f} MiB): {_shown(i['reason'])}")
    if not args.apply:
        print("dry run: nothing removed; add --apply (through each student's own daemon, never forced).")
    return EXIT_OK if ok else EXIT_PROBLEMS


# ------------------------------------------------------------------ lab cache


def cmd_cache(args) -> int:
    if args.cache_func != cache_mod.cmd_status:
        _require_root(f"cache {args.cache_command}")
    if args.cache_func != "setup":
        return args.cache_func(args)
    names = list(args.user or [])
    if args.group:
        try:
            names = bootstrap_mod.group_members(args.group)
        except bootstrap_mod.BootstrapError as e:
            raise AdminError(str(e)) from None
    users = [] if args.host_only else (_accounts(names) if names else students_with_daemons())
    return cache_mod.cmd_setup(args, [pw for pw in users if pw.pw_uid >= MIN_UID])


# ------------------------------------------------------------------ CLI


GPU_STUB_HELP = ("a *simulated GPU host* (the quick start's demo, the tests): start the daemon with DIR, holding an "
                 "'exit 0' nvidia-container-runtime-hook, first on its PATH; Docker then accepts GPU requests "
                 "without any GPU or CUDA")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rootless-gpu-admin",
        description="Set up and check a host where each student runs JupyterLab on their own rootless Docker daemon.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("doctor", help="check the host and users; print the fix for every problem (exit 0 = all pass)")
    p.add_argument("--user", action="append", metavar="NAME", help="also check this user (repeatable)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--nvidia-config", help=argparse.SUPPRESS)  # tests: a temporary config.toml
    p.add_argument("--cache-root", default=cache_mod.default_root(),
                   help="the lab cache's directory (checked when 'cache setup' made one there)")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("bootstrap", help="set up the host and users idempotently (root)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--user", action="append", metavar="NAME", help="set up this user (repeatable)")
    who.add_argument("--group", metavar="GROUP", help="set up every member of this group")
    p.add_argument("--mirror", action="append", metavar="URL",
                   help="registry mirror for the users' daemon.json (repeatable, in order)")
    p.add_argument("--insecure-registry", action="append", metavar="HOST[:PORT]",
                   help="plain-http registry for the users' daemon.json (repeatable)")
    p.add_argument("--gpu", action="store_true", help="also set no-cgroups = true in the NVIDIA Container Toolkit config")
    p.add_argument("--dry-run", action="store_true", help="print every change, make none")
    p.add_argument("--no-restart", action="store_true",
                   help="do not restart a running daemon whose configuration changed (say what to run instead)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--timeout", type=float, default=60, help="seconds to wait for each daemon to answer")
    p.add_argument("--nvidia-config", help=argparse.SUPPRESS)  # tests: a temporary config.toml
    p.add_argument("--gpu-stub-dir", metavar="DIR", help=GPU_STUB_HELP)
    p.add_argument("--no-start", action="store_true", help=argparse.SUPPRESS)  # tests: a user without a daemon
    p.set_defaults(func=cmd_bootstrap)

    p = sub.add_parser("start-daemon", help="start a user's rootless dockerd (in their systemd: docker.service "
                                            "or a transient unit; by hand without systemd)")
    p.add_argument("name")
    p.add_argument("--gpu-stub-dir", metavar="DIR", help=GPU_STUB_HELP)
    p.add_argument("--timeout", type=float, default=60)
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("stop-daemon", help="stop a user's rootless dockerd")
    p.add_argument("name")
    p.add_argument("--timeout", type=float, default=30)
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("status", help="is each user's daemon up and rootless? (no NAME, as root: every student with a daemon)")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="users to check (default: as root, every student with a daemon socket, daemon.json or "
                        "docker.service; otherwise yourself)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    cache_mod.add_parser(sub).set_defaults(func=cmd_cache)

    p = sub.add_parser("prune-images", help="remove students' pulled images unused for N days (dry run unless --apply)")
    p.add_argument("--user", action="append", metavar="NAME",
                   help="this student (repeatable; default: every student with a daemon)")
    p.add_argument("--unused-days", type=float, default=30.0, help="keep images used within this many days (default 30)")
    p.add_argument("--state-dir", default=imagestore.SEEN_DIR, help=argparse.SUPPRESS)  # tests: a temp dir
    p.add_argument("--image", action="append", metavar="REPOSITORY",
                   help="only images of this repository, e.g. quay.io/jupyter/scipy-notebook (repeatable)")
    p.add_argument("--apply", action="store_true", help="remove them (through the student's own daemon, never forced)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_prune_images)
    return parser


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse already printed
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        return args.func(args)
    except (AdminError, AccountError, daemonctl.DaemonError, CacheError) as e:
        print(f"rootless-gpu-admin: {_shown(e, '  ')}", file=sys.stderr)
        return EXIT_USAGE


