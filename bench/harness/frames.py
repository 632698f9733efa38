"""Synthetic Realtime frames, send-time stamps and latency percentiles.

Every frame the harness sends carries ``event_id = "evt_<16 digits>"``: CLOCK_MONOTONIC
microseconds at send time. CLOCK_MONOTONIC is system-wide on Linux, so a stamp taken in one
process is read against the clock in another and one-way latency is exact on one machine.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable

TS_DIGITS = 16


def now_us() -> int:
    return time.monotonic_ns() // 1000


def audio_b64(n_chars: int, seed: int = 1) -> bytes:
    """Deterministic pseudo-random base64 payload of exactly ``n_chars`` characters."""
    raw = bytes((i * 1103515245 + seed * 12345) >> 7 & 0xFF for i in range(n_chars * 3 // 4))
    b = base64.b64encode(raw)
    if len(b) != n_chars:
        raise ValueError(f"{n_chars} is not a base64 length without padding (multiple of 4)")
    return b


def split_template(template: bytes) -> tuple[bytes, bytes]:
    """Split a frame at its one ``%TS%`` placeholder: the stamp goes between the two halves."""
    pre, suf = template.split(b"%TS%")
    return pre, suf


def parse_ts(payload: bytes | memoryview) -> int:
    """The send stamp in a frame's first 160 bytes, or -1.

    Robust to a relay that re-serialises the JSON, as long as it keeps ``event_id``.
    """
    head = bytes(payload[:160])
    i = head.find(b"evt_")
    if i < 0:
        return -1
    return int(head[i + 4 : i + 4 + TS_DIGITS])


def percentiles(
    samples: Iterable[int], ps: tuple[float, ...] = (50, 90, 99, 99.9)
) -> dict[str, float | int | None]:
    """Nearest-rank percentiles, max and mean of µs samples, in ms; ``n`` is the sample count."""
    s = sorted(samples)
    n = len(s)
    out: dict[str, float | int | None] = {"n": n}
    if not n:
        out.update({f"p{p}": None for p in ps})
        out["max"] = out["mean"] = None
        return out
    for p in ps:
        k = min(n - 1, max(0, round(p / 100.0 * n + 0.5) - 1))
        out[f"p{p}"] = s[k] / 1000.0
    out["max"] = s[-1] / 1000.0
    out["mean"] = sum(s) / n / 1000.0
    return out
