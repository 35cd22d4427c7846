"""The steps of ``rootless-gpu-admin bootstrap``: idempotent ``ensure_*`` functions.

Each step looks first and changes only what is not already right, returning
a :class:`Step` (``changed`` False = "already done").  A second run changes
no file; with ``dry_run`` every step says what it would do and does nothing.
Files are rewritten atomically (temp file + rename) with the previous
version kept next to them (``FILE.bak``; ``/etc/subuid`` and ``/etc/subgid``
are changed by ``usermod``, which keeps its own ``/etc/subuid-`` copy and
takes the shadow-utils lock).

Per host: ``/dev/net/tun`` usable by users; with ``--gpu`` ``no-cgroups =
true`` in the NVIDIA config.  Per user, in order: subordinate uid/gid
ranges, linger (systemd only), ``~/workspace``, ``~/.config/docker/daemon.json``
(registry mirrors merged, other keys kept), the systemd user service (systemd
only: drop-in with host loopback + ``dockerd-rootless-setuptool.sh install``),
and the daemon itself: started, or restarted when its configuration changed
or it runs with host loopback disabled.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Iterable, Optional

from ..host import daemonctl
from . import checks as hostchecks
from ..host import nvidiaconf
from ..host import prereqs, safefs
from ..host import service
from ..host.daemonctl import DaemonError
from .checks import HostPaths
from ..layout import DAEMON_JSON_REL, DROPIN_REL, MIN_UID, UNIT_REL
from ..host.workspace import WorkspaceError, ensure_workspace, hand_over_root_owned

#: Accounts below this uid (root, system accounts) are never bootstrapped.


class BootstrapError(RuntimeError):
    """A step cannot do its job; the message says why and what to do."""


@dataclass
class Step:
    name: str
    changed: bool
    detail: str
    scope: str = "host"
    ok: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def write_file_atomic(path: str, data: bytes, *, default_mode: int = 0o644) -> None:
    """Replace *path* by *data* atomically, keeping the old content as PATH.bak.

    Mode and owner of the old file are kept.  Root-owned system files only
    (the NVIDIA config): user files go through daemonctl.write_user_file.
    Both use the one atomic writer, :func:`safefs.atomic_write`.
    """
    d, name = os.path.split(os.path.abspath(path))
    dfd = os.open(d, safefs.O_DIR)
    try:
        try:
            fd = safefs.open_regular(dfd, name, os.O_RDONLY, shown=path)
        except FileNotFoundError:
            st, old = None, None
        except safefs.UnsafePathError:
            raise BootstrapError(f"{path} is not a regular file (a symlink?); edit it by hand") from None
        else:
            with os.fdopen(fd, "rb") as f:
                st, old = os.fstat(f.fileno()), f.read()
        mode = stat.S_IMODE(st.st_mode) if st else default_mode
        owner = (st.st_uid, st.st_gid) if st else None
        if old is not None:
            safefs.atomic_write(dfd, name + ".bak", old, mode=mode, owner=owner, shown=path + ".bak")
        safefs.atomic_write(dfd, name, data, mode=mode, owner=owner, shown=path)
    finally:
        os.close(dfd)


def group_members(group: str) -> list[str]:
    """Login names in *group*: listed members plus accounts whose primary group it is."""
    try:
        g = grp.getgrnam(group)
    except KeyError:
        raise BootstrapError(f"no such group {group!r}") from None
    names = list(g.gr_mem)
    names += [p.pw_name for p in pwd.getpwall() if p.pw_gid == g.gr_gid and p.pw_name not in names]
    return sorted(names)


class Bootstrapper:
    """Runs the steps for a set of users with one configuration.

    *run* executes external commands (usermod, loginctl, systemctl, the
    setup tool); *paths* says which host files are read and written.
    """

    def __init__(
        self,
        *,
        dry_run: bool = False,
        paths: Optional[HostPaths] = None,
        run: service.Runner = service._run,
        timeout: float = 60.0,
        restart: bool = True,
        systemd: Optional[bool] = None,
        min_uid: int = MIN_UID,
        runtime_dir_wait: float = 15.0,
    ):
        self.dry_run = dry_run
        self.paths = paths or HostPaths()
        self.run = run
        self.timeout = timeout
        self.restart = restart
        self.systemd = service.systemd_running(self.paths.systemd_marker) if systemd is None else systemd
        self.min_uid = min_uid
        self.runtime_dir_wait = runtime_dir_wait

    # ------------------------------------------------------------- host

    def ensure_tun(self) -> Step:
        tun = prereqs.read_tun(self.paths.tun)
        if tun.problem:
            what, fix = tun.problem
            raise BootstrapError(f"{what}: {fix}, then run bootstrap again")
        if tun.usable_by_all:
            return Step("tun", False, f"{tun.path} mode {tun.mode:04o}: usable by users already")
        new = tun.mode | 0o666
        if self.dry_run:
            return Step("tun", True, f"would chmod {new:04o} {tun.path} (now {tun.mode:04o}; slirp4netns opens it as the user)")
        os.chmod(tun.path, new)
        return Step("tun", True, f"chmod {new:04o} {tun.path} (was {tun.mode:04o}); not persistent across reboots "
                                 "where udev does not make it 0666 (it does on ordinary distributions)")

    def ensure_nvidia_no_cgroups(self) -> Step:
        path = self.paths.nvidia_config
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            if not (os.path.isdir(os.path.dirname(path)) or daemonctl.find_binary("nvidia-container-cli")):
                raise BootstrapError(
                    f"--gpu: {path} does not exist and the NVIDIA Container Toolkit is not installed; install "
                    "nvidia-container-toolkit first, then run bootstrap --gpu again"
                ) from None
            raw = None
        try:
            text = raw.decode("utf-8") if raw is not None else ""
        except UnicodeDecodeError:
            raise BootstrapError(f"{path} is not UTF-8 text; fix it by hand") from None
        edit = nvidiaconf.set_no_cgroups(text, path)
        if not edit.changed:
            return Step("nvidia no-cgroups", False, edit.how)
        if self.dry_run:
            return Step("nvidia no-cgroups", True, "would edit " + edit.how + (" (new file)" if raw is None else ""))
        write_file_atomic(path, edit.text.encode("utf-8"))
        return Step("nvidia no-cgroups", True, edit.how + (f"; previous version kept as {path}.bak" if raw is not None else " (new file)"))

    # ------------------------------------------------------------- per user

    def ensure_subids(self, pw: pwd.struct_passwd) -> Step:
        have = {k: hostchecks.subid_ranges(self.paths.subid_file(k), pw) for k in ("uid", "gid")}
        missing = [k for k, r in have.items() if sum(c for _, c in r) < daemonctl.MIN_SUBIDS]
        if not missing:
            shown = "; ".join(f"sub{k}s " + ", ".join(f"{s}-{s + c - 1}" for s, c in r) for k, r in have.items())
            return Step("subids", False, f"{shown} already", pw.pw_name)
        fix = hostchecks.subid_fix(pw, self.paths, missing)
        if self.dry_run:
            return Step("subids", True, f"would run: {fix}", pw.pw_name)
        if (self.paths.subuid, self.paths.subgid) != (HostPaths.subuid, HostPaths.subgid):
            raise BootstrapError(f"usermod edits /etc/subuid and /etc/subgid only; not {self.paths.subuid}/{self.paths.subgid}")
        p = self.run(fix.split(), timeout=60)
        if p.returncode != 0:
            raise BootstrapError(f"{fix} failed ({p.returncode}): {(p.stderr or p.stdout).strip()[-500:]}")
        for k in missing:
            if sum(c for _, c in hostchecks.subid_ranges(self.paths.subid_file(k), pw)) < daemonctl.MIN_SUBIDS:
                raise BootstrapError(f"{fix} ran but {pw.pw_name} still has too few sub{k}s")
        return Step("subids", True, f"ran: {fix}", pw.pw_name)

    def ensure_linger(self, pw: pwd.struct_passwd) -> Step:
        if not self.systemd:
            return Step("linger", False, "no systemd: not applicable (the daemon is started by hand)", pw.pw_name)
        if service.linger_enabled(pw.pw_name, self.paths.linger_dir):
            return Step("linger", False, "enabled already", pw.pw_name)
        cmd = ["loginctl", "enable-linger", pw.pw_name]
        if self.dry_run:
            return Step("linger", True, "would run: " + " ".join(cmd), pw.pw_name)
        p = self.run(cmd, timeout=30)
        if p.returncode != 0:
            raise BootstrapError(f"{' '.join(cmd)} failed: {(p.stderr or p.stdout).strip()[-500:]}")
        # logind starts user@UID.service, which creates /run/user/UID.
        rd = daemonctl.daemon_paths(pw.pw_uid).runtime_dir
        deadline = time.monotonic() + self.runtime_dir_wait
        while not os.path.isdir(rd) and time.monotonic() < deadline:
            time.sleep(0.2)
        return Step("linger", True, "ran: " + " ".join(cmd), pw.pw_name)

    def ensure_workspace(self, pw: pwd.struct_passwd, workspace_dir: str = hostchecks.WORKSPACE_DIR) -> Step:
        path = os.path.join(pw.pw_dir, workspace_dir)
        if not os.path.lexists(path):
            if self.dry_run:
                return Step("workspace", True, f"would create {path} owned by {pw.pw_name}", pw.pw_name)
            try:
                real = ensure_workspace(pw.pw_dir, workspace_dir, pw.pw_uid, pw.pw_gid)
            except WorkspaceError as e:
                raise BootstrapError(str(e)) from None
            return Step("workspace", True, f"created {real} owned by {pw.pw_name}", pw.pw_name)
        check = hostchecks.check_workspace(pw, workspace_dir)
        if check.ok:
            return Step("workspace", False, check.detail + " already", pw.pw_name)
        # One case is ours to repair: a real directory an admin made as root.
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == 0:
            if self.dry_run:
                return Step("workspace", True, f"would chown {pw.pw_name}:{pw.pw_gid} {path} (owned by root)", pw.pw_name)
            if hand_over_root_owned(pw.pw_dir, workspace_dir, pw.pw_uid, pw.pw_gid):
                return Step("workspace", True, f"chown {pw.pw_name}:{pw.pw_gid} {path} (was owned by root)", pw.pw_name)
        raise BootstrapError(f"{check.detail}; fix: {check.fix}")

    def ensure_daemon_json(self, pw, mirrors: Optional[list[str]], insecure: Optional[list[str]]) -> Step:
        shown = os.path.join(pw.pw_dir, DAEMON_JSON_REL)
        changed = daemonctl.merge_daemon_json(pw, registry_mirrors=mirrors, insecure_registries=insecure, dry_run=self.dry_run)
        what = ", ".join(
            f"{k} {v}" for k, v in (("registry-mirrors", mirrors), ("insecure-registries", insecure)) if v is not None
        )
        if not changed:
            return Step("daemon.json", False, f"{shown}: " + (f"{what} already" if what else "no --mirror given, left as is"), pw.pw_name)
        if self.dry_run:
            return Step("daemon.json", True, f"would merge {what} into {shown} (other keys kept)", pw.pw_name)
        return Step("daemon.json", True, f"merged {what} into {shown} (other keys kept; previous version, if any, "
                                         f"in daemon.json.bak)", pw.pw_name)

    def ensure_systemd_service(self, pw: pwd.struct_passwd) -> tuple[Step, bool]:
        """Drop-in + setup tool; returns (step, drop-in changed)."""
        dropin = service.dropin_text().encode()
        changed = daemonctl.write_user_file(pw, DROPIN_REL, dropin, dry_run=self.dry_run)
        installed = service.unit_installed(pw)
        done = []
        if changed:
            done.append(f"{'would write' if self.dry_run else 'wrote'} ~{pw.pw_name}/{DROPIN_REL} (host loopback on)")
        tool = daemonctl.find_binary("dockerd-rootless-setuptool.sh")
        if not installed:
            if not tool:
                raise BootstrapError("dockerd-rootless-setuptool.sh not found: apt-get install docker.io (or docker-ce-rootless-extras)")
            cmd = service.as_user_cmd(pw, tool, "install")
            if self.dry_run:
                done.append("would run as the user: dockerd-rootless-setuptool.sh install")
            else:
                p = self.run(cmd, timeout=180, env=service.as_user_env(pw))
                if p.returncode != 0:
                    raise BootstrapError(
                        f"dockerd-rootless-setuptool.sh install as {pw.pw_name} failed ({p.returncode}):\n"
                        + (p.stderr or p.stdout).strip()[-1500:]
                    )
                done.append("ran as the user: dockerd-rootless-setuptool.sh install (docker.service enabled)")
        elif changed and not self.dry_run:
            p = service.systemctl_user(pw, "daemon-reload", run=self.run)
            if p.returncode != 0:
                raise BootstrapError(f"systemctl --user -M {pw.pw_name}@ daemon-reload failed: {(p.stderr or p.stdout).strip()[-500:]}")
            done.append("systemctl --user daemon-reload")
        if not done:
            return Step("user service", False, f"~{pw.pw_name}/{UNIT_REL} installed, drop-in in place already", pw.pw_name), False
        return Step("user service", True, "; ".join(done), pw.pw_name), changed and installed

    def ensure_daemon(self, pw: pwd.struct_passwd, reasons: Iterable[str] = (), gpu_stub_dir: Optional[str] = None) -> Step:
        facts = hostchecks.daemon_facts(pw)
        st = facts.status
        reasons = list(reasons)
        if st["running"]:
            if not facts.up:
                raise BootstrapError(f"{st['error']}: stop whatever serves {st['socket']} (fuser {st['socket']}) first")
            if any("--disable-host-loopback" in a for a in facts.rootlesskit.values()):
                reasons.append("it runs with --disable-host-loopback")
            loaded = hostchecks.check_daemon_json(pw, facts)
            if loaded.code == hostchecks.CODE_DAEMON_JSON_NOT_LOADED and not reasons:
                reasons.append(f"it runs with an older daemon.json ({loaded.detail})")
            if gpu_stub_dir:
                first = (hostchecks.process_path_env(st["pid"]) or "").split(":")[0]
                if first != gpu_stub_dir:
                    reasons.append(f"its PATH does not start with the GPU stub dir {gpu_stub_dir}")
            if not reasons:
                return Step("daemon", False, f"running already (pid {st['pid']}, rootless, host loopback on)", pw.pw_name)
            why = "; ".join(reasons)
            if self.dry_run:
                return Step("daemon", True, f"would restart it ({why}); its running containers would stop", pw.pw_name)
            if not self.restart:
                return Step("daemon", False, f"NOT restarted (--no-restart) although {why}: run "
                                             f"'rootless-gpu-admin stop-daemon {pw.pw_name} && rootless-gpu-admin "
                                             f"start-daemon {pw.pw_name}' to apply", pw.pw_name)
            service.stop_daemon_for(pw, run=self.run)
            pid = service.start_daemon_for(pw, self.timeout, gpu_stub_dir=gpu_stub_dir, run=self.run)
            detail = f"restarted (pid {pid}) because {why}; its running containers were stopped"
        else:
            if self.dry_run:
                return Step("daemon", True, "would start it (not running: " + (st["error"] or "no answer") + ")", pw.pw_name)
            pid = service.start_daemon_for(pw, self.timeout, gpu_stub_dir=gpu_stub_dir, run=self.run)
            detail = f"started (pid {pid})" + (" with the GPU stub first on its PATH" if gpu_stub_dir else "")
        after = hostchecks.daemon_facts(pw)
        if not after.up:
            raise BootstrapError(f"the daemon does not answer as a rootless daemon after start: {after.status['error']}")
        if any("--disable-host-loopback" in a for a in after.rootlesskit.values()):
            raise BootstrapError("the daemon still runs with --disable-host-loopback after the restart")
        return Step("daemon", True, detail + f", docker {after.status['server_version']} at {after.status['docker_host']}", pw.pw_name)

    # ------------------------------------------------------------- whole runs

    def host(self, gpu: bool = False) -> list[Step]:
        steps = [self._guard("tun", "host", self.ensure_tun)]
        if gpu:
            steps.append(self._guard("nvidia no-cgroups", "host", self.ensure_nvidia_no_cgroups))
        return steps

    def user(
        self,
        pw: pwd.struct_passwd,
        mirrors: Optional[list[str]] = None,
        insecure: Optional[list[str]] = None,
        *,
        start: bool = True,
        gpu_stub_dir: Optional[str] = None,
    ) -> list[Step]:
        """All steps for one user, in order; stops at the first failure."""
        steps: list[Step] = []
        reasons: list[str] = []

        def add(step: Step) -> bool:
            steps.append(step)
            return step.ok

        name = pw.pw_name
        if pw.pw_uid < self.min_uid:
            return [Step("account", False, f"{name} has uid {pw.pw_uid} < {self.min_uid}: a system account, not a student", name, ok=False)]
        if not add(self._guard("subids", name, self.ensure_subids, pw)):
            return steps
        if not add(self._guard("linger", name, self.ensure_linger, pw)):
            return steps
        if not add(self._guard("workspace", name, self.ensure_workspace, pw)):
            return steps
        step = self._guard("daemon.json", name, self.ensure_daemon_json, pw, mirrors, insecure)
        if not add(step):
            return steps
        if step.changed:
            reasons.append("daemon.json changed")
        if self.systemd and gpu_stub_dir is None:
            try:
                svc, reload_needed = self.ensure_systemd_service(pw)
            except Exception as e:  # noqa: BLE001 - reported as a failed step
                svc, reload_needed = self._failed("user service", name, e), False
            if not add(svc):
                return steps
            if reload_needed:
                reasons.append("the service's drop-in changed")
        if start:
            add(self._guard("daemon", name, self.ensure_daemon, pw, reasons, gpu_stub_dir))
        return steps

    def _failed(self, name: str, scope: str, e: BaseException) -> Step:
        return Step(name, False, str(e) or type(e).__name__, scope, ok=False)

    def _guard(self, name: str, scope: str, fn, *args) -> Step:
        try:
            return fn(*args)
        except (BootstrapError, DaemonError, WorkspaceError, safefs.UnsafePathError, nvidiaconf.NvidiaConfigError,
                subprocess.SubprocessError, OSError) as e:
            if isinstance(e, OSError) and e.errno == errno.EACCES and os.geteuid() != 0:
                e = BootstrapError(f"{e}: run as root")
            return self._failed(name, scope, e)
