"""Text that came from somewhere a student controls, made safe to print or log.

A student's daemon, their files and their container logs can hold escape
sequences (which rewrite root's terminal), carriage returns and newlines
(which forge log lines), or megabytes of text.  Everything of that kind goes
through :func:`printable` before it reaches a terminal, a log line or the
student's spawn page: control characters become ``\\xNN`` escapes, the text is
cut to a bound, and nothing else changes, so an ordinary message reads as is.
"""

from __future__ import annotations

import unicodedata

DEFAULT_LIMIT = 500


def printable(value, limit: int = DEFAULT_LIMIT, keep_newlines: bool = False) -> str:
    """``value`` as one line (or lines, with ``keep_newlines``) of plain printable text.

    Non-text values are turned into text first (``bytes`` decoded with
    replacement), then every control or format character (C0, DEL, C1, the
    bidirectional overrides) is written as an escape; the result is at most
    ``limit`` characters, marked with ``...`` when cut.
    """
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value[: limit * 4 + 4]).decode("utf-8", "replace")
    elif isinstance(value, str):
        text = value[: limit * 4 + 4]
    else:
        text = str(value)[: limit * 4 + 4]
    out = []
    for ch in text:
        if keep_newlines and ch == "\n":
            out.append(ch)
        elif ch == "\t":
            out.append(" ")
        elif _is_control(ch):
            out.append(_escape(ch))
        else:
            out.append(ch)
    result = "".join(out)
    if len(result) > limit:
        result = result[: max(0, limit - 3)] + "..."
    return result


def printable_lines(lines, limit_lines: int = 20, limit_chars: int = 300) -> list[str]:
    """The last ``limit_lines`` lines, each made :func:`printable` (e.g. a log tail)."""
    if isinstance(lines, (bytes, bytearray)):
        lines = bytes(lines).decode("utf-8", "replace")
    if isinstance(lines, str):
        lines = lines.splitlines()
    return [printable(line, limit_chars) for line in list(lines)[-limit_lines:]]


def _is_control(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
