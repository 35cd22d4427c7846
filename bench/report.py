"""The report: docs/performance.md's generated part from a run's results.

Part of ``python -m bench.spawn_bench`` (see bench/README.md).
"""

from __future__ import annotations

from pathlib import Path
from .analysis import INTERVALS
from .common import IMAGE, MIRROR_IMAGE, MODES, MODE_TITLES, REGISTRY_FROM_DAEMON, fmt, median
from .machine import PORT_RETRY_MARK


# ------------------------------------------------------------------ report


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def verdict(value, target):
    if value is None:
        return "–"
    return "met" if value <= target else "**missed**"


BOOT = "container started → server's first log line (interpreter, imports)"
SERVE = "first log line → server running (\"is running at\")"
TOTAL = "**total: request → ready**"


def _intro(res: dict) -> list[str]:
    lines: list[str] = []
    add = lines.append
    add(f"Produced by `{res['command']}` (as root, from the repository root, with the project's "
        f"virtualenv) on {res['date']}; the whole run took {res['duration_min']:.1f} min.")
    add("")
    return lines


def _machine(res: dict) -> list[str]:
    f = res["facts"]
    n = res["students"]
    lines: list[str] = []
    add = lines.append
    add("### Machine")
    add("")
    add(f"- {f.get('nproc')} CPU cores ({f.get('cpu', '?')}), {f.get('mem_gib', '?')} GiB memory, "
        f"{f.get('os', '?')}, kernel {f.get('kernel')}")
    add(f"- Docker {f.get('docker_server')} (API {f.get('docker_api')}), rootless: "
        f"{'yes' if f.get('rootless') else 'NO'}, storage driver {f.get('storage_driver')}, "
        f"cgroup driver {f.get('cgroup_driver')}; one rootless daemon per bench user "
        f"(`rgsbench-01`…`rgsbench-{n:02d}`)")
    add(f"- JupyterHub {f.get('jupyterhub')}, DockerSpawner {f.get('dockerspawner')}, docker-py "
        f"{f.get('docker_py')}, configurable-http-proxy {f.get('chp', '?')}, Python {f.get('python')}")
    add(f"- RootlessGPUSpawner measured at {f.get('spawner_code', '?')}"
        + (f", with extra config `{'; '.join(res['ours_extra_config'])}`" if res.get("ours_extra_config") else
           ", default settings except `gpus = 0` and local mirrors"))
    add(f"- image `{IMAGE}` ({f.get('image_size_mb', '?')} MB, JupyterLab, built offline); load average "
        f"at start {' '.join(f.get('loadavg_start', []))}, at end {' '.join(res.get('loadavg_end', []))}; "
        f"1-minute load during the run: median {median(res.get('load_samples') or [0]):.2f}, "
        f"max {max(res.get('load_samples') or [0]):.2f} (the bench's own work included; other work on "
        "the machine, e.g. a test suite, shows up here too)")
    add("")
    return lines


def _time_to_ready(res: dict) -> list[str]:
    n = res["students"]
    st = res["stats"]
    lines: list[str] = []
    add = lines.append
    add("### Time to ready, per student")
    add("")
    add("Seconds from the request (raw: `docker create`; hubs: `POST /users/NAME/server`) to ready "
        "(raw: `GET /api/status` answers 200 on the published port; hubs: the hub's *ready*, i.e. a "
        "201 answer or the ready event of `/users/NAME/server/progress`). With N at once, every "
        "student's clock starts at the same instant and the makespan is when the last one was ready. "
        "Min/median/max pool every student of every run. One untimed warm-up round comes first.")
    add("")
    add("| mode | at once | daemons | runs | min | median | max | makespan: median (range) | failed |")
    add("|---|---:|---|---:|---:|---:|---:|---|---:|")
    for count in sorted({1, n}):
        for mode in MODES:
            key = f"{mode}/{count}"
            if key not in st:
                continue
            s = st[key]
            daemons = "1 shared" if mode == "stock" and count > 1 else ("own" if count > 1 else "1")
            span = (f"{fmt(s['makespan_median'])} ({fmt(s['makespan_min'])}–{fmt(s['makespan_max'])})"
                    if count > 1 else "–")
            add(f"| {MODE_TITLES[mode]} | {count} | {daemons} | {len(res['runs'].get(key, []))} | "
                f"{fmt(s['min'])} | {fmt(s['median'])} | {fmt(s['max'])} | {span} | {s['failures']} |")
    add("")
    return lines


