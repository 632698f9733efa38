"""The serving process's fixed footprint in layers: what a picows relay imports, then what rtgate
adds besides aiohttp, then aiohttp's server (with its client, which ``aiohttp`` imports), each
as the RSS it adds to one fresh interpreter (docs/performance.md 9.17).

    .venv/bin/python bench/import_rss/layers.py
    .venv/bin/python bench/import_rss/layers.py --beside aiohttp.web prometheus_client

``--beside MODULES``: what each comma-separated group of modules adds to an interpreter that
holds every other library layer (the picows relay's imports and rtgate's other libraries, and
aiohttp unless the group is aiohttp's), a fresh interpreter per group: the cost of one library
beside the rest, or of an alternative to aiohttp (docs/performance.md 9.18; the alternatives
are not rtgate's dependencies: measure them in a venv that has them).

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


def _hide() -> None:
    os.environ.setdefault("FROZENLIST_NO_EXTENSIONS", "1")
    for name in ("rich", "greenlet"):
        sys.modules[name] = None  # type: ignore[assignment]


def beside(group: str) -> float:
    """In this (fresh) interpreter: the RSS ``group`` adds to every other layer."""
    _hide()
    wanted = group.split(",")
    for _label, modules in LAYERS:
        for module in modules:
            if module not in wanted and not (module == "aiohttp.web" and "aiohttp" in group):
                importlib.import_module(module)
    gc.collect()
    before = rss_mb()
    for module in wanted:
        importlib.import_module(module)
    gc.collect()
    return rss_mb() - before


def weigh(argv: list[str]) -> None:
    """``--beside``: each group in an interpreter of its own."""
    import argparse
    import subprocess

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--beside", nargs="*", default=[], help="module groups (a,b,c) to weigh")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one is not None:
        print(f"{beside(a.one):.2f}")
        return
    for group in a.beside:
        out = subprocess.run(
            [sys.executable, __file__, "--one", group], capture_output=True, text=True
        )
        added = out.stdout.strip() or out.stderr.strip().splitlines()[-1]
        print(f"  +{added} MB  {group}")


def main() -> None:
    if len(sys.argv) > 1:
        # Its modules stay out of the layers' interpreter, whose first figure is the bare one.
        weigh(sys.argv[1:])
        return
    _hide()
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
