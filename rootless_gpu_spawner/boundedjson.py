"""JSON from a student (their daemon.json, their daemon's API answers), parsed with bounds.

``json.loads`` on hostile input can raise RecursionError (``[[[[...`` a few
thousand deep), which is not a ValueError and so used to escape every
``except ValueError`` and abort ``doctor`` / ``bootstrap`` / ``status`` for all
later students.  Here the size and the nesting depth are checked *before*
parsing (a linear scan, no recursion), and every way parsing can fail becomes
one typed error, :class:`UntrustedJSONError`, which callers turn into that one
student's failed check with a fix.
"""

from __future__ import annotations

import json
from typing import Union

#: Largest JSON document read from a student (daemon.json, /info, /version).
MAX_BYTES = 1 << 20
#: Deepest nesting accepted; real daemon.json files and /info answers stay below 10.
MAX_DEPTH = 64


class UntrustedJSONError(ValueError):
    """The text is too large, too deep, not UTF-8 or not JSON; the message says which."""


def _depth(data: bytes) -> int:
    """Deepest ``[``/``{`` nesting outside strings (a single pass, no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def loads(raw: Union[bytes, str], *, limit: int = MAX_BYTES, max_depth: int = MAX_DEPTH):
    """Parse *raw* (at most *limit* bytes, *max_depth* levels) or raise UntrustedJSONError."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    if len(data) > limit:
        raise UntrustedJSONError(f"larger than {limit} bytes")
    depth = _depth(data)
    if depth > max_depth:
        raise UntrustedJSONError(f"nested {depth} levels deep (at most {max_depth})")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise UntrustedJSONError("not UTF-8 text") from None
    except RecursionError:
        raise UntrustedJSONError("nested too deeply") from None
    except ValueError as e:
        raise UntrustedJSONError(f"not valid JSON ({_where(e)})") from None


def loads_object(raw: Union[bytes, str], *, limit: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> dict:
    """Like :func:`loads`, and the document must be a JSON object."""
    value = loads(raw, limit=limit, max_depth=max_depth)
    if not isinstance(value, dict):
        raise UntrustedJSONError(f"a JSON {type(value).__name__}, not an object")
    return value


def _where(e: ValueError) -> str:
    """Position only: json's message quotes nothing of the input, but keep it short."""
    line, col = getattr(e, "lineno", None), getattr(e, "colno", None)
    return f"line {line} column {col}" if line is not None else type(e).__name__
