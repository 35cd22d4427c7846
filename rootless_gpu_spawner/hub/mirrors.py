"""Docker Hub mirror health: skip a dead mirror fast, and skip it for a while after it failed.

A rootless daemon waits on a mirror that does not answer (10 s for a TLS
handshake that never ends, longer for a connect) before it tries the next
one, and it would do so again on every spawn. So before a pull goes through a
mirror, the hub checks that it answers HTTP (a couple of seconds at most),
and a mirror that failed is left out for ``mirror_cooldown`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
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
    """Does a registry answer HTTP at ``host:port`` within ``timeout`` seconds (all included)?

    A TCP connect alone is not enough: a hung mirror may accept connections
    and never answer, and the daemon would then wait ~10 s for its TLS
    handshake. So the probe asks for ``/v2/`` over TLS, and over plain HTTP
    when the server does not speak TLS (an insecure local registry); any HTTP
    status line counts as alive (401 is normal for a registry).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for use_tls in (True, False):
        left = deadline - loop.time()
        if left <= 0:
            break
        try:
            return await asyncio.wait_for(_http_status_line(host, port, use_tls), left)
        except ssl.SSLError as e:
            # Not TLS (e.g. "wrong version number"): try plain HTTP with the time left.
            log.debug("mirror %s:%s: no TLS (%s), trying plain HTTP", host, port, e)
            continue
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
            log.info("mirror %s:%s unreachable: %s", host, port, e or type(e).__name__)
            return False
    log.info("mirror %s:%s did not answer within %s s", host, port, timeout)
    return False


async def _http_status_line(host: str, port: int, use_tls: bool) -> bool:
    context = None
    if use_tls:
        # Liveness only: no certificate check (the daemon does that when it pulls).
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(host, port, ssl=context)
    try:
        writer.write(f"GET /v2/ HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
        await writer.drain()
        line = await reader.readline()
        return line.startswith(b"HTTP/")
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass


health = MirrorHealth()
