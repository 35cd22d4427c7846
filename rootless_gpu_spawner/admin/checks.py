"""The checks of ``rootless-gpu-admin doctor``: small functions returning Check records.

Each check looks at one fact of the host or of one user and returns a
:class:`Check` whose ``fix`` is the exact command (or file edit) that repairs
it.  Nothing here changes anything (bootstrap.py does), and the only network
traffic is the user's daemon socket (a unix socket).

Every host path a check reads comes from :class:`HostPaths`, so tests point
them at temporary files (an NVIDIA config with ``no-cgroups = false``, an
``/etc/subuid`` without the user) instead of touching the real ones.

Statuses: ``pass``; ``fail`` (the spawner will not work for someone until
fixed; doctor exits 1); ``warn`` (works, with a limitation the admin should
know, e.g. memory limits ignored on cgroup v1); ``skip`` (does not apply
here, e.g. NVIDIA checks on a host without NVIDIA GPUs).
"""

from __future__ import annotations

import glob
import grp
import os
import pwd
import stat
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Optional

from .. import boundedjson
from ..host import daemonctl, prereqs
from ..host import nvidiaconf
from ..host import safefs, service
from ..host.daemonctl import DaemonError
from ..layout import DAEMON_JSON_REL, DROPIN_REL

#: Where useradd starts allocating subordinate ids (SUB_UID_MIN in login.defs).
SUBID_FLOOR = 100000
WORKSPACE_DIR = "workspace"
ADMIN = "rootless-gpu-admin"
NVIDIA_CONFIG_ENV = "RGS_ADMIN_NVIDIA_CONFIG"


@dataclass
class Check:
    """One doctor finding.  ``ok`` is False only for ``status == "fail"``."""

    name: str
    ok: bool
    detail: str
    fix: Optional[str] = None
    scope: str = "host"  # "host" or the user's login name
    status: str = ""
    #: What a caller branches on (bootstrap, tests), never the text: one of the ``CODE_*``
    #: constants, "" for a finding nobody branches on.
    code: str = ""

    def __post_init__(self) -> None:
        if not self.status:
            self.status = "pass" if self.ok else "fail"

    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["code"]:
            del d["code"]
        return d


#: The daemon runs with other registry mirrors than its daemon.json lists (it reads the file
#: only at start): a restart applies the file.
CODE_DAEMON_JSON_NOT_LOADED = "daemon-json-not-loaded"


def passed(name: str, detail: str, scope: str = "host") -> Check:
    return Check(name, True, detail, None, scope, "pass")


def failed(name: str, detail: str, fix: str, scope: str = "host") -> Check:
    return Check(name, False, detail, fix, scope, "fail")


def warned(name: str, detail: str, fix: Optional[str], scope: str = "host") -> Check:
    return Check(name, True, detail, fix, scope, "warn")


def skipped(name: str, detail: str, scope: str = "host") -> Check:
    return Check(name, True, detail, None, scope, "skip")


@dataclass(frozen=True)
class HostPaths:
    """Every host file the checks (and bootstrap) read; tests use temp paths."""

    subuid: str = "/etc/subuid"
    subgid: str = "/etc/subgid"
    tun: str = "/dev/net/tun"
    nvidia_config: str = nvidiaconf.DEFAULT_PATH
    cdi_dirs: tuple = ("/etc/cdi", "/var/run/cdi")
    nvidia_devices: tuple = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0")
    systemd_marker: str = service.SYSTEMD_MARKER
    linger_dir: str = service.LINGER_DIR
    cgroup_root: str = "/sys/fs/cgroup"
    proc_sys: str = "/proc/sys"
    user_delegate_dir: str = "/etc/systemd/system/user@.service.d"

    @classmethod
    def from_env(cls, nvidia_config: Optional[str] = None) -> "HostPaths":
        """Defaults, with the NVIDIA config path from the argument or $RGS_ADMIN_NVIDIA_CONFIG."""
        path = nvidia_config or os.environ.get(NVIDIA_CONFIG_ENV) or nvidiaconf.DEFAULT_PATH
        return cls(nvidia_config=path)

    def subid_file(self, kind: str) -> str:
        return self.subuid if kind == "uid" else self.subgid


Which = Callable[[str], Optional[str]]


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


# ----------------------------------------------------------------- host