def _ratios(res: dict) -> list[str]:
    n = res["students"]
    lines: list[str] = []
    add = lines.append
    rt = res["ratios"]
    lag = res["lag"]
    lo = lag.get(f"ours/{n}", {})
    dm = res.get("dead_mirror") or {}
    cost = dm.get("cost") or {}
    add("### Ratios and targets (issue 7)")
    add("")
    add("| measure | value | target | |")
    add("|---|---:|---:|---|")
    add(f"| 1 student, median: ours / raw | {fmt(rt['single_ours_raw'], 'x')} | ≤ 1.15× | "
        f"{verdict(rt['single_ours_raw'], 1.15)} |")
    add(f"| 1 student, median: stock / raw | {fmt(rt['single_stock_raw'], 'x')} | (reference) | |")
    add(f"| 1 student, median: ours / raw `jupyterhub-singleuser` | {fmt(rt['single_ours_rawsu'], 'x')} | (same server on both sides) | |")
    if n > 1:
        add(f"| {n} at once, makespan: ours / raw | {fmt(rt['makespan_ours_raw'], 'x')} | ≤ 1.15× | "
            f"{verdict(rt['makespan_ours_raw'], 1.15)} |")
        add(f"| {n} at once, makespan: stock / raw | {fmt(rt['makespan_stock_raw'], 'x')} | (reference) | |")
        add(f"| {n} at once, makespan: ours / raw `jupyterhub-singleuser` | {fmt(rt['makespan_ours_rawsu'], 'x')} | (same server on both sides) | |")
        add(f"| {n} at once, median student: ours / stock | {fmt(rt['median_ours_stock'], 'x')} | ≤ 0.5× | "
            f"{verdict(rt['median_ours_stock'], 0.5)} |")
    add(f"| hub event-loop lag while {n} start at once (ours): p99 | {fmt(lo.get('p99'), 'ms')} | "
        f"< 100 ms | {verdict(lo.get('p99'), 0.1)} |")
    add(f"| … max | {fmt(lo.get('max'), 'ms')} | | |")
    for key, title in (("refused", "dead mirror (port refused)"), ("hung", "dead mirror (accepts, never answers)")):
        c = cost.get(key)
        if c:
            add(f"| {title}, first use: extra spawn time | {fmt(c['first'])} | < 2 s | {verdict(c['first'], 2.0)} |")
            add(f"| {title}, later uses: extra spawn time | {fmt(c['later'])} | ≈ 0 (skipped) | "
                f"{verdict(c['later'], 0.2)} |")
    add("")
    return lines


def _lag(res: dict) -> list[str]:
    lag = res["lag"]
    lines: list[str] = []
    add = lines.append
    add("### Hub event-loop lag")
    add("")
    add("Sampled inside each hub process by an asyncio task that sleeps 50 ms and records how late it "
        "wakes (`bench/hubext.py`, loaded from the hub's config); the window is from the start instant "
        "to the last student's ready, pooled over runs.")
    add("")
    add("| hub | students at once | samples | median | p99 | max |")
    add("|---|---:|---:|---:|---:|---:|")
    for key in sorted(lag, key=lambda k: (int(k.split('/')[1]), k)):
        l = lag[key]
        mode, count = key.split("/")
        add(f"| {mode} | {count} | {l['samples']} | {fmt(l['median'], 'ms')} | "
            f"{fmt(l['p99'], 'ms')} | {fmt(l['max'], 'ms')} |")
    add("")
    return lines


def _where_time_goes(res: dict) -> list[str]:
    n = res["students"]
    lines: list[str] = []
    add = lines.append
    add("### Where the time goes")
    add("")
    add("Medians of per-spawn intervals (for N at once: median, and max in brackets). Container times "
        "come from the daemon (`State.StartedAt`; the Docker log timestamps of the server's first line "
        "and of jupyter_server's \"is running at\"); hub times from `bench/hubext.py`, which wraps "
        "`User.spawn`, `User._wait_up` and `Proxy.add_user` inside the hub. `raw` runs `jupyter lab`; "
        "`rawsu` runs the image's `jupyterhub-singleuser` like the hubs do, against a stub hub API.")
    add("")
    keys = [f"{m}/{c}" for c in sorted({1, n}) for m in MODES if f"{m}/{c}" in res["intervals"]]
    add("| interval | " + " | ".join(f"{k.split('/')[0]} ×{k.split('/')[1]}" for k in keys) + " |")
    add("|---|" + "---:|" * len(keys))
    for title, *_ in INTERVALS:
        cells = []
        for k in keys:
            v = res["intervals"][k].get(title)
            if not v:
                cells.append("")
            elif k.endswith("/1"):
                cells.append(fmt(v["median"]))
            else:
                cells.append(f"{fmt(v['median'])} ({fmt(v['max'])})")
        add(f"| {title} | " + " | ".join(cells) + " |")
    add("")
    return lines


