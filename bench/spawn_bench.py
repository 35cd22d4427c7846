"""Spawn benchmark: raw ``docker run`` vs stock DockerSpawner vs RootlessGPUSpawner.

Run as root from the repository root, with the project's virtualenv::

    python -m bench.spawn_bench [--students 16] [--repeats 3] [--out docs/performance.md] [--quick]

In one run, on this machine's rootless testbed, it measures time to ready for

* ``raw``: ``docker run -d -p 127.0.0.1::8888 IMAGE jupyter lab ...`` through docker-py on
  a student's own rootless daemon, until ``GET /api/status`` answers 200;
* ``stock``: stock DockerSpawner through a real JupyterHub + configurable-http-proxy, every
  student on ONE shared rootless daemon (the only way it can work), from
  ``POST /users/NAME/server`` to the hub's "ready";
* ``ours``: RootlessGPUSpawner through a real JupyterHub, each student on their own daemon
  (gpus=0, image present), same timing definition;
* ``rawsu``: like ``raw`` but the image's own ``jupyterhub-singleuser`` against a stub hub
  API, so that ours can also be compared with the very server it starts;

for 1 student (repeated) and for N students at once, plus the hub's event-loop lag, the
phases of each spawn, a dead-mirror case and a class start on freshly started daemons.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from . import provision
from .analysis import attach_phases, interval_medians, lag_stats, run_stats, run_window
from .common import ABORT, BenchError, Clients, MODES, REPO_ROOT, _T0, log, remove_all_containers
from .dead_mirror import dead_mirror_case, summarize_dead_mirror
from .hubs import BenchHub, ours_config, run_hub, stock_config
from .machine import LoadSampler, OURS_EXTRA_CONFIG, count_port_retries, daemon_log_offsets, machine_facts, restart_daemons, wait_for_idle
from .raw import StubHubAPI, run_raw
from .report import build_report, ratio, write_report
from .snapshot import check_code_snapshot, snapshot_code


# ------------------------------------------------------------------ main


def summarize(res: dict, traces: dict) -> None:
    """Attach the hubs' traces (phases, event-loop lag), then derive the statistics."""
    runs = res["runs"]
    res["lag"] = {}
    for key, rs in runs.items():
        mode = key.split("/")[0]
        if mode in traces:
            for run in rs:
                attach_phases(run["records"], traces[mode])
            res["lag"][key] = lag_stats(traces[mode], [run_window(r) for r in rs])
    derive(res)


def derive(res: dict) -> None:
    """Statistics, intervals and ratios from the runs (also used by --report-from)."""
    runs = res["runs"]
    res["stats"] = {key: run_stats(rs) for key, rs in runs.items()}
    res["intervals"] = {key: interval_medians(rs, key.split("/")[0]) for key, rs in runs.items()}
    st = res["stats"]
    n = res["students"]

    def get(key, field):
        return (st.get(key) or {}).get(field)

    res["ratios"] = {
        "single_ours_raw": ratio(get("ours/1", "median"), get("raw/1", "median")),
        "single_stock_raw": ratio(get("stock/1", "median"), get("raw/1", "median")),
        "makespan_ours_raw": ratio(get(f"ours/{n}", "makespan_median"), get(f"raw/{n}", "makespan_median")),
        "makespan_stock_raw": ratio(get(f"stock/{n}", "makespan_median"), get(f"raw/{n}", "makespan_median")),
        "single_ours_rawsu": ratio(get("ours/1", "median"), get("rawsu/1", "median")),
        "makespan_ours_rawsu": ratio(get(f"ours/{n}", "makespan_median"), get(f"rawsu/{n}", "makespan_median")),
        "median_ours_stock": ratio(get(f"ours/{n}", "median"), get(f"stock/{n}", "median")),
    }
    summarize_dead_mirror(res.get("dead_mirror"))


def report_from(path: Path, out: str | None) -> int:
    """Render the report again from a run's results.json (no measuring)."""
    res = json.loads(path.read_text())
    derive(res)
    report = build_report(res)
    print(report)
    if out:
        write_report(Path(out), report)
        log(f"wrote {out} from {path}")
    return 0


