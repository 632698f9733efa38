"""The serving process's fixed footprint in layers: what a picows relay imports, then what rtgate
adds besides aiohttp, then aiohttp's server (with its client, which ``aiohttp`` imports), each
as the RSS it adds to one fresh interpreter (docs/performance.md 9.17).

    .venv/bin/python bench/import_rss/layers.py

rtgate's own modules and what they build at start-up are the rest of ``rtgate serve``'s idle
RSS (the relay bench's fixed footprint). As in ``rtgate serve``'s process, rich and greenlet are
hidden from structlog (``rtgate.logs``) and frozenlist uses its pure-Python class
(``rtgate.server``).
"""

from __future__ import annotations

import gc
import importlib
import os
import sys

LAYERS = (
    (
        "a picows relay's imports",
        ("asyncio", "ssl", "logging", "json", "argparse", "uvloop", "picows"),
    ),
    (
        "rtgate's other libraries",
        (
            "structlog",
            "prometheus_client",
            "msgspec",
            "orjson",
            "sqlite3",
            "decimal",
            "hmac",
            "secrets",
            "csv",
            "ctypes",
        ),
    ),
    ("aiohttp's server and client", ("aiohttp.web",)),
)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1048576


def main() -> None:
    os.environ.setdefault("FROZENLIST_NO_EXTENSIONS", "1")
    for name in ("rich", "greenlet"):
        sys.modules[name] = None  # type: ignore[assignment]
    before = rss_mb()
    print(f"{before:6.1f} MB  the interpreter")
    for label, modules in LAYERS:
        for module in modules:
            importlib.import_module(module)
        gc.collect()
        now = rss_mb()
        print(f"{now:6.1f} MB  +{now - before:4.1f}  {label}")
        before = now


if __name__ == "__main__":
    main()
