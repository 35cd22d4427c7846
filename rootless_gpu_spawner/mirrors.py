"""Docker Hub mirror health: skip a dead mirror fast, and skip it for a while after it failed.

A rootless daemon waits about 30 s on a mirror that does not answer before it
tries the next one, and it would do so again on every spawn. So before a pull
goes through a mirror, the hub checks it can open a TCP connection to it (a
couple of seconds at most), and a mirror that failed is left out of the list
for ``mirror_cooldown`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger(__name__)


def mirror_address(prefix: str, gateway_ip: str) -> tuple[str, int]:
    """Host and port to probe for a mirror prefix, as seen from the hub's host.

    The daemons' view of the host's loopback (the slirp4netns gateway) is
    probed on 127.0.0.1, which is what it forwards to.
    """
    hostport = prefix.split("/", 1)[0]
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else 443
    elif ":" in hostport:
        host, _, port_text = hostport.rpartition(":")
        port = int(port_text)
    else:
        host, port = hostport, 443
    if host == gateway_ip:
        host = "127.0.0.1"
    return host, port


class MirrorHealth:
    """Remembers failed mirrors for a cool-down period (per hub process)."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._failed_until: dict[str, float] = {}

    def usable(self, prefix: str) -> bool:
        until = self._failed_until.get(prefix)
        if until is None:
            return True
        if self._clock() >= until:
            del self._failed_until[prefix]
            return True
        return False

    def cooling_down(self) -> dict:
        now = self._clock()
        return {p: round(t - now) for p, t in self._failed_until.items() if t > now}

    def failed(self, prefix: str, cooldown: float) -> None:
        if cooldown > 0:
            self._failed_until[prefix] = self._clock() + cooldown

    def succeeded(self, prefix: str) -> None:
        self._failed_until.pop(prefix, None)


async def reachable(host: str, port: int, timeout: float) -> bool:
    """Can we open a TCP connection within ``timeout`` seconds (name lookup included)?"""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError) as e:
        log.info("mirror %s:%s unreachable: %s", host, port, e or type(e).__name__)
        return False
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True


health = MirrorHealth()
