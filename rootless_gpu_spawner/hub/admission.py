"""Admission: how many servers may be starting at once on this host.

When a class presses Start together, starting every container at the same
moment on a small host makes everyone wait for the slowest. A slot is held
from container start until the server answers HTTP, so students become
ready one after another. One limiter per hub process.
"""

from __future__ import annotations

import asyncio

_limiter: tuple | None = None  # (limit, asyncio.Semaphore)


class _Slot:
    def __init__(self, semaphore, feed):
        self.semaphore, self.feed = semaphore, feed

    async def __aenter__(self):
        if self.semaphore.locked():
            self.feed.emit(75, "waiting for a start slot: other servers are starting on this host")
        await self.semaphore.acquire()
        self.feed.emit(80, "starting the container")

    async def __aexit__(self, *exc):
        self.semaphore.release()


class _Unlimited:
    def __init__(self, feed):
        self.feed = feed

    async def __aenter__(self):
        self.feed.emit(80, "starting the container")

    async def __aexit__(self, *exc):
        return None


def start_slot(limit: int, feed):
    """An async context manager holding one of ``limit`` start slots (0: no limit)."""
    global _limiter
    if limit <= 0:
        return _Unlimited(feed)
    if _limiter is None or _limiter[0] != limit:
        _limiter = (limit, asyncio.Semaphore(limit))
    return _Slot(_limiter[1], feed)
