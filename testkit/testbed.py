"""Provision / tear down the integration testbed (run as root).

    python -m tests.testbed up      # idempotent; a second run takes seconds
    python -m tests.testbed status
    python -m tests.testbed down    # stops processes; keeps users, images, caches

What ``up`` builds (facts in the shared TESTBED.md):

* test users rgstest-alice, rgstest-bob, rgstest-carol, provisioned with
  ``rootless-gpu-admin bootstrap`` (the admin CLI, run as a subprocess, so
  every CI run exercises it): ``/dev/net/tun``, subuid/subgid ranges,
  ``~/workspace``, ``daemon.json`` and the daemons;
* a rootless dockerd for alice (plain host) and bob (*simulated GPU host*:
  an ``exit 0`` ``nvidia-container-runtime-hook`` stub first on the daemon's
  PATH, which proves the GPU request path, not CUDA); carol has none, she
  stands for "missing socket" / "socket owned by another uid" cases;
* a local distribution registry on 127.0.0.1:5000 (seen from the daemons as
  10.0.2.2:5000) holding the lab image under a Docker Hub-style name
  (``library/rgs-lab:latest``) for mirror tests -- nothing ever leaves the
  machine;
* the lab image ``rgs-test/jupyterlab:latest`` in both daemons, imported from
  the tarball of ``scripts/build-lab-image.sh`` (override the tarball with
  ``RGS_LAB_IMAGE_TARBALL=PATH``);
* ``/run/rootless-gpu-spawner-testbed/testbed.json`` describing all that for
  the tests.

The rootful dockerd is never started or used: every docker call names a
user's socket explicitly.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import pwd
import signal
import subprocess
import sys
import time
import urllib.parse
from typing import Optional

from rootless_gpu_spawner.host import daemonctl
from rootless_gpu_spawner.admin import checks as hostchecks
from rootless_gpu_spawner.host.daemonctl import DaemonError

STATE_DIR = "/var/lib/rootless-gpu-spawner-testbed"
RUN_DIR = "/run/rootless-gpu-spawner-testbed"
TESTBED_JSON = f"{RUN_DIR}/testbed.json"
GPU_STUB_DIR = f"{STATE_DIR}/gpu-stub"
REGISTRY_DIR = f"{STATE_DIR}/registry"
REGISTRY_CONFIG = f"{STATE_DIR}/registry-config.yml"
REGISTRY_LOG = f"{STATE_DIR}/registry.log"
REGISTRY_PID = f"{RUN_DIR}/registry.pid"
REGISTRY_BIN = "/usr/bin/docker-registry"
REGISTRY_HOST, REGISTRY_PORT = "127.0.0.1", 5000
REGISTRY = f"{REGISTRY_HOST}:{REGISTRY_PORT}"
#: The host's loopback as seen from a rootless daemon / container (slirp4netns).
REGISTRY_FROM_DAEMON = f"10.0.2.2:{REGISTRY_PORT}"
MIRROR_REPO, MIRROR_TAG = "library/rgs-lab", "latest"
LOCAL_IMAGE = "rgs-test/jupyterlab:latest"
SHA_LABEL = "org.rootless-gpu-spawner.tarball-sha256"
DEFAULT_TARBALL = "/var/cache/rootless-gpu-spawner/lab-image.tar.gz"
DOCKER = "/usr/bin/docker"  # Debian's client, same version as the daemons
#: A client config dir of our own: root's ~/.docker (credentials, contexts)
#: must not influence the testbed.
DOCKER_CONFIG = f"{STATE_DIR}/docker-client"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: name -> (has a daemon, simulated GPU host)
USERS = {
    "rgstest-alice": (True, False),
    "rgstest-bob": (True, True),
    "rgstest-carol": (False, False),
}
IMPORT_CHANGES = [
    "ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    'CMD ["jupyterhub-singleuser"]',
    "WORKDIR /root",
]
MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)

_T0 = time.monotonic()


class TestbedError(RuntimeError):
    pass


def step(msg: str) -> None:
    print(f"[testbed {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], *, timeout: float, env: Optional[dict] = None, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise TestbedError(f"{' '.join(cmd)} failed ({p.returncode}): {(p.stderr or p.stdout).strip()[-2000:]}")
    return p


def write_atomic(path: str, data: str, mode: int = 0o644) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


# ---------------------------------------------------------------- users


def ensure_user(name: str) -> pwd.struct_passwd:
    """The account only; everything else is bootstrap's job (see bootstrap_user)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        run(["useradd", "-m", "-s", "/bin/bash", name], timeout=60)
        return pwd.getpwnam(name)


