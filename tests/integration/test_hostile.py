"""Hostile and broken input through a real hub: each case refused clearly, nothing started.

Every case is recorded for docs/reliability.md (section "Hostile and broken input").
"""

from __future__ import annotations

import os
import socket
from urllib.parse import quote

import pytest

from .conftest import base_spawner_config, containers_of
from .fakes import hostile
from .test_spawn import ALICE, BOB, CAROL, spawn_message

SECTION = "Hostile and broken input"
SHA_BAD = "python@sha256:xyz"

# (id, hub user, user_options, words expected in the message)
OPTION_CASES = [
    ("image: path traversal", ALICE, {"image": "../../etc/passwd"}, "not one of the allowed images"),
    ("image: uppercase", ALICE, {"image": "Python:3"}, "not one of the allowed images"),
    ("image: bad digest", ALICE, {"image": SHA_BAD}, "not one of the allowed images"),
    ("image: 5000 characters", ALICE, {"image": "a" * 5000}, "not one of the allowed images"),
    ("image: shell metacharacters ;", ALICE, {"image": "python;rm -rf /"}, "not one of the allowed images"),
    ("image: shell metacharacters $()", ALICE, {"image": "$(reboot)"}, "not one of the allowed images"),
    ("image: backticks", ALICE, {"image": "`id`"}, "not one of the allowed images"),
    ("image: registry outside the allow-list", ALICE, {"image": "evil.example.com/miner:latest"}, "not one of the allowed images"),
    ("image: loopback registry outside the allow-list", ALICE, {"image": "localhost:5000/library/rgs-lab"}, "not one of the allowed images"),
    ("image: trailing newline", ALICE, {"image": "rgs-lab:latest\n"}, "not one of the allowed images"),
    ("user_options: image is a number", ALICE, {"image": 5}, "must be a string"),
    ("user_options: image is a list", ALICE, {"image": ["rgs-lab:latest"]}, "must be a string"),
    ("user_options: extra key cmd", ALICE, {"cmd": "bash"}, "unknown option"),
    ("user_options: extra key volumes", ALICE, {"volumes": {"/": "/host"}}, "unknown option"),
    ("user_options: extra key privileged", ALICE, {"privileged": True}, "unknown option"),
    ("user_options: extra key user", ALICE, {"user": "0"}, "unknown option"),
    ("gpus: negative", BOB, {"gpus": -1}, "negative"),
    ("gpus: huge", BOB, {"gpus": 10**12}, "not possible"),
    ("gpus: non-numeric", BOB, {"gpus": "two"}, "not understood"),
    ("gpus: shell metacharacters", BOB, {"gpus": "1; rm -rf /"}, "not understood"),
    ("gpus: object", BOB, {"gpus": {"count": 1}}, "gpus must be"),
    ("gpus: boolean", BOB, {"gpus": True}, "gpus must be"),
    ("gpus: float", BOB, {"gpus": 1.5}, "gpus must be"),
    ("gpus: id with path", BOB, {"gpus": ["../0"]}, "not a valid device id"),
]

# (id, hub user name, words)
NAME_CASES = [
    ("hub name: uppercase", "GHOSTSTUDENT", "not a valid login name"),
    ("hub name: dots, no such account", "first.last", "no system account 'first.last'"),
    ("hub name: unicode", "学生", "not a valid login name"),
    ("hub name: leading dash", "-rf", "not a valid login name"),
    ("system account does not exist", "ghost", "no system account 'ghost'"),
    ("system account root (uid 0)", "root", "below RootlessGPUSpawner.min_uid"),
    ("system account daemon (uid 1)", "daemon", "below RootlessGPUSpawner.min_uid"),
]


@pytest.fixture(scope="module")
def hostile_hub(testbed, hub_factory):
    # Hub names like "rgstest-alice@evil" map to the login before '@' (a common lab mapping).
    config = base_spawner_config(testbed) + '''
    c.RootlessGPUSpawner.gpus = 2
    c.RootlessGPUSpawner.system_user = lambda name: name.split("@")[0]
    '''
    return hub_factory(config, [ALICE, BOB, CAROL])


def nothing_started(hub, daemons, name):
    return not hub.server(name) and all(containers_of(c, name) == [] for c in daemons.values())


def refuse_and_record(hub, daemons, reliability, case, name, options, words):
    r = hub.spawn(name, options)
    message = spawn_message(hub, name, r)
    clean = nothing_started(hub, daemons, name)
    # A fast refusal is the API's 4xx/5xx; a slow one (past the hub's slow_spawn_timeout)
    # arrives as the failed event of the progress stream. Either way: the words, nothing started.
    ok = words in message and clean
    observed = f"HTTP {r.status_code}: {message}"
    reliability.record(SECTION, case, f"clear error containing '{words}', nothing started", observed, ok)
    assert words in message, observed
    assert clean, f"{case}: something was started"
    return r


