"""What the GPU board shows to whom: pure functions over readings, history and holders.

Privacy rule: an admin sees every holder's name; anyone else sees "in use" for another
student's GPU and only their own servers.  Every figure carries ``simulated`` when it
came from a simulated source.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from ..utilisation import History, Reading, UtilisationError, idle_verdict, lease_ends, parse_readings


@dataclass(frozen=True)
class Policy:
    threshold: float = 10.0  # percent
    window: float = 1800.0  # seconds
    lease: float = 0.0  # seconds; 0 = no maximum lease


@dataclass(frozen=True)
class Viewer:
    name: str
    admin: bool = False
    kind: str = "user"  # or "service" (the idle culler)


def parse_time(text) -> float | None:
    """ISO 8601 from the hub (``...Z`` or an offset) -> epoch seconds; None stays None."""
    if not text:
        return None
    value = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def server_row(holder: dict, history: History, policy: Policy, now: float) -> dict:
    """One GPU-holding server: its idle verdict, its lease, and whether the culler should stop it."""
    started = parse_time(holder.get("started"))
    held_since = started if started is not None else now
    verdict = idle_verdict(history, holder["gpus"], held_since, now, policy.threshold, policy.window)
    ends = lease_ends(started, policy.lease)
    expired = ends is not None and now >= ends
    reason = "lease ended" if expired else verdict.reason
    return {
        "user": holder["user"], "server": holder["server"], "gpus": list(holder["gpus"]),
        "started": holder.get("started"), "idle": verdict.idle, "reason": reason,
        "lease_ends": iso(ends), "cull": verdict.idle or expired,
    }


def job_figures(holders: list[dict]) -> dict[str, tuple[float, Reading, bool]]:
    """Figures measured on Slurm jobs' nodes, as the GPU-holders API lists them per holder:
    ``{"NODE:INDEX": (when, Reading, simulated)}`` (a malformed holder row is left out)."""
    out = {}
    for holder in holders:
        figures = holder.get("utilisation")
        if not isinstance(figures, dict) or not figures:
            continue
        try:
            readings = parse_readings(figures, f"utilisation of {holder.get('user')}")
        except UtilisationError:
            continue
        for gpu, reading in readings.items():
            item = figures[gpu]
            at = item.get("at")
            if gpu in holder.get("gpus", ()) and isinstance(at, (int, float)) and not isinstance(at, bool):
                out[gpu] = (float(at), reading, item.get("simulated") is not False)
    return out


def may_see_user(viewer: Viewer, user: str) -> bool:
    """A student asks about themselves; admins and the culler (a service) about anyone."""
    return viewer.admin or viewer.kind == "service" or (viewer.kind == "user" and viewer.name == user)


def rows_for(viewer: Viewer, holders: list[dict], history: History, policy: Policy, now: float) -> list[dict]:
    return [server_row(h, history, policy, now) for h in holders if may_see_user(viewer, h["user"])]


def gpu_card(gpu: str, reading: Reading | None, holder: dict | None, viewer: Viewer,
             history: History, now: float, span: float) -> dict:
    card = {
        "id": gpu, "name": reading.name if reading else "", "node": reading.node if reading else "",
        "memory_used": reading.memory_used if reading else None,
        "memory_total": reading.memory_total if reading else None,
        "utilisation": reading.utilisation if reading else None,
        "history": [[round(t - now, 1), u] for t, u in history.series(gpu, since=now - span)],
        "state": "free", "holder": None, "server": None, "mine": False,
    }
    if holder is None:
        return card
    mine = viewer.kind == "user" and holder["user"] == viewer.name
    card["state"] = "in use"
    card["mine"] = mine
    if mine or viewer.admin:
        card["holder"], card["server"] = holder["user"], holder["server"]
    return card


def board_model(viewer: Viewer, readings: dict[str, Reading], inventory: list[str], holders: list[dict],
                history: History, policy: Policy, now: float, span: float = 3600.0) -> dict:
    by_gpu = {g: h for h in holders for g in h["gpus"]}
    gpus = list(inventory) + sorted((set(readings) | set(by_gpu)) - set(inventory), key=_gpu_order)
    return {
        "viewer": {"name": viewer.name, "admin": viewer.admin},
        "policy": {"threshold": policy.threshold, "window": policy.window, "lease": policy.lease},
        "gpus": [gpu_card(g, readings.get(g), by_gpu.get(g), viewer, history, now, span) for g in gpus],
        "servers": rows_for(viewer, holders, history, policy, now),
        "now": iso(now),
    }


def _gpu_order(gpu: str):
    return (0, int(gpu), "") if gpu.isdigit() else (1, 0, gpu)
