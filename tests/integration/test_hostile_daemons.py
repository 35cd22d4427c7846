"""A student's daemon is hostile input: each lie, stall or flood refused clearly, nobody else hurt.

The hostile daemon is tests/integration/hostile_daemon.py, run as the student
(rgstest-carol, who has no real daemon) at her socket path, so that it passes
the hub's peer-credential check; a case that needs another uid (the relay)
runs it as root. Each case goes through a real hub, while another student
(alice, real rootless daemon) spawns at the same time; afterwards the hub's
threads and memory must be back within generous bounds.

The last test is a fuzzer: the spawner in-process (no hub) against the
hostile daemon in "fuzz" mode, at least 1,000 randomized malformed answers
across every endpoint the spawner calls, seeded and reproducible
(``RGS_FUZZ_SEED``, ``RGS_FUZZ_ANSWERS``).

Every case is recorded for docs/reliability.md (section "Hostile daemons").
"""

from __future__ import annotations

import asyncio
import collections
import gc
import http.client
import json
import os
import pwd
import re
import shutil
import socket
import threading
import textwrap
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import docker
import pytest

from .conftest import base_spawner_config, containers_of
from .fakes import hostile
from .test_spawn import ALICE, BOB, CAROL, spawn_message

SECTION = "Hostile daemons"
HERE = Path(__file__).resolve().parent
API_TIMEOUT = 5  # c.RootlessGPUSpawner.docker_api_timeout of the test hub
PULL_TIMEOUT = 10  # c.RootlessGPUSpawner.image_pull_timeout of the test hub
THREADS_BOUND = 20  # hub threads may grow by less than this over one case
RSS_BOUND = 200 << 20  # ... and its memory (RSS and peak RSS) by less than this

#: The words of the clear messages of the contract; any refusal must be one of them.
CLEAR = ("served by", "symbolic link", "reported", "larger than", "within", "layers", "cannot use",
         "could not pull", "does not answer", "not running", "could not be started", "not rootless",
         "rootless mode", "refused to")
#: What a student must never see instead (a bare 500, a traceback, JupyterHub's "unhandled").
UNCLEAR = ("Internal Server Error", "Traceback (most recent call last)", "Unhandled error")


def _short(text: str, width: int) -> str:
    """A recorded message cut at a word boundary (a cut word would read like another word)."""
    return textwrap.shorten(str(text), width=width, placeholder=" …")


# ---------------------------------------------------------------- helpers


def _proc_status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def hub_resources(hub) -> dict:
    st = _proc_status(hub.proc.pid)
    return {
        "threads": int(st["Threads"]),
        "rss": int(st["VmRSS"].split()[0]) << 10,
        "hwm": int(st["VmHWM"].split()[0]) << 10,
        "fds": len(os.listdir(f"/proc/{hub.proc.pid}/fd")),
    }


def reset_peak_rss(pid: int) -> None:
    """Reset VmHWM (peak RSS) so the next reading is this case's peak (Linux >= 4.0)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def settle(hub, before: dict, rounds: int = 20) -> dict:
    """The hub's figures once its threads went back (bounded wait: up to ``rounds`` x 0.5 s)."""
    now = hub_resources(hub)
    for _ in range(rounds):
        if now["threads"] - before["threads"] < THREADS_BOUND // 2:
            break
        time.sleep(0.5)
        now = hub_resources(hub)
    return now


def clear_problems(message: str) -> list[str]:
    problems = [f"contains {w!r}" for w in UNCLEAR if w in message]
    if not message.strip():
        problems.append("empty message")
    if re.search(r"[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e]", message):
        problems.append("control characters")
    return problems


def _carol(testbed):
    u = testbed["users"][CAROL]
    return u["uid"], u["gid"]


def _sock(testbed, name):
    return testbed["users"][name]["docker_host"][len("unix://"):]


