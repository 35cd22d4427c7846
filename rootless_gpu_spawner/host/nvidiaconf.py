"""Read and edit ``no-cgroups`` in the NVIDIA Container Toolkit's config.toml.

Why: a rootless dockerd cannot write the devices cgroup, so with the stock
setting ``nvidia-container-cli`` fails with "failed to add device rules:
... devices.allow: permission denied".  ``no-cgroups = true`` in the
``[nvidia-container-cli]`` table makes it skip that step (the GPUs are then
reachable through the device nodes the runtime mounts, which is what
rootless ``--gpus`` needs).

The file is full of commented defaults (``#no-cgroups = false``) that admins
read, so it is edited line by line instead of being parsed and re-dumped
(which would lose every comment): inside the ``[nvidia-container-cli]`` table
an active ``no-cgroups = ...`` line gets its value replaced (keeping its
indentation and trailing comment), else the first commented
``#no-cgroups = ...`` line is uncommented, else the key is added at the end
of the table; a missing table is appended.  Multi-line strings are skipped
so a line inside one is never taken for a table header.  When ``tomllib``
is available (Python >= 3.11) the result is checked to parse to exactly the
old document plus that one value, otherwise the edit is refused.

Why hand-written and not tomlkit: tomlkit keeps comments, but it treats the
stock ``#no-cgroups = false`` line as a comment it cannot turn into the key;
setting the key adds a second ``no-cgroups = true`` line at the end of the
table and leaves the commented default above it, which reads as two
contradicting settings to an admin.  The edit here uncomments that default
line in place (what the toolkit's own documentation tells admins to do) and
reports its line number.  ``tomllib`` (stdlib) still checks the result.

Pure text functions: no file access here (see admin/bootstrap.py for the
atomic write with a ``.bak`` copy).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

try:  # Python >= 3.11
    import tomllib as _toml
except ImportError:  # pragma: no cover - older Pythons only lose the self-check
    try:
        import tomli as _toml  # type: ignore
    except ImportError:
        _toml = None

TABLE = "nvidia-container-cli"
KEY = "no-cgroups"
DEFAULT_PATH = "/etc/nvidia-container-runtime/config.toml"

_HEADER = re.compile(r"^\s*\[(?!\[)\s*(?P<name>[^\]\[#]+?)\s*\]\s*(?:#.*)?$")
_ARRAY_HEADER = re.compile(r"^\s*\[\[")
_ACTIVE = re.compile(
    r"^(?P<indent>\s*)(?P<key>" + re.escape(KEY) + r'|"' + re.escape(KEY) + r'"|\'' + re.escape(KEY) + r"')"
    r"(?P<eq>\s*=\s*)(?P<value>[^#\n]*?)(?P<rest>\s*(?:#.*)?)$"
)
_COMMENTED = re.compile(r"^(?P<indent>\s*)#+\s*" + re.escape(KEY) + r"\s*=")
_ROOT_DOTTED = re.compile(r"^\s*\"?" + re.escape(TABLE) + r"\"?\s*\.")


class NvidiaConfigError(ValueError):
    """The file cannot be read or edited safely; the message says what to do."""


@dataclass(frozen=True)
class Edit:
    """Result of :func:`set_no_cgroups`."""

    text: str  # the new file content (== the old one when nothing changes)
    changed: bool
    how: str  # a sentence for the admin: what was (or would be) done


def _table_name(raw: str) -> str:
    parts = [p.strip().strip('"').strip("'") for p in raw.split(".")]
    return ".".join(parts)


def _scan(lines: list[str]):
    """Yield (index, line, table) for lines outside multi-line strings.

    *table* is the table the line belongs to ("" = root); header lines are
    yielded with the table they open.
    """
    table = ""
    in_multi: Optional[str] = None
    for i, line in enumerate(lines):
        if in_multi:
            if line.count(in_multi) % 2 == 1:
                in_multi = None
            continue
        m = _HEADER.match(line)
        if m and not _ARRAY_HEADER.match(line):
            table = _table_name(m.group("name"))
        elif _ARRAY_HEADER.match(line):
            table = "[[" + line.strip() + "]]"  # never our table
        yield i, line, table
        if line.lstrip().startswith("#"):
            continue
        for q in ('"""', "'''"):
            if line.count(q) % 2 == 1:
                in_multi = q
                break


