"""Reliability through a real hub on real rootless daemons; figures go to docs/reliability.md.

Hub restart with four running servers, a student's daemon dying, no lost work
across stop/start, container removal, hub and daemon restarts, isolation
between students, and 16 students spawning and stopping at once.

Bob's daemon is the *simulated GPU host* (TESTBED.md); "gpu-*" and half of the
"load-*" hub users are mapped to his account, the other half to alice's, so
that 16 servers run on the testbed's two daemons.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import docker
import pytest

from rootless_gpu_spawner.host import daemonctl

from .conftest import base_spawner_config, containers_of
from .test_spawn import ALICE, BOB, container_env, spawn_message

LOAD_USERS = [f"load-{i:02d}" for i in range(1, 17)]
GPU_USERS = ["gpu-s1", "gpu-s2", "gpu-s3"]


@pytest.fixture(scope="module")
def rel_hub(testbed, hub_factory):
    config = base_spawner_config(testbed) + f'''
    c.RootlessGPUSpawner.gpu_policy = "exclusive"
    c.RootlessGPUSpawner.gpu_ids = ["0", "1", "2", "3"]
    c.RootlessGPUSpawner.gpus = 0
    c.RootlessGPUSpawner.allow_shared_accounts = True
    c.RootlessGPUSpawner.start_daemon_if_down = True

    def _account(name):
        if name.startswith("gpu-"):
            return {BOB!r}
        if name.startswith("load-"):
            return {ALICE!r} if int(name[5:]) % 2 else {BOB!r}
        return name

    c.RootlessGPUSpawner.system_user = _account
    c.Spawner.poll_interval = 3
    '''
    return hub_factory(config, [ALICE, BOB] + GPU_USERS + LOAD_USERS)


def daemon_of(name):
    if name.startswith("gpu-"):
        return BOB
    if name.startswith("load-"):
        return ALICE if int(name[5:]) % 2 else BOB
    return name


def gpus_seen(daemons, name):
    return container_env(daemons[daemon_of(name)], name).get("NVIDIA_VISIBLE_DEVICES")


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def spawn_all(hub, options_by_user):
    with ThreadPoolExecutor(len(options_by_user)) as pool:
        responses = list(pool.map(lambda n: hub.spawn(n, options_by_user[n]), options_by_user))
    bad = [(n, r.status_code, r.text) for n, r in zip(options_by_user, responses) if r.status_code not in (201, 202)]
    assert not bad, bad
    with ThreadPoolExecutor(len(options_by_user)) as pool:
        list(pool.map(hub.wait_ready, options_by_user))


def stop_all(hub, names):
    with ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(hub.stop_server, names))


def test_hub_restart_with_four_servers(rel_hub, daemons, reliability):
    hub = rel_hub
    section = "Hub restart"
    options = {ALICE: {"gpus": 0}, BOB: {"gpus": ["3"]}, "gpu-s1": {"gpus": 2}, "gpu-s2": {"gpus": 1}}
    spawn_all(hub, options)
    before = {n: [c.id for c in containers_of(daemons[daemon_of(n)], n)] for n in options}
    gpus_before = {n: gpus_seen(daemons, n) for n in options if options[n]["gpus"]}
    assert len({g for v in gpus_before.values() for g in v.split(",")}) == 4  # all four handed out once

    hub.restart()

    reattached = duplicated = same_gpus = 0
    for n in options:
        hub.wait_ready(n, timeout=90)
        after = [c.id for c in containers_of(daemons[daemon_of(n)], n)]
        reattached += after == before[n]
        duplicated += len(after) > 1
        if n in gpus_before:
            same_gpus += gpus_seen(daemons, n) == gpus_before[n]
        assert hub.user_get(n, "/api/status").status_code == 200
    reliability.figure("servers_reattached", f"{reattached} of {len(options)}")
    reliability.figure("servers_duplicated", duplicated)
    reliability.figure("gpus_same_after_restart", f"{same_gpus} of {len(gpus_before)}")
    reliability.record(section, "4 running servers, hub restarted", "same containers, none lost or duplicated",
                       f"{reattached}/4 reattached, {duplicated} duplicated", reattached == 4 and duplicated == 0)
    reliability.record(section, "GPUs after the restart", "same GPUs per server",
                       f"{same_gpus}/{len(gpus_before)} same", same_gpus == len(gpus_before))
    message = spawn_message(hub, "gpu-s3", hub.spawn("gpu-s3", {"gpus": 1}))
    refused = "not enough free GPUs" in message
    reliability.record(section, "a 5th server asks for a GPU after the restart", "refused: all 4 still held",
                       message, refused)
    assert reattached == 4 and duplicated == 0 and same_gpus == len(gpus_before) and refused
    stop_all(hub, list(options))


def write_files(hub, name, count=5):
    """Files of several kinds written through the Jupyter contents API; returns name -> sha256."""
    digests = {}
    for i in range(count):
        payload = os.urandom(2048 + i * 1000)
        path = f"reliability/file-{i}.bin"
        if i == 0:
            hub.user_put(name, "/api/contents/reliability", json={"type": "directory"})
        r = hub.user_put(name, f"/api/contents/{path}",
                         json={"type": "file", "format": "base64", "content": base64.b64encode(payload).decode()})
        assert r.status_code in (200, 201), r.text
        digests[path] = hashlib.sha256(payload).hexdigest()
    return digests


def host_digests(home, digests):
    found = {}
    for path in digests:
        try:
            with open(os.path.join(home, "workspace", path), "rb") as f:
                found[path] = hashlib.sha256(f.read()).hexdigest()
        except FileNotFoundError:
            found[path] = None
    return found


def test_no_lost_work(rel_hub, daemons, testbed, reliability):
    hub = rel_hub
    section = "No lost work"
    home = testbed["users"][ALICE]["home"]
    spawn_all(hub, {ALICE: {"gpus": 0}})
    digests = write_files(hub, ALICE)
    checked = lost = 0

    def check(stage):
        nonlocal checked, lost
        found = host_digests(home, digests)
        changed = [p for p in digests if found[p] != digests[p]]
        checked += len(digests)
        lost += len(changed)
        reliability.record(section, f"after {stage}", "checksums identical", f"{len(digests) - len(changed)}/{len(digests)} identical", not changed)
        assert not changed, (stage, changed)
        # And the student sees them in JupyterLab.
        r = hub.user_get(ALICE, "/api/contents/reliability")
        assert r.status_code == 200 and len(r.json()["content"]) == len(digests)

    hub.stop_server(ALICE)
    spawn_all(hub, {ALICE: {"gpus": 0}})
    check("stop and start")

    hub.stop_server(ALICE)
    assert containers_of(daemons[ALICE], ALICE) == []  # the container was removed
    spawn_all(hub, {ALICE: {"gpus": 0}})
    check("container removal")

    hub.restart()
    hub.wait_ready(ALICE, timeout=90)
    check("hub restart")

    pw = pwd.getpwnam(ALICE)
    daemonctl.stop_daemon(pw)
    wait_until(lambda: not hub.server(ALICE), 90, "the hub to notice alice's daemon stopped")
    spawn_all(hub, {ALICE: {"gpus": 0}})  # start_daemon_if_down brings it back
    check("daemon restart (by the spawner)")
    reliability.figure("files_checked", checked)
    reliability.figure("files_lost", lost)
    hub.stop_server(ALICE)


def test_daemon_dies_while_server_runs(rel_hub, daemons, testbed, reliability):
    hub = rel_hub
    section = "A student's daemon dies"
    spawn_all(hub, {ALICE: {"gpus": 0}, "gpu-s1": {"gpus": 2}})
    held = set(gpus_seen(daemons, "gpu-s1").split(","))
    bob = pwd.getpwnam(BOB)
    status = daemonctl.daemon_status(bob)
    os.kill(status["pid"], signal.SIGKILL)

    wait_until(lambda: not hub.server("gpu-s1"), 90, "poll to notice the dead daemon")
    reliability.record(section, "dockerd killed (SIGKILL) under a running server", "poll reports it gone, the hub shows it stopped",
                       "server gone from the hub", True)
    alive = hub.server(ALICE) and hub.user_get(ALICE, "/api/status").status_code == 200
    reliability.record(section, "another student's server meanwhile", "unaffected", "ready, answers" if alive else "broken", alive)
    assert alive

    # The daemon comes back later (the admin restarts it); its old container holds nothing.
    daemonctl.stop_daemon(bob)  # clean up what SIGKILL left behind
    daemonctl.start_daemon(bob, gpu_stub_dir=testbed["gpu_stub_dir"], timeout=60)
    client = docker.DockerClient(base_url=testbed["users"][BOB]["docker_host"], timeout=60)
    try:
        leftovers = [c for c in containers_of(client, "gpu-s1")]
        running = [c for c in leftovers if c.status == "running"]
        r = hub.spawn("gpu-s2", {"gpus": 4})  # needs every GPU: proves gpu-s1's were released
        ok = r.status_code in (201, 202)
        if ok:
            hub.wait_ready("gpu-s2")
        reliability.record(section, "daemon back later: old container and its GPUs", "not running, GPUs free again",
                           f"{len(running)} running leftovers; 4-GPU spawn HTTP {r.status_code}", ok and not running)
        assert ok and not running, r.text
        assert set(gpus_seen(daemons, "gpu-s2").split(",")) >= held
        hub.stop_server("gpu-s2")
        # The next start of gpu-s1 clears its leftover container instead of adopting it.
        spawn_all(hub, {"gpu-s1": {"gpus": 0}})
        assert len(containers_of(client, "gpu-s1")) == 1
        hub.stop_server("gpu-s1")
        assert containers_of(client, "gpu-s1") == []
    finally:
        client.close()
    hub.stop_server(ALICE)


def test_isolation(rel_hub, daemons, testbed, reliability):
    hub = rel_hub
    section = "Isolation"
    spawn_all(hub, {ALICE: {"gpus": 0}, BOB: {"gpus": 0}})
    for me, other in ((ALICE, BOB), (BOB, ALICE)):
        accounts = {c.labels.get("org.rootless-gpu-spawner.account") for c in daemons[me].containers.list(all=True)}
        ok = accounts <= {me}
        reliability.record(section, f"{me}'s daemon lists containers", f"only {me}'s", sorted(a or "?" for a in accounts), ok)
        assert ok
    # Alice, with her own daemon (as from an ssh session), tries to mount Bob's workspace.
    bob_ws = os.path.join(testbed["users"][BOB]["home"], "workspace")
    try:
        out = daemons[ALICE].containers.run(testbed["local_image"], ["ls", "/x"], volumes={bob_ws: {"bind": "/x", "mode": "ro"}},
                                            remove=True, user="0:0")
        blocked, observed = False, out.decode()[:100]
    except (docker.errors.ContainerError, docker.errors.APIError) as e:
        blocked, observed = True, str(e)[-160:]
    reliability.record(section, "alice's container reads bob's ~/workspace", "permission denied", observed, blocked)
    assert blocked
    (c,) = containers_of(daemons[ALICE], ALICE)
    result = c.exec_run(["ls", os.path.join(testbed["users"][BOB]["home"], "workspace")])
    reliability.record(section, "bob's home inside alice's server container", "not there", f"exit {result.exit_code}", result.exit_code != 0)
    assert result.exit_code != 0
    stop_all(hub, [ALICE, BOB])


def test_class_start_on_freshly_restarted_daemons(rel_hub, daemons, testbed, reliability):
    """After a reboot every daemon's port counter starts at the same number; the spawner
    picks host ports itself, so a class starting together does not collide on loopback."""
    hub = rel_hub
    for name in (ALICE, BOB):
        pw = pwd.getpwnam(name)
        daemonctl.stop_daemon(pw)
        daemonctl.start_daemon(pw, gpu_stub_dir=testbed["gpu_stub_dir"] if name == BOB else None, timeout=60)
    students = LOAD_USERS[:12]
    spawn_all(hub, {n: {"gpus": 0} for n in students})
    ports = []
    for n in students:
        (c,) = containers_of(daemons[daemon_of(n)], n)
        ports.append(c.attrs["NetworkSettings"]["Ports"]["8888/tcp"][0]["HostPort"])
    distinct = len(set(ports)) == len(students)
    reliability.record("Load", "12 students start at once on freshly restarted daemons",
                       "all ready, distinct host ports", f"{len(students)} ready, {len(set(ports))} distinct ports", distinct)
    assert distinct, ports
    stop_all(hub, students)


def hub_fds_threads(hub):
    pid = hub.proc.pid
    return len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task"))


def settled(hub, seconds=20):
    """The hub's fd/thread counts once idle threads have exited (bounded wait)."""
    last = hub_fds_threads(hub)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(2)
        now = hub_fds_threads(hub)
        if now == last:
            return now
        last = now
    return last