def _dead_mirror(res: dict) -> list[str]:
    dm = res.get("dead_mirror") or {}
    lines: list[str] = []
    add = lines.append
    if dm:
        add("### Dead mirror")
        add("")
        if dm.get("skipped"):
            add(f"Skipped: {dm['skipped']}.")
        else:
            add(f"RootlessGPUSpawner spawns `{MIRROR_IMAGE}` (a Docker Hub name, so it goes through "
                f"`mirror_prefixes`; `mirror_fallback_to_upstream = False`) for {dm['user']}; it is absent "
                f"from the daemon before every trial and the local registry `{REGISTRY_FROM_DAEMON}` holds "
                "it as `library/rgs-lab:latest`. The daemon already has the image's only layer (same "
                "tarball as the lab image), so a pull moves the manifest and the config only, and the "
                "difference to the first row is what the dead mirror costs. Each variant has its own hub, "
                "so its first trial is the dead mirror's first use after the hub started. \"start()\" is "
                "the spawner's part (hub begins the spawn → `start()` returned), free of the hub's "
                "readiness polling jitter.")
            add("")
            add("| mirror_prefixes | what is there | time to ready per trial | `start()` per trial | plain `docker pull` from the first mirror |")
            add("|---|---|---|---|---|")
            what = {"live": "the local registry only", "refused": "a loopback port where nothing listens, then the registry",
                    "hung": "a loopback port that accepts and never answers, then the registry"}
            for key, mirrors in dm.get("variants", {}).items():
                pp = dm.get("plain_pull", {}).get(key, {})
                err = (pp.get("error") or "ok").replace("|", "/")[:120]
                add(f"| `{mirrors}` | {what[key]} | "
                    + ", ".join(fmt(t) for t in dm["ready_s"].get(key, [])) + " | "
                    + ", ".join(fmt(t) for t in dm["start_s"].get(key, [])) + " | "
                    + f"{fmt(median(pp.get('seconds', [])))} ({err}) |")
        add("")
    return lines


def _reliability(res: dict) -> list[str]:
    n = res["students"]
    lines: list[str] = []
    add = lines.append
    add("### Reliability seen during the run")
    add("")
    failures = []
    for key, rs in res["runs"].items():
        for run in rs:
            failures += [f"{key}: {r['error'][:220]}" for r in run["records"] if "error" in r]
    if res.get("port_retries") is not None:
        add(f"- The bench daemons retried {res['port_retries']} host-port bindings (Docker's \"{PORT_RETRY_MARK}\" "
            "warning, up to 10 retries per container): each rootless daemon picks its own ephemeral host "
            "ports, but all of them bind on the host's loopback through rootlesskit, so concurrent starts on "
            "different daemons collide. After 10 failed retries the container does not start.")
    add(f"- Failed starts or spawns in the timed runs: {len(failures)}" + (":" if failures else "."))
    for line in failures[:10]:
        add(f"  - `{line}`")
    fresh = res.get("fresh") or {}
    if fresh:
        add(f"- **{n} at once right after every daemon was (re)started** (as after a reboot; run last, "
            "not in the tables above):")
        add("")
        add("  | mode | ready | failed | last ready after | first error |")
        add("  |---|---:|---:|---:|---|")
        for mode, records in fresh.items():
            ok = [r["t_ready"] - r["t_go"] for r in records if "t_ready" in r]
            errs = [r["error"] for r in records if "error" in r]
            first = errs[0].replace("|", "/")[-230:] if errs else ""
            add(f"  | {mode} | {len(ok)} | {len(errs)} | {fmt(max(ok)) if ok else '–'} | "
                + (f"`…{first}`" if first else "") + " |")
        add("")
        add("  Every freshly started daemon hands out ephemeral host ports from the start of the same range, "
            "and retries a port that another daemon's container holds only ten times, one port further each "
            "time: once ten or more servers of other students hold the ports it tries, a start fails with "
            "\"address already in use\".")
    add("")
    return lines

SECTIONS = (_intro, _machine, _time_to_ready, _ratios, _lag, _where_time_goes, _dead_mirror, _reliability)


def build_report(res: dict) -> str:
    """The markdown block of docs/performance.md, one section function after the other."""
    lines: list[str] = []
    for section in SECTIONS:
        lines += section(res)
    nts = notes(res)
    if nts:
        lines += ["### Notes on missed targets (from this run's numbers)", "", *nts, ""]
    return "\n".join(lines)