def admin_cli(*args: str, timeout: float = 300) -> dict:
    """Run ``rootless-gpu-admin ARGS --json`` (this interpreter's copy of the
    package) and return its JSON answer; a failure raises with its output."""
    cmd = [sys.executable, "-m", "rootless_gpu_spawner.admin", *args, "--json"]
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    try:
        out = json.loads(p.stdout)
    except ValueError:
        out = None
    if p.returncode != 0 or not isinstance(out, dict):
        raise TestbedError(f"rootless-gpu-admin {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}{p.stderr[-2000:]}")
    return out


def _report(out: dict) -> None:
    for s in out["steps"]:
        step(f"bootstrap {s['scope']}: {s['name']}: {'CHANGED' if s['changed'] else 'done'}: {s['detail']}")


def bootstrap_user(pw: pwd.struct_passwd, has_daemon: bool, gpu: bool) -> None:
    """Provision one test user with ``rootless-gpu-admin bootstrap``.

    Alice and bob get the local registry in daemon.json and a running daemon
    (bob's with the GPU stub first on its PATH: a *simulated GPU host*);
    carol gets subids and a workspace but no daemon.
    """
    args = ["bootstrap", "--user", pw.pw_name, "--timeout", "60"]
    if has_daemon:
        args += ["--insecure-registry", REGISTRY_FROM_DAEMON]
        if gpu:
            args += ["--gpu-stub-dir", GPU_STUB_DIR]
        else:
            # bootstrap restarts a daemon that lacks a requested stub; the
            # reverse (a stub alice must not have) is the testbed's business.
            st = daemonctl.daemon_status(pw)
            if st["running"] and (hostchecks.process_path_env(st["pid"]) or "").split(":")[0] == GPU_STUB_DIR:
                step(f"{pw.pw_name}: stopping daemon (it runs with the GPU stub, must not)")
                daemonctl.stop_daemon(pw)
    else:
        args += ["--no-start"]
    t = time.monotonic()
    _report(admin_cli(*args))
    step(f"{pw.pw_name}: bootstrapped in {time.monotonic() - t:.1f}s")


# ---------------------------------------------------------------- GPU stub


def ensure_gpu_stub() -> None:
    os.makedirs(GPU_STUB_DIR, mode=0o755, exist_ok=True)
    os.chmod(STATE_DIR, 0o755)
    os.chmod(GPU_STUB_DIR, 0o755)
    hook = os.path.join(GPU_STUB_DIR, "nvidia-container-runtime-hook")
    body = "#!/bin/sh\n# simulated GPU host: lets dockerd register its NVIDIA driver; proves the request path, not CUDA\nexit 0\n"
    try:
        same = open(hook).read() == body
    except FileNotFoundError:
        same = False
    if not same:
        write_atomic(hook, body, 0o755)
    os.chmod(hook, 0o755)


# ---------------------------------------------------------------- registry


def _http(method: str, path: str, headers: Optional[dict] = None, timeout: float = 3.0) -> tuple[int, dict, bytes]:
    c = http.client.HTTPConnection(REGISTRY_HOST, REGISTRY_PORT, timeout=timeout)
    try:
        c.request(method, path, headers=headers or {})
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read(4 << 20)
    finally:
        c.close()


def registry_answers() -> bool:
    try:
        return _http("GET", "/v2/")[0] == 200
    except OSError:
        return False


def _registry_pid() -> Optional[int]:
    try:
        pid = int(open(REGISTRY_PID).read().split()[0])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    return pid if cmd and cmd[0].endswith(b"docker-registry") and REGISTRY_CONFIG.encode() in cmd else None


