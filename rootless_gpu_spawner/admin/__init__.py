"""``rootless-gpu-admin``, the root CLI: the command line (:mod:`.cli`), the doctor's checks
(:mod:`.checks`) and bootstrap's steps (:mod:`.bootstrap`).

Imports ``host`` and the core package, never ``hub``.
"""

from .cli import build_parser, main

__all__ = ["build_parser", "main"]