@pytest.mark.parametrize("case, name, options, words", OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
def test_bad_user_options(hostile_hub, daemons, reliability, case, name, options, words):
    r = refuse_and_record(hostile_hub, daemons, reliability, case, name, options, words)
    assert r.status_code == 400, r.text


@pytest.mark.parametrize("case, name, words", NAME_CASES, ids=[c[0] for c in NAME_CASES])
def test_bad_hub_names_and_accounts(hostile_hub, daemons, reliability, case, name, words):
    hub = hostile_hub
    created = hub.request("POST", f"/users/{quote(name, safe='')}")
    if created.status_code >= 400:
        # The hub itself refused the name: also a clear 4xx, nothing started.
        ok = nothing_started(hub, daemons, name)
        reliability.record(SECTION, case, "clear 4xx, nothing started", f"hub refused the name: HTTP {created.status_code} {created.text[:120]}", ok)
        assert ok
        return
    hub_name = created.json()["name"]
    try:
        r = refuse_and_record(hub, daemons, reliability, case, hub_name, {"gpus": 0}, words)
        assert r.status_code in (403, 500, 202), r.text
    finally:
        hub.request("DELETE", f"/users/{quote(hub_name, safe='')}")


def test_two_hub_names_for_one_account(hostile_hub, daemons, reliability):
    hub = hostile_hub
    intruder = f"{ALICE}@evil"
    assert hub.request("POST", f"/users/{quote(intruder, safe='')}").status_code == 201
    assert hub.spawn(ALICE, {"gpus": 0}).status_code in (201, 202)
    hub.wait_ready(ALICE)
    try:
        r = refuse_and_record(
            hub, daemons, reliability, "two hub names mapped to one account while it runs",
            intruder, {"gpus": 0}, "already in use by another hub user",
        )
        assert r.status_code == 409
        assert len(containers_of(daemons[ALICE], ALICE)) == 1  # alice's server untouched
    finally:
        hub.stop_server(ALICE)
        hub.request("DELETE", f"/users/{quote(intruder, safe='')}")


@pytest.fixture
def alice_workspace_replaced(testbed):
    """Move alice's workspace aside (never delete it) and put it back afterwards."""
    home = testbed["users"][ALICE]["home"]
    ws, kept = os.path.join(home, "workspace"), os.path.join(home, "workspace.hostile-test-kept")
    moved = os.path.isdir(ws) and not os.path.islink(ws)
    if moved:
        os.rename(ws, kept)
    yield ws
    if os.path.islink(ws):
        os.unlink(ws)
    if moved:
        os.rename(kept, ws)


@pytest.mark.parametrize(
    "case, target",
    [("~/workspace is a symlink to /etc", "/etc"),
     ("~/workspace is a symlink into another student's home", "/home/rgstest-bob/workspace")],
)
def test_workspace_symlink_escape(hostile_hub, daemons, reliability, alice_workspace_replaced, testbed, case, target):
    target = target.replace("/home/rgstest-bob", testbed["users"][BOB]["home"])
    os.symlink(target, alice_workspace_replaced)
    before = os.stat(target)
    r = refuse_and_record(hostile_hub, daemons, reliability, case, ALICE, {"gpus": 0}, "outside")
    assert r.status_code == 403
    after = os.stat(target)
    assert (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode)  # nothing chowned through it


def test_socket_symlink_to_other_students_socket(hostile_hub, daemons, reliability, testbed, carol_socket):
    os.symlink(testbed["users"][ALICE]["docker_host"][len("unix://"):], carol_socket)
    # Never followed (checked with O_NOFOLLOW on every connection), whoever it points to.
    refuse_and_record(hostile_hub, daemons, reliability, "socket path is a symlink to another student's socket",
                      CAROL, {"gpus": 0}, "is a symbolic link")


def test_socket_owned_by_another_uid(hostile_hub, daemons, reliability, testbed, carol_socket):
    s = socket.socket(socket.AF_UNIX)
    s.bind(carol_socket)
    s.listen(1)
    alice = testbed["users"][ALICE]
    os.chown(carol_socket, alice["uid"], alice["gid"])
    try:
        refuse_and_record(hostile_hub, daemons, reliability, "socket owned by another uid",
                          CAROL, {"gpus": 0}, "not by rgstest-carol")
    finally:
        s.close()


def test_rootful_daemon_at_socket_path(hostile_hub, daemons, reliability, testbed, carol_socket, fake_home):
    carol = testbed["users"][CAROL]
    with hostile(fake_home, carol_socket, "rootful", as_uid=(carol["uid"], carol["gid"])):
        refuse_and_record(hostile_hub, daemons, reliability, "a rootful daemon at the socket path (stand-in server)",
                          CAROL, {"gpus": 0}, "not running in rootless mode")


def test_root_listens_behind_a_socket_given_to_the_student(hostile_hub, daemons, reliability, testbed, carol_socket,
                                                           fake_home):
    # The file is carol's, but root listens on it (a relay, or the rootful daemon moved there):
    # the kernel's SO_PEERCRED answer refuses it before a byte is sent.
    carol = testbed["users"][CAROL]
    with hostile(fake_home, carol_socket, "rootful", "--owner", f"{carol['uid']}:{carol['gid']}") as fake:
        refuse_and_record(hostile_hub, daemons, reliability, "root listens on a socket file owned by the student",
                          CAROL, {"gpus": 0}, "served by uid 0 (root)")
        assert fake.requests == []


def test_missing_socket(hostile_hub, daemons, reliability):
    refuse_and_record(hostile_hub, daemons, reliability, "no daemon running (socket missing)",
                      CAROL, {"gpus": 0}, "rootless Docker is not running for rgstest-carol")


def test_hanging_daemon(hostile_hub, daemons, reliability, testbed, carol_socket, fake_home):
    carol = testbed["users"][CAROL]
    with hostile(fake_home, carol_socket, "never-answer", as_uid=(carol["uid"], carol["gid"])):
        refuse_and_record(hostile_hub, daemons, reliability,
                          "a daemon that never answers (bounded by docker_api_timeout=30 s)",
                          CAROL, {"gpus": 0}, "does not answer")
