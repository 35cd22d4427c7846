"""Readiness: when a started server answers HTTP.

Part of startup, with :mod:`.progress` (what the student sees) and :mod:`.admission` (how
many start at once): the admission slot is held exactly while the server is starting.
"""

from __future__ import annotations

import asyncio
import time

from tornado.httpclient import AsyncHTTPClient, HTTPClientError


WATCH_INTERVAL = 0.5  # seconds between looks at the container while it starts


async def wait_until_answering(url: str, timeout: float, poll: float = 0.05, watch=None) -> bool:
    """Return as soon as *url* answers HTTP at all (any status); False after *timeout* seconds.

    The hub then finds the server up at its first check instead of after an
    exponential back-off step.  On timeout the hub's own wait reports the usual error.
    ``watch`` (a coroutine function) is awaited every ``WATCH_INTERVAL`` seconds and raises
    when the server cannot come up any more (its container exited): the spawn fails then,
    not at the timeout.
    """
    client = AsyncHTTPClient()
    deadline = time.monotonic() + timeout
    next_watch = time.monotonic() + WATCH_INTERVAL
    while time.monotonic() < deadline:
        if watch is not None and time.monotonic() >= next_watch:
            await watch()
            next_watch = time.monotonic() + WATCH_INTERVAL
        try:
            await client.fetch(url, connect_timeout=1, request_timeout=2, follow_redirects=False)
            return True
        except HTTPClientError as e:
            if e.code != 599:
                return True  # an HTTP answer, even 403 or 302: the server is up
        except (OSError, ConnectionError):
            pass
        await asyncio.sleep(poll)
    return False