def _parse(text: str, path: str):
    if _toml is None:
        return None
    try:
        return _toml.loads(text)
    except Exception as e:  # tomllib.TOMLDecodeError, tomli's equivalent
        raise NvidiaConfigError(
            f"{path} is not valid TOML ({e}); fix it by hand before anything edits it "
            f"(reinstalling nvidia-container-toolkit restores the default file)."
        ) from None


def read_no_cgroups(text: str, path: str = DEFAULT_PATH) -> Optional[bool]:
    """The value of ``[nvidia-container-cli] no-cgroups`` (None when unset).

    Raises NvidiaConfigError for a file that does not parse or a value that
    is not a boolean.
    """
    data = _parse(text, path)
    if data is not None:
        value = (data.get(TABLE) or {}).get(KEY) if isinstance(data.get(TABLE), dict) else None
        if value is not None and not isinstance(value, bool):
            raise NvidiaConfigError(f"{path}: [{TABLE}] {KEY} = {value!r} is not true/false")
        return value
    # Without a TOML parser: the same line scan the editor uses.
    for _i, line, table in _scan(text.splitlines()):
        if table == TABLE:
            m = _ACTIVE.match(line)
            if m:
                v = m.group("value").strip()
                if v in ("true", "false"):
                    return v == "true"
                raise NvidiaConfigError(f"{path}: [{TABLE}] {KEY} = {v} is not true/false")
    return None


def set_no_cgroups(text: str, path: str = DEFAULT_PATH) -> Edit:
    """Return *text* with ``no-cgroups = true`` in ``[nvidia-container-cli]``.

    Comments, blank lines, key order and every other value are kept byte for
    byte; only one line is changed or added.  Idempotent: a file that already
    says ``true`` comes back unchanged.
    """
    before = _parse(text, path)
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = text.splitlines()
    header_at = None
    active, commented, last_in_table = [], [], None
    root_dotted = False
    for i, line, table in _scan(lines):
        if table == "" and _ROOT_DOTTED.match(line):
            root_dotted = True
        if table != TABLE:
            continue
        if header_at is None and _HEADER.match(line):
            header_at = i
            last_in_table = i
            continue
        if line.strip() and not line.lstrip().startswith("#"):
            last_in_table = i
        if _ACTIVE.match(line):
            active.append(i)
        elif _COMMENTED.match(line):
            commented.append(i)

    if len(active) > 1:
        raise NvidiaConfigError(
            f"{path}: {KEY} is set {len(active)} times in [{TABLE}] (lines "
            f"{', '.join(str(i + 1) for i in active)}); remove all but one by hand."
        )
    if active:
        i = active[0]
        m = _ACTIVE.match(lines[i])
        if m.group("value").strip() == "true":
            return Edit(text, False, f"{path}: [{TABLE}] {KEY} = true already (line {i + 1})")
        old = lines[i]
        lines[i] = f"{m.group('indent')}{m.group('key')}{m.group('eq')}true{m.group('rest')}"
        how = f"{path} line {i + 1}: {old.strip()!r} -> {lines[i].strip()!r}"
    elif header_at is not None and commented:
        i = commented[0]
        old = lines[i]
        lines[i] = f"{_COMMENTED.match(old).group('indent')}{KEY} = true"
        how = f"{path} line {i + 1}: uncommented {old.strip()!r} as {lines[i].strip()!r}"
    elif header_at is not None:
        i = last_in_table + 1
        lines.insert(i, f"{KEY} = true")
        how = f"{path} line {i + 1}: added '{KEY} = true' at the end of [{TABLE}]"
    else:
        if root_dotted:
            raise NvidiaConfigError(
                f"{path} sets {TABLE}.* keys without a [{TABLE}] table; add '{KEY} = true' there by hand."
            )
        while lines and not lines[-1].strip():
            lines.pop()
        if lines:
            lines.append("")
        lines += [f"[{TABLE}]", f"{KEY} = true"]
        how = f"{path}: added a [{TABLE}] table with '{KEY} = true'"
    new = newline.join(lines) + newline
    if before is not None:
        after = _parse(new, path)
        expected = dict(before)
        expected[TABLE] = dict(before.get(TABLE) or {})
        expected[TABLE][KEY] = True
        if after != expected:  # pragma: no cover - a bug guard, never reached by the tests
            raise NvidiaConfigError(
                f"refusing to edit {path}: the line edit would change more than [{TABLE}] {KEY}; "
                f"set '{KEY} = true' under [{TABLE}] by hand."
            )
    return Edit(new, True, how)
