"""``rootless-gpu-run``: the node side of a Slurm server job, run by the job AS THE STUDENT.

It reads the hub's spec (:mod:`.nodeside`) on stdin, makes sure the student's rootless daemon
on this node answers (starting it with the same code as ``rootless-gpu-admin start-daemon``
when it is down), makes sure the image is there (the local spawner's mirrors and pull code),
runs the container the local spawner would (:func:`..hub.container.build_container_request`)
with the job's GPUs (``SLURM_JOB_GPUS``, node-local indices) as device requests, publishes
the server on a free port of this node and reports that port to the hub with the server's own
token. On SIGTERM (scancel, the time limit, preemption) it stops and removes the container and
exits; when the container ends by itself it removes it and exits with its code.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import signal
import sys
import time
import urllib.request

from docker.types import HostConfig

from .. import answers
from ..hub import daemon as daemons
from ..hub.container import build_container_request, pick_host_port
from ..hub.gpus import device_requests
from ..hub.images import parse_image_reference
from ..hub.pulls import ensure_image
from ..errors import SpawnRefused
from .figures import node_figures
from .nodelaunch import NodeLaunch
from ..safetext import printable

MAX_SPEC = 1 << 20
STOP_GRACE = 10  # seconds docker gives the server before SIGKILL (well inside Slurm's KillWait)
REPORT_ATTEMPTS = 5
MIN_UTILISATION_INTERVAL = 2.0  # seconds (the hub refuses reports more often than once a second)


def say(message: str) -> None:
    """One line in the job's log (Slurm's --output), which the hub shows when the job fails."""
    print(f"[rootless-gpu-run {time.strftime('%H:%M:%S')}] {message}", flush=True)


class NodeError(RuntimeError):
    """Why the server cannot run on this node (reported to the hub, then the job ends)."""


def job_gpus(environ=os.environ) -> list[str]:
    """The job's GPUs as node-local indices (``SLURM_JOB_GPUS``; empty: none)."""
    raw = environ.get("SLURM_JOB_GPUS", "").strip()
    return [g.strip() for g in raw.split(",") if g.strip().isdigit()] if raw else []


