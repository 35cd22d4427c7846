"""Daemons that must not be used, or cannot be: each refused clearly, nothing started.

The rootful and the hanging daemons are the hostile daemon (tests/integration/hostile_daemon.py,
behaviours "rootful" and "never-answer") run as carol on her socket path: the real rootful dockerd
must never run on the testbed.
"""

from __future__ import annotations

import os
import socket
import threading

from .conftest import containers_of
from .fakes import hostile
from .test_spawn import ALICE, CAROL, spawn_message


def _carol(testbed):
    u = testbed["users"][CAROL]
    return u["uid"], u["gid"]


def test_rootful_daemon_is_refused(hub, testbed, carol_socket, fake_home):
    with hostile(fake_home, carol_socket, "rootful", as_uid=_carol(testbed)) as fake:
        r = hub.spawn(CAROL, {"gpus": 0})
        message = spawn_message(hub, CAROL, r)
        assert "not running in rootless mode" in message and CAROL in message, message
        assert "allow_rootful_daemon" in message
        # It asked who the daemon is, and created nothing.
        assert ("GET", "/info") in [(r["method"], r["path"]) for r in fake.requests]
        assert not [r for r in fake.requests if r["method"] in ("POST", "DELETE")]
    assert not hub.server(CAROL)


def test_socket_nobody_listens_on(hub, testbed, carol_socket):
    # A stale socket file left by a daemon that died.
    s = socket.socket(socket.AF_UNIX)
    s.bind(carol_socket)
    os.chown(carol_socket, *_carol(testbed))
    s.close()
    r = hub.spawn(CAROL, {"gpus": 0})
    message = spawn_message(hub, CAROL, r)
    assert f"rootless Docker for {CAROL} does not answer" in message, message
    assert "start-daemon" in message


def test_hanging_daemon_stalls_nobody_else_and_times_out(hub, testbed, daemons, carol_socket, fake_home):
    with hostile(fake_home, carol_socket, "never-answer", as_uid=_carol(testbed)) as fake:
        result = {}
        carol = threading.Thread(target=lambda: result.update(r=hub.spawn(CAROL, {"gpus": 0})))
        carol.start()
        try:
            # Alice's spawn goes ahead while carol's daemon holds its first call.
            r = hub.spawn(ALICE, {"gpus": 0})
            assert r.status_code in (201, 202), r.text
            hub.wait_ready(ALICE)
            assert fake.requests, "carol's spawn never reached her daemon"
            pending = hub.server(CAROL)
            assert pending and not pending.get("ready"), pending
            assert hub.user_get(ALICE, "/api/status").status_code == 200
        finally:
            carol.join(150)
        # The bounded timeout (docker_api_timeout=30 in the test config) ends it with words.
        message = spawn_message(hub, CAROL, result["r"])
        assert f"rootless Docker for {CAROL} does not answer" in message, message
        assert not hub.server(CAROL)
    hub.stop_server(ALICE)
    assert containers_of(daemons[ALICE], ALICE) == []
