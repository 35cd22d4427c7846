"""The quick start as a newcomer runs it: output piped through ``tee``, stopped with Ctrl-C.

``scripts/quickstart.sh`` runs as in a terminal: ``bash -c 'bash scripts/quickstart.sh 2>&1 | tee LOG'``
in its own process group, which gets the SIGINT a Ctrl-C would send (so ``tee`` dies with the
script and every later line of the script hits a broken pipe). It runs with two fresh demo
students, its own ports and state dir (it cannot clash with a human's demo on 8000), and without
the install step (``RGS_SKIP_INSTALL=1``; this interpreter's virtualenv plays the hub's).

One student logs in and sees the real spawn form (two images, simulated GPUs under the exclusive
policy, both languages), starts a server on one GPU; the other sees one GPU fewer free. After the
SIGINT the hub, its proxy, the server's container and both demo daemons must all be gone.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
import pytest
import requests

from rootless_gpu_spawner.host import daemonctl

from .conftest import ARTIFACTS
from testkit.hub import free_port

ROOT = Path(__file__).resolve().parents[2]
#: Bounds, not measurements: image import into two fresh daemons, then a hub start.
UP_TIMEOUT = 900
SPAWN_TIMEOUT = 240
STOP_TIMEOUT = 300


def _procs_of(uids) -> list[int]:
    return [p for p in daemonctl._all_pids()
            if daemonctl._proc_uid(p) in uids and not daemonctl._proc_is_zombie(p)]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pgid(pid: int):
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _hub_services(hub_port: str) -> dict:
    """The managed services (culler, board) of the hub on hub_port: pid -> service name."""
    found = {}
    for pid in daemonctl._all_pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
        except OSError:
            continue
        name = env.get(b"JUPYTERHUB_SERVICE_NAME")
        if name and f":{hub_port}/".encode() in env.get(b"JUPYTERHUB_API_URL", b""):
            found[pid] = name.decode(errors="replace")
    return found


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}") and not daemonctl._proc_is_zombie(pid)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _log_tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _text(r: requests.Response) -> str:
    return r.content.decode("utf-8", "replace")  # JupyterHub's pages name no charset: requests would guess Latin-1


def _login(url: str, name: str, password: str) -> tuple[requests.Session, str]:
    s = requests.Session()
    s.get(f"{url}/hub/login", timeout=30)
    r = s.post(f"{url}/hub/login", timeout=60,
               data={"username": name, "password": password, "_xsrf": s.cookies.get("_xsrf", "")})
    assert r.status_code == 200, (r.status_code, r.text[:500])
    assert "/hub/spawn" in r.url, r.url  # straight to the spawn form
    return s, _text(r)


@pytest.fixture
def demo(testbed):
    if os.geteuid() != 0:
        pytest.skip("the quick start runs as root")
    tag = secrets.token_hex(2)
    users = [f"rgsqs{tag}a", f"rgsqs{tag}b"]
    state = tempfile.mkdtemp(prefix="rgs-quickstart-", dir="/tmp")
    os.chmod(state, 0o711)  # the demo daemons must reach the GPU stub inside
    env = dict(os.environ)
    env.pop("DOCKER_HOST", None)
    env.update(
        DEMO_USERS=" ".join(users),
        DEMO_PASSWORD="qs-" + secrets.token_hex(6),
        DEMO_PORT=str(free_port()),
        DEMO_HUB_PORT=str(free_port()),
        DEMO_PROXY_API_PORT=str(free_port()),
        DEMO_STATE=state,
        RGS_VENV=sys.prefix,
        RGS_SKIP_INSTALL="1",
    )
    info = {"users": users, "state": state, "env": env, "proc": None}
    try:
        yield info
    finally:
        proc = info["proc"]
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        for name in users:
            try:
                pw = daemonctl.pwd.getpwnam(name)
            except KeyError:
                continue
            try:
                daemonctl.stop_daemon(pw)
            except Exception as e:  # teardown: report, go on removing the account
                print(f"stop_daemon({name}): {e}")
            for sig in (signal.SIGTERM, signal.SIGKILL):
                left = _procs_of({pw.pw_uid})
                daemonctl._signal_all(left, sig)
                daemonctl._wait_gone(left, time.monotonic() + 5)
            subprocess.run(["userdel", "-r", name], timeout=300, capture_output=True)
            shutil.rmtree(f"/run/user/{pw.pw_uid}", ignore_errors=True)
        for pid in daemonctl._all_pids():  # a hub or proxy of this run that survived
            if state in _cmdline(pid) or f"--api-port {env['DEMO_PROXY_API_PORT']}" in _cmdline(pid):
                daemonctl._signal_all([pid], signal.SIGKILL)
        shutil.rmtree(state, ignore_errors=True)


def test_quickstart_form_and_ctrl_c_through_tee_stops_everything(demo):
    env, users, state = demo["env"], demo["users"], demo["state"]
    port, proxy_api = int(env["DEMO_PORT"]), int(env["DEMO_PROXY_API_PORT"])
    url = f"http://127.0.0.1:{port}"
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / "quickstart-tee.log"
    proc = subprocess.Popen(
        ["bash", "-c", 'bash scripts/quickstart.sh 2>&1 | tee "$0"', str(log)],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # a process group of its own, as a terminal's foreground job
        # ... with SIGINT as a terminal gives it (this test may run in a background job, where it is
        # ignored, and a shell cannot trap a signal ignored at its start).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    demo["proc"] = proc

    deadline = time.monotonic() + UP_TIMEOUT
    while True:
        assert proc.poll() is None, f"quickstart.sh exited ({proc.returncode}):\n{_log_tail(log)}"
        try:
            if requests.get(f"{url}/hub/api/", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"the hub did not answer in {UP_TIMEOUT}s:\n{_log_tail(log)}"
        time.sleep(1)

    # The first student sees the product's main screen: two images, simulated GPUs, both languages.
    a, b = users
    sa, page = _login(url, a, env["DEMO_PASSWORD"])
    (ARTIFACTS / "quickstart-spawn-form.html").write_text(page)
    for words in ("Image / 镜像", ">JupyterLab<", "JupyterLab, dark theme / 深色主题", "GPUs / GPU 数量",
                  "4 of 4 GPUs free now", "当前空闲 4 / 4 块 GPU", "simulated", "模拟"):
        assert words in page, (words, page[-3000:])
    r = sa.post(f"{url}/hub/spawn/{a}", timeout=60, allow_redirects=False,
                data={"_xsrf": sa.cookies.get("_xsrf", ""), "image": "JupyterLab", "gpus": "1"})
    assert r.status_code in (200, 302), (r.status_code, r.text[:500])
    deadline = time.monotonic() + SPAWN_TIMEOUT
    while True:
        r = sa.get(f"{url}/hub/spawn-pending/{a}", timeout=30, allow_redirects=False)
        if r.status_code == 302 and f"/user/{a}/" in r.headers.get("Location", ""):
            break
        assert "Spawn failed" not in _text(r), _text(r)[-2000:]
        assert time.monotonic() < deadline, f"{a}'s server was not ready in {SPAWN_TIMEOUT}s:\n{_log_tail(log)}"
        time.sleep(1)

    # The second student sees that one GPU is taken.
    _, page = _login(url, b, env["DEMO_PASSWORD"])
    assert "3 of 4 GPUs free now" in page and "当前空闲 3 / 4 块 GPU" in page, page[-3000:]

    uids = {daemonctl.pwd.getpwnam(n).pw_uid for n in users}
    uid_a = daemonctl.pwd.getpwnam(a).pw_uid
    client = docker.DockerClient(base_url=f"unix:///run/user/{uid_a}/docker.sock", timeout=60)
    try:
        running = client.containers.list(filters={"label": "org.rootless-gpu-spawner.hub-user"})
        assert len(running) == 1, running
        assert running[0].attrs["Config"]["Image"] == "rgs-demo/jupyterlab:latest"
    finally:
        client.close()
    # The admin's first look: status without names lists both demo students' daemons.
    st = subprocess.run([os.path.join(sys.prefix, "bin", "rootless-gpu-admin"), "status"],
                        capture_output=True, text=True, timeout=120)
    for n in users:
        assert f"{n}: running, rootless=True" in st.stdout, (st.stdout, st.stderr)

    hub_and_proxy = [p for p in daemonctl._all_pids()
                     if state in _cmdline(p) or f"--api-port {proxy_api}" in _cmdline(p)]
    assert any("jupyterhub" in _cmdline(p) for p in hub_and_proxy), hub_and_proxy
    assert any("configurable-http-proxy" in _cmdline(p) for p in hub_and_proxy), hub_and_proxy
    services = _hub_services(env["DEMO_HUB_PORT"])
    assert {"idle-culler", "gpu-board"} <= set(services.values()), services
    students_procs = _procs_of(uids)
    names = {daemonctl._proc_comm(p) for p in students_procs}
    assert {"rootlesskit", "dockerd", "containerd"} <= names, names

    script = [p for p in daemonctl._all_pids() if _pgid(p) == proc.pid and "scripts/quickstart.sh" in _cmdline(p)]
    assert script, "bash scripts/quickstart.sh not found in its process group"

    # Ctrl-C: SIGINT to the foreground process group (bash and tee).
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"quickstart.sh still runs {STOP_TIMEOUT}s after Ctrl-C:\n{_log_tail(log)}")
    # The script itself may outlive the outer shell for a moment: wait for it to finish its teardown.
    deadline = time.monotonic() + STOP_TIMEOUT
    while any(_alive(p) for p in script) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(_alive(p) for p in script), f"quickstart.sh still runs after Ctrl-C:\n{_log_tail(log)}"

    left = {p: (daemonctl._proc_comm(p), _cmdline(p)[:200]) for p in _procs_of(uids)}
    assert not left, f"processes of the demo students left after Ctrl-C: {left}\n{_log_tail(Path(state) / 'teardown.log')}"
    left = {p: _cmdline(p)[:200] for p in hub_and_proxy if _alive(p)}
    assert not left, f"hub or proxy left after Ctrl-C: {left}"
    left = {p: _cmdline(p)[:200] for p in services if _alive(p)}
    assert not left, f"the hub's managed services left after Ctrl-C: {left}"
    assert not _port_open(port) and not _port_open(proxy_api)
    teardown = (Path(state) / "teardown.log").read_text(errors="replace")
    assert all(re.search(rf"rootless Docker for {n} (stopped|was not running)", teardown) for n in users), teardown
