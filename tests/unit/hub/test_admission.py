"""admission.start_slot: at most ``limit`` servers starting at once; a waiting start says so."""

import asyncio

from rootless_gpu_spawner.hub import admission


class Feed:
    def __init__(self):
        self.events = []

    def emit(self, percent, message):
        self.events.append((percent, message))


async def test_no_more_than_the_limit_start_at_once_and_the_waiting_ones_say_so():
    running, most = 0, 0
    feeds = [Feed() for _ in range(5)]

    async def start(feed):
        nonlocal running, most
        async with admission.start_slot(2, feed):
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.01)
            running -= 1

    await asyncio.gather(*(start(f) for f in feeds))
    assert most == 2
    waited = [f for f in feeds if any("waiting for a start slot" in m for _p, m in f.events)]
    assert len(waited) == 3
    assert all(f.events[-1] == (80, "starting the container") for f in feeds)


async def test_a_slot_is_given_back_when_the_start_fails():
    feed = Feed()
    for _ in range(3):
        try:
            async with admission.start_slot(1, feed):
                raise RuntimeError("container failed")
        except RuntimeError:
            pass
    async with admission.start_slot(1, feed):  # not stuck
        pass
    assert not any("waiting" in m for _p, m in feed.events)


async def test_zero_means_no_limit():
    feeds = [Feed() for _ in range(4)]
    inside = 0

    async def start(feed):
        nonlocal inside
        async with admission.start_slot(0, feed):
            inside += 1
            await asyncio.sleep(0.01)

    await asyncio.gather(*(start(f) for f in feeds))
    assert inside == 4 and all(f.events == [(80, "starting the container")] for f in feeds)
