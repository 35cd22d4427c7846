"""Analysis: phases of each spawn from the hubs' traces, interval medians, run statistics, event-loop lag.

Part of ``python -m bench.spawn_bench`` (see bench/README.md).
"""

from __future__ import annotations

from .common import median, percentile


# ------------------------------------------------------------------ analysis


def attach_phases(records: list[dict], trace: list[dict]) -> None:
    """Per hub spawn: hub-side timestamps (from bench/hubext.py) matched by user and time."""
    by_user: dict[str, list[dict]] = {}
    for ev in trace:
        if ev.get("user"):
            by_user.setdefault(ev["user"], []).append(ev)
    for rec in records:
        if "t_ready" not in rec:
            continue
        lo, hi = rec["t0"], rec["t_ready"] + 0.5
        marks = {}
        for ev in by_user.get(rec["user"], []):
            if lo <= ev["t"] <= hi and ev["k"] not in marks:
                marks[ev["k"]] = ev["t"]
        rec["hub"] = marks


def spawn_marks(rec: dict) -> dict:
    """Absolute times of one successful spawn's milestones (None where unknown)."""
    tl = rec.get("timeline") or {}
    hub = rec.get("hub") or {}
    return {
        "request": rec["t0"],
        "hub_spawn_begin": hub.get("spawn_begin"),
        "start_returned": hub.get("wait_up_begin"),  # the spawner's start() is done
        "container_started": tl.get("started_at"),
        "first_log": tl.get("first_log_at"),
        "listening": tl.get("listening_at"),
        "hub_saw_server": hub.get("wait_up_end"),  # JupyterHub's HTTP check passed
        "proxy_added": hub.get("proxy_add_end"),
        "ready": rec.get("t_ready"),
    }


#: (title, from, to, applies to): medians of per-spawn differences
INTERVALS = [
    ("request → container process started", "request", "container_started", "all"),
    ("spawner's `start()` (hub begins the spawn → `start()` returned)", "hub_spawn_begin", "start_returned", "hub"),
    ("container started → server's first log line (interpreter, imports)", "container_started", "first_log", "all"),
    ("first log line → server running (\"is running at\")", "first_log", "listening", "all"),
    ("request → server running", "request", "listening", "all"),
    ("server running → hub's HTTP check passed (`wait_up`)", "listening", "hub_saw_server", "hub"),
    ("server running → `/api/status` 200 (bench polls once the log says running)", "listening", "ready", "raw"),
    ("hub's check passed → proxy route added", "hub_saw_server", "proxy_added", "hub"),
    ("proxy route added → client sees ready", "proxy_added", "ready", "hub"),
    ("server running → ready (all of the above after \"running\")", "listening", "ready", "all"),
    ("**total: request → ready**", "request", "ready", "all"),
]


def interval_medians(runs: list[dict], mode: str) -> dict:
    out = {}
    for title, a, b, applies in INTERVALS:
        if applies not in ("all", "raw" if mode.startswith("raw") else "hub"):
            continue
        diffs = []
        for run in runs:
            for rec in run["records"]:
                if "t_ready" not in rec:
                    continue
                m = spawn_marks(rec)
                if m.get(a) is not None and m.get(b) is not None:
                    diffs.append(m[b] - m[a])
        out[title] = {"median": median(diffs), "min": min(diffs) if diffs else None,
                      "max": max(diffs) if diffs else None, "n": len(diffs)}
    return out


def run_stats(runs: list[dict]) -> dict:
    """runs: [{"records": [...], "t_go": ...}] for one (mode, students)."""
    per_student, makespans, failures = [], [], 0
    for run in runs:
        ok = [r for r in run["records"] if "t_ready" in r]
        failures += len(run["records"]) - len(ok)
        times = [r["t_ready"] - r["t_go"] for r in ok]
        per_student += times
        if ok and len(ok) == len(run["records"]):
            makespans.append(max(times))
    return {
        "n": len(per_student),
        "failures": failures,
        "min": min(per_student) if per_student else None,
        "median": median(per_student),
        "max": max(per_student) if per_student else None,
        "makespan_median": median(makespans),
        "makespan_min": min(makespans) if makespans else None,
        "makespan_max": max(makespans) if makespans else None,
        "makespans": makespans,
        "times": per_student,
    }


def lag_stats(trace: list[dict], windows: list[tuple[float, float]]) -> dict:
    samples = [ev["lag"] for ev in trace if ev.get("k") == "lag" and any(a <= ev["t"] <= b for a, b in windows)]
    return {
        "samples": len(samples),
        "max": max(samples) if samples else None,
        "p99": percentile(samples, 99),
        "median": median(samples),
    }


def run_window(run: dict) -> tuple[float, float]:
    ends = [r.get("t_ready") or r.get("t_post_done") or r["t0"] for r in run["records"]]
    return run["t_go"], max(ends)
