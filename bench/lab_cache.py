"""Benchmark: N students pull one big multi-layer image for the first time, three ways, in one run.

    sudo /opt/rootless-gpu-spawner/venv/bin/python -m bench.lab_cache                 # the recorded run
    sudo /opt/rootless-gpu-spawner/venv/bin/python -m bench.lab_cache --full          # 16 students, 1 GiB, 200 Mbit/s
    ... --students 8 --layers 64,64,64,64 --mbit 200 --out docs/performance.md

An "upstream" docker-registry on 127.0.0.1 behind a throttled counting TCP
proxy (testkit/netproxy.py: one shared link of ``--mbit``), holding three
images of the same shape with different (random, incompressible) blobs, so
no case profits from another.  The students are the bench's own accounts
``rgsbench-NN`` (bench/provision.py), each with its own rootless daemon.
All N pulls start at the same instant:

(a) ``prefix``: each daemon pulls through the upstream as a prefix mirror (today: every
    student downloads the image);
(b) ``cache``: through the lab cache (``rootless-gpu-admin cache setup``), cold;
(c) ``warm``: through the lab cache after ``rootless-gpu-admin cache warm``.

Measured per case: bytes that crossed the upstream link (at the proxy), the
makespan, each student's time until the daemon has the image (pulled and
extracted: "ready to start"; the synthetic image has no program, so no
container is started), and for (b) when the upstream transfer ended
(the rest is local copies from the cache and extraction).  Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time

import docker

from bench.provision import ensure_account, ensure_tun, user_names
from rootless_gpu_spawner.admin import bootstrap as bootstrap_mod
from rootless_gpu_spawner.admin import cachewarm
from rootless_gpu_spawner.host import daemonctl, labcache
from testkit.netproxy import CountingProxy
from testkit.regimage import UpstreamRegistry, free_port, push_image
from testkit.testbed import REGISTRY_FROM_DAEMON

CASES = ("prefix", "cache", "warm")


def log(msg: str) -> None:
    print(f"[lab-cache bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _daemons(names: list[str], entries: list[str]):
    ensure_tun()
    users = [ensure_account(n) for n in names]
    b = bootstrap_mod.Bootstrapper(timeout=90)

    def up(pw):
        steps = b.user(pw, None, [REGISTRY_FROM_DAEMON, *entries])
        bad = [s for s in steps if not s.ok]
        if bad:
            raise RuntimeError(f"{pw.pw_name}: {bad[0].name}: {bad[0].detail}")

    threads = [threading.Thread(target=up, args=(pw,)) for pw in users]
    for i in range(0, len(threads), 4):  # 4 daemons start at a time on 2 cores
        for t in threads[i:i + 4]:
            t.start()
        for t in threads[i:i + 4]:
            t.join(300)
    return users


def _pull_all(users, ref: str, tag: str, proxy: CountingProxy) -> dict:
    clients = [docker.APIClient(base_url=daemonctl.daemon_paths(pw.pw_uid).docker_host, timeout=3600) for pw in users]
    times, errors = [None] * len(users), []
    upstream_end = [None]
    start = threading.Barrier(len(users) + 1)

    def pull(i):
        start.wait()
        t = time.monotonic()
        try:
            for _ in clients[i].pull(ref, tag=tag, stream=True, decode=True):
                pass
            clients[i].inspect_image(f"{ref}:{tag}")
            times[i] = time.monotonic() - t
        except docker.errors.APIError as e:
            errors.append(f"{users[i].pw_name}: {e}")

    def watch(t0, stop):
        last, since = proxy.bytes_down, time.monotonic()
        while not stop.is_set():
            time.sleep(0.1)
            now = proxy.bytes_down
            if now != last:
                last, since = now, time.monotonic()
        upstream_end[0] = since - t0

    proxy.reset()
    threads = [threading.Thread(target=pull, args=(i,)) for i in range(len(users))]
    for t in threads:
        t.start()
    stop = threading.Event()
    t0 = time.monotonic()
    start.wait()
    w = threading.Thread(target=watch, args=(t0, stop))
    w.start()
    for t in threads:
        t.join(7200)
    makespan = time.monotonic() - t0
    stop.set()
    w.join()
    for c in clients:
        try:
            c.remove_image(f"{ref}:{tag}")
        except docker.errors.APIError:
            pass
        c.close()
    ok = [x for x in times if x is not None]
    return {"makespan_s": makespan, "upstream_bytes": proxy.bytes_down, "errors": errors,
            "ready_min_s": min(ok) if ok else None, "ready_median_s": statistics.median(ok) if ok else None,
            "ready_max_s": max(ok) if ok else None, "upstream_transfer_end_s": upstream_end[0]}


def run(args) -> dict:
    sizes = [int(x) << 20 for x in args.layers.split(",")]
    tmp = tempfile.mkdtemp(prefix="rgs-labcache-bench-")
    seed = int(time.time())
    result = {"students": args.students, "layers_mib": args.layers, "mbit": args.mbit, "cases": {}}
    with UpstreamRegistry(os.path.join(tmp, "upstream")) as up, CountingProxy(up.port, args.mbit * 1e6 / 8) as proxy:
        t = time.monotonic()
        images = {c: push_image(up.port, f"library/bench-{c}", "v1", sizes, seed=seed + i) for i, c in enumerate(CASES)}
        result["image_bytes"] = images["prefix"].blob_bytes
        log(f"3 images of {len(sizes)} layers, {result['image_bytes'] / 2**20:.0f} MiB each, pushed in "
            f"{time.monotonic() - t:.0f} s")
        base = free_port()
        cfg = labcache.make_config(os.path.join(tmp, "cache"), [("docker.io", f"http://127.0.0.1:{proxy.port}")],
                                   64 << 30, base)
        labcache.ensure_files(cfg)
        log(labcache.ensure_running(cfg, cfg.upstreams[0]))
        mirror = cfg.upstreams[0].mirror
        try:
            t = time.monotonic()
            users = _daemons(user_names(args.students), [*cfg.insecure_entries(), f"10.0.2.2:{proxy.port}"])
            log(f"{len(users)} students' daemons up ({time.monotonic() - t:.0f} s)")
            refs = {"prefix": f"10.0.2.2:{proxy.port}", "cache": mirror, "warm": mirror}
            for case in CASES:
                if case == "warm":
                    proxy.reset()
                    w = cachewarm.warm_image(cfg, f"{images[case].repo}:v1")
                    result["warm_fill"] = {"seconds": w.seconds, "bytes": w.bytes, "upstream_bytes": proxy.bytes_down,
                                           "ok": w.ok, "error": w.error}
                    log(f"cache warm: {w.bytes / 2**20:.0f} MiB in {w.seconds:.1f} s")
                log(f"case {case}: {len(users)} pulls of {refs[case]}/{images[case].repo}:v1 at once")
                r = _pull_all(users, f"{refs[case]}/{images[case].repo}", "v1", proxy)
                r["upstream_x_image"] = r["upstream_bytes"] / result["image_bytes"]
                result["cases"][case] = r
                log(json.dumps(r))
        finally:
            labcache.stop(cfg, cfg.upstreams[0])
            if not args.keep_daemons:
                for pw in [ensure_account(n) for n in user_names(args.students)]:
                    daemonctl.stop_daemon(pw)
    a, b = result["cases"].get("prefix"), result["cases"].get("cache")
    if a and b:
        result["makespan_ratio_prefix_over_cache"] = a["makespan_s"] / b["makespan_s"]
    return result


def markdown(r: dict, command: str) -> str:
    mib = r["image_bytes"] / 2**20
    rows = ["| case | upstream bytes | × image | makespan | ready min / median / max |", "|---|---|---|---|---|"]
    names = {"prefix": "(a) prefix mirror, per daemon", "cache": "(b) lab cache, cold", "warm": "(c) lab cache, warmed"}
    for case, c in r["cases"].items():
        rows.append(f"| {names[case]} | {c['upstream_bytes'] / 2**20:.0f} MiB | {c['upstream_x_image']:.3f} | "
                    f"{c['makespan_s']:.1f} s | {c['ready_min_s']:.1f} / {c['ready_median_s']:.1f} / {c['ready_max_s']:.1f} s |")
    b = r["cases"].get("cache", {})
    w = r.get("warm_fill", {})
    return "\n".join([
        f"{r['students']} students, one image of {mib:.0f} MiB ({r['layers_mib']} MiB layers, gzip'd random bytes), "
        f"upstream link {r['mbit']} Mbit/s, all pulls at the same instant. Command: `{command}`", "",
        *rows, "",
        f"Makespan (a)/(b): **{r.get('makespan_ratio_prefix_over_cache', 0):.1f}×**. "
        f"(b): the upstream transfer ended at {b.get('upstream_transfer_end_s', 0):.1f} s of {b.get('makespan_s', 0):.1f} s; "
        f"the rest is local copies from the cache and extraction on 2 cores. "
        f"`cache warm` beforehand: {w.get('bytes', 0) / 2**20:.0f} MiB in {w.get('seconds', 0):.1f} s "
        f"({w.get('upstream_bytes', 0) / 2**20:.0f} MiB upstream).",
    ])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.lab_cache")
    p.add_argument("--students", type=int, default=8)
    p.add_argument("--layers", default="64,64,64,64", help="layer sizes in MiB, comma-separated")
    p.add_argument("--mbit", type=float, default=200.0, help="the upstream link, Mbit/s")
    p.add_argument("--full", action="store_true", help="the issue's size: 16 students, 1 GiB in 8 layers")
    p.add_argument("--keep-daemons", action="store_true")
    p.add_argument("--json", help="write the result here")
    a = p.parse_args(argv)
    if a.full:
        a.students, a.layers = 16, ",".join(["128"] * 8)
    if os.geteuid() != 0:
        print("run as root (it creates the bench's students and their daemons)", file=sys.stderr)
        return 2
    r = run(a)
    cmd = "sudo python -m bench.lab_cache " + " ".join(argv if argv is not None else sys.argv[1:])
    print(markdown(r, cmd.strip()))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
