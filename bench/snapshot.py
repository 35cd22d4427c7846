"""The code measured: a snapshot of rootless_gpu_spawner/ taken when the run starts, and its identity.

Part of ``python -m bench.spawn_bench`` (see bench/README.md).
"""

from __future__ import annotations

import time
from pathlib import Path
from .common import BenchError, REPO_ROOT, log
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .hubs import BenchHub


#: The snapshot this run's hubs import the spawner from (set by :func:`snapshot_code` only).
CODE_DIR: Path | None = None


def snapshot_code(workdir: Path) -> Path:
    """Copy rootless_gpu_spawner/ under *workdir*; every hub of the run imports it from there."""
    global CODE_DIR
    import shutil

    dest = workdir / "code"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(REPO_ROOT / "rootless_gpu_spawner", dest / "rootless_gpu_spawner",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    CODE_DIR = dest
    return dest


def check_code_snapshot(bh: "BenchHub") -> None:
    """The hub really imported the spawner from the snapshot (not from the working tree)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for ev in bh.read_trace():
            if ev.get("k") == "code":
                if CODE_DIR and not str(ev.get("file", "")).startswith(str(CODE_DIR)):
                    raise BenchError(f"hub '{bh.label}' imported the spawner from {ev.get('file')}, "
                                     f"not from the snapshot {CODE_DIR}")
                return
        time.sleep(0.2)
    log(f"note: hub '{bh.label}' did not report where it imported the spawner from")


def code_identity() -> str:
    """Which spawner code was measured: the commit, plus a hash of the snapshot's files when
    the working tree differed from that commit."""
    import hashlib
    import subprocess

    def git(*a):
        p = subprocess.run(["git", *a], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
        return p.stdout.strip() if p.returncode == 0 else ""

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown commit"
    dirty = git("status", "--porcelain", "--", "rootless_gpu_spawner")
    if not dirty:
        return f"commit {commit}"
    h = hashlib.sha256()
    pkg = (CODE_DIR or REPO_ROOT) / "rootless_gpu_spawner"
    for path in sorted(pkg.rglob("*.py")):
        h.update(path.relative_to(pkg).as_posix().encode() + b"\0" + path.read_bytes())
    return f"commit {commit} + uncommitted changes in rootless_gpu_spawner/ (sources sha256 {h.hexdigest()[:12]})"
