"""What the minimal anchor relays share: command line, forwarded headers, sniff metering.

An anchor is the least a relay can do and still be one: forward frames both ways, forward the
auth and beta headers and the path, and meter ``response.done``. Metering sniffs: a substring
test for the quoted event name (base64 audio holds no ``"``, and a name quoted inside a JSON
string reads ``\\"response.done\\"``), then a parse of the hits only (docs/performance.md 6).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import ssl
from collections.abc import Callable
from typing import Any

DONE_STR = '"response.done"'
DONE_BYTES = b'"response.done"'


class Meter:
    """Counts ``response.done`` events and sums their tokens."""

    __slots__ = ("input_tokens", "output_tokens", "responses")

    def __init__(self) -> None:
        self.responses = 0
        self.input_tokens = 0
        self.output_tokens = 0

    def sniff(self, frame: str | bytes) -> None:
        """Meter one upstream frame if it is a ``response.done``."""
        hit = DONE_BYTES in frame if isinstance(frame, bytes) else DONE_STR in frame
        if not hit:
            return
        ev: Any = json.loads(frame)
        if not isinstance(ev, dict) or ev.get("type") != "response.done":
            return
        usage = (ev.get("response") or {}).get("usage") or {}
        self.responses += 1
        self.input_tokens += int(usage.get("input_tokens", 0))
        self.output_tokens += int(usage.get("output_tokens", 0))

    def dump(self, path: str) -> None:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(
                {
                    "responses": self.responses,
                    "input_tokens": self.input_tokens,
                    "output_tokens": self.output_tokens,
                },
                f,
            )
        os.replace(tmp, path)


def parse_args(default_port: int) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=default_port)
    ap.add_argument("--upstream", default="ws://127.0.0.1:9000")
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    ap.add_argument("--no-meter", action="store_true", help="pure pass-through (reference only)")
    ap.add_argument("--meter-file", default="", help="dump the meter here every 0.5 s")
    ap.add_argument("--upstream-cafile", default="", help="CA file to trust for a wss:// upstream")
    return ap.parse_args()


def upstream_ssl(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS context for a ``wss://`` upstream; None for ``ws://``. One for the process, as
    a relay keeps it: a context per dial parses the CA file per connection and holds it for the
    connection's life (~0.9 MB and ~20 ms each with a system bundle, docs/performance.md 9.11)."""
    if not str(args.upstream).startswith("wss://"):
        return None
    return _client_context(args.upstream_cafile)


@functools.cache
def _client_context(cafile: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile or None)


def upstream_headers(get: Callable[[str], str | None]) -> dict[str, str]:
    """The headers forwarded upstream, read with a case-insensitive getter."""
    h = {"Authorization": get("authorization") or "Bearer sk-missing"}
    beta = get("openai-beta")
    if beta:
        h["OpenAI-Beta"] = beta
    return h


async def meter_dumper(meter: Meter, path: str, every: float = 0.5) -> None:
    if not path:
        return
    while True:
        meter.dump(path)
        await asyncio.sleep(every)


def run(main: Callable[[], Any], loop: str) -> None:
    """Run ``main()`` on uvloop or the default asyncio loop."""
    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
