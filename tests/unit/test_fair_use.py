"""Fair use of GPUs, the pure parts: utilisation source, idle verdict, lease, board view, culler decision."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest

from rootless_gpu_spawner import culling, holders
from rootless_gpu_spawner.board.page import render_page
from rootless_gpu_spawner.board.view import Policy, Viewer, board_model, iso, rows_for
from rootless_gpu_spawner.utilisation import (
    FileSource, History, NVMLSource, Reading, UtilisationError, idle_verdict, lease_ends, source_from_env,
)


def readings(**utils):
    return {g.lstrip("g"): Reading(g.lstrip("g"), u) for g, u in utils.items()}


def history_of(points, gpu="0"):
    h = History(span=3600)
    for t, u in points:
        h.add(t, {gpu: Reading(gpu, u)})
    return h


# ---- the file source ------------------------------------------------------------------

def test_file_source_reads_and_is_simulated(tmp_path):
    path = tmp_path / "u.json"
    path.write_text(json.dumps({"simulated": True, "gpus": {"0": {"utilisation": 0, "memory_used": 1, "memory_total": 2,
                                                                  "name": "sim", "node": "gpu1"}}}))
    source = FileSource(str(path))
    got = source.read()
    assert got["0"] == Reading("0", 0.0, 1, 2, "sim", "gpu1") and source.simulated


@pytest.mark.parametrize("content, words", [
    ("not json", "not JSON"),
    ("[]", "expected an object"),
    ('{"gpus": []}', "keyed by GPU id"),
    ('{"gpus": {"0": 5}}', "must be an object"),
    ('{"gpus": {"0": {"utilisation": 101}}}', "between 0 and 100"),
    ('{"gpus": {"0": {"utilisation": true}}}', "between 0 and 100"),
])
def test_file_source_refuses_malformed(tmp_path, content, words):
    path = tmp_path / "u.json"
    path.write_text(content)
    with pytest.raises(UtilisationError, match=words):
        FileSource(str(path)).read()


def test_file_source_missing_file_is_a_typed_error(tmp_path):
    with pytest.raises(UtilisationError, match="cannot read"):
        FileSource(str(tmp_path / "absent.json")).read()


def test_source_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("RGS_GPU_UTILISATION_FILE", str(tmp_path / "x.json"))
    assert isinstance(source_from_env(), FileSource)
    monkeypatch.delenv("RGS_GPU_UTILISATION_FILE")
    assert isinstance(source_from_env(), NVMLSource)


def test_nvml_without_a_driver_is_a_typed_error():
    # This testbed has no NVIDIA driver: NVML must fail with a UtilisationError, not crash.
    try:
        NVMLSource().read()
    except UtilisationError as e:
        assert "NVML" in str(e)


# ---- the idle verdict and the lease --------------------------------------------------------

def test_idle_after_the_window_under_threshold():
    h = history_of([(t, 2) for t in range(100, 111)])
    v = idle_verdict(h, ["0"], held_since=100, now=110, threshold=10, window=5)
    assert v.idle, v.reason


def test_not_idle_when_busy_in_the_window():
    h = history_of([(t, 2) for t in range(100, 108)] + [(108, 50), (109, 2), (110, 2)])
    assert not idle_verdict(h, ["0"], 100, 110, 10, 5).idle


def test_busy_before_the_window_does_not_matter():
    h = history_of([(100, 90)] + [(t, 0) for t in range(101, 111)])
    assert idle_verdict(h, ["0"], 100, 110, 10, 5).idle


def test_just_started_is_never_idle():
    h = history_of([(t, 0) for t in range(100, 111)])
    v = idle_verdict(h, ["0"], held_since=107, now=110, threshold=10, window=5)
    assert not v.idle and "less than" in v.reason


def test_no_figures_is_not_idle():
    v = idle_verdict(History(), ["0"], 0, 100, 10, 5)
    assert not v.idle and "no utilisation figures" in v.reason


def test_every_gpu_of_the_server_must_be_idle():
    h = History()
    for t in range(100, 111):
        h.add(t, readings(g0=0, g1=40))
    assert not idle_verdict(h, ["0", "1"], 100, 110, 10, 5).idle
    assert idle_verdict(h, ["0"], 100, 110, 10, 5).idle


def test_history_forgets_beyond_its_span():
    h = History(span=10)
    for t in range(0, 30):
        h.add(t, readings(g0=1))
    assert [t for t, _ in h.series("0")] == list(range(19, 30))


def test_lease():
    assert lease_ends(None, 3600) is None and lease_ends(100, 0) is None
    assert lease_ends(100, 3600) == 3700


# ---- the board view: who sees what -----------------------------------------------------------

HOLDERS = [
    {"user": "alice", "server": "", "gpus": ["0"], "started": iso(1000)},
    {"user": "bob", "server": "big", "gpus": ["1"], "started": iso(1000)},
]


def model_for(viewer, lease=0):
    h = History()
    for t in range(1000, 1101):
        h.add(t, readings(g0=0, g1=80, g2=0))
    return board_model(viewer, readings(g0=0, g1=80, g2=0), ["0", "1", "2"], HOLDERS, h,
                       Policy(10, 30, lease), now=1100)


def test_admin_sees_every_holder():
    m = model_for(Viewer("teacher", admin=True))
    assert [(g["id"], g["state"], g["holder"]) for g in m["gpus"]] == [
        ("0", "in use", "alice"), ("1", "in use", "bob"), ("2", "free", None)]
    assert {(s["user"], s["idle"], s["cull"]) for s in m["servers"]} == {("alice", True, True), ("bob", False, False)}


def test_student_sees_in_use_and_only_their_own_servers():
    m = model_for(Viewer("alice"))
    text = json.dumps(m)
    assert "bob" not in text and "big" not in text
    gpu1 = m["gpus"][1]
    assert gpu1["state"] == "in use" and gpu1["holder"] is None and gpu1["server"] is None
    assert m["gpus"][0]["mine"] and m["gpus"][0]["holder"] == "alice"
    assert [s["user"] for s in m["servers"]] == ["alice"]


def test_lease_end_is_announced_and_culls_a_busy_server():
    m = model_for(Viewer("bob"), lease=60)
    (row,) = m["servers"]
    assert row["lease_ends"] == iso(1060) and row["cull"] and row["reason"] == "lease ended"
    m = model_for(Viewer("bob"), lease=3600)
    assert m["servers"][0]["lease_ends"] == iso(4600) and not m["servers"][0]["cull"]


def test_the_culler_service_may_ask_about_anyone_a_student_only_about_themselves():
    h = History()
    assert len(rows_for(Viewer("idle-culler", kind="service"), HOLDERS, h, Policy(), 1100)) == 2
    assert [r["user"] for r in rows_for(Viewer("bob"), HOLDERS, h, Policy(), 1100)] == ["bob"]


def test_page_escapes_the_viewer_name():
    page = render_page(hub="/hub/", api="/services/gpu-board/api/board", name="<b>x</b>", role="student",
                       refresh_ms=1000, source="the file /x")
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page and "@@" not in page


# ---- the culler's decision ------------------------------------------------------------------

def test_decide():
    assert culling.decide({"gpus": ["0"], "cull": True}, 0, 600)  # idle GPUs, fresh browser activity
    assert not culling.decide({"gpus": ["0"], "cull": False}, 10_000, 600)  # busy GPUs, no activity
    assert culling.decide(None, 601, 600) and not culling.decide(None, 10, 600)  # no GPUs: activity


def test_arbiter_keeps_everything_when_the_board_is_down():
    arbiter = culling.gpu_aware_arbiter("http://127.0.0.1:9/services/gpu-board/", token="t")
    server = {"full_name": "alice/", "name": ""}
    assert asyncio.run(arbiter(inactive=timedelta(days=3), inactive_limit=60, server=server)) is False


def test_split_full_name():
    assert culling.split_full_name({"full_name": "alice/"}) == ("alice", "")
    assert culling.split_full_name({"full_name": "alice/train"}) == ("alice", "train")


def test_roles_are_least_privilege():
    by_name = {r["name"]: r for r in culling.roles()}
    assert by_name["gpu-board"]["scopes"] == [holders.SCOPE]
    assert "admin:server_state" not in json.dumps(by_name) and "admin:users" not in json.dumps(by_name)
    assert set(by_name["idle-culler"]["scopes"]) == {
        "list:users", "read:users:activity", "read:servers", "delete:servers", "access:services!service=gpu-board"}


def test_holders_model():
    rows = holders.holders_model({("b", ""): ["1"], ("a", "x"): ["0"], ("c", ""): []}, lambda u, s: None)
    assert [(r["user"], r["server"], r["gpus"]) for r in rows] == [("a", "x", ["0"]), ("b", "", ["1"])]


def test_kernel_culling_args_and_announcement():
    assert "--MappingKernelManager.cull_idle_timeout=600" in culling.kernel_culling_args(600)
    text = culling.announcement(1800, 10, 86400)
    assert "30 min" in text and "24 h" in text and "/services/gpu-board/" in text