@pytest.fixture
def carol_dir(testbed, carol_socket):
    """carol's runtime dir with her (free) socket path; whatever a case left there is removed after."""
    rundir = os.path.dirname(carol_socket)
    before = set(os.listdir(rundir))
    yield carol_socket
    for name in set(os.listdir(rundir)) - before:
        if name == os.path.basename(carol_socket):
            continue  # carol_socket's own teardown
        p = os.path.join(rundir, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
    _no_real_daemon_for_carol(testbed)


def _no_real_daemon_for_carol(testbed):
    """Carol must never get a real daemon from these tests; stop one if a hub started it anyway."""
    from rootless_gpu_spawner.host import daemonctl

    pw = pwd.getpwnam(CAROL)
    if daemonctl._find_procs(pw.pw_uid, ("dockerd", "rootlesskit")):
        daemonctl.stop_daemon(pw, timeout=30)
        raise AssertionError("a real rootless dockerd was started for carol (stopped again)")


class Canary:
    """A loopback HTTP server that must never be asked anything (redirect target)."""

    def __init__(self):
        hits = self.hits = []

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_POST = do_DELETE = do_GET

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------- the hub


@pytest.fixture(scope="module")
def hd_hub(testbed, hub_factory):
    config = base_spawner_config(testbed) + f'''
    c.RootlessGPUSpawner.docker_api_timeout = {API_TIMEOUT}
    c.RootlessGPUSpawner.image_pull_timeout = {PULL_TIMEOUT}
    # Carol asks for a GPU in the CDI cases (the hostile daemon accepts any device request).
    c.RootlessGPUSpawner.gpus = 1
    c.Spawner.http_timeout = 20
    c.Spawner.start_timeout = 90
    '''
    return hub_factory(config, [ALICE, BOB, CAROL])


class Bystander:
    """Another student's real spawn running while a hostile case is going on."""

    def __init__(self, hub, name=ALICE, options=None):
        self.hub, self.name = hub, name
        self.result = {}
        self.thread = threading.Thread(target=self._run, args=(options or {"gpus": 0},), daemon=True)
        self.thread.start()

    def _run(self, options):
        try:
            self.result["r"] = self.hub.spawn(self.name, options)
        except Exception as e:  # reported by finish()
            self.result["error"] = e

    def finish(self, daemons) -> str:
        """Wait for it, check it answers through the proxy, stop it; '' or what went wrong."""
        self.thread.join(150)
        try:
            r = self.result.get("r")
            if r is None:
                return f"{self.name}'s spawn request failed: {self.result.get('error')}"
            if r.status_code not in (201, 202):
                return f"{self.name}'s spawn answered {r.status_code}: {r.text[:200]}"
            self.hub.wait_ready(self.name)
            status = self.hub.user_get(self.name, "/api/status").status_code
            if status != 200:
                return f"{self.name}'s server answered {status} through the proxy"
            return ""
        except AssertionError as e:
            return str(e)[:300]
        finally:
            try:
                if self.hub.server(self.name):
                    self.hub.stop_server(self.name)
            except Exception as e:  # reported, not hidden
                return f"could not stop {self.name}'s server: {e}"


def hostile_case(hub, daemons, reliability, testbed, fake_home, socket_path, behaviour, words, *, case=None,
                 fake_args=(), options=None, as_uid="carol", bystander=True, extra_check=None, max_seconds=120,
                 memory=False, listen_at=None, after_start=None):
    """Spawn carol against the hostile BEHAVIOUR while alice spawns for real; record and assert.

    ``words``: the refusal must contain one of them (None: carol's spawn must become ready).
    ``extra_check(fake, message) -> list of problems``. ``listen_at``: where the fake listens
    (default: carol's socket path); ``after_start()`` runs once it is up.
    """
    case = case or behaviour
    uid = _carol(testbed) if as_uid == "carol" else as_uid
    options = {"gpus": 0, **(options or {})}
    alice_before = {c.id for c in daemons[ALICE].containers.list(all=True)}
    before = hub_resources(hub)
    reset_peak_rss(hub.proc.pid)
    problems = []
    message = ""
    with hostile(fake_home, listen_at or socket_path, behaviour, *fake_args, as_uid=uid,
                 max_seconds=max_seconds) as fake:
        if after_start is not None:
            after_start()
        other = Bystander(hub) if bystander else None
        r = hub.spawn(CAROL, options)
        if words is None:
            if r.status_code not in (201, 202):
                problems.append(f"spawn answered {r.status_code}: {r.text[:300]}")
            else:
                try:
                    hub.wait_ready(CAROL, timeout=90)
                    message = "ready"
                except AssertionError as e:
                    problems.append(str(e)[:300])
                    message = str(e)[:300]
        else:
            message = spawn_message(hub, CAROL, r)
            if not any(w in message for w in words):
                problems.append(f"no {' / '.join(map(repr, words))} in the message")
            problems += clear_problems(message)
        if extra_check is not None:
            problems += extra_check(fake, message)
        server = hub.server(CAROL)
        if words is None and server:
            hub.stop_server(CAROL)
        elif server and server.get("ready"):
            problems.append("carol's spawn went ahead (ready)")
            hub.stop_server(CAROL)
        else:
            try:
                hub.wait_gone(CAROL, 60)
            except AssertionError:
                problems.append("carol's server still listed after the refusal")
                hub.stop_server(CAROL)
        served = fake.requests
    if other is not None:
        trouble = other.finish(daemons)
        if trouble:
            problems.append("bystander: " + trouble)
    # Nothing of carol's on anybody's real daemon, and nothing new on alice's but alice's own.
    for name, client in daemons.items():
        leftovers = containers_of(client, CAROL)
        if leftovers:
            problems.append(f"carol's container on {name}'s daemon")
            for c in leftovers:
                c.remove(force=True)
    strangers = [c for c in daemons[ALICE].containers.list(all=True)
                 if c.id not in alice_before and c.labels.get("org.rootless-gpu-spawner.hub-user") != ALICE]
    if strangers:
        problems.append(f"{len(strangers)} new container(s) on alice's daemon not of alice")
    after = settle(hub, before)
    grown = after["threads"] - before["threads"]
    if grown >= THREADS_BOUND:
        problems.append(f"hub threads grew by {grown}")
    if after["rss"] - before["rss"] >= RSS_BOUND:
        problems.append(f"hub RSS grew by {(after['rss'] - before['rss']) >> 20} MiB")
    if memory and after["hwm"] - before["rss"] >= RSS_BOUND:
        problems.append(f"hub peak RSS went {(after['hwm'] - before['rss']) >> 20} MiB above its start")
    expected = "ready" if words is None else f"clear refusal containing {' / '.join(map(repr, words))}"
    expected += "; alice's spawn meanwhile ready" if bystander else ""
    expected += "; nothing on any real daemon; hub threads/memory bounded"
    observed = (f"HTTP {r.status_code}: {_short(message, 220)}" + (f" | problems: {'; '.join(problems)}" if problems else "")
                + f" | threads {before['threads']}->{after['threads']}, RSS {before['rss'] >> 20}->{after['rss'] >> 20} MiB"
                + (f", peak {after['hwm'] >> 20} MiB" if memory else ""))
    reliability.record(SECTION, case, expected, observed, not problems)
    assert not problems, f"{case}: {observed}\nrequests served: {served[-8:]}\n{hub.log_tail(30)}"
    return message, served


# ---------------------------------------------------------------- cases through the hub


def test_honest_fake_becomes_ready(hd_hub, daemons, reliability, testbed, fake_home, carol_dir):
    """The control: the look-alike passes every check of the hub, so the refusals below are the lies'."""
    hostile_case(hd_hub, daemons, reliability, testbed, fake_home, carol_dir, "honest", None,
                 case="honest look-alike daemon (control): spawn becomes ready")


def test_socket_swap_after_info(hd_hub, daemons, reliability, testbed, fake_home, carol_dir):
    def check(fake, message):
        swapped = any(b.get("what") == "socket swapped" for b in fake.bad)
        return [] if swapped else ["the fake never swapped its socket (the hub stopped before /info?)"]

    hostile_case(hd_hub, daemons, reliability, testbed, fake_home, carol_dir, "socket-swap",
                 ("served by", "symbolic link"), fake_args=("--swap-to", _sock(testbed, ALICE)),
                 case="socket swapped for a symlink to alice's real socket after /info", extra_check=check)


def test_socket_path_is_symlink_to_own_socket(hd_hub, daemons, reliability, testbed, fake_home, carol_dir):
    real = os.path.join(os.path.dirname(carol_dir), "elsewhere.sock")
    hostile_case(hd_hub, daemons, reliability, testbed, fake_home, carol_dir, "honest", ("symbolic link",),
                 listen_at=real, after_start=lambda: os.symlink(real, carol_dir),
                 case="socket path is a symlink (to carol's own honest socket)")


def test_relay_to_another_uids_daemon(hd_hub, daemons, reliability, testbed, fake_home, carol_dir):
    uid, gid = _carol(testbed)

    def check(fake, message):
        return [] if ("uid 0" in message or "root" in message) else ["the message does not name uid 0"]

    hostile_case(hd_hub, daemons, reliability, testbed, fake_home, carol_dir, "relay", ("served by",),
                 fake_args=("--relay-to", _sock(testbed, ALICE), "--owner", f"{uid}:{gid}"), as_uid=None,
                 case="relay owned by root (socket chowned to carol) forwarding to alice's daemon",
                 extra_check=check)


def _removed(fake, message):
    created, deleted = fake.created(), fake.deleted()
    if not created:
        return ["no container was created on the fake (the lie was never reached)"]
    return [] if deleted else ["the container the daemon lied about was not removed"]


def test_lying_port_hub_api(hd_hub, daemons, reliability, testbed, fake_home, carol_dir):
    hostile_case(hd_hub, daemons, reliability, testbed, fake_home, carol_dir, "lying-port", ("reported",),
                 fake_args=("--lie-port", str(hd_hub.hub_port)),
                 case="inspect reports the hub API's port as the server's", extra_check=_removed)


def test_lying_port_other_students_server(hd_hub, daemons, reliability, testbed, fake_home, carol_dir):
    hub = hd_hub
    assert hub.spawn(ALICE, {"gpus": 0}).status_code in (201, 202)
    hub.wait_ready(ALICE)
    try:
        (c,) = containers_of(daemons[ALICE], ALICE)
        alice_port = c.attrs["HostConfig"]["PortBindings"]["8888/tcp"][0]["HostPort"]

        def check(fake, message):
            problems = _removed(fake, message)
            if hub.user_get(ALICE, "/api/status").status_code != 200:
                problems.append("alice's server no longer answers through the proxy")
            return problems

        hostile_case(hub, daemons, reliability, testbed, fake_home, carol_dir, "lying-port", ("reported",),
                     fake_args=("--lie-port", alice_port), bystander=False,
                     case="inspect reports alice's running server's port", extra_check=check)
    finally:
        hub.stop_server(ALICE)


def test_lying_ip(hd_hub, daemons, reliability, testbed, fake_home, carol_dir):
    hostile_case(hd_hub, daemons, reliability, testbed, fake_home, carol_dir, "lying-ip", ("reported",),
                 fake_args=("--lie-ip", "127.0.0.2"), case="inspect reports another host IP (127.0.0.2)",
                 extra_check=_removed)


def test_gigabyte_info(hd_hub, daemons, reliability, testbed, fake_home, carol_dir):
    hostile_case(hd_hub, daemons, reliability, testbed, fake_home, carol_dir, "gigabyte-info", ("larger than",),
                 case="/info answers 1 GiB (Content-Length, streamed lazily)", memory=True)


def test_gigabyte_chunked(hd_hub, daemons, reliability, testbed, fake_home, carol_dir):
    hostile_case(hd_hub, daemons, reliability, testbed, fake_home, carol_dir, "gigabyte-chunked", ("larger than",),
                 case="image inspect answers an endless chunked body", memory=True)


def test_endless_pull(hd_hub, daemons, reliability, testbed, fake_home, carol_dir):
    def check(fake, message):
        return [] if fake.requests and any(r["path"] == "/images/create" for r in fake.requests) else ["no pull was made"]

    hostile_case(hd_hub, daemons, reliability, testbed, fake_home, carol_dir, "endless-pull", ("layers",),
                 options={"image": testbed["mirror_image_short"]}, max_seconds=60, memory=True,
                 case="pull stream announcing new layer ids forever", extra_check=check)


def test_slow_endless_pull(hd_hub, daemons, reliability, testbed, fake_home, carol_dir):
    hostile_case(hd_hub, daemons, reliability, testbed, fake_home, carol_dir, "slow-pull", ("within",),
                 options={"image": testbed["mirror_image_short"]}, max_seconds=90,
                 case=f"pull stream: one small progress line every 0.5 s, forever (image_pull_timeout {PULL_TIMEOUT} s)")


def test_huge_pull_line(hd_hub, daemons, reliability, testbed, fake_home, carol_dir):
    hostile_case(hd_hub, daemons, reliability, testbed, fake_home, carol_dir, "huge-pull-line", ("larger than",),
                 options={"image": testbed["mirror_image_short"]}, memory=True,
                 case="pull stream with one 8 MiB line")


def test_drip_body(hd_hub, daemons, reliability, testbed, fake_home, carol_dir):
    hostile_case(hd_hub, daemons, reliability, testbed, fake_home, carol_dir, "drip-body", ("within",),
                 max_seconds=90, case=f"/info body dripped a byte every 0.5 s (deadline {API_TIMEOUT} s)")


def test_drip_headers(hd_hub, daemons, reliability, testbed, fake_home, carol_dir):
    hostile_case(hd_hub, daemons, reliability, testbed, fake_home, carol_dir, "drip-headers", ("within",),
                 max_seconds=90, case=f"/info status line and headers dripped a byte every 0.5 s")


def test_nested_json(hd_hub, daemons, reliability, testbed, fake_home, carol_dir):
    hostile_case(hd_hub, daemons, reliability, testbed, fake_home, carol_dir, "nested-json", ("cannot use",),
                 case="/info answers '[' * 100000")


def _no_cdi(fake, message):
    created = fake.created()
    if not created:
        return ["no container was created"]
    body = json.dumps(created[-1].get("body"))
    return ["the daemon's CDISpecDirs were used: CDI device request"] if ("cdi" in body.lower()
                                                                           or "nvidia.com/gpu=" in body) else []


def test_cdi_glob_patterns(hd_hub, daemons, reliability, testbed, fake_home, carol_dir):
    hostile_case(hd_hub, daemons, reliability, testbed, fake_home, carol_dir, "cdi-glob", None,
                 options={"gpus": 1}, extra_check=_no_cdi,
                 case="CDISpecDirs of glob patterns ('/*/*/*/*/*/*' x 20): not globbed, spawn goes on")


def test_cdi_spec_dir_from_daemon(hd_hub, daemons, reliability, testbed, fake_home, carol_dir):
    cdi = os.path.join(os.path.dirname(carol_dir), "cdi")
    hostile_case(hd_hub, daemons, reliability, testbed, fake_home, carol_dir, "cdi-spec-dir", None,
                 options={"gpus": 1}, fake_args=("--cdi-dir", cdi), extra_check=_no_cdi,
                 case="CDISpecDirs naming a student-made dir with nvidia.yaml: never used as a path")


def _remove_local(client, name, testbed):
    for ref in (name, f"{testbed['registry_from_daemon']}/library/{name}"):
        try:
            client.images.remove(ref)
        except docker.errors.ImageNotFound:
            pass


def test_mirror_failure_reported_by_daemon(hd_hub, daemons, reliability, testbed, fake_home, carol_dir):
    hub, image = hd_hub, testbed["mirror_image_short"]
    hostile_case(hub, daemons, reliability, testbed, fake_home, carol_dir, "mirror-failed", ("could not pull",),
                 options={"image": image}, bystander=False,
                 case="daemon reports 'mirror failed' for the pull through the mirror")
    # The next student still pulls through the mirror: the daemon's word did not cool it down.
    _remove_local(daemons[ALICE], image, testbed)
    r = hub.spawn(ALICE, {"image": image, "gpus": 0})
    events = hub.progress_events(ALICE, timeout=180) if r.status_code == 202 else []
    messages = [e.get("message", "") for e in events]
    try:
        ready = r.status_code == 201 or (events and events[-1].get("ready"))
        cooled = [m for m in messages if "failed recently" in m]
        ok = bool(ready) and not cooled
        if ready:
            hub.wait_ready(ALICE)
        observed = f"HTTP {r.status_code}; ready={bool(ready)}; " + (
            f"mirror skipped: {_short(cooled[0], 200)}" if cooled else _short(messages[-1] if messages else r.text, 200))
        reliability.record(SECTION, "after that, alice pulls through the same mirror",
                           "alice's pull goes through the mirror (no cool-down from the daemon's claim)", observed, ok)
        assert ok, observed
    finally:
        if hub.server(ALICE):
            hub.stop_server(ALICE)


def test_wrong_types_in_container_inspect(hd_hub, daemons, reliability, testbed, fake_home, carol_dir):
    hostile_case(hd_hub, daemons, reliability, testbed, fake_home, carol_dir, "wrong-types-inspect",
                 ("cannot use",), case="container inspect with wrong types (Id a number, Ports a string)")


def test_wrong_types_in_info(hd_hub, daemons, reliability, testbed, fake_home, carol_dir):
    hostile_case(hd_hub, daemons, reliability, testbed, fake_home, carol_dir, "wrong-types-info",
                 ("cannot use",), case="/info with wrong types (CDISpecDirs a number, NCPU a string)")


def test_invalid_utf8(hd_hub, daemons, reliability, testbed, fake_home, carol_dir):
    hostile_case(hd_hub, daemons, reliability, testbed, fake_home, carol_dir, "invalid-utf8", ("cannot use",),
                 case="/info answers bytes that are not UTF-8")


def test_truncated_body(hd_hub, daemons, reliability, testbed, fake_home, carol_dir):
    hostile_case(hd_hub, daemons, reliability, testbed, fake_home, carol_dir, "truncated",
                 ("cannot use", "does not answer"), case="container create: 30 of 200 announced bytes, then closed")


def test_wrong_status(hd_hub, daemons, reliability, testbed, fake_home, carol_dir):
    hostile_case(hd_hub, daemons, reliability, testbed, fake_home, carol_dir, "wrong-status", CLEAR,
                 case="container create answers 418 with a body that is not JSON")


def test_redirect_is_not_followed(hd_hub, daemons, reliability, testbed, fake_home, carol_dir):
    canary = Canary()
    try:
        def check(fake, message):
            return [f"the hub followed the daemon's redirect to {canary.hits}"] if canary.hits else []

        hostile_case(hd_hub, daemons, reliability, testbed, fake_home, carol_dir, "redirect", CLEAR,
                     fake_args=("--redirect-to", f"http://127.0.0.1:{canary.port}"), extra_check=check,
                     case="image inspect answers 307 to a loopback URL: not followed")
    finally:
        canary.close()


def test_escape_injection(hd_hub, daemons, reliability, testbed, fake_home, carol_dir):
    hostile_case(hd_hub, daemons, reliability, testbed, fake_home, carol_dir, "escape-injection", CLEAR,
                 case="create error message with terminal escapes and control characters: shown safely")


def test_bad_api_version(hd_hub, daemons, reliability, testbed, fake_home, carol_dir):
    hostile_case(hd_hub, daemons, reliability, testbed, fake_home, carol_dir, "bad-api-version",
                 ("cannot use", "does not answer"), case="/version reports ApiVersion as a number")


# ---------------------------------------------------------------- GPUs released only on the hub's own observation


def _control(path: str, what: str) -> dict:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    conn = http.client.HTTPConnection("localhost")
    conn.sock = s
    try:
        conn.request("POST", what)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def gpu_hub(testbed, hub_factory):
    config = base_spawner_config(testbed) + f'''
    c.RootlessGPUSpawner.docker_api_timeout = {API_TIMEOUT}
    c.RootlessGPUSpawner.gpu_policy = "exclusive"
    c.RootlessGPUSpawner.gpu_ids = ["0", "1"]
    c.RootlessGPUSpawner.gpus = 1
    c.Spawner.poll_interval = 1
    '''
    return hub_factory(config, [BOB, CAROL])


def test_gpus_released_only_on_the_hubs_own_observation(gpu_hub, daemons, reliability, testbed, fake_home,
                                                        carol_dir):
    """Carol holds a GPU on a look-alike daemon that then garbles every inspect: her GPU stays hers
    (bob cannot get both); when her daemon is really gone, the hub sees it and bob gets both."""
    hub = gpu_hub
    problems = []
    steps = []
    with hostile(fake_home, carol_dir, "honest", as_uid=_carol(testbed)) as fake:
        r = hub.spawn(CAROL, {"gpus": 1})
        assert r.status_code in (201, 202), r.text
        hub.wait_ready(CAROL, timeout=90)
        steps.append("carol ready with 1 GPU")
        _control(carol_dir, "/_behaviour/wrong-types-inspect")
        n0 = len([q for q in fake.requests if q["path"].endswith("/json") and q["path"].startswith("/containers/")])
        for _ in range(60):  # bounded (30 s): until the hub's poll has met the garbled answer 3 times
            n = len([q for q in fake.requests if q["path"].endswith("/json") and q["path"].startswith("/containers/")])
            if n - n0 >= 3:
                break
            time.sleep(0.5)
        else:
            problems.append("the hub did not poll carol's server")
        steps.append(f"{n - n0} garbled inspects answered to the hub's poll")
        r = hub.spawn(BOB, {"gpus": 2})
        message = spawn_message(hub, BOB, r)
        if hub.server(BOB):
            problems.append("bob got both GPUs while carol's server still ran (released on a garbled answer)")
            hub.stop_server(BOB)
        steps.append(f"bob asking for 2 GPUs: HTTP {r.status_code} {_short(message, 120)}")
        if not hub.server(CAROL):
            problems.append("carol's server was dropped on a garbled answer while it still answered")
    # The fake is gone now (socket removed, stand-in server closed): the hub's own observation.
    try:
        hub.wait_gone(CAROL, 60)
        steps.append("carol's server seen gone by the hub")
    except AssertionError:
        problems.append("the hub did not notice carol's daemon and server were gone")
        hub.stop_server(CAROL)
    r = hub.spawn(BOB, {"gpus": 2})
    try:
        if r.status_code not in (201, 202):
            problems.append(f"bob's 2-GPU spawn after carol's was gone: HTTP {r.status_code} {r.text[:200]}")
        else:
            hub.wait_ready(BOB)
            steps.append("then bob got both GPUs")
    except AssertionError as e:
        problems.append(f"bob not ready: {str(e)[:200]}")
    finally:
        if hub.server(BOB):
            hub.stop_server(BOB)
    observed = "; ".join(steps) + (f" | problems: {'; '.join(problems)}" if problems else "")
    reliability.record(SECTION, "exclusive GPUs: a garbled poll answer keeps them held; the daemon really gone "
                       "releases them", "bob cannot take carol's GPU while her server answers; he gets it once the "
                       "hub itself sees her daemon gone", observed, not problems)
    assert not problems, observed


# ---------------------------------------------------------------- a daemon that never answers, 10 others spawn

SHARED = [f"shared-{i:02d}" for i in range(1, 11)]
STALLED = [f"stall-{i:02d}" for i in range(1, 13)]
#: docker_api_timeout of this hub, which is also how long a daemon start may take
STALL_TIMEOUT = 30


@pytest.fixture(scope="module")
def stall_hub(testbed, hub_factory):
    config = base_spawner_config(testbed) + f'''
    c.RootlessGPUSpawner.docker_api_timeout = {STALL_TIMEOUT}
    c.RootlessGPUSpawner.gpus = 0
    c.RootlessGPUSpawner.allow_shared_accounts = True
    c.RootlessGPUSpawner.start_daemon_if_down = True
    c.RootlessGPUSpawner.system_user = lambda name: {ALICE!r} if name.startswith("shared-") else (
        {CAROL!r} if name.startswith("stall-") else name)
    c.Spawner.start_timeout = 120
    '''
    return hub_factory(config, SHARED + STALLED)


def _lock_fds(pid: int, lock_path: str) -> int:
    n = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == lock_path:
                    n += 1
            except OSError:
                pass
    except OSError:
        pass
    return n


def test_never_answering_daemon_delays_nobody(stall_hub, daemons, reliability, testbed, fake_home, carol_dir):
    """Carol's daemon is down (a stale socket) and its start never finishes (the hostile process
    holds the start lock, so no real daemon is ever started for her): 12 spawns on her account
    wait for one start through start_daemon_if_down, while 10 others spawn on alice's daemon."""
    from rootless_gpu_spawner.host import daemonctl

    hub = stall_hub
    lock = daemonctl.daemon_paths(_carol(testbed)[0]).lock_file
    before = hub_resources(hub)
    results: dict = {}
    max_lock_fds = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():  # bounded by the test's own end (done is set in finally)
            max_lock_fds[0] = max(max_lock_fds[0], _lock_fds(hub.proc.pid, lock))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    problems = []
    with hostile(fake_home, carol_dir, "never-answer", "--lock", lock, "--stale", as_uid=_carol(testbed),
                 max_seconds=300) as fake:
        sampler.start()
        try:
            stall_threads = [threading.Thread(target=lambda n=n: results.update({n: hub.spawn(n, {})}), daemon=True)
                             for n in STALLED]
            for t in stall_threads:
                t.start()
            for _ in range(100):  # bounded (10 s): until the hub is starting carol's daemon
                if max_lock_fds[0] or fake.requests:
                    break
                time.sleep(0.1)
            # Ten students on a healthy daemon spawn now, while carol's never answers.
            shared = {}
            with_threads = [threading.Thread(target=lambda n=n: shared.update({n: hub.spawn(n, {})}), daemon=True)
                            for n in SHARED]
            for t in with_threads:
                t.start()
            for t in with_threads:
                t.join(150)
            ready, pending_at_ready = 0, None
            for n in SHARED:
                r = shared.get(n)
                if r is None or r.status_code not in (201, 202):
                    problems.append(f"{n}: {getattr(r, 'status_code', None)} {getattr(r, 'text', '')[:120]}")
                    continue
                try:
                    hub.wait_ready(n, timeout=180)
                    ready += 1
                except AssertionError as e:
                    problems.append(f"{n} not ready: {str(e)[:200]}")
            pending_at_ready = sum(1 for n in STALLED if hub.server(n) and not hub.server(n).get("ready"))
            for t in stall_threads:
                t.join(4 * STALL_TIMEOUT + 60)
            messages = {}
            for n in STALLED:
                r = results.get(n)
                messages[n] = spawn_message(hub, n, r) if r is not None else "no answer"
            unclear = {n: m for n, m in messages.items() if clear_problems(m) or not any(w in m for w in CLEAR)}
            if unclear:
                problems.append(f"unclear refusals for the stalled student: {list(unclear.items())[:2]}")
            if max_lock_fds[0] > 1:
                problems.append(f"{max_lock_fds[0]} daemon starts for carol at once (no single flight)")
        finally:
            done.set()
            sampler.join(5)
    for n in SHARED:
        if hub.server(n):
            hub.stop_server(n)
    for n in STALLED:
        if hub.server(n):
            hub.stop_server(n)
    after = settle(hub, before)
    if after["threads"] - before["threads"] >= THREADS_BOUND:
        problems.append(f"hub threads grew by {after['threads'] - before['threads']}")
    observed = (f"{ready} of {len(SHARED)} ready; {pending_at_ready} of {len(STALLED)} stalled spawns still pending "
                f"when they were; at most {max_lock_fds[0]} concurrent daemon start(s) for carol; "
                f"stalled refusal: {next(iter(messages.values()), '')[:150]}; threads {before['threads']}->{after['threads']}"
                + (f" | problems: {'; '.join(problems)}" if problems else ""))
    reliability.figure("hostile_stall_shared_ready", f"{ready} of {len(SHARED)}")
    reliability.record(SECTION, f"a daemon that is down and whose start never finishes ({len(STALLED)} spawns on "
                       f"it, start_daemon_if_down) while {len(SHARED)} others spawn", "all others ready; one daemon start at a time for the "
                       "stalled account; clear refusals; threads bounded", observed, not problems)
    assert not problems, observed


# ---------------------------------------------------------------- the fuzzer (spawner in-process, no hub)

FUZZ_SEED = int(os.environ.get("RGS_FUZZ_SEED", "20261201"))
FUZZ_ANSWERS = int(os.environ.get("RGS_FUZZ_ANSWERS", "1000"))
FUZZ_FIRST = int(os.environ.get("RGS_FUZZ_FIRST", "0"))  # to replay from a failing iteration
FUZZ_MAX_ITERATIONS = 3 * FUZZ_ANSWERS
FUZZ_API_TIMEOUT = 1.5


def _fuzz_control(path: str, seed: int, iteration: int) -> dict:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    conn = http.client.HTTPConnection("localhost")
    conn.sock = s
    try:
        conn.request("POST", f"/_fuzz/{seed}/{iteration}")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def _test_process_figures() -> tuple[int, int]:
    return int(_proc_status(os.getpid())["Threads"]), len(os.listdir("/proc/self/fd"))


def _make_spawner(docker_host_template: str):
    from traitlets.config import Config

    from rootless_gpu_spawner import RootlessGPUSpawner

    c = Config()
    c.RootlessGPUSpawner.docker_host_template = docker_host_template
    c.RootlessGPUSpawner.system_user = CAROL
    c.RootlessGPUSpawner.image = "rgs-test/jupyterlab:latest"
    c.RootlessGPUSpawner.mirror_prefixes = []  # a pull goes to the fake only; nothing leaves the machine
    c.RootlessGPUSpawner.mirror_fallback_to_upstream = True
    c.RootlessGPUSpawner.pull_policy = "ifnotpresent"
    c.RootlessGPUSpawner.gpus = 0
    c.RootlessGPUSpawner.docker_api_timeout = FUZZ_API_TIMEOUT
    if RootlessGPUSpawner.class_traits().get("image_pull_timeout") is not None:
        c.RootlessGPUSpawner.image_pull_timeout = 10
    c.Spawner.http_timeout = 2
    hub = SimpleNamespace(api_url="http://127.0.0.1:8081/hub/api", base_url="/hub/", public_host="",
                          url="http://127.0.0.1:8081/hub/", host="", ip="127.0.0.1", port=8081)
    user = SimpleNamespace(name="fuzz-carol", id=7, url="/user/fuzz-carol/", spawners={}, groups=[],
                           escaped_name="fuzz-carol")
    spawner = RootlessGPUSpawner(config=c, user=user, hub=hub, _deprecated_db_session=None)
    spawner.user_options = {}
    spawner.api_token = "f" * 32
    return spawner


def _forget_connection(docker_host: str) -> None:
    """Each iteration talks to the daemon afresh (its /version answer is fuzzed too); stop()
    already lets go of the connection, this only covers a pool that keeps it."""
    from rootless_gpu_spawner.hub import daemon as daemons

    pool = getattr(daemons, "pool", None)
    if pool is not None and hasattr(pool, "discard"):
        for key in {docker_host, "unix://" + os.path.realpath(docker_host[len("unix://"):])}:
            pool.discard(key)


def _classify(exc: BaseException | None, phase: str) -> tuple[str, bool, str]:
    """(outcome, acceptable, message) of one phase."""
    from rootless_gpu_spawner.spawner import SpawnRefused

    if exc is None:
        return f"{phase}: ok", True, ""
    if isinstance(exc, asyncio.TimeoutError):
        return f"{phase}: hung past its deadline", False, ""
    if isinstance(exc, SpawnRefused):
        message = getattr(exc, "jupyterhub_message", None) or str(exc)
        problems = clear_problems(message) if isinstance(message, str) else ["not a string"]
        if problems:
            return f"{phase}: unclear refusal ({', '.join(problems)})", False, message
        return f"{phase}: refused {exc.status_code}", True, message
    return f"{phase}: {type(exc).__name__} escaped", False, f"{type(exc).__name__}: {str(exc)[:200]}"


async def _fuzz_one(template: str, socket_path: str, i: int, bound: float):
    spawner = _make_spawner(template)
    outcomes = []
    start_exc = None
    try:
        result = await asyncio.wait_for(spawner.start(), bound)
        if not (isinstance(result, tuple) and isinstance(result[0], str) and isinstance(result[1], int)):
            outcomes.append(("start: returned %r" % (result,), False, ""))
    except BaseException as e:  # noqa: B902 -- classified, never swallowed silently
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        start_exc = e
    outcomes.append(_classify(start_exc, "start"))
    if start_exc is None:
        try:
            status = await asyncio.wait_for(spawner.poll(), bound)
            if status is not None and not isinstance(status, (int, str)):
                outcomes.append((f"poll: returned {status!r}", False, ""))
            outcomes.append(_classify(None, "poll"))
        except BaseException as e:  # noqa: B902
            outcomes.append(_classify(e, "poll"))
    # The hub stops a server after a failed start too.
    try:
        await asyncio.wait_for(spawner.stop(), bound)
        outcomes.append(_classify(None, "stop"))
    except BaseException as e:  # noqa: B902
        outcomes.append(_classify(e, "stop"))
    _forget_connection(spawner.docker_host or template)
    return outcomes


def test_fuzzing_daemon(reliability, fake_home):
    try:
        carol = pwd.getpwnam(CAROL)
    except KeyError:
        pytest.fail(f"no account {CAROL}: run 'python -m tests.testbed up' first")
    # A socket dir of its own (not /run/user/UID): the fuzzer never collides with the hub cases.
    base = Path(f"/run/rgs-hostile-fuzz-{os.getpid()}")
    sock_dir = base / str(carol.pw_uid)
    sock_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)
    os.chown(sock_dir, carol.pw_uid, carol.pw_gid)
    os.chmod(sock_dir, 0o700)
    socket_path = str(sock_dir / "docker.sock")
    template = f"unix://{base}/{{uid}}/docker.sock"
    bound = 20 * FUZZ_API_TIMEOUT + 10  # every call of a start ends by its deadline; far below this
    counts = collections.Counter()
    failures = []
    leaks = []
    iterations = FUZZ_FIRST
    try:
        with hostile(fake_home, socket_path, "fuzz", as_uid=(carol.pw_uid, carol.pw_gid), max_seconds=900) as fake:

            async def run():
                nonlocal iterations
                # Warm up (imports, first clients), then measure the test process.
                await _fuzz_one(template, socket_path, -1, bound)
                gc.collect()
                figures_before = _test_process_figures()
                served = 0
                while served < FUZZ_ANSWERS and iterations - FUZZ_FIRST < FUZZ_MAX_ITERATIONS:
                    try:
                        plan = await asyncio.to_thread(_fuzz_control, socket_path, FUZZ_SEED, iterations)
                    except OSError as e:
                        raise AssertionError(f"the fuzzing daemon is gone (exit status {fake.proc.poll()}) "
                                             f"before iteration {iterations}: {e}") from None
                    for outcome, ok, message in await _fuzz_one(template, socket_path, iterations, bound):
                        counts[outcome] += 1
                        if not ok and sum(1 for f in failures if f[0] == outcome) < 3:  # 3 examples per kind
                            failures.append((outcome, f"iteration {iterations} {plan.get('targets')}: {outcome} {message}"))
                    iterations += 1
                    if iterations % 50 == 0:
                        served = sum(1 for b in fake.bad if "fuzz" in b)
                served = sum(1 for b in fake.bad if "fuzz" in b)
                from rootless_gpu_spawner.hub import daemon as daemons

                pooled = len(daemons.pool) if hasattr(daemons.pool, "__len__") else 0
                if pooled:
                    leaks.append(f"{pooled} daemon connection(s) still open after every server was stopped")
                gc.collect()
                threads, fds = _test_process_figures()
                for _ in range(20):  # bounded: executor threads leave after their pools shut down
                    if threads - figures_before[0] < THREADS_BOUND // 2:
                        break
                    await asyncio.sleep(0.5)
                    threads, fds = _test_process_figures()
                return served, figures_before, (threads, fds)

            served, (t0, f0), (t1, f1) = asyncio.run(run())
            by_endpoint = collections.Counter(b["endpoint"] for b in fake.bad if "fuzz" in b)
            by_mutation = collections.Counter(b["mutation"] for b in fake.bad if "fuzz" in b)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    bad_outcomes = {k: v for k, v in counts.items() if not (k.endswith(": ok") or ": refused " in k)}
    if t1 - t0 >= THREADS_BOUND:
        leaks.append(f"test process threads {t0}->{t1}")
    if f1 - f0 >= 50:
        leaks.append(f"test process fds {f0}->{f1}")
    reliability.figure("hostile_fuzz_seed", FUZZ_SEED)
    spawns = iterations - FUZZ_FIRST
    reliability.figure("hostile_fuzz_iterations", spawns)
    reliability.figure("hostile_fuzz_malformed_answers", served)
    reliability.figure("hostile_fuzz_starts_ready", counts.get("start: ok", 0))
    reliability.figure("hostile_fuzz_starts_refused", sum(v for k, v in counts.items() if k.startswith("start: refused")))
    reliability.figure("hostile_fuzz_bad_outcomes", sum(bad_outcomes.values()))
    reliability.figure("hostile_fuzz_threads", f"{t0} -> {t1}")
    reliability.figure("hostile_fuzz_fds", f"{f0} -> {f1}")
    observed = (f"seed {FUZZ_SEED}: {served} malformed answers in {spawns} spawns "
                f"(endpoints {dict(by_endpoint)}); outcomes {dict(counts)}; threads {t0}->{t1}, fds {f0}->{f1}")
    ok = served >= FUZZ_ANSWERS and not bad_outcomes and not leaks
    reliability.record(SECTION, f"fuzzing daemon: >= {FUZZ_ANSWERS} randomized malformed answers "
                       f"({len(by_mutation)} kinds) on every endpoint, spawner in-process",
                       "each start/poll/stop ends ready or with a clear SpawnRefused; nothing escapes, nothing "
                       "hangs past its deadline; no thread/fd leak", observed, ok)
    assert served >= FUZZ_ANSWERS, observed
    assert not bad_outcomes, (f"{observed}\nexamples (replay one with RGS_FUZZ_SEED={FUZZ_SEED} "
                              "RGS_FUZZ_FIRST=<iteration>):\n" + "\n".join(f for _, f in failures))
    assert not leaks, leaks
