"""Run a hub-managed service so that it ends with the hub: ``python -m rootless_gpu_spawner.tether MODULE ARGS``.

JupyterHub starts a managed service in a session of its own and restarts it whenever it exits
unexpectedly, so a service can outlive its hub: after a ``SIGKILL`` of the hub, or when the
restart races the hub's shutdown. An orphaned jupyterhub-idle-culler keeps polling a hub that
is gone (or, worse, a new hub on the same port with its old token refused).

This wrapper asks the kernel to send the service ``SIGTERM`` when its parent (the hub) dies
(``PR_SET_PDEATHSIG``, kept across ``execve``), then replaces itself with
``python -m MODULE ARGS``: the service keeps its pid, its environment and its arguments.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def tie_to_parent(sig: int = signal.SIGTERM) -> None:
    """``sig`` reaches this process when its parent exits; exit now if the parent is already gone."""
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != parent:  # the hub died before the request took effect
        raise SystemExit(f"tether: the parent process {parent} is gone; not starting")


def command(module: str, *args: str, python: str = sys.executable) -> list[str]:
    """The service ``command`` that runs ``python -m module args`` tied to the hub."""
    return [python, "-m", __name__, module, *args]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        raise SystemExit("usage: python -m rootless_gpu_spawner.tether MODULE [ARGS...]")
    tie_to_parent()
    os.execv(sys.executable, [sys.executable, "-m", *argv])


if __name__ == "__main__":
    main()