def ensure_registry() -> None:
    os.makedirs(REGISTRY_DIR, mode=0o755, exist_ok=True)
    config = (
        "version: 0.1\n"
        "log:\n  level: warn\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {REGISTRY_DIR}\n"
        "  delete:\n    enabled: true\n"
        "http:\n"
        f"  addr: {REGISTRY}\n"  # loopback only
        "  headers:\n    X-Content-Type-Options: [nosniff]\n"
        # no "proxy:" section: this registry never talks to any upstream
    )
    try:
        changed = open(REGISTRY_CONFIG).read() != config
    except FileNotFoundError:
        changed = True
    if changed:
        write_atomic(REGISTRY_CONFIG, config)
    pid = _registry_pid()
    if pid and changed:
        stop_registry()
        pid = None
    if pid and registry_answers():
        step(f"registry already running (pid {pid}) on {REGISTRY}")
        return
    if not pid and registry_answers():
        raise TestbedError(f"something else answers on {REGISTRY}; stop it (ss -ltnp 'sport = :{REGISTRY_PORT}') and rerun")
    child = None
    if not pid:
        log = open(REGISTRY_LOG, "ab")
        try:
            p = subprocess.Popen(
                [REGISTRY_BIN, "serve", REGISTRY_CONFIG],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/", start_new_session=True,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"},
            )
        finally:
            log.close()
        write_atomic(REGISTRY_PID, f"{p.pid}\n")
        pid, child = p.pid, p
    deadline = time.monotonic() + 30
    while not registry_answers():
        # Our own child: ask it (its /proc cmdline is Python's until it has exec'd).
        died = child.poll() is not None if child is not None else not _registry_pid()
        if died:
            raise TestbedError(f"docker-registry died; see {REGISTRY_LOG}")
        if time.monotonic() > deadline:
            raise TestbedError(f"docker-registry does not answer on {REGISTRY} after 30s; see {REGISTRY_LOG}")
        time.sleep(0.2)
    step(f"registry started (pid {pid}) on {REGISTRY}, storage {REGISTRY_DIR}")


def stop_registry() -> bool:
    pid = _registry_pid()
    if not pid:
        try:
            os.unlink(REGISTRY_PID)
        except FileNotFoundError:
            pass
        return False
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and daemonctl._alive(pid):
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.1)
        if not daemonctl._alive(pid):
            break
    try:
        os.unlink(REGISTRY_PID)
    except FileNotFoundError:
        pass
    return True


