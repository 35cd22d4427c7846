"""GPU utilisation of a Slurm server's job, measured on the job's node and reported to the hub.

The node side (``rootless-gpu-run``) reads the job's GPUs with the same sources as the board
(:mod:`..utilisation`: NVML on the node, or the **simulated** JSON file the hub names with
``c.RootlessGPUSlurmSpawner.slurm_utilisation_file``) and posts them every
``slurm_utilisation_interval`` seconds through the report route, with the server's own token::

    {"server_name": "", "utilisation": {"0": {"utilisation": 12.0, "memory_used": 1024,
                                               "memory_total": 85899345920, "name": "..."}},
     "simulated": true}

The hub treats it as hostile input (:func:`validate_figures`): only the job's own GPU indices
(Slurm's word), numbers 0..100, a bounded size, at most one report per ``MIN_INTERVAL`` s. The
spawner keeps the latest figures in memory (never in the DB state); the GPU-holders API shows
them for the ``NODE:INDEX`` GPUs, and the board keeps their history and idle verdict.
"""

from __future__ import annotations

from ..utilisation import Reading, UtilisationError, parse_readings

MIN_INTERVAL = 1.0  # seconds between two accepted reports of one server
MAX_GPUS = 64
MAX_MEMORY = 1 << 50  # bytes (a PiB)


class ReportTooSoon(ValueError):
    """A figures report came sooner than MIN_INTERVAL after the last one (HTTP 429)."""


def node_figures(readings: dict[str, Reading], gpus: list[str], simulated: bool) -> dict:
    """Node side: the report body for the job's GPUs (others on the node are left out)."""
    return {
        "utilisation": {g: {"utilisation": readings[g].utilisation, "memory_used": readings[g].memory_used,
                            "memory_total": readings[g].memory_total, "name": readings[g].name}
                        for g in gpus if g in readings},
        "simulated": bool(simulated),
    }


def validate_figures(body: dict, job_gpus: list[str], last_at: float | None, now: float) -> dict:
    """Hub side: a report's figures -> ``{"at", "simulated", "gpus": {index: Reading}}``, or ValueError."""
    if last_at is not None and now - last_at < MIN_INTERVAL:
        raise ReportTooSoon(f"at most one utilisation report per {MIN_INTERVAL:g} s")
    figures = body.get("utilisation")
    if not isinstance(figures, dict) or len(figures) > MAX_GPUS:
        raise ValueError(f"utilisation must be an object of at most {MAX_GPUS} GPUs")
    foreign = [str(g)[:20] for g in figures if g not in job_gpus]
    if foreign:
        raise ValueError(f"GPU(s) {', '.join(foreign[:4])} are not this job's (Slurm gave it "
                         f"{','.join(job_gpus) or 'none'})")
    for g, item in figures.items():
        for key in ("memory_used", "memory_total"):
            value = item.get(key) if isinstance(item, dict) else None
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 <= value <= MAX_MEMORY):
                raise ValueError(f"GPU {g}: {key} must be a number of bytes from 0 to {MAX_MEMORY}")
    try:
        readings = parse_readings(figures, "utilisation report")
    except UtilisationError as e:
        raise ValueError(str(e)) from None
    simulated = body.get("simulated", True)
    if not isinstance(simulated, bool):
        raise ValueError("simulated must be true or false")
    return {"at": now, "simulated": simulated, "gpus": readings}


def holder_figures(figures: dict | None, node: str) -> dict:
    """The spawner's latest figures as the GPU-holders API shows them, keyed ``NODE:INDEX``."""
    if not figures:
        return {}
    return {f"{node}:{g}": {**r.as_dict(), "gpu": f"{node}:{g}", "node": node,
                            "at": figures["at"], "simulated": figures["simulated"]}
            for g, r in figures["gpus"].items()}
