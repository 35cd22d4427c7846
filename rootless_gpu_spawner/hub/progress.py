"""Spawn progress for JupyterHub's progress bar, fed from the event loop or worker threads."""

from __future__ import annotations

import asyncio
import time


def human_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def pull_message(image: str, source: str, done: int, total: int) -> str:
    """"pulling python:3.11 from mirror mirror.example: 1.2 GB of 3.4 GB".

    ``source`` names where the bytes come from in words (``PullSource.label``:
    "the lab cache", "mirror quay.nju.edu.cn", "quay.io (upstream)").
    """
    if total:
        return f"pulling {image} from {source}: {human_bytes(done)} of {human_bytes(total)}"
    return f"pulling {image} from {source}"


class ProgressFeed:
    """Events of one spawn; ``follow()`` replays them and waits for more until closed."""

    def __init__(self, log=None, who: str = ""):
        self.log, self.who = log, who
        self.events: list[dict] = []
        self.closed = False
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._last_threaded = 0.0
        self._last_progress = 0
        self._bar = 0

    def emit(self, progress: int | None, message: str) -> None:
        event = {"message": message}
        if progress is not None:
            # The bar never moves backwards.
            self._bar = max(self._bar, int(progress))
            event["progress"] = self._bar
        self.events.append(event)
        self._changed.set()
        if self.log is not None:
            self.log.info("progress of %s %s%%: %s", self.who, event.get("progress", "-"), message)

    def emit_threadsafe(self, progress: int, message: str, min_interval: float = 0.5, min_step: int = 5) -> None:
        """From a worker thread (pull stream): an event when ``min_interval`` passed
        or the bar moved ``min_step`` points, so fast pulls still show their bytes."""
        now = time.monotonic()
        if now - self._last_threaded < min_interval and progress - self._last_progress < min_step:
            return
        self._last_threaded, self._last_progress = now, progress
        self._loop.call_soon_threadsafe(self.emit, progress, message)

    def close(self) -> None:
        self.closed = True
        self._changed.set()

    async def follow(self):
        index = 0
        while True:
            while index < len(self.events):
                yield self.events[index]
                index += 1
            if self.closed:
                return
            self._changed.clear()
            await self._changed.wait()