def check_userns(paths: HostPaths) -> Check:
    name = "user namespaces"
    problems, fixes = [], []
    mx = (_read(os.path.join(paths.proc_sys, "user/max_user_namespaces")) or "").strip()
    if mx == "0":
        problems.append("user.max_user_namespaces = 0")
        fixes.append("sysctl -w user.max_user_namespaces=28633 && echo 'user.max_user_namespaces=28633' > /etc/sysctl.d/51-rootless.conf")
    clone = (_read(os.path.join(paths.proc_sys, "kernel/unprivileged_userns_clone")) or "").strip()
    if clone == "0":
        problems.append("kernel.unprivileged_userns_clone = 0")
        fixes.append("sysctl -w kernel.unprivileged_userns_clone=1 && echo 'kernel.unprivileged_userns_clone=1' > /etc/sysctl.d/50-rootless.conf")
    aa = (_read(os.path.join(paths.proc_sys, "kernel/apparmor_restrict_unprivileged_userns")) or "").strip()
    if aa == "1":
        rk = daemonctl.find_binary("rootlesskit") or "/usr/bin/rootlesskit"
        profile = "/etc/apparmor.d/" + rk.strip("/").replace("/", ".")
        problems.append("kernel.apparmor_restrict_unprivileged_userns = 1 (AppArmor blocks rootlesskit)")
        fixes.append(
            f"write {profile} containing:\n"
            f"  abi <abi/4.0>,\n  include <tunables/global>\n  \"{rk}\" flags=(unconfined) {{\n    userns,\n"
            f"    include if exists <local/{os.path.basename(profile)}>\n  }}\n"
            f"then: systemctl restart apparmor.service"
        )
    if problems:
        return failed(name, "; ".join(problems) + ": rootlesskit cannot create a user namespace", "\n".join(fixes))
    return passed(name, f"enabled (user.max_user_namespaces={mx or '?'})")


def check_uidmap(paths: HostPaths, which: Which = daemonctl.find_binary) -> Check:
    name = "newuidmap/newgidmap"
    found, bad = [], []
    for b in ("newuidmap", "newgidmap"):
        p = which(b)
        if not p:
            return failed(name, f"{b} not found: rootlesskit maps the user's subordinate ids with it",
                          "apt-get install uidmap")
        if not os.stat(p).st_mode & stat.S_ISUID or os.stat(p).st_uid != 0:
            bad.append(p)
        found.append(p)
    if bad:
        return failed(name, f"{', '.join(bad)} not setuid root", "apt-get install --reinstall uidmap  (or: chmod u+s " + " ".join(bad) + ")")
    return passed(name, " and ".join(found) + " are setuid root")


def check_binary(name: str, package: str, why: str, which: Which = daemonctl.find_binary) -> Check:
    p = which(name)
    if not p:
        return failed(name, f"not found: {why}", f"apt-get install {package}")
    return passed(name, p)


def check_tun(paths: HostPaths, users: Iterable[pwd.struct_passwd] = ()) -> Check:
    name = "/dev/net/tun"
    tun = prereqs.read_tun(paths.tun)
    if tun.problem:
        return failed(name, *tun.problem)
    if tun.usable_by_all:
        return passed(name, f"mode {tun.mode:04o}: usable by every user")
    users = list(users)
    blocked = [pw.pw_name for pw in users if not tun.usable_by(pw)]
    if users and not blocked:
        return passed(name, f"mode {tun.mode:04o}: usable by {', '.join(p.pw_name for p in users)} (owner/group)")
    who = ", ".join(blocked) if blocked else "ordinary users"
    return failed(name, f"mode {tun.mode:04o} (owner {tun.uid}:{tun.gid}): not read/writable by {who}; "
                        "slirp4netns opens it as the user, so their daemon cannot start",
                  f"chmod 666 {paths.tun}  (or: {ADMIN} bootstrap, which does the same)")


