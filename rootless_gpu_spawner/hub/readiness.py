"""Readiness: when a started server answers HTTP.

Part of startup, with :mod:`.progress` (what the student sees) and :mod:`.admission` (how
many start at once): the admission slot is held exactly while the server is starting.
"""

from __future__ import annotations

import asyncio
import time

from tornado.httpclient import AsyncHTTPClient, HTTPClientError


async def wait_until_answering(url: str, timeout: float, poll: float = 0.05) -> bool:
    """Return as soon as *url* answers HTTP at all (any status); False after *timeout* seconds.

    The hub then finds the server up at its first check instead of after an
    exponential back-off step.  On timeout the hub's own wait reports the usual error.
    """
    client = AsyncHTTPClient()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
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