def parse_args(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.spawn_bench",
                                 description="Spawn benchmark: raw docker run vs stock DockerSpawner vs RootlessGPUSpawner.")
    ap.add_argument("--students", type=int, default=16, help="students starting at once (default 16)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each N-at-once case and of the dead-mirror trials (default 3)")
    ap.add_argument("--single-repeats", type=int,
                    help="runs of each 1-student case (default 3 × --repeats: single spawns are cheap and the "
                         "hub's readiness polling is jittery)")
    ap.add_argument("--out", help="markdown file to write the results into (e.g. docs/performance.md); "
                                  "text outside the generated block is kept")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 4 students, 1 repeat, 2 single repeats")
    ap.add_argument("--workdir", help="where hub logs, traces and results.json go (default: a new temp dir)")
    ap.add_argument("--skip-dead-mirror", action="store_true")
    ap.add_argument("--skip-fresh-daemons", action="store_true",
                    help="skip the last case: N at once right after every daemon was restarted")
    ap.add_argument("--keep-daemons", action="store_true", help="leave the bench daemons running afterwards")
    ap.add_argument("--modes", default=",".join(MODES),
                    help=f"comma-separated subset of {','.join(MODES)} (default: all; ratios need raw, stock and ours)")
    ap.add_argument("--ours-config", action="append", default=[], metavar="LINE",
                    help="an extra jupyterhub_config.py line for RootlessGPUSpawner's hubs, e.g. "
                         "'c.RootlessGPUSpawner.max_concurrent_starts = 3' (repeatable; for experiments)")
    ap.add_argument("--report-from", metavar="RESULTS_JSON",
                    help="render the report again from an earlier run's results.json (measures nothing)")
    ap.add_argument("--wait-for-idle", type=float, default=0, metavar="SECONDS",
                    help="first wait up to this long for the 1-minute load average to drop below half the cores")
    args = ap.parse_args(argv)
    if args.quick:
        args.students, args.repeats, args.single_repeats = 4, 1, 2
    if args.single_repeats is None:
        args.single_repeats = 3 * args.repeats
    args.mode_list = tuple(m for m in MODES if m in args.modes.split(","))
    if not args.mode_list or set(args.modes.split(",")) - set(MODES):
        ap.error(f"--modes takes a comma-separated subset of {','.join(MODES)}")
    if not 1 <= args.students <= 64 or not 1 <= args.repeats <= 20 or not 1 <= args.single_repeats <= 60:
        ap.error("--students must be 1..64, --repeats 1..20, --single-repeats 1..60")
    return args


