"""Failed authentications per source address, so that a flood of bad keys is refused before it
costs a store lookup. No I/O.

Each source holds a token bucket of failures: ``burst`` at once, refilled at ``per_minute``. A
source whose bucket is empty is throttled: its attempts are refused unchecked, a valid key's too,
until one failure's worth has refilled; then one attempt is checked again. Successes are not
counted and refill nothing (one good key must not reset a flood of bad ones), and a source that
is not failing never meets the throttle.

A source is an IPv4 address, or an IPv6 /64 (what one host is usually given, so rotating through
it gains nothing). At most ``max_sources`` are tracked, the one that failed least recently
dropped first, so memory stays bounded under a flood from many addresses; a dropped source starts
afresh.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: About 250 bytes each: a few MB at most.
MAX_SOURCES = 16384


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class FailureThrottle:
    def __init__(self, burst: int, per_minute: float, max_sources: int = MAX_SOURCES) -> None:
        self.burst = burst
        self._per_second = per_minute / 60
        self._max_sources = max_sources
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _level(self, bucket: _Bucket, now: float) -> float:
        return min(self.burst, bucket.tokens + (now - bucket.at) * self._per_second)

    def wait(self, source: str, now: float) -> float:
        """Seconds before ``source`` may try again; 0 if it may now."""
        bucket = self._buckets.get(source)
        if bucket is None:
            return 0.0
        level = self._level(bucket, now)
        return 0.0 if level >= 1 else (1 - level) / self._per_second

    def failed(self, source: str, now: float) -> bool:
        """Count a failure of ``source``; True if this one throttles it. Failures checked side
        by side may overdraw the bucket: it stops at empty, so a throttled source always gets
        its next try one refill later."""
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = self._buckets[source] = _Bucket(self.burst, now)
            if len(self._buckets) > self._max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
        before = self._level(bucket, now)
        bucket.tokens, bucket.at = max(before - 1, 0.0), now
        return before >= 1 > bucket.tokens


def forwarded_for(headers: Mapping[str, str]) -> str | None:
    """Every ``X-Forwarded-For`` line of a request as the one list they make (RFC 9110 5.3: a
    field sent more than once is its values joined by commas, in order). A proxy that adds a
    line of its own after the client's put the address it saw last, where ``client_address``
    reads first; the first line alone was the client's own, so it chose whom it was throttled
    as (a security audit's find)."""
    getall = getattr(headers, "getall", None)
    if getall is None:
        return headers.get("X-Forwarded-For")
    lines: list[str] = getall("X-Forwarded-For", [])
    return ", ".join(lines) if lines else None


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: Sequence[IPNetwork]
) -> IPAddress | None:
    """Who is calling: the socket's peer, unless that peer is a trusted proxy; then the nearest
    address in ``X-Forwarded-For`` (read right to left) that is not a trusted proxy itself."""
    address = _parse(peer)
    hops = [h.strip() for h in (forwarded_for or "").split(",")] if trusted else []
    while address is not None and hops and any(address in net for net in trusted):
        forwarded = _parse(hops.pop())
        if forwarded is None:
            break
        address = forwarded
    return address


def source_of(address: IPAddress | None) -> str:
    """The key a caller is throttled under (see the module docstring)."""
    if address is None:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _parse(text: str | None) -> IPAddress | None:
    if not text:
        return None
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