def check_docker(which: Which = daemonctl.find_binary) -> Check:
    name = "docker"
    dockerd, client = which("dockerd"), which("docker")
    if not dockerd:
        return failed(name, "dockerd not found", "apt-get install docker.io  (or Docker's docker-ce packages)")
    version = "?"
    try:
        p = subprocess.run([dockerd, "--version"], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
        version = p.stdout.strip() or version
    except (OSError, subprocess.TimeoutExpired):
        pass
    if not client:
        return failed(name, f"{dockerd} ({version}) found but no docker client (students use it)",
                      "apt-get install docker.io  (or docker-ce-cli)")
    return passed(name, f"{dockerd}: {version}")


def check_rootless_scripts(paths: HostPaths, which: Which = daemonctl.find_binary) -> Check:
    name = "rootless scripts"
    script, tool = which("dockerd-rootless.sh"), which("dockerd-rootless-setuptool.sh")
    if not script:
        return failed(name, "dockerd-rootless.sh not found (it runs dockerd inside rootlesskit)",
                      "apt-get install docker.io  (Debian puts it in /usr/share/docker.io/contrib; docker-ce: docker-ce-rootless-extras)")
    if not tool and service.systemd_running(paths.systemd_marker):
        return failed(name, f"{script} found, dockerd-rootless-setuptool.sh not (bootstrap installs the user service with it)",
                      "apt-get install docker.io  (or docker-ce-rootless-extras)")
    loop = ("which reads " + service.LOOPBACK_ENV) if service.script_honours_loopback_env(script) else \
        "which hard-codes --disable-host-loopback; rootless-gpu-admin runs rootlesskit itself, without it"
    return passed(name, f"{script}, {loop}; setup tool: {tool or 'not needed without systemd'}")


def check_setpriv(which: Which = daemonctl.find_binary) -> Check:
    return check_binary("setpriv", "util-linux", "root drops to the user with it to start the daemon", which)


def check_systemd(paths: HostPaths) -> Check:
    name = "systemd"
    if service.systemd_running(paths.systemd_marker):
        return passed(name, "systemd is PID 1: each daemon runs as the user's docker.service (with linger)")
    return warned(
        name,
        f"no systemd ({paths.systemd_marker} missing): daemons are started by {ADMIN} (start-daemon/bootstrap) "
        "or by the spawner; nothing restarts them after a reboot",
        f"after each boot run '{ADMIN} bootstrap --group GROUP' (e.g. from an @reboot cron job), "
        "or let the spawner start daemons on demand",
    )


def check_cgroup(paths: HostPaths) -> Check:
    name = "cgroup"
    v2 = os.path.exists(os.path.join(paths.cgroup_root, "cgroup.controllers"))
    systemd = service.systemd_running(paths.systemd_marker)
    if not v2:
        return warned(
            name,
            "cgroup v1: a rootless daemon runs with cgroup driver 'none', so memory/CPU limits "
            "(mem_limit, cpu_limit) are silently ignored",
            "for limits, boot with cgroup v2 and systemd: add systemd.unified_cgroup_hierarchy=1 to "
            "GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub, reboot",
        )
    if not systemd:
        return warned(name, "cgroup v2 without systemd: nobody delegates a cgroup to the users' daemons, "
                            "memory/CPU limits are ignored", "run systemd as init for memory/CPU limits")
    delegated = ""
    for conf in sorted(glob.glob(os.path.join(paths.user_delegate_dir, "*.conf"))):
        for line in (_read(conf) or "").splitlines():
            if line.strip().startswith("Delegate="):
                delegated = line.strip().split("=", 1)[1]
    if "cpu" in delegated.split() and "memory" in delegated.split():
        return passed(name, f"cgroup v2, user@.service delegates: {delegated}")
    conf = os.path.join(paths.user_delegate_dir, "delegate.conf")
    return warned(
        name,
        "cgroup v2, but systemd delegates only memory and pids to users by default: CPU limits are ignored",
        f"write {conf} containing:\n  [Service]\n  Delegate=cpu cpuset io memory pids\n"
        "then: systemctl daemon-reload, and restart the users' daemons",
    )


def nvidia_gpu_present(paths: HostPaths) -> bool:
    return any(os.path.exists(p) for p in paths.nvidia_devices)


def check_nvidia_toolkit(paths: HostPaths, which: Which = daemonctl.find_binary) -> Check:
    name = "nvidia container toolkit"
    hook = which("nvidia-container-runtime-hook")
    cli = which("nvidia-container-cli")
    if hook and cli:
        return passed(name, f"{hook}, {cli}")
    if not nvidia_gpu_present(paths):
        return skipped(name, "no NVIDIA GPU on this host (no driver); servers run without GPUs")
    missing = " and ".join(n for n, p in (("nvidia-container-runtime-hook", hook), ("nvidia-container-cli", cli)) if not p)
    return failed(
        name,
        f"NVIDIA driver found but {missing} missing: a rootless dockerd only offers --gpus when "
        "nvidia-container-runtime-hook is on its PATH when it starts",
        "install nvidia-container-toolkit (https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/"
        "latest/install-guide.html), then restart the users' daemons",
    )


def check_no_cgroups(paths: HostPaths, which: Which = daemonctl.find_binary) -> Check:
    name = "nvidia no-cgroups"
    path = paths.nvidia_config
    fix = (f"{ADMIN} bootstrap --gpu  (or edit {path}: under [{nvidiaconf.TABLE}] set "
           f"'{nvidiaconf.KEY} = true', e.g. uncomment '#{nvidiaconf.KEY} = false' and make it true)")
    text = _read(path)
    if text is None:
        if which("nvidia-container-cli") or nvidia_gpu_present(paths):
            return failed(name, f"{path} missing: nvidia-container-cli will try to set up device cgroups, "
                                "which a rootless daemon cannot ('devices.allow: permission denied')", fix)
        return skipped(name, f"no NVIDIA Container Toolkit config ({path}); no GPU here")
    try:
        value = nvidiaconf.read_no_cgroups(text, path)
    except nvidiaconf.NvidiaConfigError as e:
        return failed(name, str(e), f"fix {path} by hand, then: {ADMIN} bootstrap --gpu")
    if value is True:
        return passed(name, f"{path}: [{nvidiaconf.TABLE}] {nvidiaconf.KEY} = true")
    return failed(
        name,
        f"{path}: [{nvidiaconf.TABLE}] {nvidiaconf.KEY} is {'false' if value is False else 'not set (default false)'}: "
        "--gpus on a rootless daemon fails with 'failed to add device rules: ... devices.allow: permission denied'",
        fix,
    )


def check_cdi(paths: HostPaths, which: Which = daemonctl.find_binary) -> Check:
    name = "cdi specs"
    specs = []
    for d in paths.cdi_dirs:
        specs += sorted(glob.glob(os.path.join(d, "*.yaml")) + glob.glob(os.path.join(d, "*.json")))
    nvidia = [s for s in specs if "nvidia.com/gpu" in (_read(s) or "")]
    if nvidia:
        return passed(name, "NVIDIA CDI spec: " + ", ".join(nvidia))
    if not nvidia_gpu_present(paths):
        return skipped(name, "no NVIDIA GPU on this host: no CDI spec needed")
    return warned(
        name,
        f"no NVIDIA CDI spec in {' or '.join(paths.cdi_dirs)}: Docker before 25 uses the runtime hook instead "
        "(fine); newer Docker and '--device nvidia.com/gpu=all' need one",
        "nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml  (again after each driver upgrade)",
    )


def host_checks(paths: HostPaths, users: Iterable[pwd.struct_passwd] = (), which: Which = daemonctl.find_binary) -> list[Check]:
    users = list(users)
    return [
        check_userns(paths),
        check_uidmap(paths, which),
        check_binary("rootlesskit", "rootlesskit", "it creates the daemon's user, mount and network namespaces", which),
        check_binary("slirp4netns", "slirp4netns", "it gives the rootless daemon its network", which),
        check_setpriv(which),
        check_tun(paths, users),
        check_docker(which),
        check_rootless_scripts(paths, which),
        check_systemd(paths),
        check_cgroup(paths),
        check_nvidia_toolkit(paths, which),
        check_no_cgroups(paths, which),
        check_cdi(paths, which),
    ]


# ----------------------------------------------------------------- subordinate ids


subid_ranges = prereqs.subid_ranges  # the one parser of /etc/subuid and /etc/subgid
_all_ranges = prereqs.subid_entries


def free_subid_start(paths: HostPaths) -> int:
    """The first id after every range in both files (and >= 100000):
    one start that is free for the uid *and* the gid range."""
    end = SUBID_FLOOR
    for path in (paths.subuid, paths.subgid):
        for _n, start, count in _all_ranges(path):
            end = max(end, start + count)
    return end


def subid_fix(pw: pwd.struct_passwd, paths: HostPaths, kinds: Iterable[str]) -> str:
    start = free_subid_start(paths)
    rng = f"{start}-{start + daemonctl.MIN_SUBIDS - 1}"
    opts = " ".join(f"--add-sub{k}s {rng}" for k in kinds)
    return f"usermod {opts} {pw.pw_name}"


def check_subids(pw: pwd.struct_passwd, paths: HostPaths, kind: str) -> Check:
    """kind: "uid" or "gid"."""
    name = f"sub{kind}"
    path = paths.subid_file(kind)
    mine = subid_ranges(path, pw)
    total = sum(c for _, c in mine)
    bootstrap = f"  (or: {ADMIN} bootstrap --user {pw.pw_name})"
    if total < daemonctl.MIN_SUBIDS:
        return failed(
            name,
            f"{path} gives {pw.pw_name} {total} subordinate {kind}s, needs at least {daemonctl.MIN_SUBIDS}: "
            "images with files of other owners cannot be unpacked, the daemon will not start",
            subid_fix(pw, paths, [kind]) + bootstrap,
            pw.pw_name,
        )
    for other, ostart, ocount in _all_ranges(path):
        if other in (pw.pw_name, str(pw.pw_uid)):
            continue
        for start, count in mine:
            if start < ostart + ocount and ostart < start + count:
                return failed(
                    name,
                    f"{pw.pw_name}'s range {start}-{start + count - 1} in {path} overlaps {other}'s "
                    f"{ostart}-{ostart + ocount - 1}: their containers' files would be each other's",
                    f"usermod --del-sub{kind}s {start}-{start + count - 1} {pw.pw_name} && " + subid_fix(pw, paths, [kind]),
                    pw.pw_name,
                )
    ranges = ", ".join(f"{s}-{s + c - 1}" for s, c in mine)
    return passed(name, f"{total} subordinate {kind}s ({ranges})", pw.pw_name)


# ----------------------------------------------------------------- per user


def check_linger(pw: pwd.struct_passwd, paths: HostPaths) -> Check:
    name = "linger"
    if not service.systemd_running(paths.systemd_marker):
        return skipped(name, "no systemd: linger does not apply", pw.pw_name)
    if service.linger_enabled(pw.pw_name, paths.linger_dir):
        return passed(name, "enabled: the user's systemd (and docker.service) runs without a login", pw.pw_name)
    return failed(name, "not enabled: the daemon stops when the user's last session ends",
                  f"loginctl enable-linger {pw.pw_name}", pw.pw_name)


def check_workspace(pw: pwd.struct_passwd, workspace_dir: str = WORKSPACE_DIR) -> Check:
    """The workspace as the spawner reaches it: safefs' walk from the home, nothing created.

    No link a student made is resolved by the kernel or stat-ed outside the
    home (the doctor is no oracle for paths elsewhere on the host).
    """
    name = "workspace"
    group = _group_name(pw.pw_gid)
    path = os.path.join(pw.pw_dir, workspace_dir)
    create = f"{ADMIN} bootstrap --user {pw.pw_name}  (or: install -d -o {pw.pw_name} -g {group} -m 700 {path})"
    replace = f"as {pw.pw_name}: rm {path} && mkdir {path}"
    try:
        st = _workspace_stat(pw, workspace_dir)
    except _NoHome:
        return failed(name, f"home {pw.pw_dir} does not exist",
                      f"mkhomedir_helper {pw.pw_name}  (then: {ADMIN} bootstrap --user {pw.pw_name})", pw.pw_name)
    except FileNotFoundError:
        return failed(name, f"{path} does not exist (the spawner would create it on first spawn)", create, pw.pw_name)
    except safefs.SymlinkEscape:
        return failed(name, f"{path} is a symlink leading outside the home: the spawner refuses it", replace, pw.pw_name)
    except (safefs.UnsafePathError, OSError) as e:
        return failed(name, f"{path} cannot be used: {e}", replace, pw.pw_name)
    if st.st_uid != pw.pw_uid:
        owner = st.st_uid
        try:
            owner = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            pass
        return failed(name, f"{path} is owned by {owner}, not {pw.pw_name}: the spawner refuses it",
                      f"chown {pw.pw_name}:{group} {path}", pw.pw_name)
    return passed(name, f"{path} owned by {pw.pw_name}", pw.pw_name)


class _NoHome(Exception):
    pass


def _workspace_stat(pw: pwd.struct_passwd, workspace_dir: str) -> os.stat_result:
    """fstat of the workspace directory reached by safefs.open_dir_beneath (create nothing)."""
    home = os.path.normpath(pw.pw_dir)
    real_home = os.path.realpath(home)  # the home's own entry is the admin's (a root-owned dir)
    try:
        home_fd = os.open(real_home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise _NoHome() from None
    try:
        rel = os.path.relpath(os.path.join(home, workspace_dir), home)
        fd, _real = safefs.open_dir_beneath(home_fd, real_home, rel, aliases=(home,))
    finally:
        os.close(home_fd)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def rootlesskit_args(uid: int) -> dict[int, list[str]]:
    """Command lines of *uid*'s rootlesskit processes (the daemon's parent)."""
    out = {}
    for pid in daemonctl._find_procs(uid, ("rootlesskit",)):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                out[pid] = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
    return out


def process_path_env(pid: int) -> Optional[str]:
    """$PATH of a process (None if unreadable): the GPU stub check reads dockerd's."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                if item.startswith(b"PATH="):
                    return item[5:].decode(errors="replace")
    except OSError:
        return None
    return ""


@dataclass
class DaemonFacts:
    status: dict
    info: dict = field(default_factory=dict)
    rootlesskit: dict = field(default_factory=dict)

    @property
    def up(self) -> bool:
        return bool(self.status.get("running") and self.status.get("rootless"))


def daemon_facts(pw: pwd.struct_passwd) -> DaemonFacts:
    st = daemonctl.daemon_status(pw)
    facts = DaemonFacts(st)
    if st["running"]:
        try:
            code, body = daemonctl.api_get(st["socket"], "/info", timeout=5, limit=boundedjson.MAX_BYTES, uid=pw.pw_uid)
            if code == 200:
                facts.info = boundedjson.loads_object(body)
        except (*daemonctl.ASK_ERRORS, DaemonError, boundedjson.UntrustedJSONError):
            pass  # daemon_status already said what is wrong with the daemon
    facts.rootlesskit = rootlesskit_args(pw.pw_uid)
    return facts


def check_daemon(pw: pwd.struct_passwd, facts: DaemonFacts) -> Check:
    name = "daemon"
    st = facts.status
    start = f"{ADMIN} start-daemon {pw.pw_name}"
    if facts.up:
        driver = st.get("cgroup_driver")
        note = ", cgroup driver none: memory/CPU limits are ignored" if driver == "none" else f", cgroup driver {driver}"
        return passed(name, f"rootless dockerd {st.get('server_version')} answers on {st['socket']} (pid {st['pid']}{note})", pw.pw_name)
    if st.get("running") and st.get("rootless") is False:
        return failed(name, st.get("error") or "the daemon on the socket is not rootless",
                      f"stop whatever serves {st['socket']} (fuser {st['socket']}), then: {start}", pw.pw_name)
    if st.get("pid") and not st.get("running"):
        gone = "" if st.get("socket_exists") else " (the socket is gone: was the runtime dir removed?)"
        return failed(name, f"dockerd (pid {st['pid']}) runs but does not answer on {st['socket']}{gone}" + _last_log_lines(st),
                      f"{ADMIN} stop-daemon {pw.pw_name} && {start}  (log: {st['log_file']})", pw.pw_name)
    return failed(name, (st.get("error") or f"not running: no answer on {st['socket']}") + _last_log_lines(st),
                  f"{start}  (or: {ADMIN} bootstrap --user {pw.pw_name}; log: {st['log_file']})", pw.pw_name)


def _last_log_lines(st: dict) -> str:
    """The last log lines daemon_status read (already printable), marked as the log's."""
    tail = st.get("log_tail") or []
    return "".join(f"\n{daemonctl.LOG_LINE_MARK}{line}" for line in tail)


def _norm_urls(urls) -> list[str]:
    return [str(u).rstrip("/") for u in (urls or [])]


def check_daemon_json(pw: pwd.struct_passwd, facts: Optional[DaemonFacts] = None) -> Check:
    name = "daemon.json"
    shown = os.path.join(pw.pw_dir, DAEMON_JSON_REL)
    mirror_fix = f"{ADMIN} bootstrap --user {pw.pw_name} --mirror URL  (URL: your registry mirror, e.g. https://mirror.example.org)"
    try:
        raw = daemonctl.read_user_file(pw, DAEMON_JSON_REL)
    except (DaemonError, OSError) as e:
        return failed(name, f"cannot read {shown}: {e}", f"move {shown} away, then: {ADMIN} bootstrap --user {pw.pw_name}", pw.pw_name)
    if raw is None:
        return warned(name, f"{shown} does not exist: no registry mirror, 'docker pull' by the student goes to "
                            "Docker Hub directly (a rootless daemon ignores /etc/docker/daemon.json)", mirror_fix, pw.pw_name)
    try:
        data = boundedjson.loads(raw) if raw.strip() else {}
    except boundedjson.UntrustedJSONError as e:
        return failed(name, f"{shown} is {e}: the daemon will not start with it",
                      f"fix {shown} (or move it away), then: {ADMIN} bootstrap --user {pw.pw_name}", pw.pw_name)
    if not isinstance(data, dict):
        return failed(name, f"{shown} does not hold a JSON object: the daemon will not start with it",
                      f"fix {shown} (or move it away), then: {ADMIN} bootstrap --user {pw.pw_name}", pw.pw_name)
    mirrors = data.get("registry-mirrors") or []
    if not isinstance(mirrors, list):
        return failed(name, f"{shown}: registry-mirrors is not a list: the daemon will not start with it",
                      f"fix {shown} (or move it away), then: {ADMIN} bootstrap --user {pw.pw_name}", pw.pw_name)
    others = sorted(k for k in data if k not in ("registry-mirrors", "insecure-registries"))
    kept = f"; other keys kept: {', '.join(others)}" if others else ""
    if not mirrors:
        return warned(name, f"{shown} sets no registry-mirrors{kept}: pulls go to Docker Hub directly", mirror_fix, pw.pw_name)
    if facts is not None and facts.up and facts.info:
        registry = facts.info.get("RegistryConfig")
        loaded = (registry.get("Mirrors") if isinstance(registry, dict) else None) or []
        if _norm_urls(loaded) != _norm_urls(mirrors):
            stale = failed(
                name,
                f"{shown} lists mirrors {mirrors} but the running daemon uses {loaded}: it reads the file only at start",
                f"{ADMIN} stop-daemon {pw.pw_name} && {ADMIN} start-daemon {pw.pw_name}  (stops the user's running containers)",
                pw.pw_name,
            )
            stale.code = CODE_DAEMON_JSON_NOT_LOADED
            return stale
    return passed(name, f"registry-mirrors {mirrors}{kept}", pw.pw_name)


def check_host_loopback(pw: pwd.struct_passwd, facts: DaemonFacts) -> Check:
    name = "host loopback"
    if not facts.up:
        return skipped(name, "daemon not running (see 'daemon')", pw.pw_name)
    if not facts.rootlesskit:
        return warned(name, "the daemon answers but no rootlesskit of this user was found; cannot tell whether "
                            "containers reach the host's loopback (10.0.2.2)",
                      f"{ADMIN} stop-daemon {pw.pw_name} && {ADMIN} start-daemon {pw.pw_name}", pw.pw_name)
    for pid, args in sorted(facts.rootlesskit.items()):
        if "--disable-host-loopback" in args:
            return failed(
                name,
                f"rootlesskit (pid {pid}) runs with --disable-host-loopback: containers cannot reach the hub "
                "on the host's 127.0.0.1 (as 10.0.2.2), spawns time out",
                f"{ADMIN} stop-daemon {pw.pw_name} && {ADMIN} start-daemon {pw.pw_name}  "
                f"(under systemd: {ADMIN} bootstrap --user {pw.pw_name}, which adds the drop-in "
                f"~{pw.pw_name}/{DROPIN_REL} with {service.LOOPBACK_ENV}=false)",
                pw.pw_name,
            )
    pid, args = sorted(facts.rootlesskit.items())[0]
    net = next((a.split("=", 1)[1] for a in args if a.startswith("--net=")), "?")
    return passed(name, f"rootlesskit (pid {pid}, --net={net}) runs without --disable-host-loopback: "
                        "containers reach the host's 127.0.0.1 as 10.0.2.2", pw.pw_name)


def user_checks(pw: pwd.struct_passwd, paths: HostPaths, workspace_dir: str = WORKSPACE_DIR) -> list[Check]:
    facts = daemon_facts(pw)
    return [
        check_subids(pw, paths, "uid"),
        check_subids(pw, paths, "gid"),
        check_linger(pw, paths),
        check_workspace(pw, workspace_dir),
        check_daemon(pw, facts),
        check_daemon_json(pw, facts),
        check_host_loopback(pw, facts),
    ]


def run_doctor(users: Iterable[pwd.struct_passwd], paths: HostPaths, which: Which = daemonctl.find_binary) -> list[Check]:
    users = list(users)
    checks = host_checks(paths, users, which)
    for pw in users:
        checks += user_checks(pw, paths)
    return checks
