"""Identifiers shaped like OpenAI's (docs/protocol.md 8.1): ``<prefix>_`` + 21 base62 characters."""

from __future__ import annotations

import secrets
import string

_BASE62 = string.digits + string.ascii_letters


def new_id(prefix: str, length: int = 21) -> str:
    return prefix + "_" + "".join(secrets.choice(_BASE62) for _ in range(length))