PART_A = "request → container process started"
PART_C = "server running → ready (all of the above after \"running\")"
PART_B = "container started → server running"


def parts(res: dict, key: str, field: str = "median") -> dict:
    """A spawn in three parts: until the container runs, its server's boot, after "running"."""
    iv = res["intervals"].get(key) or {}

    def get(title):
        return (iv.get(title) or {}).get(field)

    boot = None
    if get(BOOT) is not None and get(SERVE) is not None:
        boot = get(BOOT) + get(SERVE)
    return {PART_A: get(PART_A), PART_B: boot, PART_C: get(PART_C), "total": get(TOTAL)}


BACKOFF = ("JupyterHub's own readiness check (`User._wait_up` → `wait_for_http_server`) polls with "
           "exponential backoff and full jitter, sleeping uniform(0, 0.2 s·2^k) up to 5 s, and a port "
           "published by rootlesskit accepts and then resets until the server listens; a spawner that "
           "returns from `start()` only once its server answers (polling every 50–100 ms) makes that "
           "first check pass at once")


def _compare(res, key, ref_key, field="median") -> str:
    ours, ref = parts(res, key, field), parts(res, ref_key, field)
    cells = []
    for title in (PART_A, PART_B, PART_C):
        if ours[title] is not None and ref[title] is not None:
            cells.append(f"{title}: {fmt(ours[title])} vs {fmt(ref[title])} ({ours[title] - ref[title]:+.2f} s)")
    return "; ".join(cells)


def _causes(res, key, ref_key, field="median") -> list[str]:
    ours, ref = parts(res, key, field), parts(res, ref_key, field)
    su = parts(res, key.replace("ours", "rawsu"), field)
    found = []
    if None not in (ours[PART_B], ref[PART_B]) and ours[PART_B] - ref[PART_B] > 0.15:
        same = su[PART_B] is not None and abs(su[PART_B] - ours[PART_B]) < 0.5 * (ours[PART_B] - ref[PART_B])
        found.append(
            "the server's boot: the image's `jupyterhub-singleuser` starts slower than plain `jupyter lab`"
            + (f" (run raw, it takes {fmt(su[PART_B])} too, so this part is the single-user server's, "
               "not the spawner's)" if same else "")
            + "; it also asks the hub for its version, synchronously, before it serves")
    if ours[PART_C] is not None and ours[PART_C] > 0.3:
        found.append(f"{fmt(ours[PART_C])} between \"running\" and ready: {BACKOFF}")
    if None not in (ours[PART_A], ref[PART_A]) and ours[PART_A] - ref[PART_A] > 0.3:
        found.append(f"{fmt(ours[PART_A] - ref[PART_A])} more before the container runs: the spawner's "
                     "Docker calls and any admission queue (starts per host are bounded) come first")
    return found


def _note_single(res: dict) -> list[str]:
    rt = res["ratios"]
    if not (rt.get("single_ours_raw") and rt["single_ours_raw"] > 1.15):
        return []
    c = _causes(res, "ours/1", "raw/1")
    return [f"- **1 student** ({fmt(rt['single_ours_raw'], 'x')} raw). Ours vs raw, medians: "
            f"{_compare(res, 'ours/1', 'raw/1')}." + (" Causes: " + "; ".join(c) + "." if c else "")]


def _note_makespan(res: dict) -> list[str]:
    n, rt, st = res["students"], res["ratios"], res["stats"]
    if not (n > 1 and rt.get("makespan_ours_raw") and rt["makespan_ours_raw"] > 1.15):
        return []

    def iv(key, title, field="median"):
        return ((res["intervals"].get(key) or {}).get(title) or {}).get(field)

    su_span = (st.get(f"rawsu/{n}") or {}).get("makespan_median")
    raw_span = (st.get(f"raw/{n}") or {}).get("makespan_median")
    boot = {k: parts(res, f"{k}/{n}")[PART_B] for k in ("ours", "raw", "rawsu")}
    text = f"- **{n} at once, makespan** ({fmt(rt['makespan_ours_raw'], 'x')} raw"
    if rt.get("makespan_ours_rawsu"):
        text += f", {fmt(rt['makespan_ours_rawsu'], 'x')} raw `jupyterhub-singleuser`"
    text += "). "
    if su_span and raw_span:
        text += (f"Started raw, all {n} at once, the image's single-user server is ready after {fmt(su_span)} "
                 f"and plain `jupyter lab` after {fmt(raw_span)}: the server the hubs run costs "
                 f"{fmt(ratio(su_span, raw_span), 'x')} as much to boot on {res['facts'].get('nproc')} cores. ")
    text += (f"Ours starts containers between {fmt(iv(f'ours/{n}', PART_A, 'min'))} and "
             f"{fmt(iv(f'ours/{n}', PART_A, 'max'))} after the request (admission), each boot then takes "
             f"{fmt(boot['ours'])} (container started → running, median; all at once: raw "
             f"{fmt(boot['raw'])}, raw `jupyterhub-singleuser` {fmt(boot['rawsu'])}), and "
             f"\"running\" → ready adds {fmt(iv(f'ours/{n}', PART_C))}. ")
    if rt.get("makespan_ours_rawsu") and rt["makespan_ours_rawsu"] <= 1.0:
        text += ("So the spawner adds nothing over the same server started raw all at once; the distance to "
                 "plain `jupyter lab` is the single-user server's heavier boot.")
    return [text]


