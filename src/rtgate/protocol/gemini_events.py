"""What the Gemini translator (``protocol/gemini.py``) answers, and the OpenAI events and
close codes it writes for the client: outputs, ``error`` events, Gemini's closes mapped
(docs/protocol-gemini.md 7)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from rtgate.protocol.ids import new_id


@dataclass(frozen=True, slots=True)
class ToGemini:
    frame: str


@dataclass(frozen=True, slots=True)
class ToClient:
    frame: str


@dataclass(frozen=True, slots=True)
class Resume:
    """Dial a new Gemini connection and send it ``resume_setup()``."""


@dataclass(frozen=True, slots=True)
class Switch:
    """The resumed connection answered its setup: it is current; close the old one."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The upstream ended: the close the client gets (after any ``ToClient`` before it)."""

    code: int
    reason: str


Out = ToGemini | ToClient | Resume | Switch | Closed


class AudioConverter(Protocol):
    """A stream resampler/codec (``engine/audio.py``'s converters)."""

    def feed(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


_KEY_SHAPED = re.compile(r"AIza[0-9A-Za-z_\-]{10,}")
_AUTH_WORDS = ("api key", "api_key", "permission", "unauthenticated", "leaked", "credential")


def server_event(etype: str, **fields: Any) -> str:
    """An OpenAI server event of ``etype`` with a fresh ``event_id``, as a text frame."""
    return orjson.dumps({"type": etype, "event_id": new_id("event"), **fields}).decode()


def error_event(
    code: str, message: str, *, etype: str = "invalid_request_error", client_event_id: Any = None
) -> str:
    """An OpenAI ``error`` event (docs/protocol.md 5.3) answering ``client_event_id``."""
    return server_event(
        "error",
        error={
            "type": etype,
            "code": code,
            "message": message,
            "param": None,
            "event_id": client_event_id if isinstance(client_event_id, str) else None,
        },
    )


def protocol_error(what: str) -> str:
    """The ``error`` event for a Gemini message the gateway could not use."""
    return error_event(
        "upstream_protocol_error",
        f"The Gemini upstream sent {what}; it was ignored.",
        etype="server_error",
    )


def scrub(reason: str) -> str:
    """A close reason of Google's, fit for a client: no key-shaped text, at most 200 chars."""
    return _KEY_SHAPED.sub("[redacted]", reason)[:200]


def gemini_close(code: int, reason: str) -> tuple[str, str, int]:
    """A Gemini close (protocol-gemini.md 7) as OpenAI sees an error: ``(type, code, close code)``.
    A refusal of the gateway's own key is ``invalid_api_key``, which the relay session rewords as
    ``upstream_auth_failed`` (the client's key is not the one refused)."""
    low = reason.lower()
    if code == 1008 and any(w in low for w in _AUTH_WORDS):
        return "invalid_request_error", "invalid_api_key", 1008
    if code == 1008 and "not found" in low and ("model" in low or "models/" in low):
        return "invalid_request_error", "model_not_found", 1008
    if code in (1007, 1008):
        return "invalid_request_error", "upstream_refused", code
    return "server_error", "upstream_error", 1011
