"""An operator's token (the admin API's, ``/metrics``'): sent as ``Authorization: Bearer``,
compared in constant time, never echoed."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping


def _digest(token: str) -> bytes:
    # Equal-length digests make the comparison constant-time whatever was sent; headers arrive
    # decoded with surrogateescape, so hash the original bytes and never raise.
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def bearer(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer`` header, or None without one."""
    scheme, _, value = headers.get("Authorization", "").partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


class OperatorToken:
    def __init__(self, token: str) -> None:
        self._digest = _digest(token)

    def matches(self, given: str) -> bool:
        return hmac.compare_digest(_digest(given), self._digest)
