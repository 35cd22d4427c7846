"""rootless-gpu-admin: control students' rootless Docker daemons from the command line.

    rootless-gpu-admin start-daemon NAME [--gpu-stub-dir DIR]
    rootless-gpu-admin stop-daemon NAME
    rootless-gpu-admin status [NAME ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import sys

from . import daemonctl
from .accounts import SYSTEM_USERNAME


class AdminError(RuntimeError):
    pass


def _account(name: str):
    if not SYSTEM_USERNAME.match(name or ""):
        raise AdminError(f"{name[:64]!r} is not a valid login name (lowercase letters, digits, '_', '.', '-')")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise AdminError(f"no such user {name!r}: create it first (useradd -m {name})") from None


def _require_root(what: str):
    if os.geteuid() != 0:
        raise AdminError(f"'{what}' changes another user's daemon: run it as root (sudo)")


def cmd_start(args) -> int:
    _require_root("start-daemon")
    pw = _account(args.name)
    daemonctl.check_tun(pw)
    daemonctl.check_subids(pw)
    pid = daemonctl.start_daemon(pw, gpu_stub_dir=args.gpu_stub_dir, timeout=args.timeout)
    print(f"rootless Docker for {pw.pw_name} is running (pid {pid}, {daemonctl.daemon_paths(pw.pw_uid).docker_host})")
    return 0


def cmd_stop(args) -> int:
    _require_root("stop-daemon")
    pw = _account(args.name)
    stopped = daemonctl.stop_daemon(pw, timeout=args.timeout)
    print(f"rootless Docker for {pw.pw_name} " + ("stopped" if stopped else "was not running"))
    return 0


def cmd_status(args) -> int:
    names = args.names or [pwd.getpwuid(os.geteuid()).pw_name]
    results = [daemonctl.daemon_status(_account(n)) for n in names]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for st in results:
            state = "running" if st["running"] else "not running"
            extra = f", rootless={st['rootless']}, docker {st['server_version']}" if st["running"] else ""
            print(f"{st['user']}: {state}{extra}" + (f" -- {st['error']}" if st["error"] else ""))
    return 0 if all(st["running"] and st["rootless"] for st in results) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rootless-gpu-admin", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("start-daemon", help="start a user's rootless dockerd (without systemd)")
    p.add_argument("name")
    p.add_argument("--gpu-stub-dir", help=argparse.SUPPRESS)  # tests: a simulated GPU host
    p.add_argument("--timeout", type=float, default=60)
    p.set_defaults(func=cmd_start)
    p = sub.add_parser("stop-daemon", help="stop a user's rootless dockerd")
    p.add_argument("name")
    p.add_argument("--timeout", type=float, default=30)
    p.set_defaults(func=cmd_stop)
    p = sub.add_parser("status", help="is each user's daemon up and rootless?")
    p.add_argument("names", nargs="*")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (AdminError, daemonctl.DaemonError) as e:
        print(f"rootless-gpu-admin: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
