"""How rtgate starts Python processes of its own: ``rtgate serve`` re-executing itself as the
server (``cli.serve``) and the parent of ``--workers N`` starting each worker (``workers.py``),
with this interpreter and its flags, as ``multiprocessing`` starts its processes."""

from __future__ import annotations

import subprocess
import sys


def python_m(module: str, *args: str) -> list[str]:
    """``python -m MODULE ARGS`` with this interpreter and its flags (``-X dev``, ``-O``,
    ``-B``)."""
    flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    return [sys.executable, *flags, "-m", module, *args]
