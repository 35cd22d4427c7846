"""RootlessGPUSlurmSpawner through a real hub and a real Slurm (slurmctld + two slurmd + munge on
this host, scripts/demo-slurm.sh), each node with 2 *simulated* GPUs (/dev/null twins for Slurm,
the stub NVIDIA hook on bob's daemon for Docker: the request path, not CUDA).

Both Slurm nodes are this host, so one rootless daemon per student serves both. Each container
runs on its OWNER's daemon: slurm-s1, s3 and slurm-t are bob's account (the testbed's simulated GPU
daemon, running), slurm-s2 is carol's, who has no daemon running: the node side (``rootless-gpu-run``,
as carol) starts hers with the spec's GPU stub dir, and her server's image comes the way the spawner
pulls it (the testbed registry as the Docker Hub mirror). The module stops carol's daemon again (the
later modules need her without one). Slurm, not the hub, decides who runs where and who waits.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

import docker

from rootless_gpu_spawner.host import daemonctl
from testkit.testbed import admin_cli

from .conftest import base_spawner_config, containers_of
from .test_spawn import BOB, CAROL, container_env, spawn_message

REPO = Path(__file__).resolve().parents[2]
STUDENTS = ["slurm-s1", "slurm-s2", "slurm-s3"]
TIMED = "slurm-t"  # a server with a 2-minute limit, started first, checked last (runs alongside)
OWNER = {"slurm-s1": BOB, "slurm-s2": CAROL, "slurm-s3": BOB, TIMED: BOB}


@pytest.fixture(scope="module")
def slurm():
    """A two-node Slurm for this module only; everything it started is stopped afterwards."""
    # Not under pytest's 0700 tmp: the jobs (run as the student) execute scripts from its spool.
    workdir = Path(tempfile.mkdtemp(prefix="rgs-test-slurm-"))
    script = str(REPO / "scripts" / "demo-slurm.sh")
    up = subprocess.run(["bash", script, "up", str(workdir)], capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr[-3000:]
    env = dict(os.environ, SLURM_CONF=str(workdir / "slurm.conf"))
    yield env
    down = subprocess.run(["bash", script, "down", str(workdir)], capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr[-3000:]
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def carol_node(testbed):
    """Carol as an admin leaves her on a node: bootstrapped (the registry in her daemon.json, her
    runtime dir), no daemon running. Afterwards her daemon (started by a job) is stopped again and
    the image it pulled removed; the rest stays (her data-root, like any student's; her runtime dir
    if it was there before)."""
    pw = pwd.getpwnam(CAROL)
    assert not daemonctl.daemon_status(pw)["running"], "carol must have no daemon before this module"
    admin_cli("bootstrap", "--user", CAROL, "--no-start", "--insecure-registry", testbed["registry_from_daemon"])
    runtime_dir = daemonctl.daemon_paths(pw.pw_uid).runtime_dir
    made = not os.path.isdir(runtime_dir)
    daemonctl.ensure_runtime_dir(pw)  # what start-daemon (as root) makes; bootstrap --no-start does not
    clients = []

    def client():
        clients.append(docker.DockerClient(base_url=testbed["users"][CAROL]["docker_host"], timeout=60))
        return clients[-1]

    yield client
    if daemonctl.daemon_status(pw)["running"]:
        # The image her server pulled goes (each run proves the pull); the rest of her data-root stays.
        c = client()
        for image in c.images.list():
            c.images.remove(image.id, force=True)
    for c in clients:
        c.close()
    daemonctl.stop_daemon(pw)
    if made:
        shutil.rmtree(runtime_dir, ignore_errors=True)
    assert not daemonctl.daemon_status(pw)["running"]
    assert not os.path.lexists(daemonctl.daemon_paths(pw.pw_uid).socket)


@pytest.fixture(scope="module")
def owners(daemons, carol_node):
    """hub user -> a docker client on the daemon of the account that owns their server."""
    made = {}

    def of(hub_user):
        account = OWNER[hub_user]
        if account not in made:
            made[account] = daemons[account] if account in daemons else carol_node()
        return made[account]

    return of


def sh(env, *cmd) -> str:
    return subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=30, check=True).stdout


def job_of(env, hub_user):
    """(job id, state, node) of the hub user's server job, from squeue; None when none."""
    for line in sh(env, "squeue", "-h", "-o", "%i|%j|%T|%N").splitlines():
        job_id, name, state, node = line.split("|")
        if name == f"rgs-{hub_user}":
            return job_id, state, node
    return None


