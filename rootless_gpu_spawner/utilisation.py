"""GPU utilisation: where the figures come from, what the last hour looked like, and idleness.

Two sources, one shape (``{gpu_id: Reading}``):

* :class:`NVMLSource` asks the driver (``nvidia-ml-py``) on the host the hub runs on.
* :class:`FileSource` reads a JSON file that something else writes: the tests (this testbed has
  no GPU), or a per-node exporter on a Slurm cluster.  Its figures are **simulated** when the
  file says so (``"simulated": true``); the board says where figures are simulated.

File format (``RGS_GPU_UTILISATION_FILE``)::

    {"simulated": true,
     "gpus": {"0": {"utilisation": 0, "memory_used": 0, "memory_total": 85899345920,
                    "name": "simulated GPU", "node": "gpu1"}}}

Everything below the sources is pure: :class:`History` keeps samples, :func:`idle_verdict`
decides on them, so both are unit-tested without a GPU.
"""

from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import dataclass, field

FILE_ENV = "RGS_GPU_UTILISATION_FILE"
MAX_FILE_BYTES = 1 << 20


class UtilisationError(RuntimeError):
    """The source cannot be read (file missing or malformed, NVML gone)."""


@dataclass(frozen=True)
class Reading:
    gpu: str
    utilisation: float  # percent, 0-100
    memory_used: int | None = None  # bytes
    memory_total: int | None = None
    name: str = ""
    node: str = ""

    def as_dict(self) -> dict:
        return {
            "gpu": self.gpu, "utilisation": self.utilisation, "memory_used": self.memory_used,
            "memory_total": self.memory_total, "name": self.name, "node": self.node,
        }


class NVMLSource:
    """Live figures from NVML on this host (never simulated)."""

    simulated = False
    description = "NVML on the hub's host"

    def read(self) -> dict[str, Reading]:
        try:
            import pynvml
            pynvml.nvmlInit()
        except Exception as e:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded
            raise UtilisationError(f"NVML is not available: {e}") from None
        try:
            return {r.gpu: r for r in map(_nvml_reading, range(pynvml.nvmlDeviceGetCount()))}
        except Exception as e:
            raise UtilisationError(f"NVML did not answer: {e}") from None
        finally:
            try:
                pynvml.nvmlShutdown()
            except Exception:
                pass


def _nvml_reading(index: int) -> Reading:
    import pynvml
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    name = pynvml.nvmlDeviceGetName(handle)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
    return Reading(
        str(index), float(rates.gpu), int(memory.used), int(memory.total),
        name.decode() if isinstance(name, bytes) else str(name),
    )


class FileSource:
    """Figures from a JSON file (tests, or an exporter per Slurm node); see the module doc."""

    def __init__(self, path: str):
        self.path = path
        self.simulated = True  # until the file says otherwise
        self.description = f"the file {path}"

    def read(self) -> dict[str, Reading]:
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            raise UtilisationError(f"cannot read {self.path}: {e.strerror}") from None
        if len(raw) > MAX_FILE_BYTES:
            raise UtilisationError(f"{self.path} is larger than {MAX_FILE_BYTES} bytes")
        doc = _parse(raw, self.path)
        self.simulated = bool(doc.get("simulated", True))
        return parse_readings(doc.get("gpus"), self.path)


def _parse(raw: bytes, where: str) -> dict:
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise UtilisationError(f"{where} is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise UtilisationError(f"{where}: expected an object with 'gpus'")
    return doc


def parse_readings(gpus, where: str) -> dict[str, Reading]:
    """``{"0": {"utilisation": 12, ...}}`` -> Readings; anything malformed is a UtilisationError."""
    if not isinstance(gpus, dict):
        raise UtilisationError(f"{where}: 'gpus' must be an object keyed by GPU id")
    out = {}
    for gpu, item in gpus.items():
        if not isinstance(item, dict):
            raise UtilisationError(f"{where}: GPU {gpu!r} must be an object")
        util = item.get("utilisation")
        if isinstance(util, bool) or not isinstance(util, (int, float)) or not 0 <= util <= 100:
            raise UtilisationError(f"{where}: GPU {gpu!r} needs 'utilisation' between 0 and 100")
        out[str(gpu)] = Reading(
            str(gpu), float(util), _int_or_none(item.get("memory_used")),
            _int_or_none(item.get("memory_total")), str(item.get("name", ""))[:100],
            str(item.get("node", ""))[:100],
        )
    return out


def _int_or_none(value):
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def source_from_env(path: str = ""):
    """The file named by ``path`` or ``$RGS_GPU_UTILISATION_FILE``, else NVML."""
    path = path or os.environ.get(FILE_ENV, "")
    return FileSource(path) if path else NVMLSource()


@dataclass
class History:
    """Samples per GPU over a sliding time span (seconds): ``(time, utilisation)``."""

    span: float = 3600.0
    samples: dict[str, deque] = field(default_factory=dict)

    def add(self, now: float, readings: dict[str, Reading]) -> None:
        for gpu, reading in readings.items():
            self.samples.setdefault(gpu, deque()).append((now, reading.utilisation))
        for series in self.samples.values():
            while series and series[0][0] < now - self.span:
                series.popleft()

    def series(self, gpu: str, since: float = float("-inf")) -> list[tuple[float, float]]:
        return [s for s in self.samples.get(gpu, ()) if s[0] >= since]


@dataclass(frozen=True)
class Verdict:
    idle: bool
    reason: str
    idle_since: float | None = None  # when utilisation last was at or above the threshold


def idle_verdict(history: History, gpus, held_since: float, now: float,
                 threshold: float, window: float) -> Verdict:
    """Idle when every GPU of ``gpus`` stayed under ``threshold`` % for the last ``window`` s.

    Only samples taken while the server held the GPUs count, and the server must have
    held them for the whole window: a server that just started is never idle.
    Unknown (no samples) is not idle: a source that fails never stops anyone's server.
    """
    if not gpus:
        return Verdict(False, "holds no GPU")
    if now - held_since < window:
        return Verdict(False, f"holds its GPUs for less than {window:g} s")
    start = now - window
    busy_at = held_since
    for gpu in gpus:
        series = history.series(gpu, since=held_since)
        if not [s for s in series if s[0] >= start]:
            return Verdict(False, f"no utilisation figures for GPU {gpu} in the last {window:g} s")
        busy = [t for t, util in series if util >= threshold]
        if busy and busy[-1] >= start:
            return Verdict(False, f"GPU {gpu} was at or above {threshold:g} % in the last {window:g} s")
        busy_at = max([busy_at] + busy)
    return Verdict(True, f"GPU(s) {','.join(gpus)} under {threshold:g} % for {window:g} s", busy_at)


def lease_ends(started: float | None, lease: float) -> float | None:
    """When a server's exclusive GPU lease runs out (``lease`` seconds; 0 = no lease)."""
    if not lease or started is None:
        return None
    return started + lease
