"""The GPUs one server holds under the exclusive policy: allocate them at start, keep them
while the server still answers (whatever its daemon says), release them when it is gone.
The allocator itself is :mod:`.gpu_alloc`; :class:`GPUHolding` is a mixin of
:class:`~rootless_gpu_spawner.spawner.RootlessGPUSpawner`.
"""

from __future__ import annotations

from ..errors import SpawnRefused
from . import gpu_alloc
from .gpu_alloc import GPURequestError, InventoryUnknown, NoFreeGPU


class GPUHolding:
    """This server's GPU assignment (a mixin of RootlessGPUSpawner)."""

    def _release_gpus(self):
        if self._gpus_kept:
            # Still in use as far as the hub can see: the allocator keeps them for this
            # server's key (its next start gets them back; nobody else does).
            self._gpus_kept = False
            self.gpu_assignment = []
            return
        if self.gpu_assignment or self.gpu_policy == "exclusive":
            allocator = gpu_alloc.existing_allocator()
            released = allocator.release(self._user_key()) if allocator else []
            if released:
                self.log.info("GPUs %s of %s released", ",".join(released), self._log_name)
        self.gpu_assignment = []

    async def _allocator_with_inventory(self):
        try:
            return await gpu_alloc.allocator_with_inventory(self.gpu_ids)
        except InventoryUnknown as e:
            raise SpawnRefused(500, str(e)) from None

    async def _allocate_gpus(self, request):
        allocator = await self._allocator_with_inventory()
        try:
            ids = allocator.allocate(self._user_key(), request, limit=self.gpu_limit())
        except GPURequestError as e:
            raise SpawnRefused(400, str(e)) from None
        except NoFreeGPU as e:
            raise SpawnRefused(409, str(e)) from None
        self.gpu_assignment = ids
        if ids:
            self.log.info("GPUs %s assigned to %s", ",".join(ids), self._log_name)
        return ids or 0

    async def _settle_gpus(self):
        """Keep a server's GPUs held while its server still answers, whatever its daemon says."""
        if self.gpu_assignment and not await self._server_gone():
            self._gpus_kept = True
            self.log.warning(
                "GPUs %s of %s stay held: its server still answers on %s:%s",
                ",".join(self.gpu_assignment), self._log_name, self.host_ip, self.host_port,
            )
