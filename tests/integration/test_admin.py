"""rootless-gpu-admin on the real machine: a user created here, bootstrapped, broken, repaired.

The module creates its own account (``rgsadm-<random>``) with nothing set
up, runs ``bootstrap`` and ``doctor`` through the installed console script,
runs a container on the new daemon and spawns JupyterLab for it through a
real JupyterHub.  Then it breaks one thing at a time (daemon stopped,
daemon started by Docker's stock script with host loopback off, a
daemon.json with a foreign key and no mirror, /dev/net/tun 0600, the
user's /etc/subuid line removed): ``doctor`` must name each problem and its
fix, ``bootstrap`` must repair it, and ``doctor`` must pass again.  Every
shared thing is restored at once (/dev/net/tun back to 0666 within the same
second, the subuid range put back as it was); the account and its daemon
are removed at the end.  The test users of the testbed are never touched
(checked at the end).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from rootless_gpu_spawner.admin import cli as admin
from rootless_gpu_spawner.host import daemonctl
from rootless_gpu_spawner.admin import checks as hostchecks

from testkit.testbed import IMPORT_CHANGES
from testkit.hub import Hub

TUN = "/dev/net/tun"
DOCKER = "/usr/bin/docker"
IMAGE = "rgsadm/jupyterlab:latest"
ADMIN_CLI = os.path.join(os.path.dirname(sys.executable), "rootless-gpu-admin")


def _require(condition: bool, message: str):
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(message)  # the integration suite must run in CI, never be skipped
        pytest.skip(message)


# ---------------------------------------------------------------- helpers


def cli(*args: str, timeout: float = 180) -> tuple[int, object, str]:
    """Run the installed console script; (exit code, JSON or stdout, stderr)."""
    p = subprocess.run([ADMIN_CLI, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    out: object = p.stdout
    if "--json" in args:
        try:
            out = json.loads(p.stdout)
        except ValueError:
            pass
    return p.returncode, out, p.stderr


def doctor(name: str) -> tuple[int, dict]:
    rc, report, err = cli("doctor", "--user", name, "--json", timeout=60)
    assert isinstance(report, dict), (rc, report, err)
    return rc, report


def checks_by_name(report: dict, scope: str) -> dict:
    return {c["name"]: c for c in report["checks"] if c["scope"] == scope}


def failing(report: dict) -> list[tuple[str, str]]:
    return [(c["scope"], c["name"]) for c in report["checks"] if c["status"] == "fail"]


def bootstrap(name: str, *extra: str) -> dict:
    rc, out, err = cli("bootstrap", "--user", name, "--json", *extra)
    assert rc == 0 and isinstance(out, dict), (rc, out, err)
    assert {s["scope"] for s in out["steps"]} == {"host", name}  # touches no user it was not given
    return out


def steps_of(out: dict, scope: str) -> dict:
    return {s["name"]: s for s in out["steps"] if s["scope"] == scope}


def sha(path: str):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        return None


def snapshot(pw) -> dict:
    """What bootstrap could write: the user's home (minus the daemon's own data),
    the subordinate id files and the tun device's mode."""
    out = {"/etc/subuid": sha("/etc/subuid"), "/etc/subgid": sha("/etc/subgid"),
           TUN: stat.S_IMODE(os.stat(TUN).st_mode)}
    skip = os.path.join(pw.pw_dir, ".local", "share", "docker")
    for dirpath, dirnames, filenames in os.walk(pw.pw_dir):
        if dirpath == skip or dirpath.startswith(skip + "/"):
            dirnames[:] = []
            continue
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[p] = (st.st_mode, st.st_uid, st.st_gid, st.st_ino, st.st_mtime_ns,
                      sha(p) if stat.S_ISREG(st.st_mode) else None)
    return out


