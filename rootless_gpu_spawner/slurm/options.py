"""What a student may ask Slurm for (partition, time, GPUs, CPUs, memory): checked, and the form.

Pure functions over the admin's :class:`SlurmLimits`. Anything wrong is an HTTP 400 that says
what is allowed, raised before anything is submitted.  The image goes through the local
spawner's own validation (:func:`..hub.user_options.validate_user_options`).
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from tornado import web

#: The Slurm settings a form or the REST API may carry (the admin picks which via ``slurm_form_options``).
SLURM_OPTION_KEYS = ("partition", "time", "gpus", "cpus", "memory")


@dataclass(frozen=True)
class SlurmLimits:
    partition: str
    partitions: tuple  # what the form may choose from (always includes ``partition``)
    time_minutes: int
    max_time_minutes: int
    gpus: int
    max_gpus: int
    cpus: int
    max_cpus: int
    memory_mb: int
    max_memory_mb: int
    changeable: tuple  # which of SLURM_OPTION_KEYS the student may change


def _int_option(name: str, value, low: int, high: int, unit: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise web.HTTPError(400, f"option '{name}' must be a whole number ({unit}), from {low} to {high}")
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise web.HTTPError(400, f"option '{name}' must be a whole number ({unit}), from {low} to {high}")
    number = int(text)
    if not low <= number <= high:
        raise web.HTTPError(400, f"option '{name}'={number} is out of range: choose {low} to {high} {unit}")
    return number


def validate_slurm_options(options: dict, limits: SlurmLimits) -> dict:
    """The job's settings: the admin's defaults, changed where the student may; 400 otherwise."""
    options = options or {}
    for key in SLURM_OPTION_KEYS:
        if key in options and options[key] not in (None, "") and key not in limits.changeable:
            raise web.HTTPError(400, f"option '{key}' cannot be changed here (the admin sets it)")
    result = {
        "partition": limits.partition, "time": limits.time_minutes, "gpus": limits.gpus,
        "cpus": limits.cpus, "memory": limits.memory_mb,
    }

    def given(key):
        return key in options and options[key] not in (None, "")

    if given("partition"):
        partition = options["partition"]
        if not isinstance(partition, str) or partition not in limits.partitions:
            shown = partition[:40] if isinstance(partition, str) else type(partition).__name__
            raise web.HTTPError(
                400, f"partition {shown!r} is not offered here; choose one of: {', '.join(limits.partitions)}"
            )
        result["partition"] = partition
    if given("time"):
        result["time"] = _int_option("time", options["time"], 1, limits.max_time_minutes, "minutes")
    if given("gpus"):
        result["gpus"] = _int_option("gpus", options["gpus"], 0, limits.max_gpus, "GPUs")
    if given("cpus"):
        result["cpus"] = _int_option("cpus", options["cpus"], 1, limits.max_cpus, "CPUs")
    if given("memory"):
        result["memory"] = _int_option("memory", options["memory"], 1, limits.max_memory_mb, "MB")
    return result


def render_slurm_fields(limits: SlurmLimits) -> str:
    """The form's fields for the settings the student may change (bilingual labels)."""
    parts = []
    if "partition" in limits.changeable and len(limits.partitions) > 1:
        opts = "".join(
            f'<option value="{escape(p)}"{" selected" if p == limits.partition else ""}>{escape(p)}</option>'
            for p in limits.partitions
        )
        parts.append(_group("rgs-partition", "Partition / 分区", f'<select class="form-control" '
                            f'name="partition" id="rgs-partition">{opts}</select>'))
    numbers = [
        ("gpus", "GPUs / GPU 数量", 0, limits.max_gpus, limits.gpus),
        ("time", "Time limit (minutes) / 时长（分钟）", 1, limits.max_time_minutes, limits.time_minutes),
        ("cpus", "CPUs / CPU 数量", 1, limits.max_cpus, limits.cpus),
        ("memory", "Memory (MB) / 内存（MB）", 1, limits.max_memory_mb, limits.memory_mb or 1),
    ]
    for key, label, low, high, value in numbers:
        if key in limits.changeable:
            parts.append(_group(
                f"rgs-{key}", label,
                f'<input class="form-control" type="number" name="{key}" id="rgs-{key}" '
                f'min="{low}" max="{high}" value="{value}">',
            ))
    return "\n".join(parts)


def _group(ident: str, label: str, field: str) -> str:
    return f'<div class="form-group"><label for="{ident}">{escape(label)}</label>{field}</div>'


def form_to_options(formdata: dict) -> dict:
    """The submitted form (lists of strings) as ``user_options`` (validated afterwards)."""
    out = {}
    for key in ("image",) + SLURM_OPTION_KEYS:
        values = formdata.get(key)
        if values:
            out[key] = values[0] if isinstance(values, list) else values
    return out