def report(spec: dict, body: dict) -> None:
    """POST to the hub's report route with the server's own token (bounded retries)."""
    url = spec["hub_api_url"].rstrip("/") + "/rootless-gpu-slurm/report"
    token = spec["env"].get("JUPYTERHUB_API_TOKEN", "")
    data = json.dumps({"server_name": spec["server_name"], **body}).encode()
    last = None
    for attempt in range(REPORT_ATTEMPTS):
        req = urllib.request.Request(url, data=data, method="POST", headers={
            "Authorization": f"token {token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                r.read(4096)
                return
        except urllib.error.HTTPError as e:
            raise NodeError(f"the hub refused the report ({e.code}): {printable(e.read(500), 300)}"
                            + (" -- is c.JupyterHub.extra_handlers = [REPORT_HANDLER] set?" if e.code == 404 else ""))
        except OSError as e:
            last = e
            time.sleep(0.5 * (attempt + 1))
    raise NodeError(f"could not reach the hub at {url}: {printable(last, 200)}")


def ensure_daemon(spec: dict, pw) -> str:
    """The student's docker host on this node, started if it does not answer."""
    from ..host import daemonctl

    docker_host = daemons.render_docker_host(spec["docker_host_template"], pw.pw_uid, pw.pw_name, pw.pw_dir)
    path = daemons.socket_path(docker_host)
    if path and daemonctl.ping(path, uid=pw.pw_uid):
        return docker_host
    say(f"rootless Docker of {pw.pw_name} does not answer on this node: starting it")
    try:
        daemonctl.start_daemon(pw, gpu_stub_dir=spec.get("gpu_stub_dir") or None, timeout=60)
    except daemonctl.DaemonError as e:
        raise NodeError(f"your rootless Docker daemon could not start on this node: {printable(e, 600)}. "
                        "Ask the admin to run 'rootless-gpu-admin bootstrap' for you on every node.") from None
    return docker_host


async def start_container(spec: dict, conn, docker_host: str, gpus: list[str]) -> tuple[str, int]:
    ref = parse_image_reference(spec["image"])
    pulled = await ensure_image(
        conn, ref, policy=spec["pull_policy"], mirrors=spec["mirrors"], lab_caches=spec["lab_caches"],
        fallback_to_upstream=spec["mirror_fallback_to_upstream"], account=spec["account"],
        pull_timeout=spec["image_pull_timeout"],
    )
    if pulled.pulled_from:
        say(f"pulled {ref.familiar} from {pulled.pulled_from}")
    name = spec["container_name"]
    try:  # a leftover of an earlier job of this server (files live in the workspace)
        await conn.call("remove_container", name, force=True)
        say(f"removed leftover container {name}")
    except Exception:
        pass
    # How this image starts, as the local spawner decides it (Docker Stacks, a shell CMD, no Jupyter).
    launch = NodeLaunch(spec, conn, docker_host, say)
    try:
        image = await launch.plan_image(pulled.image, ref.familiar)
    except SpawnRefused as e:
        raise NodeError(str(e)) from None
    command = spec["cmd"] or launch.launch_command(answers.image_command(await conn.call("inspect_image", image)))
    mode = spec["gpu_device_mode"] if spec["gpu_device_mode"] != "auto" else "nvidia"
    host_port = pick_host_port(spec["publish_ip"])
    create, host = build_container_request(
        name=name, image=image, command=list(command) + spec["args"], env={**spec["env"], **launch.launch_env()},
        port=spec["port"], host_ip=spec["publish_ip"], workspace_source=spec["workspace"],
        workspace_mount=spec["workspace_mount"], run_as_root=spec["run_as_root"],
        device_requests=device_requests(gpus, mode),
        labels={**spec["labels"], "org.rootless-gpu-spawner.gpus": ",".join(gpus) or "0",
                "org.rootless-gpu-spawner.slurm-job": os.environ.get("SLURM_JOB_ID", "")},
        extra_binds=spec["extra_binds"], network_mode=spec["network_mode"], host_port=host_port,
    )
    create["host_config"] = HostConfig(conn.api_version, **host)
    created = answers.container_id(await conn.call("create_container", **create))
    await conn.call("start", created)
    return created, host_port


async def supervise(conn, container: str, stop: asyncio.Event) -> int:
    """Until the container ends (its exit code) or SIGTERM (stop and remove it: 143)."""
    code = 143
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 2.0)
            break
        except asyncio.TimeoutError:
            pass
        try:
            view = answers.container_view(await conn.call("inspect_container", container), 0)
        except Exception as e:
            say(f"the container is gone: {printable(e, 200)}")
            return 1
        if not view.running:
            say(f"the server's container exited with {view.exit_code}")
            code = view.exit_code
            break
    await remove(conn, container)
    return code


async def report_utilisation(spec: dict, gpus: list[str], stop: asyncio.Event) -> None:
    """Every ``utilisation_interval`` s, the job's GPUs' utilisation on this node, to the hub."""
    from ..utilisation import UtilisationError, source_from_env

    source = source_from_env(spec.get("utilisation_file") or "")
    interval = min(max(float(spec.get("utilisation_interval") or 15), MIN_UTILISATION_INTERVAL), 300.0)
    said = ""  # what the job log last said about the figures (None: they flow)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), interval)
            return
        except asyncio.TimeoutError:
            pass
        try:
            readings = await asyncio.to_thread(source.read)
            body = node_figures(readings, gpus, source.simulated)
            await asyncio.to_thread(report, spec, body)
            problem = None
        except (UtilisationError, NodeError) as e:  # the server keeps running; the board shows no figures
            problem = f"no utilisation figures from {source.description}: {printable(e, 300)}"
        if problem != said:
            say(problem or f"reporting GPU utilisation every {interval:g} s from {source.description}"
                + (" (simulated)" if source.simulated else ""))
            said = problem


async def remove(conn, container: str) -> None:
    try:
        await conn.call("stop", container, timeout=STOP_GRACE)
    except Exception as e:
        say(f"stop: {printable(e, 200)}")
    try:
        await conn.call("remove_container", container, force=True)
        say("container removed")
    except Exception as e:
        say(f"could not remove the container: {printable(e, 200)}")


async def run(spec: dict) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    pw = pwd.getpwuid(os.getuid())
    node = os.environ.get("SLURMD_NODENAME", "?")
    gpus = job_gpus()
    t0 = time.monotonic()
    say(f"job {os.environ.get('SLURM_JOB_ID', '?')} on {node} for {pw.pw_name}, GPUs {','.join(gpus) or 'none'}")
    container = None
    conn = None
    try:
        docker_host = await asyncio.to_thread(ensure_daemon, spec, pw)
        target = daemons.socket_target(docker_host, pw.pw_uid, pw.pw_name)
        conn = await daemons.DaemonPool().connect(target, docker_host, spec["docker_api_timeout"], "node")
        container, port = await start_container(spec, conn, docker_host, gpus)
        say(f"container {container[:12]} started, port {spec['publish_ip']}:{port} "
            f"({time.monotonic() - t0:.2f} s after the job started)")
        await asyncio.to_thread(report, spec, {"port": port})
    except Exception as e:  # everything the student should read: the hub shows it
        message = printable(e, 1200)
        say(f"cannot start the server: {message}")
        if container and conn:
            await remove(conn, container)
        try:
            await asyncio.to_thread(report, spec, {"error": message})
        except Exception as again:
            say(f"could not tell the hub either: {printable(again, 300)}")
        return 1
    figures = asyncio.create_task(report_utilisation(spec, gpus, stop)) if gpus else None
    code = await supervise(conn, container, stop)
    if figures:
        figures.cancel()
    say(f"done ({code})")
    return code


def main(argv=None) -> int:
    raw = sys.stdin.read(MAX_SPEC + 1)
    if len(raw) > MAX_SPEC:
        say("the spec on stdin is too large")
        return 2
    try:
        spec = json.loads(raw)
    except ValueError as e:
        say(f"the spec on stdin is not JSON: {printable(e, 200)}")
        return 2
    from .nodeside import SPEC_VERSION

    if not isinstance(spec, dict) or spec.get("version") != SPEC_VERSION:
        say("this rootless-gpu-run does not understand the hub's spec: install the same version on every node")
        return 2
    return asyncio.run(run(spec))


if __name__ == "__main__":
    sys.exit(main())