def registry_manifest_config_digest(repo: str, tag: str) -> Optional[str]:
    status, _, body = _http("GET", f"/v2/{repo}/manifests/{tag}", {"Accept": MANIFEST_ACCEPT})
    if status != 200:
        return None
    try:
        return json.loads(body)["config"]["digest"]
    except (ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------- daemons and images


def docker_env(uid: int) -> dict:
    return {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "DOCKER_HOST": daemonctl.daemon_paths(uid).docker_host,
        "DOCKER_CONFIG": DOCKER_CONFIG,
    }


def docker(uid: int, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return run([DOCKER, *args], timeout=timeout, env=docker_env(uid), check=check)


def image_info(uid: int, ref: str) -> Optional[dict]:
    code, body = daemonctl.api_get(daemonctl.daemon_paths(uid).socket, f"/images/{urllib.parse.quote(ref, safe='')}/json")
    if code == 404:
        return None
    if code != 200:
        raise TestbedError(f"GET /images/{ref}/json on uid {uid}: HTTP {code} {body[:200]!r}")
    return json.loads(body)


def ensure_tarball() -> str:
    env_tb = os.environ.get("RGS_LAB_IMAGE_TARBALL")
    if env_tb:
        if not os.path.isfile(env_tb):
            raise TestbedError(f"RGS_LAB_IMAGE_TARBALL={env_tb} does not exist")
        return env_tb
    import jupyterhub  # the hub version the image's jupyterhub-singleuser must match

    version = jupyterhub.__version__
    stamp_ok = False
    try:
        stamp = dict(l.split("=", 1) for l in open(DEFAULT_TARBALL + ".stamp").read().splitlines() if "=" in l)
        stamp_ok = stamp.get("hub_version") == version
    except FileNotFoundError:
        pass
    if os.path.isfile(DEFAULT_TARBALL) and stamp_ok:
        return DEFAULT_TARBALL
    script = os.path.join(REPO_ROOT, "scripts", "build-lab-image.sh")
    if not os.path.isfile(script):
        raise TestbedError(f"{DEFAULT_TARBALL} is missing and {script} does not exist to build it")
    step(f"building lab image tarball for jupyterhub {version} (minutes on a fresh machine)")
    p = subprocess.run(["bash", script, "--hub-version", version, "--out", DEFAULT_TARBALL],
                       stdin=subprocess.DEVNULL, timeout=3600)
    if p.returncode != 0 or not os.path.isfile(DEFAULT_TARBALL):
        raise TestbedError(f"{script} failed with code {p.returncode}")
    return DEFAULT_TARBALL


def tarball_sha256(path: str) -> str:
    """sha256 of the tarball, cached by (path, size, mtime, inode) so that a
    second ``up`` does not re-hash hundreds of MB."""
    st = os.stat(path)
    key = {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}
    cache = os.path.join(STATE_DIR, "tarball-sha256.json")
    try:
        c = json.load(open(cache))
        if c.get("key") == key:
            return c["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    write_atomic(cache, json.dumps({"key": key, "sha256": h.hexdigest()}))
    return h.hexdigest()


def ensure_image(pw: pwd.struct_passwd, tarball: str, sha: str) -> str:
    info = image_info(pw.pw_uid, LOCAL_IMAGE)
    labels = ((info or {}).get("Config") or {}).get("Labels") or {}
    if info and labels.get(SHA_LABEL) == sha:
        step(f"{pw.pw_name}: {LOCAL_IMAGE} already imported from this tarball")
        return info["Id"]
    t = time.monotonic()
    args = ["import"]
    for c in [*IMPORT_CHANGES, f"LABEL {SHA_LABEL}={sha}"]:
        args += ["-c", c]
    docker(pw.pw_uid, *args, tarball, LOCAL_IMAGE, timeout=900)
    info = image_info(pw.pw_uid, LOCAL_IMAGE)
    if not info:
        raise TestbedError(f"{LOCAL_IMAGE} missing on {pw.pw_name}'s daemon right after import")
    step(f"{pw.pw_name}: imported {LOCAL_IMAGE} ({info['Id'][:19]}) in {time.monotonic() - t:.1f}s")
    return info["Id"]


def ensure_mirror_image(pw: pwd.struct_passwd, image_id: str) -> None:
    """Put the lab image into the local registry as a Docker Hub 'official'
    style repo (library/rgs-lab), pushed by a rootless daemon through
    10.0.2.2 -- which also proves that path works."""
    if registry_manifest_config_digest(MIRROR_REPO, MIRROR_TAG) == image_id:
        step(f"registry already holds {MIRROR_REPO}:{MIRROR_TAG} = {image_id[:19]}")
        return
    t = time.monotonic()
    ref = f"{REGISTRY_FROM_DAEMON}/{MIRROR_REPO}:{MIRROR_TAG}"
    docker(pw.pw_uid, "tag", LOCAL_IMAGE, ref)
    try:
        docker(pw.pw_uid, "push", ref, timeout=900)
    finally:
        docker(pw.pw_uid, "rmi", ref, check=False)
    got = registry_manifest_config_digest(MIRROR_REPO, MIRROR_TAG)
    if got != image_id:
        raise TestbedError(f"after push the registry has {MIRROR_REPO}:{MIRROR_TAG} = {got}, expected {image_id}")
    step(f"pushed {ref} from {pw.pw_name}'s daemon in {time.monotonic() - t:.1f}s")


# ---------------------------------------------------------------- commands


def up() -> int:
    for d in (STATE_DIR, RUN_DIR, DOCKER_CONFIG):
        os.makedirs(d, mode=0o755, exist_ok=True)
    users = {}
    for name in USERS:
        users[name] = ensure_user(name)
    step("users " + ", ".join(f"{n}({pw.pw_uid})" for n, pw in users.items()))
    ensure_gpu_stub()
    step(f"GPU stub at {GPU_STUB_DIR}/nvidia-container-runtime-hook")
    ensure_registry()
    # The host step of bootstrap makes /dev/net/tun usable by users (0666 on
    # ordinary distributions, 0600 on this CI VM); slirp4netns needs it.
    for name, (has_daemon, gpu) in USERS.items():
        bootstrap_user(users[name], has_daemon, gpu)
    for name, (has_daemon, _) in USERS.items():
        if has_daemon:
            st = daemonctl.daemon_status(users[name])
            if not (st["running"] and st["rootless"]):
                raise TestbedError(f"{name}'s daemon is not a running rootless daemon: {st}")
    tarball = ensure_tarball()
    sha = tarball_sha256(tarball)
    step(f"lab image tarball {tarball} sha256 {sha[:12]}")
    ids = {}
    for name, (has_daemon, _) in USERS.items():
        if has_daemon:
            ids[name] = ensure_image(users[name], tarball, sha)
    ensure_mirror_image(users["rgstest-alice"], ids["rgstest-alice"])
    data = {
        "users": {
            name: {
                "uid": pw.pw_uid,
                "gid": pw.pw_gid,
                "home": pw.pw_dir,
                "docker_host": daemonctl.daemon_paths(pw.pw_uid).docker_host,
                "daemon": USERS[name][0],
                "gpu": USERS[name][1],
            }
            for name, pw in users.items()
        },
        "registry": REGISTRY,
        "registry_from_daemon": REGISTRY_FROM_DAEMON,
        "local_image": LOCAL_IMAGE,
        "mirror_image_short": f"{MIRROR_REPO.split('/', 1)[1]}:{MIRROR_TAG}",
        "mirror_repo": MIRROR_REPO,
        "gpu_stub_dir": GPU_STUB_DIR,
        "image_tarball": tarball,
        "image_tarball_sha256": sha,
    }
    write_atomic(TESTBED_JSON, json.dumps(data, indent=2) + "\n")
    step(f"wrote {TESTBED_JSON}; testbed up")
    return 0


def _kill_user_procs(uid: int, name: str) -> None:
    """Test users never log in: anything still running as them is a leftover."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        pids = [p for p in daemonctl._all_pids() if daemonctl._proc_uid(p) == uid and not daemonctl._proc_is_zombie(p)]
        if not pids:
            return
        step(f"{name}: sending {sig.name} to leftover processes {pids}")
        daemonctl._signal_all(pids, sig)
        daemonctl._wait_gone(pids, time.monotonic() + wait)
    pids = [p for p in daemonctl._all_pids() if daemonctl._proc_uid(p) == uid and not daemonctl._proc_is_zombie(p)]
    if pids:
        raise TestbedError(f"processes of {name} survive SIGKILL: {pids}")


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _wait_zombies_reaped(uids: list[int], pids: list[int], timeout: float = 15.0) -> None:
    """Killed daemons were re-parented to PID 1; until it reaps them they
    still show up (defunct) in ps/pgrep.  Wait a bounded time so a check
    right after ``down`` sees a clean process table."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in daemonctl._all_pids()
                if p in pids or daemonctl._proc_uid(p) in uids]
        if not left:
            return
        if time.monotonic() >= deadline:
            step(f"note: {len(left)} zombie entries {left} still wait for PID 1 to reap them")
            return
        time.sleep(0.2)


def down() -> int:
    for name in USERS:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        t = time.monotonic()
        stopped = daemonctl.stop_daemon(pw)
        step(f"{name}: daemon {'stopped' if stopped else 'was not running'} ({time.monotonic() - t:.1f}s)")
        _kill_user_procs(pw.pw_uid, name)
    reg = _registry_pid()
    step("registry " + ("stopped" if stop_registry() else "was not running"))
    _wait_zombies_reaped([pwd.getpwnam(n).pw_uid for n in USERS if _user_exists(n)], [reg] if reg else [])
    try:
        os.unlink(TESTBED_JSON)
        step(f"removed {TESTBED_JSON}; testbed down (users, images, caches kept)")
    except FileNotFoundError:
        step("testbed down (users, images, caches kept)")
    return 0


def status() -> int:
    try:
        data = json.load(open(TESTBED_JSON))
    except FileNotFoundError:
        data = None
    out = {"testbed": data, "registry": {"pid": _registry_pid(), "answers": registry_answers()}, "daemons": {}}
    for name in USERS:
        try:
            out["daemons"][name] = daemonctl.daemon_status(pwd.getpwnam(name))
        except KeyError:
            out["daemons"][name] = None
    print(json.dumps(out, indent=2))
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("up", "down", "status"):
        print("usage: python -m tests.testbed up|down|status", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("tests.testbed must run as root (it creates users and starts their daemons)", file=sys.stderr)
        return 2
    try:
        return {"up": up, "down": down, "status": status}[argv[0]]()
    except (TestbedError, DaemonError, subprocess.TimeoutExpired) as e:
        step(f"FAILED: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