class SpawnBench:
    """One run: provision, start the hubs, warm up, measure the plan, clean up, report."""

    def __init__(self, args: argparse.Namespace, shown: list[str]):
        self.args, self.modes, self.n = args, args.mode_list, args.students
        self.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="rgs-spawn-bench-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.names = provision.user_names(self.n)
        self.users: dict = {}
        self.clients = self.stub = self.loads = self.log_offsets = None
        self.hubs: dict[str, BenchHub] = {}
        self.extra_hubs: list[BenchHub] = []  # the dead-mirror case's hubs (it stops them; we make sure)
        self.traces: dict = {}
        self.res: dict = {
            "ours_extra_config": list(args.ours_config),
            "command": ("python -m bench.spawn_bench " + " ".join(shlex.quote(a) for a in shown)).strip(),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "students": self.n, "repeats": args.repeats, "single_repeats": args.single_repeats, "runs": {},
        }

    def set_up(self) -> None:
        if self.args.wait_for_idle > 0:
            wait_for_idle(self.args.wait_for_idle)
        self.loads = LoadSampler()
        code_dir = snapshot_code(self.workdir)
        # Hubs are child processes: the snapshot must come first on their sys.path before
        # JupyterHub imports its spawner entry points (it does so before reading the config).
        os.environ["PYTHONPATH"] = os.pathsep.join([str(code_dir), str(REPO_ROOT)])
        self.users = provision.provision(self.names)
        self.res["facts"] = machine_facts(self.users)
        self.log_offsets = daemon_log_offsets(self.users)
        self.clients = Clients(self.users)
        left = remove_all_containers(self.clients, self.names)
        if left:
            log(f"removed {left} leftover container(s) from the bench daemons")
        shared_uid = self.users[self.names[0]].pw_uid  # stock DockerSpawner: everybody on this one daemon
        configs = {"stock": lambda p: stock_config(p, shared_uid), "ours": ours_config}
        for mode in ("stock", "ours"):
            if mode in self.modes:
                self.hubs[mode] = BenchHub(mode, self.workdir, self.names, configs[mode])
                self.hubs[mode].start()
        if "ours" in self.hubs:
            check_code_snapshot(self.hubs["ours"])
        self.stub = StubHubAPI()

    def run_mode(self, mode: str, students: list[str]) -> list[dict]:
        if mode in ("raw", "rawsu"):
            return run_raw(self.clients, students, mode, self.stub.port)
        if mode == "stock":
            return run_hub(self.hubs["stock"], self.clients, students, lambda u: self.names[0])
        return run_hub(self.hubs["ours"], self.clients, students, lambda u: u)

    def warm_up(self) -> None:
        log(f"warm-up (untimed): {', '.join(self.modes)}")
        for mode in ("raw", "rawsu"):
            if mode in self.modes:
                self.run_mode(mode, self.names)
        for mode in ("stock", "ours"):
            if mode not in self.modes:
                continue
            failed = [r["error"] for r in self.run_mode(mode, self.names[:1]) if "error" in r]
            if failed:
                raise BenchError(f"the warm-up spawn through the '{mode}' hub failed: {failed[0]} "
                                 f"(hub log: {self.workdir / ('hub-' + mode) / 'jupyterhub.log'})")

    def measure_once(self, mode: str, count: int, rep: int, total: int) -> None:
        records = self.run_mode(mode, self.names[:count])
        key = f"{mode}/{count}"
        run = {"repeat": rep, "t_go": records[0]["t_go"] if records else time.time(), "records": records}
        self.res["runs"].setdefault(key, []).append(run)
        ok = [r["t_ready"] - r["t_go"] for r in records if "t_ready" in r]
        errors = [r["error"] for r in records if "error" in r]
        log(f"{key:9s} run {rep + 1}/{total}: " + (
            f"median {statistics.median(ok):.2f}s, last {max(ok):.2f}s" if ok else "no server ready")
            + (f"; {len(errors)} failed: {errors[0]}" if errors else ""))
        time.sleep(1.0)  # let the daemons settle after removing containers

    def measure(self) -> None:
        plan = [(1, self.args.single_repeats)] + ([(self.n, self.args.repeats)] if self.n > 1 else [])
        for count, total in plan:
            for rep in range(total):
                k = rep % len(self.modes)
                for mode in self.modes[k:] + self.modes[:k]:  # nobody always goes first
                    self.measure_once(mode, count, rep, total)
        if not self.args.skip_dead_mirror and "ours" in self.modes:
            self.res["dead_mirror"] = dead_mirror_case(self.workdir, self.clients, self.names[0],
                                                       self.args.repeats, self.extra_hubs)
        if not self.args.skip_fresh_daemons and self.n > 1:
            self.measure_fresh_daemons()

    def measure_fresh_daemons(self) -> None:
        self.res["fresh"] = {}
        for mode in ("raw", "ours"):
            if mode not in self.modes:
                continue
            self.clients = restart_daemons(self.users, self.clients)
            records = self.run_mode(mode, self.names)
            self.res["fresh"][mode] = records
            ok = [r["t_ready"] - r["t_go"] for r in records if "t_ready" in r]
            log(f"{mode}/{self.n} on freshly started daemons: {len(ok)} ready"
                + (f" (last after {max(ok):.2f}s)" if ok else "") + f", {len(records) - len(ok)} failed")

    def clean_up(self) -> None:
        """Bounded, and every step runs whatever the one before it did."""
        for bh in [*self.hubs.values(), *self.extra_hubs]:
            try:
                bh.stop()
            except Exception as e:
                log(f"hub '{bh.label}' stop: {e}")
            self.traces[bh.label] = bh.read_trace()
        if self.clients is not None:
            try:
                remove_all_containers(self.clients, list(self.users))
            except Exception as e:
                log(f"container cleanup: {e}")
            self.clients.close()
        if self.stub is not None:
            self.stub.close()
        if self.users and self.log_offsets is not None:
            self.res["port_retries"] = count_port_retries(self.users, self.log_offsets)
        if self.users and not self.args.keep_daemons:
            errors = provision.stop_daemons(self.users.values())
            log("bench daemons stopped" + (f" (errors: {errors})" if errors else ""))

    def finish(self, status: int) -> int:
        res = self.res
        res["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
        if self.loads is not None:
            self.loads.stop()
            res["load_samples"] = self.loads.samples
        res["duration_min"] = (time.monotonic() - _T0) / 60
        if "facts" not in res or not res["runs"]:
            return status or 1
        summarize(res, {k: v for k, v in self.traces.items() if k in ("stock", "ours")})
        (self.workdir / "results.json").write_text(json.dumps(res, indent=1, default=str))
        report = build_report(res)
        print()
        print(report)
        if self.args.out and status == 0:
            write_report(Path(self.args.out), report)
            log(f"wrote {self.args.out}")
        elif self.args.out:
            log(f"not writing {self.args.out}: the run did not complete")
        log(f"raw data, hub logs and traces in {self.workdir}")
        return status


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report_from:
        return report_from(Path(args.report_from), args.out)
    OURS_EXTRA_CONFIG[:] = args.ours_config
    if os.geteuid() != 0:
        print("bench.spawn_bench must run as root (it creates users and starts their daemons)", file=sys.stderr)
        return 2
    if Path.cwd().resolve() != REPO_ROOT:
        print(f"run it from the repository root ({REPO_ROOT})", file=sys.stderr)
        return 2
    cleaning = threading.Event()

    def on_signal(signum, frame):
        ABORT.set()
        if not cleaning.is_set():  # cleanup itself is bounded and must run to its end
            raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    bench = SpawnBench(args, argv if argv is not None else sys.argv[1:])
    log(f"workdir {bench.workdir}")
    status = 0
    try:
        bench.set_up()
        bench.warm_up()
        bench.measure()
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); cleaning up")
        status = 130
    except Exception:
        log("FAILED:\n" + traceback.format_exc())
        status = 1
    finally:
        cleaning.set()
        bench.clean_up()
    return bench.finish(status)

if __name__ == "__main__":
    sys.exit(main())
