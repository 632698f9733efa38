"""RSS by imported package: which imports make up a process's fixed footprint.

Put this directory first on ``PYTHONPATH`` and Python imports it at start-up (as
``sitecustomize``): every module's execution is then timed in RSS, and each package is charged
what its modules added, less what the modules they imported added (those are charged to their
own package). rtgate's modules are charged by subpackage (``rtgate.store``). Six seconds after
start (``MEMPROF_DELAY``) the totals go to ``MEMPROF_OUT`` (``/tmp/memprof.out``), largest
first, then the RSS at that moment. The hook costs ~1.5 MB of RSS itself, and figures under
~0.5 MB are noise (pymalloc's arenas are charged to the module that first touches them).

    PYTHONPATH=bench/import_rss:src python -m rtgate serve     # docs/performance.md 9.3
"""

from __future__ import annotations

import contextlib
import importlib.abc
import os
import sys
import threading
import time
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1048576


#: For each module executing now: its RSS at the start, and what its imports added.
_stack: list[list[float]] = []
_charged: dict[str, float] = {}


def _package(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "rtgate" else parts[0]


class _Timed(importlib.abc.MetaPathFinder):
    """Finds what the other finders find, and times the loader's ``exec_module``."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec: ModuleSpec | None = finder.find_spec(name, path, target)
            if spec is None:
                continue
            loader: Any = spec.loader
            if loader is not None and hasattr(loader, "exec_module"):
                run, package = loader.exec_module, _package(name)

                def timed(module: ModuleType, run: Any = run, package: str = package) -> None:
                    _stack.append([_rss_mb(), 0.0])
                    try:
                        run(module)
                    finally:
                        start, children = _stack.pop()
                        added = _rss_mb() - start
                        _charged[package] = _charged.get(package, 0.0) + added - children
                        if _stack:
                            _stack[-1][1] += added

                # A loader that takes no attributes is left untimed.
                with contextlib.suppress(AttributeError, TypeError):
                    loader.exec_module = timed
            return spec
        return None


def _report() -> None:
    time.sleep(float(os.environ.get("MEMPROF_DELAY", "6")))
    with open(os.environ.get("MEMPROF_OUT", "/tmp/memprof.out"), "w") as out:
        for package, mb in sorted(_charged.items(), key=lambda kv: -kv[1]):
            out.write(f"{mb:7.2f} {package}\n")
        out.write(f"total {_rss_mb():.1f}\n")


sys.meta_path.insert(0, _Timed())
threading.Thread(target=_report, daemon=True).start()
