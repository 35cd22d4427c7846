"""The dead-mirror case: a mirror that accepts connections and never answers.

Part of ``python -m bench.spawn_bench`` (see bench/README.md).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
import docker
import requests
from docker.errors import APIError, NotFound
from testkit import testbed
from .analysis import attach_phases
from .common import BenchError, Clients, DEAD_MIRROR, GATEWAY, MIRROR_IMAGE, REGISTRY_FROM_DAEMON, log, median
from .hubs import BenchHub, ours_config, run_hub


# ------------------------------------------------------------------ dead mirror


class HungMirror:
    """A loopback port that accepts connections and never answers: a mirror whose host is up
    but whose service hangs (seen from a daemon as 10.0.2.2:PORT)."""

    def __init__(self):
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self._sock.settimeout(0.5)
        self.port = self._sock.getsockname()[1]
        self._conns = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
                self._conns.append(conn)
            except OSError:
                continue

    def close(self):
        self._stop.set()
        self._thread.join(5)
        for c in self._conns:
            c.close()
        self._sock.close()


def untag_mirror_image(client: docker.APIClient) -> None:
    """Make MIRROR_IMAGE absent again under every name (only names go; the layer it shares
    with the lab image stays)."""
    for img in client.images():
        for tag in img.get("RepoTags") or []:
            if tag.rsplit("/", 1)[-1] == MIRROR_IMAGE:
                try:
                    client.remove_image(tag, noprune=True)
                except NotFound:
                    pass


def docker_pull_seconds(client: docker.APIClient, repository: str, tag: str) -> tuple[float, str | None]:
    t = time.monotonic()
    error = None
    try:
        for chunk in client.pull(repository, tag=tag, stream=True, decode=True):
            if isinstance(chunk, dict) and (chunk.get("error") or chunk.get("errorDetail")):
                error = chunk.get("error") or str(chunk.get("errorDetail"))
    except APIError as e:
        error = e.explanation or str(e)
    except requests.RequestException as e:
        error = f"{type(e).__name__}: {e}"
    return time.monotonic() - t, error


def dead_mirror_case(workdir: Path, clients: Clients, user: str, repeats: int, hubs: list) -> dict:
    out: dict = {"user": user, "image": MIRROR_IMAGE, "live": REGISTRY_FROM_DAEMON}
    if not testbed.registry_answers():
        out["skipped"] = f"the local registry does not answer on {testbed.REGISTRY}"
        return out
    if not testbed.registry_manifest_config_digest(testbed.MIRROR_REPO, testbed.MIRROR_TAG):
        out["skipped"] = f"the local registry holds no {testbed.MIRROR_REPO}:{testbed.MIRROR_TAG}"
        return out
    client = clients[user]
    repo = "library/rgs-lab"
    # Warm-up (untimed): the first pull of this blob on this daemon downloads and extracts the
    # layer; afterwards the daemon knows the blob ("Already exists"), so every timed pull moves
    # only the manifest and the config, and differences between variants are the mirrors' cost.
    untag_mirror_image(client)
    secs, err = docker_pull_seconds(client, f"{REGISTRY_FROM_DAEMON}/{repo}", "latest")
    if err:
        out["skipped"] = f"warm-up pull from {REGISTRY_FROM_DAEMON} failed: {err}"
        return out
    out["warmup_pull_s"] = secs
    untag_mirror_image(client)
    hung = HungMirror()
    started: list[BenchHub] = []
    try:
        variants = {
            "live": [REGISTRY_FROM_DAEMON],
            "refused": [DEAD_MIRROR, REGISTRY_FROM_DAEMON],
            "hung": [f"{GATEWAY}:{hung.port}", REGISTRY_FROM_DAEMON],
        }
        out["variants"] = {k: v for k, v in variants.items()}
        # What the daemon itself takes to give up on each kind of mirror (plain docker pull).
        out["plain_pull"] = {}
        for key, count in (("live", repeats), ("refused", repeats), ("hung", 1)):
            results = [docker_pull_seconds(client, f"{variants[key][0]}/{repo}", "latest") for _ in range(max(1, count))]
            untag_mirror_image(client)
            out["plain_pull"][key] = {"seconds": [r[0] for r in results], "error": results[-1][1]}
        for key, mirrors in variants.items():
            bh = BenchHub(f"mirror-{key}", workdir, [user],
                          lambda p, m=mirrors: ours_config(p, MIRROR_IMAGE, m))
            hubs.append(bh)
            started.append(bh)
            bh.start()
        # Warm every hub's spawn path once with the image present (no mirror is touched), so
        # that a variant's first trial differs from the others only by its mirrors.
        _, err = docker_pull_seconds(client, f"{REGISTRY_FROM_DAEMON}/{repo}", "latest")
        if err:
            raise BenchError(f"pull from {REGISTRY_FROM_DAEMON} failed: {err}")
        client.tag(f"{REGISTRY_FROM_DAEMON}/{repo}:latest", MIRROR_IMAGE.split(":")[0], "latest")
        for bh in started:
            run_hub(bh, clients, [user], lambda u: u)
        untag_mirror_image(client)
        keys = list(variants)
        trials: dict[str, list] = {k: [] for k in keys}
        for r in range(max(1, repeats)):
            for key in keys[r % 3:] + keys[: r % 3]:
                untag_mirror_image(client)
                bh = next(b for b in started if b.label == f"mirror-{key}")
                (rec,) = run_hub(bh, clients, [user], lambda u: u)
                rec["repeat"] = r
                trials[key].append(rec)
                log(f"dead-mirror case, {key:7s} mirrors, trial {r + 1}: " + (
                    f"{rec['t_ready'] - rec['t0']:.2f}s to ready" if "t_ready" in rec else rec.get("error", "?")))
        out["trials"] = trials
    finally:
        for bh in started:
            try:
                bh.stop()
            except Exception as e:
                log(f"hub '{bh.label}' stop: {e}")
            if bh in hubs:
                hubs.remove(bh)
            if "trials" in out:
                attach_phases(out["trials"][bh.label.split("-", 1)[1]], bh.read_trace())
        hung.close()
        try:
            untag_mirror_image(client)
        except Exception:
            pass
    return out


def summarize_dead_mirror(dm: dict) -> None:
    if not dm or not dm.get("trials"):
        return

    def start_s(rec):
        hub = rec.get("hub") or {}
        if "t_ready" in rec and hub.get("spawn_begin") and hub.get("wait_up_begin"):
            return hub["wait_up_begin"] - hub["spawn_begin"]
        return None

    dm["ready_s"] = {k: [r["t_ready"] - r["t0"] if "t_ready" in r else None for r in v] for k, v in dm["trials"].items()}
    dm["start_s"] = {k: [start_s(r) for r in v] for k, v in dm["trials"].items()}
    base = median(dm["start_s"].get("live", []))
    dm["cost"] = {}
    for key in ("refused", "hung"):
        vals = dm["start_s"].get(key) or []
        if base is None or not vals or vals[0] is None:
            continue
        later = [v for v in vals[1:] if v is not None]
        dm["cost"][key] = {
            "first": vals[0] - base,
            "later": (median(later) - base) if later else None,
        }
