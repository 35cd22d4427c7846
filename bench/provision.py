"""The benchmark's own users and rootless daemons (idempotent).

Users ``rgsbench-01`` .. ``rgsbench-NN``: each gets subordinate ids, ``~/workspace``,
``~/.config/docker/daemon.json`` listing the local registry (10.0.2.2:5000) as insecure,
a rootless dockerd started without systemd (``daemonctl.start_daemon``), and the lab image
imported from the same tarball as the testbed's (``testkit.testbed.ensure_image``). Users,
homes and images are kept between runs, so a second run only starts the daemons; nothing
is ever deleted from a home. ``stop_daemons`` stops them again at the end.

Only the bench's own users are touched; the testbed's users, daemons and registry are
left alone (the registry is only read from, in the dead-mirror case).
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from rootless_gpu_spawner.admin import checks
from rootless_gpu_spawner.host import daemonctl, prereqs
from rootless_gpu_spawner.host.workspace import ensure_workspace
from testkit import testbed

PREFIX = "rgsbench-"
IMAGE = testbed.LOCAL_IMAGE  # rgs-test/jupyterlab:latest, imported from the lab tarball
REGISTRY_FROM_DAEMON = testbed.REGISTRY_FROM_DAEMON  # the testbed registry seen from a daemon


def user_names(count: int) -> list[str]:
    return [f"{PREFIX}{i:02d}" for i in range(1, count + 1)]


def _log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def ensure_tun() -> None:
    # slirp4netns opens /dev/net/tun as the user (0666 on ordinary distributions).
    tun = prereqs.read_tun()
    if tun.problem:
        raise SystemExit(f"bench: {tun.problem[0]}: {tun.problem[1]}")
    if not tun.usable_by_all:
        os.chmod(tun.path, tun.mode | 0o666)


def _subid_total(path: str, pw: pwd.struct_passwd) -> int:
    return sum(count for _, count in prereqs.subid_ranges(path, pw))


def _free_subid_start() -> int:
    return checks.free_subid_start(checks.HostPaths())  # the doctor's one answer


def ensure_subids(pw: pwd.struct_passwd) -> None:
    """Debian's useradd allocates subordinate ids itself; add a free range otherwise."""
    need = daemonctl.MIN_SUBIDS
    if _subid_total("/etc/subuid", pw) < need or _subid_total("/etc/subgid", pw) < need:
        start = _free_subid_start()
        rng = f"{start}-{start + need - 1}"
        subprocess.run(["usermod", "--add-subuids", rng, "--add-subgids", rng, pw.pw_name],
                       check=True, capture_output=True, timeout=60)
    daemonctl.check_subids(pw)


def ensure_account(name: str) -> pwd.struct_passwd:
    pw = testbed.ensure_user(name)  # useradd -m when missing
    ensure_subids(pw)
    ensure_workspace(pw.pw_dir, "workspace", pw.pw_uid, pw.pw_gid)
    return pw


def ensure_daemon(pw: pwd.struct_passwd) -> str:
    """A running rootless daemon that lists the local registry as insecure."""
    changed = daemonctl.merge_daemon_json(pw, insecure_registries=[REGISTRY_FROM_DAEMON])
    st = daemonctl.daemon_status(pw)
    if st["running"] and not changed:
        return "already running"
    if st["running"]:
        daemonctl.stop_daemon(pw)  # it reads daemon.json only at start
    t = time.monotonic()
    daemonctl.start_daemon(pw, timeout=90)
    return f"started in {time.monotonic() - t:.1f}s" + (" (daemon.json changed)" if changed else "")


def provision(names: list[str], *, daemon_jobs: int = 4, import_jobs: int = 2) -> dict[str, pwd.struct_passwd]:
    """Users, running daemons and the lab image for *names*; returns their passwd entries."""
    t0 = time.monotonic()
    ensure_tun()
    os.makedirs(testbed.DOCKER_CONFIG, mode=0o755, exist_ok=True)  # the docker CLI's config dir
    users = {name: ensure_account(name) for name in names}  # useradd: one at a time
    _log(f"{len(users)} bench users ready ({time.monotonic() - t0:.1f}s)")
    with ThreadPoolExecutor(daemon_jobs) as pool:
        outcomes = list(pool.map(ensure_daemon, users.values()))
    for pw in users.values():
        st = daemonctl.daemon_status(pw)
        if not (st["running"] and st["rootless"]):
            raise RuntimeError(f"{pw.pw_name}'s daemon is not a running rootless daemon: {st}")
    started = sum(1 for o in outcomes if o.startswith("started"))
    _log(f"{len(users)} rootless daemons up, {started} started now ({time.monotonic() - t0:.1f}s)")
    tarball = testbed.ensure_tarball()
    sha = testbed.tarball_sha256(tarball)
    with ThreadPoolExecutor(import_jobs) as pool:
        list(pool.map(lambda pw: testbed.ensure_image(pw, tarball, sha), users.values()))
    _log(f"{IMAGE} present on every bench daemon ({time.monotonic() - t0:.1f}s)")
    return users


def stop_daemons(users, jobs: int = 4) -> list[str]:
    """Stop the bench users' daemons; returns error messages (never raises)."""
    errors = []

    def stop(pw):
        try:
            daemonctl.stop_daemon(pw)
        except Exception as e:  # teardown: keep stopping the others
            errors.append(f"{pw.pw_name}: {e}")

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(stop, users))
    return errors
