"""A container's last log lines, read bounded from the student's daemon.

``GET /containers/ID/logs`` of a container without a TTY is Docker's multiplexed stream (8-byte
frame headers, then the bytes): not UTF-8 text, so it is read raw here, never through the
client's text checks, at most ``max_bytes``, and the frames are taken apart by
:func:`demultiplex`.  What comes out is still the student's text: callers make it printable.
"""

from __future__ import annotations

MAX_LOG_BYTES = 64 * 1024


def demultiplex(data: bytes) -> bytes:
    """The payload of Docker's multiplexed log frames; data that is not framed is kept as it is."""
    out, i = [], 0
    while i + 8 <= len(data):
        kind, size = data[i], int.from_bytes(data[i + 4:i + 8], "big")
        if kind not in (0, 1, 2) or data[i + 1:i + 4] != b"\0\0\0":
            return b"".join(out) + data[i:]  # a TTY container: plain bytes
        out.append(data[i + 8:i + 8 + size])
        i += 8 + size
    return b"".join(out)  # a frame cut by the byte cap keeps what arrived


def read_logs(client, ident: str, tail: int, max_bytes: int = MAX_LOG_BYTES) -> bytes:
    """stdout and stderr of the container's last ``tail`` lines (runs on the daemon's thread)."""
    params = {"stdout": 1, "stderr": 1, "tail": int(tail), "follow": 0, "timestamps": 0}
    response = client._get(client._url("/containers/{0}/logs", ident), params=params, stream=True)
    try:
        client._raise_for_status(response)
        data = b""
        while len(data) < max_bytes:
            chunk = response.raw.read(min(65536, max_bytes - len(data)))
            if not chunk:
                break
            data += chunk
    finally:
        response.close()
    return demultiplex(data)
