"""The lab's pull-through cache on this host, end to end, on loopback only.

An "upstream" registry (docker-registry on a free 127.0.0.1 port) sits behind
a throttled counting TCP proxy (testkit/netproxy.py, 200 Mbit/s) and holds
synthetic multi-layer images (fresh blobs each run: testkit/regimage.py).
``rootless-gpu-admin cache setup`` puts the lab cache in front of it (the
proxy as the docker.io upstream) and sets up a throw-away student whose real
rootless daemon pulls through it as 10.0.2.2:PORT -- the host-swap form today's
``mirror_prefixes`` uses.  Checked: 8 concurrent pulls of one missing image
(the student's daemon + 7 registry clients) cost one upstream copy of each
blob (bytes counted at the proxy); ``cache warm``; ``doctor`` with the cache
running and stopped; ``prune-images`` dry run and apply rules.  The testbed's
own users are not touched.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading

import docker
import pytest

from rootless_gpu_spawner.admin import cachewarm
from rootless_gpu_spawner.host import daemonctl, labcache
from testkit.netproxy import CountingProxy
from testkit.regimage import UpstreamRegistry, free_port, push_image
from testkit.tempuser import temp_student

ADMIN = [sys.executable, "-m", "rootless_gpu_spawner.admin"]
RATE = 200e6 / 8  # 200 Mbit/s upstream link
LAYERS = [6 << 20, 4 << 20, 3 << 20, 2 << 20]
#: The second copy the registry starts for a miss is cut at once by the front; what it read before
#: the cut (socket buffers) is the allowance per blob on top of one copy.
PER_BLOB_SLACK = 1 << 20


def cli(*args: str, timeout: float = 180) -> tuple[int, str, str]:
    p = subprocess.run([*ADMIN, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout, p.stderr


def _port_base() -> int:
    for _ in range(50):
        base = free_port()
        if base + labcache.BACKEND_OFFSET < 65000 and labcache.answers(base + labcache.BACKEND_OFFSET, 0.5) is None:
            return base
    raise RuntimeError("no free pair of loopback ports")


@pytest.fixture(scope="module")
def lab(testbed, tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("tests/integration/test_lab_cache.py needs root (it creates a student and a cache)")
    tmp = tmp_path_factory.mktemp("labcache")
    seed = secrets.randbelow(1 << 30)
    with UpstreamRegistry(str(tmp / "upstream")) as up, CountingProxy(up.port, RATE) as proxy, \
            temp_student("rgscache") as pw:
        images = {k: push_image(up.port, f"library/labcache-{k}", "v1", LAYERS, seed=seed + i)
                  for i, k in enumerate(("miss", "warm", "old"))}
        root = str(tmp / "cache")
        base = _port_base()
        code, out, err = cli("cache", "setup", "--root", root, "--port-base", str(base), "--limit", "1G",
                             "--upstream", f"docker.io=http://127.0.0.1:{proxy.port}", "--user", pw.pw_name, "--json")
        assert code == 0, out + err
        setup = json.loads(out)
        cfg = labcache.load(root)
        client = docker.DockerClient(base_url=daemonctl.daemon_paths(pw.pw_uid).docker_host, timeout=120)
        try:
            yield {"pw": pw, "root": root, "cfg": cfg, "proxy": proxy, "images": images, "setup": setup,
                   "docker": client, "mirror": cfg.upstreams[0].mirror}
        finally:
            client.close()
            cli("cache", "stop", "--root", root)
    for name in ("front", "registry"):
        assert labcache._pid_of(cfg, cfg.upstreams[0], name) is None


def test_setup_prints_hub_lines_and_writes_daemon_json(lab):
    setup, mirror = lab["setup"], lab["mirror"]
    assert setup["lab_cache_mirrors"] == {"docker.io": mirror}
    steps = {(s["scope"], s["name"]): s for s in setup["steps"]}
    assert steps[("host", "cache docker.io")]["ok"] and steps[(lab["pw"].pw_name, "daemon")]["ok"]
    doc = json.loads(daemonctl.read_user_file(lab["pw"], ".config/docker/daemon.json"))
    assert set(lab["cfg"].insecure_entries()) <= set(doc["insecure-registries"])
    # A second run changes nothing (idempotent) and prints the hub's configuration lines.
    code, out, err = cli("cache", "setup", "--root", lab["root"], "--user", lab["pw"].pw_name)
    assert code == 0, out + err
    assert "0 step(s) changed something" in out
    assert f'c.RootlessGPUSpawner.lab_cache_mirrors = {{"docker.io": "{mirror}"}}' in out


def _registry_pull(cfg, repo: str, results: list) -> None:
    w = cachewarm.warm_image(cfg, f"{repo}:v1", parallel=2)
    results.append(w)


def test_concurrent_misses_cost_one_upstream_copy(lab):
    img, proxy, cfg = lab["images"]["miss"], lab["proxy"], lab["cfg"]
    proxy.reset()
    results, errors = [], []
    ref = f"{lab['mirror']}/{img.repo}"

    def daemon_pull():
        try:
            lab["docker"].api.pull(ref, tag="v1")
        except docker.errors.APIError as e:
            errors.append(e)

    threads = [threading.Thread(target=daemon_pull)]
    threads += [threading.Thread(target=_registry_pull, args=(cfg, img.repo, results)) for _ in range(7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors and all(r.ok for r in results) and len(results) == 7, (errors, [r.error for r in results])
    assert all(r.bytes == img.blob_bytes for r in results)
    pulled = lab["docker"].images.get(f"{ref}:v1")
    assert any(d.endswith(img.manifest_digest) for d in pulled.attrs["RepoDigests"])
    fetches = proxy.blob_fetches()
    every = [d for d, _ in img.layers] + [img.config[0]]
    assert set(every) <= set(fetches), fetches  # each blob came from upstream...
    slack = PER_BLOB_SLACK * len(every) + (256 << 10)  # ...once: + the cut second copies and the manifests
    assert img.blob_bytes <= proxy.bytes_down <= img.blob_bytes + slack, (proxy.bytes_down, img.blob_bytes, fetches)


def test_warm_fills_the_cache_then_a_pull_costs_no_upstream_bytes(lab):
    img, proxy = lab["images"]["warm"], lab["proxy"]
    proxy.reset()
    code, out, err = cli("cache", "warm", "--root", lab["root"], f"docker.io/{img.repo}:v1", "--json")
    assert code == 0, out + err
    (w,) = json.loads(out)
    assert w["ok"] and w["blobs"] == len(LAYERS) + 1 and w["bytes"] == img.blob_bytes
    warmed = proxy.bytes_down
    assert img.blob_bytes <= warmed <= img.blob_bytes + PER_BLOB_SLACK * (len(LAYERS) + 1) + (256 << 10)
    proxy.reset()
    lab["docker"].api.pull(f"{lab['mirror']}/{img.repo}", tag="v1")
    assert proxy.blob_fetches() == {}  # every layer from the host's disk
    assert proxy.bytes_down < 64 << 10  # the manifest check only
    human = cli("cache", "warm", "--root", lab["root"], f"{img.repo}:v1")[1]
    assert f"{img.repo}:v1: {len(LAYERS) + 1} blobs" in human and "in the lab cache" in human


def _doctor(lab) -> tuple[int, dict]:
    code, out, err = cli("doctor", "--user", lab["pw"].pw_name, "--cache-root", lab["root"], "--json")
    return code, {(c["scope"], c["name"]): c for c in json.loads(out)["checks"]}


def test_doctor_checks_the_running_and_the_stopped_cache(lab):
    name = lab["pw"].pw_name
    code, checks = _doctor(lab)
    for key in (("host", "cache docker.io"), ("host", "cache docker.io upstream"), ("host", "cache disk"),
                (name, "lab cache"), (name, "image storage")):
        assert checks[key]["status"] == "pass", checks[key]
    assert "GiB in" in checks[(name, "image storage")]["detail"]
    code, out, err = cli("cache", "stop", "--root", lab["root"])
    assert code == 0 and "stopped front" in out, out + err
    try:
        code, checks = _doctor(lab)
        c = checks[("host", "cache docker.io")]
        assert code == 1 and c["status"] == "fail" and "does not answer" in c["detail"]
        assert "cache setup" in c["fix"]
        code, out, err = cli("cache", "status", "--root", lab["root"])
        assert code == 1 and "DOWN" in out
    finally:
        code, out, err = cli("cache", "setup", "--root", lab["root"], "--host-only")
        assert code == 0, out + err
    code, out, err = cli("cache", "status", "--root", lab["root"])
    assert code == 0 and " up at " in out, out + err


def test_prune_images_keeps_what_policy_protects(lab):
    d, mirror = lab["docker"], lab["mirror"]
    old, miss, warm = (f"{mirror}/{lab['images'][k].repo}" for k in ("old", "miss", "warm"))
    d.api.pull(old, tag="v1")
    for ref in (miss, warm):  # the other tests pulled these; a test run on its own pulls them here
        d.api.pull(ref, tag="v1")
    d.api.create_container(f"{miss}:v1", name="kept-by-a-container")  # a stopped container's image
    d.images.get(f"{warm}:v1").tag("mywork/analysis", "day1")  # tagged by the student
    state = ["--state-dir", os.path.join(lab["root"], "seen")]  # when prune-images first saw each image
    args = ["prune-images", "--user", lab["pw"].pw_name, *state, "--unused-days", "0", "--json"]
    repos = [x for r in (old, miss, warm) for x in ("--image", r)]
    code, out, err = cli(*args, *repos)
    assert code == 0, out + err
    rows = {tuple(i["tags"]): i for i in json.loads(out)["users"][0]["images"]}
    assert rows[(f"{old}:v1",)]["remove"] and "unused" in rows[(f"{old}:v1",)]["reason"]
    assert not rows[(f"{miss}:v1",)]["remove"] and "stopped container" in rows[(f"{miss}:v1",)]["reason"]
    warm_row = next(v for k, v in rows.items() if f"{warm}:v1" in k)
    assert not warm_row["remove"] and "tagged by the student" in warm_row["reason"]
    # Seen for the first time just now: a week's grace keeps even the unused one.
    code, out, err = cli("prune-images", "--user", lab["pw"].pw_name, *state, "--unused-days", "7", *repos)
    assert code == 0 and "would remove 0 image(s)" in out, out + err
    code, out, err = cli(*args, *repos, "--apply")
    assert code == 0, out + err
    left = {t for i in d.images.list() for t in i.tags}
    assert f"{old}:v1" not in left and {f"{miss}:v1", f"{warm}:v1", "mywork/analysis:day1"} <= left
    d.containers.get("kept-by-a-container").remove()
