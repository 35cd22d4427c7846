"""After a hub restart, running servers are found again on their daemons, not recreated."""

from __future__ import annotations

from .conftest import containers_of
from .test_spawn import ALICE, BOB


def test_hub_restart_reattaches_running_servers(hub, daemons):
    options = {ALICE: {"gpus": 0}, BOB: {"gpus": [2]}}
    for name, opts in options.items():
        r = hub.spawn(name, opts)
        assert r.status_code in (201, 202), r.text
    for name in options:
        hub.wait_ready(name)
    before = {name: [c.id for c in containers_of(daemons[name], name)] for name in options}
    assert all(len(ids) == 1 for ids in before.values()), before

    hub.restart()

    for name in options:
        server = hub.wait_ready(name, timeout=60)
        assert server["ready"]
        assert [c.id for c in containers_of(daemons[name], name)] == before[name]
        assert hub.user_get(name, "/api/status").status_code == 200
    assert "found existing container" not in hub.log_tail(2000)  # nothing was (re)started
    for name in options:
        hub.stop_server(name)
        assert containers_of(daemons[name], name) == []