def docker_cli(pw, *args: str, timeout: float = 120, check: bool = True, config_dir: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "DOCKER_CONFIG": config_dir,
           "DOCKER_HOST": daemonctl.daemon_paths(pw.pw_uid).docker_host}
    p = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    if check:
        assert p.returncode == 0, (args, p.stdout[-2000:], p.stderr[-2000:])
    return p


class LoopbackServer:
    """A one-line TCP server on the host's 127.0.0.1 (containers see it as 10.0.2.2)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.token = secrets.token_hex(8)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(self.token.encode() + b"\n")

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def probe_host_loopback(pw, server: LoopbackServer, config_dir: str) -> subprocess.CompletedProcess:
    code = ("import socket; s = socket.create_connection(('10.0.2.2', %d), timeout=5); "
            "print(s.recv(64).decode().strip())" % server.port)
    return docker_cli(pw, "run", "--rm", IMAGE, "python3", "-c", code, check=False, timeout=90, config_dir=config_dir)


# ---------------------------------------------------------------- the account


@pytest.fixture(scope="module")
def others(testbed):
    """The testbed users' files that bootstrap would write: this module must leave them alone.
    (Their daemons' pids are not compared: other suites may restart those daemons meanwhile;
    every bootstrap run here is checked to report steps for its own user only.)"""
    state = {}
    for name, u in testbed["users"].items():
        for rel in (hostchecks.DAEMON_JSON_REL, "workspace"):
            p = os.path.join(u["home"], rel)
            st = os.stat(p) if os.path.exists(p) else None
            state[p] = (sha(p) if st and stat.S_ISREG(st.st_mode) else None, st and (st.st_uid, st.st_mode, st.st_ino))
    return state


@pytest.fixture(scope="module")
def fresh(testbed, others, tmp_path_factory):
    """A new account with nothing set up; deleted (daemon, processes, home, runtime dir) at the end."""
    _require(os.geteuid() == 0, "tests/integration/test_admin.py needs root (it creates a user)")
    _require(os.access(ADMIN_CLI, os.X_OK), f"{ADMIN_CLI} missing: install the project into this venv (pip install -e .)")
    _require(stat.S_IMODE(os.stat(TUN).st_mode) & 0o006 == 0o006, f"{TUN} should be 0666 after 'python -m tests.testbed up'")
    name = "rgsadm-" + secrets.token_hex(3)
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True, timeout=60)
    pw = pwd.getpwnam(name)
    try:
        yield pw
    finally:
        try:
            daemonctl.stop_daemon(pw)
        except Exception as e:  # teardown: report and go on removing the account
            print(f"stop_daemon({name}): {e}")
        for sig in (signal.SIGTERM, signal.SIGKILL):
            left = [p for p in daemonctl._all_pids() if daemonctl._proc_uid(p) == pw.pw_uid and not daemonctl._proc_is_zombie(p)]
            daemonctl._signal_all(left, sig)
            daemonctl._wait_gone(left, time.monotonic() + 5)
        subprocess.run(["userdel", "-r", name], timeout=120, capture_output=True)
        shutil.rmtree(f"/run/user/{pw.pw_uid}", ignore_errors=True)
        for f in ("/etc/subuid", "/etc/subgid", "/etc/passwd"):
            assert not any(line.startswith(name + ":") for line in open(f)), f"{name} left in {f}"


@pytest.fixture(scope="module")
def docker_config(tmp_path_factory):
    return str(tmp_path_factory.mktemp("docker-client"))


@pytest.fixture(scope="module")
def first_bootstrap(fresh):
    before = doctor(fresh.pw_name)
    t = time.monotonic()
    out = bootstrap(fresh.pw_name)
    return before, out, time.monotonic() - t


# ---------------------------------------------------------------- tests


def test_fresh_user_bootstrap_then_doctor_passes(fresh, first_bootstrap):
    (rc0, before), out, seconds = first_bootstrap
    name = fresh.pw_name
    # Before: doctor names what is missing, with the fix.
    assert rc0 == 1
    c = checks_by_name(before, name)
    assert c["workspace"]["status"] == "fail" and f"rootless-gpu-admin bootstrap --user {name}" in c["workspace"]["fix"]
    assert c["daemon"]["status"] == "fail" and c["daemon"]["fix"].startswith(f"rootless-gpu-admin start-daemon {name}")
    # bootstrap did it, step by step.
    steps = steps_of(out, name)
    assert list(steps) == ["subids", "linger", "workspace", "daemon.json", "daemon"]
    assert not steps["subids"].get("changed")  # Debian's useradd gave the ranges
    assert steps["workspace"]["changed"] and steps["daemon"]["changed"]
    assert steps["daemon"]["detail"].startswith("started (pid ")
    assert out["ok"] and seconds < 60
    st = os.stat(os.path.join(fresh.pw_dir, "workspace"))
    assert (st.st_uid, st.st_gid) == (fresh.pw_uid, fresh.pw_gid)
    # After: everything passes.
    rc, report = doctor(name)
    assert rc == 0 and report["ok"], failing(report)
    c = checks_by_name(report, name)
    assert c["daemon"]["status"] == "pass" and "rootless dockerd" in c["daemon"]["detail"]
    assert c["host loopback"]["status"] == "pass"
    assert {x["status"] for x in c.values()} <= {"pass", "warn", "skip"}


def test_second_run_changes_nothing(fresh, first_bootstrap):
    pid = daemonctl.daemon_status(fresh)["pid"]
    before = snapshot(fresh)
    out = bootstrap(fresh.pw_name)
    assert out["changed"] is False, [s for s in out["steps"] if s["changed"]]
    for s in out["steps"]:
        assert "already" in s["detail"] or "not applicable" in s["detail"] or "left as is" in s["detail"], s
    assert snapshot(fresh) == before
    assert daemonctl.daemon_status(fresh)["pid"] == pid


def test_dry_run_changes_nothing(fresh, first_bootstrap):
    pid = daemonctl.daemon_status(fresh)["pid"]
    before = snapshot(fresh)
    out = bootstrap(fresh.pw_name, "--dry-run", "--mirror", "http://10.0.2.2:5000")
    steps = steps_of(out, fresh.pw_name)
    assert out["dry_run"] and steps["daemon.json"]["changed"] and steps["daemon.json"]["detail"].startswith("would merge")
    assert steps["daemon"]["detail"].startswith("would restart it (daemon.json changed)")
    assert snapshot(fresh) == before
    assert daemonctl.daemon_status(fresh)["pid"] == pid
    rc, out, _ = cli("bootstrap", "--user", fresh.pw_name, "--dry-run")
    assert rc == 0 and "dry run: 0 step(s) would change something" in out


def test_bootstrapped_user_runs_containers_and_spawns(fresh, first_bootstrap, testbed, docker_config, tmp_path_factory):
    # The lab image, imported into the new daemon (no registry involved).
    args = ["import"]
    for change in IMPORT_CHANGES:
        args += ["-c", change]
    docker_cli(fresh, *args, testbed["image_tarball"], IMAGE, timeout=600, config_dir=docker_config)
    p = docker_cli(fresh, "run", "--rm", IMAGE, "python3", "-c", "print(1)", config_dir=docker_config)
    assert p.stdout.strip() == "1"
    # What the host-loopback check claims: a container reaches the host's 127.0.0.1 as 10.0.2.2.
    with LoopbackServer() as server:
        p = probe_host_loopback(fresh, server, docker_config)
        assert p.returncode == 0 and p.stdout.strip() == server.token, (p.stdout, p.stderr)
    # And the student can spawn JupyterLab through a real hub.
    config = f"""
    c.RootlessGPUSpawner.image = {IMAGE!r}
    c.RootlessGPUSpawner.allowed_images = [{IMAGE!r}]
    c.RootlessGPUSpawner.pull_policy = "ifnotpresent"
    c.RootlessGPUSpawner.mirror_prefixes = []
    c.RootlessGPUSpawner.mirror_fallback_to_upstream = False
    """
    hub = Hub(tmp_path_factory.mktemp("hub-admin"), config, [fresh.pw_name])
    try:
        hub.start()
        r = hub.spawn(fresh.pw_name, {"gpus": 0})
        assert r.status_code in (201, 202), r.text
        hub.wait_ready(fresh.pw_name)
        assert hub.user_get(fresh.pw_name, "/api/status").status_code == 200
        p = docker_cli(fresh, "ps", "--filter", f"label=org.rootless-gpu-spawner.hub-user={fresh.pw_name}",
                       "--format", "{{.Image}}", config_dir=docker_config)
        assert p.stdout.split() == [IMAGE]
        hub.stop_server(fresh.pw_name)
    finally:
        hub.stop()


def test_daemon_stopped_is_named_and_restarted(fresh, first_bootstrap):
    rc, out, err = cli("stop-daemon", fresh.pw_name)
    assert rc == 0 and "stopped" in out, err
    rc, report = doctor(fresh.pw_name)
    assert rc == 1 and failing(report) == [(fresh.pw_name, "daemon")]
    c = checks_by_name(report, fresh.pw_name)
    assert c["daemon"]["fix"].startswith(f"rootless-gpu-admin start-daemon {fresh.pw_name}")
    assert c["host loopback"]["status"] == "skip"
    steps = steps_of(bootstrap(fresh.pw_name), fresh.pw_name)
    assert steps["daemon"]["changed"] and steps["daemon"]["detail"].startswith("started")
    rc, report = doctor(fresh.pw_name)
    assert rc == 0, failing(report)


def test_stock_script_without_host_loopback_is_named_and_fixed(fresh, first_bootstrap, docker_config, tmp_path):
    """Docker's own dockerd-rootless.sh (Debian 20.10) runs rootlesskit with --disable-host-loopback."""
    pw = fresh
    daemonctl.stop_daemon(pw)
    script = daemonctl.find_binary("dockerd-rootless.sh")
    paths = daemonctl.daemon_paths(pw.pw_uid)
    env = {"HOME": pw.pw_dir, "USER": pw.pw_name, "XDG_RUNTIME_DIR": paths.runtime_dir,
           "PATH": f"{os.path.dirname(script)}:/usr/sbin:/usr/bin:/sbin:/bin"}
    with open(tmp_path / "stock-dockerd-rootless.log", "ab") as log:
        proc = subprocess.Popen(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", script],
                                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/", start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not daemonctl.ping(paths.socket):
            assert proc.poll() is None, "the stock dockerd-rootless.sh exited"
            assert time.monotonic() < deadline, "the stock dockerd-rootless.sh did not answer in 60s"
            time.sleep(0.3)
        rc, report = doctor(pw.pw_name)
        assert rc == 1 and failing(report) == [(pw.pw_name, "host loopback")]
        c = checks_by_name(report, pw.pw_name)["host loopback"]
        assert "--disable-host-loopback" in c["detail"] and "spawns time out" in c["detail"]
        assert c["fix"].startswith(f"rootless-gpu-admin stop-daemon {pw.pw_name} && rootless-gpu-admin start-daemon {pw.pw_name}")
        # ... and it is true: a container cannot reach the host's loopback.
        with LoopbackServer() as server:
            p = probe_host_loopback(pw, server, docker_config)
            assert p.returncode != 0 and server.token not in p.stdout
        steps = steps_of(bootstrap(pw.pw_name), pw.pw_name)
        assert steps["daemon"]["changed"]
        assert "because it runs with --disable-host-loopback" in steps["daemon"]["detail"]
        rc, report = doctor(pw.pw_name)
        assert rc == 0, failing(report)
        with LoopbackServer() as server:
            p = probe_host_loopback(pw, server, docker_config)
            assert p.returncode == 0 and p.stdout.strip() == server.token, (p.stdout, p.stderr)
    finally:
        if proc.poll() is None:  # still the stock daemon (bootstrap did not replace it)
            daemonctl.stop_daemon(pw)
        proc.wait(30)


def test_daemon_json_with_foreign_key_gets_the_mirror(fresh, first_bootstrap):
    pw = fresh
    path = os.path.join(pw.pw_dir, hostchecks.DAEMON_JSON_REL)
    foreign = {"features": {"buildkit": False}}
    assert daemonctl.write_user_file(pw, hostchecks.DAEMON_JSON_REL, json.dumps(foreign).encode())
    rc, report = doctor(pw.pw_name)
    c = checks_by_name(report, pw.pw_name)["daemon.json"]
    assert c["status"] == "warn" and "sets no registry-mirrors; other keys kept: features" in c["detail"]
    assert c["fix"].startswith(f"rootless-gpu-admin bootstrap --user {pw.pw_name} --mirror URL")
    mirror = "http://10.0.2.2:5000"
    steps = steps_of(bootstrap(pw.pw_name, "--mirror", mirror), pw.pw_name)
    assert steps["daemon.json"]["changed"]
    assert steps["daemon"]["changed"] and "because daemon.json changed" in steps["daemon"]["detail"]
    assert json.load(open(path)) == {"features": {"buildkit": False}, "registry-mirrors": [mirror]}
    assert json.load(open(path + ".bak")) == foreign
    st = daemonctl.daemon_status(pw)
    info = json.loads(daemonctl.api_get(st["socket"], "/info")[1])
    assert [m.rstrip("/") for m in info["RegistryConfig"]["Mirrors"]] == [mirror]
    rc, report = doctor(pw.pw_name)
    assert rc == 0 and checks_by_name(report, pw.pw_name)["daemon.json"]["status"] == "pass"
    # A file changed behind the running daemon's back: named, and bootstrap restarts it.
    daemonctl.merge_daemon_json(pw, registry_mirrors=[mirror, "http://127.0.0.1:5999"])
    rc, report = doctor(pw.pw_name)
    assert rc == 1 and failing(report) == [(pw.pw_name, "daemon.json")]
    assert "reads the file only at start" in checks_by_name(report, pw.pw_name)["daemon.json"]["detail"]
    steps = steps_of(bootstrap(pw.pw_name), pw.pw_name)
    assert not steps["daemon.json"]["changed"] and "runs with an older daemon.json" in steps["daemon"]["detail"]
    rc, report = doctor(pw.pw_name)
    assert rc == 0, failing(report)


def test_tun_not_usable_is_named_and_fixed(fresh, first_bootstrap, capsys):
    """/dev/net/tun 0600 for well under a second: doctor and bootstrap run in-process
    (admin.main, the console script's entry point) so the shared device is back at
    0666 at once; the finally restores it in any case."""
    assert stat.S_IMODE(os.stat(TUN).st_mode) == 0o666
    capsys.readouterr()
    try:
        os.chmod(TUN, 0o600)
        rc_doctor = admin.main(["doctor", "--user", fresh.pw_name, "--json"])
        report = json.loads(capsys.readouterr().out)
        rc_boot = admin.main(["bootstrap", "--user", fresh.pw_name, "--json"])
        mode_after = stat.S_IMODE(os.stat(TUN).st_mode)
    finally:
        if stat.S_IMODE(os.stat(TUN).st_mode) != 0o666:
            os.chmod(TUN, 0o666)
    out = json.loads(capsys.readouterr().out)
    assert rc_doctor == 1 and failing(report) == [("host", "/dev/net/tun")]
    c = checks_by_name(report, "host")["/dev/net/tun"]
    assert "mode 0600" in c["detail"] and f"not read/writable by {fresh.pw_name}" in c["detail"]
    assert c["fix"].startswith("chmod 666 /dev/net/tun")
    assert rc_boot == 0 and mode_after == 0o666
    tun = steps_of(out, "host")["tun"]
    assert tun["changed"] and tun["detail"].startswith("chmod 0666 /dev/net/tun (was 0600)")
    rc, report = doctor(fresh.pw_name)
    assert rc == 0, failing(report)


def usermod(*args: str):
    subprocess.run(["usermod", *args], check=True, timeout=60, capture_output=True)


def test_subuid_line_removed_is_named_and_fixed(fresh, first_bootstrap):
    pw = fresh
    (orig,) = hostchecks.subid_ranges("/etc/subuid", pw)
    orig_range = f"{orig[0]}-{orig[0] + orig[1] - 1}"
    # usermod refuses to delete subordinate ids of a user with running
    # processes, so the daemon goes first (adding, as bootstrap does, is allowed).
    daemonctl.stop_daemon(pw)
    usermod("--del-subuids", orig_range, pw.pw_name)
    try:
        assert not any(line.startswith(pw.pw_name + ":") for line in open("/etc/subuid"))
        rc, report = doctor(pw.pw_name)
        assert rc == 1 and failing(report) == [(pw.pw_name, "subuid"), (pw.pw_name, "daemon")]
        c = checks_by_name(report, pw.pw_name)["subuid"]
        assert f"gives {pw.pw_name} 0 subordinate uids, needs at least 65536" in c["detail"]
        start = hostchecks.free_subid_start(hostchecks.HostPaths())
        assert c["fix"].startswith(f"usermod --add-subuids {start}-{start + 65535} {pw.pw_name}")
        steps = steps_of(bootstrap(pw.pw_name), pw.pw_name)
        assert steps["subids"]["changed"] and steps["subids"]["detail"] == f"ran: usermod --add-subuids {start}-{start + 65535} {pw.pw_name}"
        assert steps["daemon"]["changed"]
        assert hostchecks.subid_ranges("/etc/subuid", pw) == [(start, 65536)]
        rc, report = doctor(pw.pw_name)
        assert rc == 0, failing(report)
    finally:
        # Put the original range back (the daemon's images are unpacked with it).
        now = hostchecks.subid_ranges("/etc/subuid", pw)
        if now != [orig]:
            daemonctl.stop_daemon(pw)
            args = []
            for s, n in now:
                args += ["--del-subuids", f"{s}-{s + n - 1}"]
            usermod(*args, "--add-subuids", orig_range, pw.pw_name)
            daemonctl.start_daemon(pw)
    assert hostchecks.subid_ranges("/etc/subuid", pw) == [orig]


def test_group_selects_only_its_members(fresh, first_bootstrap):
    group = "rgsadm-g" + secrets.token_hex(3)
    subprocess.run(["groupadd", group], check=True, timeout=60)
    try:
        subprocess.run(["usermod", "-aG", group, fresh.pw_name], check=True, timeout=60)
        rc, out, err = cli("bootstrap", "--group", group, "--dry-run", "--json")
        assert rc == 0, err
        assert out["users"] == [fresh.pw_name] and out["changed"] is False
        assert {s["scope"] for s in out["steps"]} == {"host", fresh.pw_name}
    finally:
        subprocess.run(["gpasswd", "-d", fresh.pw_name, group], timeout=60, capture_output=True)
        subprocess.run(["groupdel", group], timeout=60, check=True)


def test_other_users_untouched(fresh, first_bootstrap, others):
    for p, (digest, meta) in others.items():
        st = os.stat(p) if os.path.exists(p) else None
        assert (sha(p) if st and stat.S_ISREG(st.st_mode) else None) == digest, f"{p} changed"
        assert (st and (st.st_uid, st.st_mode, st.st_ino)) == meta, f"{p} changed"
