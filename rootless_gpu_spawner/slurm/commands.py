"""Slurm's commands (sbatch, squeue, sinfo, scontrol, scancel) run from the hub's event loop.

Each is an asyncio subprocess with a deadline and a cap on what it may print, so the event
loop never blocks and a hung ``slurmctld`` costs one bounded wait. Failures are typed:
:class:`SlurmUnreachable` (the controller does not answer, or the commands are missing) and
:class:`SlurmCommandFailed` (Slurm answered "no", with its words, made printable).
"""

from __future__ import annotations

import asyncio
import os

from ..safetext import printable

MAX_OUTPUT = 1 << 20
#: Slurm's words when it cannot reach slurmctld (22.05).
_UNREACHABLE = (
    "unable to contact slurm controller", "socket timed out", "connection refused",
    "zero bytes were transmitted", "communication connection failure", "munge", "authentication",
)


class SlurmError(RuntimeError):
    """Something about Slurm went wrong; the message says what to do."""


class SlurmUnreachable(SlurmError):
    pass


class SlurmCommandFailed(SlurmError):
    def __init__(self, message: str, stderr: str = ""):
        super().__init__(message)
        self.stderr = stderr


class SlurmCommands:
    """Runs Slurm's commands with the admin's settings (where they are, which slurm.conf)."""

    def __init__(self, bin_dir: str = "", slurm_conf: str = "", timeout: float = 15.0):
        self.bin_dir = bin_dir
        self.slurm_conf = slurm_conf
        self.timeout = timeout

    def _env(self) -> dict:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        conf = self.slurm_conf or os.environ.get("SLURM_CONF", "")
        if conf:
            env["SLURM_CONF"] = conf
        return env

    def _path(self, name: str) -> str:
        return os.path.join(self.bin_dir, name) if self.bin_dir else name

    async def run(self, name: str, *args: str, stdin: str | None = None, check: bool = True) -> str:
        """stdout of ``name args``; SlurmUnreachable / SlurmCommandFailed when it fails."""
        try:
            proc = await asyncio.create_subprocess_exec(
                self._path(name), *args,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=self._env(), start_new_session=True, limit=MAX_OUTPUT,
            )
        except (FileNotFoundError, PermissionError) as e:
            raise SlurmUnreachable(
                f"Slurm's {name} command cannot be run ({printable(e, 200)}): install Slurm's client "
                "commands on the hub's host (Debian: slurm-client) and make it a submit host, or set "
                "RootlessGPUSlurmSpawner.slurm_bin_dir."
            ) from None
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(stdin.encode() if stdin is not None else None), self.timeout
            )
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise SlurmUnreachable(
                f"Slurm's {name} did not answer within {self.timeout:g} s: is slurmctld running and "
                "reachable from the hub's host? (check with 'scontrol ping')"
            ) from None
        stdout = out[:MAX_OUTPUT].decode("utf-8", "replace")
        stderr = printable(err[:4096], 400)
        if proc.returncode != 0 and check:
            if any(word in stderr.lower() for word in _UNREACHABLE):
                raise SlurmUnreachable(
                    f"Slurm's controller cannot be reached from the hub ({name}: {stderr}). "
                    "Ask the admin to check slurmctld, munged and slurm.conf on the hub's host."
                )
            raise SlurmCommandFailed(f"{name} failed: {stderr or 'exit code %d' % proc.returncode}", stderr)
        return stdout