def test_sixteen_students_three_rounds(rel_hub, daemons, reliability):
    hub = rel_hub
    section = "Load"
    options = {n: {"gpus": 0} for n in LOAD_USERS}
    baseline = None
    for round_no in range(1, 4):
        spawn_all(hub, options)
        stop_all(hub, LOAD_USERS)
        if round_no == 1:
            # Round 1 warms bounded pools (the default executor, DB connections): measure from here.
            baseline = settled(hub)
    after = settled(hub)
    leftovers = sum(len(containers_of(daemons[daemon_of(n)], n)) for n in LOAD_USERS)
    pending = [n for n in LOAD_USERS if hub.server(n)]
    leaked_fds, leaked_threads = max(0, after[0] - baseline[0]), max(0, after[1] - baseline[1])
    for key, value in (("load_students", 16), ("load_rounds", 3), ("load_leftover_containers", leftovers),
                       ("load_stuck_pending", len(pending)), ("hub_fds_baseline", baseline[0]),
                       ("hub_fds_after", after[0]), ("hub_threads_baseline", baseline[1]),
                       ("hub_threads_after", after[1]), ("leaked_fds", leaked_fds), ("leaked_threads", leaked_threads)):
        reliability.figure(key, value)
    reliability.record(section, "16 students spawn and stop at once, 3 rounds", "no leftovers, none pending",
                       f"{leftovers} leftover containers, {len(pending)} pending", not leftovers and not pending)
    reliability.record(section, "hub fds and threads after the rounds", "back to the level after round 1",
                       f"fds {baseline[0]}->{after[0]}, threads {baseline[1]}->{after[1]}", not leaked_fds and not leaked_threads)
    assert not leftovers and not pending
    assert not leaked_fds and not leaked_threads, (baseline, after)
