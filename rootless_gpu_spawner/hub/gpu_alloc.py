"""Which GPUs exist on the host, and which running server holds which (``gpu_policy="exclusive"``).

One allocator per hub process: every student's spawner shares it, whatever
daemon their container runs on, because the GPUs are the host's.  Allocation
and release are synchronous and guarded by a lock, so two spawns that ask at
the same moment can never be handed the same GPU; the hub's event loop never
waits on anything while holding it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)


class NoFreeGPU(RuntimeError):
    """Not enough free GPUs; the message says how many are in use and what to do (no names)."""


class InventoryUnknown(RuntimeError):
    """Exclusive allocation without ``gpu_ids`` on a host where NVML does not answer."""


class GPURequestError(ValueError):
    """A request that can never be met (unknown id, over the limit)."""


@dataclass(frozen=True)
class GPUInfo:
    id: str
    name: str = ""
    memory_total: int | None = None  # bytes
    memory_used: int | None = None

    def describe(self) -> str:
        text = f"GPU {self.id}"
        if self.name:
            text += f" ({self.name})"
        if self.memory_total:
            text += f", {self.memory_used / 2**30:.1f} of {self.memory_total / 2**30:.1f} GiB in use"
        return text


def discover_nvml():
    """GPUs through NVML (``nvidia-ml-py``), or None when there is no driver/library.

    Indices are what ``NVIDIA_VISIBLE_DEVICES`` and ``docker --gpus device=``
    understand, so they are the ids we hand out.
    """
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        log.debug("NVML not available: %s", e)
        return None
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):
                name = name.decode()
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(GPUInfo(str(index), name, memory.total, memory.used))
        return gpus
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


class GPUAllocator:
    """Exclusive GPU assignments, keyed by server (hub user, server name)."""

    def __init__(self, inventory=None):
        self._lock = threading.Lock()
        self.inventory: list[str] | None = None
        self._held: dict[tuple, list[str]] = {}
        if inventory is not None:
            self.set_inventory(inventory)

    def set_inventory(self, inventory) -> None:
        """Known GPUs. May come after :meth:`restore` (NVML is asked lazily, off the loop)."""
        ids = [str(g) for g in inventory]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate GPU ids in {ids}")
        with self._lock:
            self.inventory = ids

    # ---- queries ---------------------------------------------------------

    def free(self) -> list[str]:
        with self._lock:
            return self._free_locked()

    def _free_locked(self) -> list[str]:
        taken = {g for ids in self._held.values() for g in ids}
        return [g for g in self.inventory or [] if g not in taken]

    def held_by(self, key) -> list[str]:
        with self._lock:
            return list(self._held.get(key, []))

    def held_by_user(self, user: str) -> int:
        with self._lock:
            return sum(len(ids) for (u, _), ids in self._held.items() if u == user)

    def snapshot(self) -> dict:
        with self._lock:
            return {k: list(v) for k, v in self._held.items()}

    # ---- changes -----------------------------------------------------------

    def allocate(self, key, request, limit: int | None = None) -> list[str]:
        """Give ``key`` GPUs for ``request`` (a count or a list of ids); idempotent per key.

        ``limit`` caps what one hub user holds across all their servers.
        """
        user = key[0]
        with self._lock:
            if self.inventory is None:
                raise RuntimeError("GPU inventory not known yet")
            if key in self._held:
                return list(self._held[key])
            if isinstance(request, int):
                count, wanted = request, None
            else:
                wanted = [str(g) for g in request]
                unknown = [g for g in wanted if g not in self.inventory]
                if unknown:
                    raise GPURequestError(
                        f"there is no GPU {','.join(unknown)} on this server; GPUs here: "
                        f"{','.join(self.inventory) or 'none'}"
                    )
                count = len(wanted)
            if count == 0:
                return []
            if count > len(self.inventory):
                raise GPURequestError(
                    f"you asked for {count} GPUs but this server has {len(self.inventory)}"
                )
            if limit is not None:
                mine = sum(len(ids) for (u, _), ids in self._held.items() if u == user)
                if mine + count > limit:
                    raise GPURequestError(
                        f"your limit is {limit} GPU(s) at a time and your other servers hold "
                        f"{mine}; ask for fewer or stop another server"
                    )
            free = self._free_locked()
            if wanted is not None:
                busy = [g for g in wanted if g not in free]
                if busy:
                    raise NoFreeGPU(
                        f"GPU {','.join(busy)} is in use by another server right now. Free GPUs: "
                        f"{','.join(free) or 'none'}. Pick free ones, ask for a count instead, "
                        "or start without a GPU and try again later."
                    )
                chosen = wanted
            else:
                if len(free) < count:
                    in_use = len(self.inventory) - len(free)
                    raise NoFreeGPU(
                        f"not enough free GPUs: you asked for {count}, {in_use} of "
                        f"{len(self.inventory)} are in use and {len(free)} free. Ask for "
                        f"{len(free) or 'no'} GPU(s), start without a GPU, or try again when "
                        "someone stops their server."
                    )
                chosen = free[:count]
            self._held[key] = list(chosen)
            return list(chosen)

    def release(self, key) -> list[str]:
        with self._lock:
            return self._held.pop(key, [])

    def restore(self, key, ids) -> list[str]:
        """Re-record what a running server held (hub restart); returns the ids kept.

        An id that is unknown now or already held by another server is logged
        and not recorded twice: no GPU is handed out twice afterwards.
        """
        ids = [str(g) for g in ids or []]
        with self._lock:
            if not ids:
                self._held.pop(key, None)
                return []
            others = {g for k, held in self._held.items() if k != key for g in held}
            known = self.inventory if self.inventory is not None else ids
            kept = [g for g in ids if g in known and g not in others]
            if kept != ids:
                log.warning(
                    "restoring GPUs %s for %s: keeping %s (others unknown or held elsewhere)",
                    ids, key, kept,
                )
            self._held[key] = kept
            return kept


# One allocator per hub process: the GPUs are the host's, whatever daemon a server uses.
_hub_allocator: GPUAllocator | None = None


def hub_allocator(gpu_ids=None) -> GPUAllocator:
    """The hub-wide allocator, created on first use (the inventory may follow later)."""
    global _hub_allocator
    if _hub_allocator is None:
        _hub_allocator = GPUAllocator(list(gpu_ids) if gpu_ids else None)
    return _hub_allocator


def existing_allocator() -> GPUAllocator | None:
    return _hub_allocator


async def allocator_with_inventory(gpu_ids=None) -> GPUAllocator:
    """The allocator with its inventory known: ``gpu_ids``, else NVML (asked off the event loop)."""
    allocator = hub_allocator(gpu_ids)
    if allocator.inventory is None:
        found = await asyncio.to_thread(discover_nvml)
        if not found:
            raise InventoryUnknown(
                "gpu_policy is 'exclusive' but no GPU inventory is known: NVML is not available "
                "on this host. Set RootlessGPUSpawner.gpu_ids, e.g. ['0', '1'], or install the "
                "NVIDIA driver and nvidia-ml-py."
            )
        allocator.set_inventory([g.id for g in found])
    return allocator


def gpu_details(inventory) -> list[GPUInfo]:
    """GPUInfo for each id, with name and memory from NVML when it is there (blocking)."""
    found = {g.id: g for g in (discover_nvml() or [])}
    return [found.get(i, GPUInfo(i)) for i in inventory]
