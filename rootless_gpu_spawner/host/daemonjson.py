"""A user's ``~/.config/docker/daemon.json``: our keys merged in, theirs kept.

A rootless dockerd reads this file, not /etc/docker/daemon.json. Written as root through
:mod:`.userfiles` (safefs), so a link the student planted there is never followed.
"""

from __future__ import annotations

import json
import os
import pwd
from typing import Optional

from .. import boundedjson, errors
from ..layout import DAEMON_JSON_REL
from .userfiles import _read_small, _replace_keeping_bak, _safe, user_file

DaemonError = errors.HostError


@_safe
def merge_daemon_json(
    pw: pwd.struct_passwd,
    registry_mirrors: Optional[list[str]] = None,
    insecure_registries: Optional[list[str]] = None,
    *,
    dry_run: bool = False,
) -> bool:
    """Merge our keys into ``~user/.config/docker/daemon.json``; return changed.

    A rootless dockerd reads this file, not /etc/docker/daemon.json, so the
    mirror/insecure-registry policy of the site has to be put there.  Keys we
    do not manage are kept (the student may have set e.g. "features").  For
    our keys the admin's value wins: a list replaces the old value, an empty
    list removes the key, None leaves it alone.  Nothing is written when the
    content would not change (no mtime churn, no .bak rotation).  When it
    changes, the previous file is kept as ``daemon.json.bak``.  The daemon
    only reads the file at start, so callers restart it when this returns
    True.  Runs as root on the user's home: homes on NFS with root_squash
    need this done as the user instead.  With *dry_run* nothing is created
    or written; the return value says whether it would be.
    """
    with user_file(pw, DAEMON_JSON_REL, create=not dry_run) as found:
        if found is None:
            return any(v for v in (registry_mirrors, insecure_registries))  # dry run: ~/.config/docker is missing
        dfd, name, shown = found
        old_bytes = _read_small(dfd, name, what=shown)
        old = _parse_daemon_json(pw, dfd, name, shown, old_bytes) if old_bytes is not None else {}
        new = _merged(old, registry_mirrors, insecure_registries)
        if new == old and (old_bytes is not None or not new):
            return False
        if not dry_run:
            _replace_keeping_bak(pw, dfd, name, old_bytes, (json.dumps(new, indent=2) + "\n").encode(), 0o644, shown)
        return True


def _parse_daemon_json(pw: pwd.struct_passwd, dfd: int, name: str, shown: str, raw: bytes) -> dict:
    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    if st.st_uid not in (pw.pw_uid, 0):
        raise DaemonError(
            f"{shown} is owned by uid {st.st_uid}, neither {pw.pw_name} nor root; refusing to use it. "
            f"Remove it to continue."
        )
    try:
        old = boundedjson.loads(raw) if raw.strip() else {}
    except boundedjson.UntrustedJSONError as e:
        raise DaemonError(
            f"{shown} is {e}; fix it or move it away (the daemon would not start with it either)."
        ) from None
    if not isinstance(old, dict):
        raise DaemonError(f"{shown} does not hold a JSON object; fix it or move it away.")
    return old


def _merged(old: dict, registry_mirrors: Optional[list[str]], insecure_registries: Optional[list[str]]) -> dict:
    new = dict(old)
    for key, value in (("registry-mirrors", registry_mirrors), ("insecure-registries", insecure_registries)):
        if value is None:
            continue
        value = [str(v) for v in value]
        if value:
            new[key] = value
        else:
            new.pop(key, None)
    return new
