"""RootlessGPUSlurmSpawner through a real hub and a real Slurm (slurmctld + two slurmd + munge on
this host, scripts/demo-slurm.sh), each node with 2 *simulated* GPUs (/dev/null twins for Slurm,
the stub NVIDIA hook on bob's daemon for Docker: the request path, not CUDA).

Both Slurm nodes are this host, so one rootless daemon per student serves both; the hub students
slurm-s1..s3 all map to bob's account (the testbed's one simulated GPU daemon), as in
test_gpu_exclusive.py. Slurm, not the hub, decides who runs where and who waits.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from .conftest import base_spawner_config, containers_of
from .test_spawn import BOB, container_env, spawn_message

REPO = Path(__file__).resolve().parents[2]
STUDENTS = ["slurm-s1", "slurm-s2", "slurm-s3"]
TIMED = "slurm-t"  # a server with a 2-minute limit, started first, checked last (runs alongside)


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
def slurm_hub(testbed, slurm, hub_factory):  # slurm first: stopped after the hubs stop their servers
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
    c.RootlessGPUSpawner.system_user = lambda name: {BOB!r} if name.startswith("slurm-") else name
    c.RootlessGPUSpawner.allow_shared_accounts = True  # the slurm-* students all use bob's account
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


def test_two_jobs_on_two_nodes_a_third_waits_then_runs(slurm_hub, slurm, daemons):
    hub = slurm_hub
    s1, s2, s3 = STUDENTS
    # No GPU, 2 minutes: Slurm ends it while the rest runs (see the last test).
    r = hub.spawn(TIMED, {"gpus": 0, "time": 2})
    assert r.status_code in (201, 202), r.text
    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda n: hub.spawn(n, {"gpus": 2, "time": 30}), [s1, s2]))
    assert all(r.status_code in (201, 202) for r in responses), [r.text for r in responses]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(hub.wait_ready, [s1, s2, TIMED]))
    assert "NVIDIA_VISIBLE_DEVICES" not in container_env(daemons[BOB], TIMED)
    jobs = {n: job_of(slurm, n) for n in (s1, s2)}
    assert {j[1] for j in jobs.values()} == {"RUNNING"}, jobs
    assert {j[2] for j in jobs.values()} == {"gpu1", "gpu2"}, jobs  # Slurm put them on different nodes
    for n in (s1, s2):
        visible = set(container_env(daemons[BOB], n)["NVIDIA_VISIBLE_DEVICES"].split(","))
        assert visible == job_gpus(slurm, jobs[n][0]) and len(visible) == 2, (n, visible)
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
    assert containers_of(daemons[BOB], s3) == []
    hub.stop_server(s1)
    assert containers_of(daemons[BOB], s1) == []  # stop waited for the node side to remove it
    hub.wait_ready(s3)
    job3 = job_of(slurm, s3)
    assert job3[2] == jobs[s1][2]
    visible = set(container_env(daemons[BOB], s3)["NVIDIA_VISIBLE_DEVICES"].split(","))
    assert visible == job_gpus(slurm, job3[0])
    r = hub.user_get(s3, "/api/contents/slurm-note.txt?content=1")
    assert r.status_code == 200 and r.json()["content"] == "written through Slurm", r.text


def test_hub_restart_reattaches_both_servers(slurm_hub, slurm, daemons):
    hub = slurm_hub
    s2, s3 = STUDENTS[1], STUDENTS[2]
    before = {n: ([c.id for c in containers_of(daemons[BOB], n)], job_of(slurm, n)) for n in (s2, s3)}
    hub.restart()
    for n in (s2, s3):
        hub.wait_ready(n, timeout=60)
        assert ([c.id for c in containers_of(daemons[BOB], n)], job_of(slurm, n)) == before[n]
        r = hub.user_get(n, "/api/status")
        assert r.status_code == 200, r.text


def test_scancel_from_outside_ends_the_server_and_removes_the_container(slurm_hub, slurm, daemons):
    hub = slurm_hub
    s2 = STUDENTS[1]
    job_id = job_of(slurm, s2)[0]
    sh(slurm, "scancel", job_id)
    hub.wait_gone(s2, timeout=60)
    assert wait_no_containers(daemons[BOB], s2)
    note = Path(f"/home/{BOB}/workspace/slurm-note.txt")
    assert note.read_text() == "written through Slurm"
    log = Path(f"/home/{BOB}/.rootless-gpu-spawner/slurm-{job_id}.log").read_text()
    assert "container removed" in log, log[-2000:]


def test_a_job_over_its_time_limit_ends_cleanly(slurm_hub, slurm, daemons):
    """Slurm's time limit: SIGTERM (--signal=B:TERM@30, or at the limit), the container removed, gone."""
    hub = slurm_hub
    found = job_of(slurm, TIMED)
    if found is not None:
        hub.wait_gone(TIMED, timeout=150)  # bounded: 2 min limit + Slurm's timer resolution
    assert not hub.server(TIMED)
    assert wait_no_containers(daemons[BOB], TIMED)
    logs = sorted(Path(f"/home/{BOB}/.rootless-gpu-spawner").glob("slurm-*.log"), key=lambda p: p.stat().st_mtime)
    timed = [p.read_text() for p in logs if "GPUs none" in p.read_text()]
    assert timed and "container removed" in timed[-1] and "done (143)" in timed[-1], timed[-1:]