def job_gpus(env, job_id) -> set:
    from rootless_gpu_spawner.slurm.jobs import parse_job_gpus

    return set(parse_job_gpus(sh(env, "scontrol", "show", "job", "-d", "-o", job_id)))


@pytest.fixture(scope="module")
def slurm_hub(testbed, carol_node, slurm, hub_factory):  # torn down in reverse: servers, Slurm, carol's daemon
    config = base_spawner_config(testbed) + f"""
    c.JupyterHub.spawner_class = "rootless-gpu-slurm"
    from rootless_gpu_spawner import holders
    from rootless_gpu_spawner.slurm.report import REPORT_HANDLER
    c.JupyterHub.extra_handlers = [REPORT_HANDLER] + holders.extra_handlers()
    c.JupyterHub.custom_scopes = holders.custom_scopes()
    c.JupyterHub.load_roles = list(c.JupyterHub.load_roles) + [
        {{"name": "gpu-holders-reader", "services": ["testbed"], "scopes": [holders.SCOPE]}}]
    c.RootlessGPUSlurmSpawner.slurm_conf = {slurm['SLURM_CONF']!r}
    c.RootlessGPUSlurmSpawner.slurm_publish_ip = "127.0.0.1"  # hub and nodes are one host here
    c.RootlessGPUSlurmSpawner.slurm_node_gpu_stub_dir = {testbed['gpu_stub_dir']!r}
    c.RootlessGPUSlurmSpawner.slurm_gpus = 1
    c.RootlessGPUSlurmSpawner.slurm_max_gpus = 4
    c.RootlessGPUSlurmSpawner.slurm_max_time_limit = 120
    c.RootlessGPUSlurmSpawner.slurm_status_interval = 0.5
    c.RootlessGPUSpawner.system_user = lambda name: {OWNER!r}.get(name, name)
    c.RootlessGPUSpawner.allow_shared_accounts = True  # slurm-s1, s3 and slurm-t use bob's account
    c.Spawner.poll_interval = 3
    """
    return hub_factory(config, STUDENTS + [TIMED])


def progress_until(hub, name, predicate, timeout=60):
    """Messages of the progress stream until one satisfies predicate (or the stream ends)."""
    seen = []
    deadline = time.monotonic() + timeout
    with hub.request("GET", f"/users/{name}/server/progress", stream=True, timeout=timeout) as r:
        for line in r.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                event = json.loads(line[5:])
                seen.append(event.get("message", ""))
                if predicate(seen[-1]) or event.get("ready") or event.get("failed"):
                    break
            if time.monotonic() > deadline:
                break
    return seen


def wait_no_containers(client, hub_user, timeout=40):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not containers_of(client, hub_user):
            return True
        time.sleep(0.5)
    return False


def test_form_values_are_validated_and_nothing_is_submitted(slurm_hub, slurm):
    hub = slurm_hub
    s1 = STUDENTS[0]
    bad = [
        ({"partition": "nope"}, "not offered"),
        ({"time": 100000}, "out of range"),
        ({"time": "60; rm -rf ~"}, "whole number"),
        ({"gpus": -1}, "whole number"),
        ({"gpus": True}, "whole number"),
        ({"cpus": 2}, "cannot be changed"),
        ({"gpus": 3}, "no node of partition 'gpu' has more than 2"),
    ]
    for options, expected in bad:
        r = hub.spawn(s1, options)
        message = spawn_message(hub, s1, r)
        assert r.status_code == 400 or expected in message, (options, r.status_code, message)
        assert expected in message, (options, message)
        hub.wait_gone(s1, timeout=30)
    assert sh(slurm, "squeue", "-h", "-o", "%i").strip() == ""


