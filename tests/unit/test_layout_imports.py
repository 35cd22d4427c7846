"""The package's import direction: admin -> host -> core <- hub, and the hub never imports admin.

``core`` is the top-level modules of ``rootless_gpu_spawner``; the face (``__init__`` and
``spawner``, the JupyterHub plugin) composes the hub package with the host's one blocking call
(starting a stopped daemon, the same code as ``rootless-gpu-admin start-daemon``) and never imports
``admin``.  Imports are read with :mod:`ast`, so a lazy import inside a function counts too.
"""

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[2] / "rootless_gpu_spawner"
#: What an admin names in jupyterhub_config.py: the spawner and its settings, and the fair-use
#: helpers (the hub's GPU-holders API, the culler's config), the saved-environments pages.
FACE = {"__init__", "spawner", "config", "holders", "culling", "idle_culler_config", "environments"}

#: Which parts a part may import (besides itself).
ALLOWED = {
    "core": {"core"},
    "face": {"core", "hub", "host"},
    "hub": {"core"},
    "host": {"core"},
    "admin": {"core", "host"},
    "board": {"core", "face"},  # the GPU board, a service of its own
    # The Slurm spawner (a face of its own, entry point rootless-gpu-slurm) and its node side
    # rootless-gpu-run: they compose the local spawner's hub and host code, never admin.
    "slurm": {"core", "face", "hub", "host"},
}


def part_of(module: str) -> str:
    """``hub.daemon`` -> hub; ``errors`` -> core; ``spawner`` -> face."""
    head = module.split(".")[0]
    if head in ("hub", "host", "admin", "board", "slurm"):
        return head
    return "face" if head in FACE else "core"


def modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        parts = list(rel.parts)
        is_pkg = parts[-1] == "__init__"
        yield ".".join(parts), path, is_pkg


def imported(module: str, path: pathlib.Path, is_pkg: bool):
    """Every in-package module that ``module`` imports, as a dotted name under the package."""
    here = module.split(".")[:-1]  # a package's __init__ and its modules share one base
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("rootless_gpu_spawner."):
                    yield a.name.split(".", 1)[1]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and node.module.startswith("rootless_gpu_spawner"):
                    base = node.module.split(".")[1:]
                else:
                    continue
            else:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else list(here)
                if node.module:
                    base = base + node.module.split(".")
            if base:
                yield ".".join(base)
            else:
                for a in node.names:  # from . import x  (top level)
                    yield a.name


def test_the_package_has_the_four_parts():
    names = {m for m, _p, _k in modules()}
    for part in ("hub", "host", "admin"):
        assert f"{part}.__init__" in names
    assert "errors" in names and "accounts" in names and "spawner" in names


@pytest.mark.parametrize("module,path,is_pkg", list(modules()), ids=lambda v: str(v))
def test_imports_follow_the_direction(module, path, is_pkg):
    mine = part_of(module)
    for target in imported(module, path, is_pkg):
        theirs = part_of(target)
        if theirs == mine:
            continue
        assert theirs in ALLOWED[mine], f"{module} ({mine}) imports {target} ({theirs})"


def test_the_admin_cli_loads_no_hub_module():
    """admin -> host -> core: running the CLI imports nothing of hub/ (nor the spawner)."""
    import subprocess
    import sys

    code = ("import sys, rootless_gpu_spawner.admin.cli; "
            "print(sorted(m for m in sys.modules if m.startswith(('rootless_gpu_spawner.hub', 'rootless_gpu_spawner.spawner'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=str(PKG.parent))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_face_still_gives_the_spawner():
    import rootless_gpu_spawner
    from rootless_gpu_spawner.spawner import RootlessGPUSpawner

    assert rootless_gpu_spawner.RootlessGPUSpawner is RootlessGPUSpawner
