"""The one place that spells a student's paths: daemon socket, pid files, log, lock,
runtime dir, daemon.json, the systemd user unit, and the lowest student uid.

Everything else (the hub's default ``docker_host_template``, the admin CLI, bootstrap, the
doctor) takes them from here.  Pure names: nothing here touches a file.

Per user, derived from the uid only:

* runtime dir ``/run/user/UID`` (0700, owned by the user) -- what
  ``XDG_RUNTIME_DIR`` points to; dockerd puts its exec-root there.
* socket ``/run/user/UID/docker.sock`` -- ``DOCKER_HOST=unix://...``.
* pid file ``/run/user/UID/docker.pid`` -- written by dockerd itself (we
  write it if it did not).  It holds the *host* pid of dockerd: rootlesskit
  creates user/mount/net namespaces but no pid namespace.
* rootlesskit pid file ``/run/user/UID/rootless-gpu-rootlesskit.pid`` --
  the parent we started, so that stop can reap it too.
* log file ``/run/user/UID/rootless-gpu-daemon.log`` -- stdout/stderr of
  rootlesskit, the script and dockerd.  It lives in the runtime dir, not in
  the home, because root can always write there (homes on NFS with
  root_squash cannot be written by root), it is per boot just like the
  socket, and it sits next to the socket an admin is debugging.  It is
  truncated when it grows past ``daemonctl.LOG_MAX_BYTES``.

In the home (reached only through safefs' walk, as root):

* ``~/.config/docker/daemon.json`` -- the daemon's config (mirrors, insecure registries).
* ``~/.config/systemd/user/docker.service`` and its drop-in -- the systemd user service.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Accounts below this uid are root and system accounts, never students (the default of
#: ``c.RootlessGPUSpawner.min_uid`` and bootstrap's / status's limit).
MIN_UID = 1000

#: Parent of every ``XDG_RUNTIME_DIR`` (``/run/user/UID``); root's, not the student's.
RUN_USER_DIR = "/run/user"
SOCKET_NAME = "docker.sock"

#: The default ``c.RootlessGPUSpawner.docker_host_template``: the student's own socket.
DOCKER_HOST_TEMPLATE = f"unix://{RUN_USER_DIR}/{{uid}}/{SOCKET_NAME}"

#: Files in the student's home, relative to it.
DAEMON_JSON_REL = ".config/docker/daemon.json"
UNIT_REL = ".config/systemd/user/docker.service"
DROPIN_REL = ".config/systemd/user/docker.service.d/override.conf"


def runtime_dir(uid: int, run_dir: str = RUN_USER_DIR) -> str:
    """``/run/user/UID``: the student's ``XDG_RUNTIME_DIR``."""
    return f"{run_dir}/{int(uid)}"


@dataclass(frozen=True)
class DaemonPaths:
    """Every path of one user's daemon, derived from the uid only."""

    uid: int
    runtime_dir: str
    socket: str
    pid_file: str
    rootlesskit_pid_file: str
    log_file: str
    lock_file: str

    @property
    def docker_host(self) -> str:
        return "unix://" + self.socket


def daemon_paths(uid: int) -> DaemonPaths:
    """Paths of *uid*'s daemon (see the module docstring for why there)."""
    rd = runtime_dir(uid)
    return DaemonPaths(
        uid=int(uid),
        runtime_dir=rd,
        socket=f"{rd}/{SOCKET_NAME}",
        pid_file=f"{rd}/docker.pid",
        rootlesskit_pid_file=f"{rd}/rootless-gpu-rootlesskit.pid",
        log_file=f"{rd}/rootless-gpu-daemon.log",
        lock_file=f"{rd}/rootless-gpu-daemon.lock",
    )