def test_the_report_route_takes_only_the_servers_own_token(slurm_hub):
    hub = slurm_hub
    s1 = STUDENTS[0]
    url = hub.api + "/rootless-gpu-slurm/report"
    # The hub's service token, and a token of s1 that is not her server's: refused, nothing learnt.
    r = requests.post(url, json={"port": 40000}, headers={"Authorization": f"token {hub.token}"}, timeout=30)
    assert r.status_code == 403, r.text
    r = hub.request("POST", f"/users/{s1}/tokens", json={"note": "not the server's"})
    assert r.status_code in (200, 201), r.text
    token = r.json()["token"]
    for body in ({"port": 40000}, {"port": 40000, "server_name": "other"}, ["x"]):
        r = requests.post(url, json=body, headers={"Authorization": f"token {token}"}, timeout=30)
        assert r.status_code in (400, 403), (body, r.status_code, r.text)
    r = requests.post(url, json={"port": 40000}, timeout=30)
    assert r.status_code == 403, r.text


def node_log(hub_user, job_id) -> str:
    return Path(pwd.getpwnam(OWNER[hub_user]).pw_dir, ".rootless-gpu-spawner", f"slurm-{job_id}.log").read_text()


def test_two_jobs_on_two_nodes_a_third_waits_then_runs(slurm_hub, slurm, daemons, owners, testbed):
    hub = slurm_hub
    s1, s2, s3 = STUDENTS
    # No GPU, 2 minutes: Slurm ends it while the rest runs (see the last test).
    r = hub.spawn(TIMED, {"gpus": 0, "time": 2})
    assert r.status_code in (201, 202), r.text
    # s2 is carol's, whose daemon has no images: the Docker Hub-style name, pulled through the mirror.
    options = {s1: {"gpus": 2, "time": 30}, s2: {"gpus": 2, "time": 30, "image": testbed["mirror_image_short"]}}
    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda n: hub.spawn(n, options[n]), [s1, s2]))
    assert all(r.status_code in (201, 202) for r in responses), [r.text for r in responses]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(hub.wait_ready, [s1, s2, TIMED]))
    assert "NVIDIA_VISIBLE_DEVICES" not in container_env(owners(TIMED), TIMED)
    jobs = {n: job_of(slurm, n) for n in (s1, s2)}
    assert {j[1] for j in jobs.values()} == {"RUNNING"}, jobs
    assert {j[2] for j in jobs.values()} == {"gpu1", "gpu2"}, jobs  # Slurm put them on different nodes
    # Each container on its owner's daemon, none on the other's.
    assert containers_of(owners(s2), s1) == [] and containers_of(daemons[BOB], s2) == []
    for n in (s1, s2):
        visible = set(container_env(owners(n), n)["NVIDIA_VISIBLE_DEVICES"].split(","))
        assert visible == job_gpus(slurm, jobs[n][0]) and len(visible) == 2, (n, visible)
    # Carol's daemon was started by her job's node side, as carol, with the spec's GPU stub first on its PATH.
    log = node_log(s2, jobs[s2][0])
    assert "does not answer on this node: starting it" in log and "pulled" in log, log[-2000:]
    assert "starting it" not in node_log(s1, jobs[s1][0])
    from rootless_gpu_spawner.admin.checks import process_path_env

    st = daemonctl.daemon_status(pwd.getpwnam(CAROL))
    assert st["running"] and st["rootless"], st
    assert process_path_env(st["pid"]).split(":")[0] == testbed["gpu_stub_dir"]
    # The hub's GPU-holders API (the GPU board's source) lists the jobs' GPUs as NODE:INDEX.
    r = hub.request("GET", "/rgs/gpu-holders")
    assert r.status_code == 200, r.text
    held = {h["user"]: h["gpus"] for h in r.json()["holders"]}
    for n in (s1, s2):
        assert held[n] == [f"{jobs[n][2]}:{g}" for g in sorted(job_gpus(slurm, jobs[n][0]))], held
    r = hub.user_put(s1, "/api/contents/slurm-note.txt",
                     json={"type": "file", "format": "text", "content": "written through Slurm"})
    assert r.status_code in (200, 201), r.text

    # The third waits in Slurm's queue, with Slurm's reason on the progress page; a job that
    # ends while the hub waits (scancel from outside) fails the start with Slurm's word for it.
    r = hub.spawn(s3, {"gpus": 2})
    assert r.status_code in (201, 202), r.text
    pending = lambda m: "PENDING (reason: Resources" in m  # noqa: E731
    seen = progress_until(hub, s3, pending, timeout=60)
    assert any(pending(m) and "position 1 of 1" in m for m in seen), seen
    sh(slurm, "scancel", job_of(slurm, s3)[0])
    seen = progress_until(hub, s3, lambda m: False, timeout=30)
    assert "ended" in seen[-1] and "before the server was ready" in seen[-1], seen
    hub.wait_gone(s3, timeout=30)
    r = hub.spawn(s3, {"gpus": 2})
    assert r.status_code in (201, 202), r.text
    assert any(pending(m) for m in progress_until(hub, s3, pending, timeout=60))
    assert containers_of(owners(s3), s3) == []
    hub.stop_server(s1)
    assert containers_of(owners(s1), s1) == []  # stop waited for the node side to remove it
    hub.wait_ready(s3)
    job3 = job_of(slurm, s3)
    assert job3[2] == jobs[s1][2]
    visible = set(container_env(owners(s3), s3)["NVIDIA_VISIBLE_DEVICES"].split(","))
    assert visible == job_gpus(slurm, job3[0])
    r = hub.user_get(s3, "/api/contents/slurm-note.txt?content=1")
    assert r.status_code == 200 and r.json()["content"] == "written through Slurm", r.text


