"""Gateway key format and hashing.

A key reads ``rtg_<8 prefix chars>_<32 secret chars>`` (base62). Only its SHA-256 and the
display prefix (``rtg_<prefix>``) are stored. Keys carry ~190 bits of entropy, so a fast hash is
the right tool (a slow KDF protects low-entropy passwords, not random tokens); lookups go by
hash, and the final comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass

KEY_PREFIX = "rtg_"
_BASE62 = string.digits + string.ascii_letters


@dataclass(frozen=True, slots=True)
class NewKey:
    secret: str
    display_prefix: str
    key_hash: str


def _rand(n: int) -> str:
    return "".join(secrets.choice(_BASE62) for _ in range(n))


def hash_key(secret: str) -> str:
    # Headers arrive decoded with surrogateescape; hash the original bytes, never raise.
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def generate_key() -> NewKey:
    head = _rand(8)
    secret = f"{KEY_PREFIX}{head}_{_rand(32)}"
    return NewKey(secret=secret, display_prefix=f"{KEY_PREFIX}{head}", key_hash=hash_key(secret))


def hashes_match(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("ascii"), b.encode("ascii"))


def redact(secret: str) -> str:
    """What a log line may show of a credential: its first 8 characters."""
    shown = "".join(c if c.isascii() and c.isprintable() else "?" for c in secret[:8])
    return shown + "…" if len(secret) > 8 else "…"