def _note_median(res: dict) -> list[str]:
    n, rt, st = res["students"], res["ratios"], res["stats"]
    if not (n > 1 and rt.get("median_ours_stock") and rt["median_ours_stock"] > 0.5):
        return []
    ours_med = (st.get(f"ours/{n}") or {}).get("median")
    stock_med = (st.get(f"stock/{n}") or {}).get("median")
    stock_span = (st.get(f"stock/{n}") or {}).get("makespan_median")
    return [
        f"- **{n} at once, median student** ({fmt(rt['median_ours_stock'], 'x')} stock): stock starts all "
        f"{n} at once, so its median student ({fmt(stock_med)}) is ready close to its last one "
        f"({fmt(stock_span)}); ours admits a few starts at a time, so its median student ({fmt(ours_med)}) "
        "waits for about half of the others' boots. A cheaper boot per server lowers it further; more "
        "starts at once would not (they share the same cores)."]


def _note_lag(res: dict) -> list[str]:
    n = res["students"]
    lag = res["lag"].get(f"ours/{n}") or {}
    if lag.get("p99") is None or lag["p99"] < 0.1:
        return []
    return [f"- **event-loop lag** p99 {fmt(lag['p99'], 'ms')} while {n} start: something blocks the hub's "
            "loop; compare the stock hub's row."]


def _note_dead_mirror(res: dict) -> list[str]:
    dm = res.get("dead_mirror") or {}
    out = []
    for key, c in (dm.get("cost") or {}).items():
        first_bad = c.get("first") is not None and c["first"] >= 2.0
        later_bad = c.get("later") is not None and c["later"] >= 0.2
        if not (first_bad or later_bad):
            continue
        pp = (dm.get("plain_pull") or {}).get(key, {})
        daemon_s = median(pp.get("seconds", []))
        text = (f"- **dead mirror ({key})**: {fmt(c['first'])} extra on first use, {fmt(c.get('later'))} on "
                f"later spawns. The daemon alone gives up on this mirror after {fmt(daemon_s)} "
                f"(`{(pp.get('error') or '')[:100]}`)")
        if first_bad and daemon_s and c["first"] < 0.5 * daemon_s:
            text += ("; the spawner already stops waiting for it much sooner, so what is left is the spawner's "
                     "own time limit for a mirror's answer: to stay under the 2 s target it has to be shorter "
                     "(about 1–1.5 s)")
        elif first_bad:
            text += ("; a probe that only opens a TCP connection lets a mirror through when its port accepts "
                     "but nothing answers: asking its `/v2/` with a short total timeout (connect, TLS "
                     "handshake and first answer within ~1–1.5 s) would cut the first use")
        if later_bad:
            text += "; a failed mirror must be skipped for a cool-down period"
        out.append(text + ".")
    return out


def notes(res: dict) -> list[str]:
    """For each missed target: how ours differs from the reference, part by part, and the
    known causes of the parts that differ."""
    return [line for note in (_note_single, _note_makespan, _note_median, _note_lag, _note_dead_mirror)
            for line in note(res)]


BEGIN = "<!-- spawn_bench:begin (generated by python -m bench.spawn_bench; edit outside these markers) -->"
END = "<!-- spawn_bench:end -->"


def write_report(path: Path, body: str) -> None:
    block = f"{BEGIN}\n{body}\n{END}\n"
    if path.exists():
        old = path.read_text()
        if BEGIN in old and END in old:
            head, rest = old.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            tail = tail.lstrip("\n")
            path.write_text(head + block + ("\n" + tail if tail else ""))
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Spawn performance\n\n" + block)