def test_hub_restart_reattaches_both_servers(slurm_hub, slurm, owners):
    hub = slurm_hub
    s2, s3 = STUDENTS[1], STUDENTS[2]
    before = {n: ([c.id for c in containers_of(owners(n), n)], job_of(slurm, n)) for n in (s2, s3)}
    hub.restart()
    for n in (s2, s3):
        hub.wait_ready(n, timeout=60)
        assert ([c.id for c in containers_of(owners(n), n)], job_of(slurm, n)) == before[n]
        r = hub.user_get(n, "/api/status")
        assert r.status_code == 200, r.text


def test_scancel_from_outside_ends_the_server_and_removes_the_container(slurm_hub, slurm, owners):
    hub = slurm_hub
    s2 = STUDENTS[1]
    job_id = job_of(slurm, s2)[0]
    sh(slurm, "scancel", job_id)
    hub.wait_gone(s2, timeout=60)
    # Carol's daemon, started by that job, outlives it (it is not one of the job's processes).
    assert wait_no_containers(owners(s2), s2)
    assert daemonctl.daemon_status(pwd.getpwnam(CAROL))["running"]
    note = Path(pwd.getpwnam(OWNER["slurm-s1"]).pw_dir, "workspace", "slurm-note.txt")
    assert note.read_text() == "written through Slurm"
    log = node_log(s2, job_id)
    assert "container removed" in log, log[-2000:]


def test_a_job_over_its_time_limit_ends_cleanly(slurm_hub, slurm, owners):
    """Slurm's time limit: SIGTERM (--signal=B:TERM@30, or at the limit), the container removed, gone."""
    hub = slurm_hub
    found = job_of(slurm, TIMED)
    if found is not None:
        hub.wait_gone(TIMED, timeout=150)  # bounded: 2 min limit + Slurm's timer resolution
    assert not hub.server(TIMED)
    assert wait_no_containers(owners(TIMED), TIMED)
    logs = sorted(Path(pwd.getpwnam(OWNER[TIMED]).pw_dir, ".rootless-gpu-spawner").glob("slurm-*.log"), key=lambda p: p.stat().st_mtime)
    timed = [p.read_text() for p in logs if "GPUs none" in p.read_text()]
    assert timed and "container removed" in timed[-1] and "done (143)" in timed[-1], timed[-1:]
