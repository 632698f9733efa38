"""How the relay reads a client's frame so that it judges the event the upstream will act on.

The gateway reads few client frames (policy, transcripts, metering a translation, GPT-Live's
start and close) and forwards them as they came, byte for byte. So each reading must be the
upstream's:

* **An audio append is skipped unread only as the SDKs write it**: the frame starts with its
  type and holds no other ``"type"`` member and no escape. JSON parsers keep the last of a
  repeated name (RFC 8259 4 leaves it open; Python's, orjson, JavaScript's and Go's do), so
  ``{"type":"input_audio_buffer.append","type":"session.update",...}`` is a ``session.update``
  to the upstream, and an escaped name (``"\\u0074ype"``) is a ``type`` member too. Any other
  spelling is read.
* **A frame that repeats a member name is refused** (``DuplicateMember``), not read: which of
  the two values a parser keeps is its choice, so the gateway could judge one event and the
  upstream act on another (I-JSON, RFC 7493 2.3, forbids repeated names). No SDK writes one.
* **A frame with an escape is read** wherever anything reads frames: ``"session\\u002eupdate"``
  is a ``session.update`` though the text never spells it (the relay core).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from rtgate.errors import GatewayError


class DuplicateMember(GatewayError):
    """A client frame names a member twice in one object: refused and dropped, the session
    goes on (``param`` the name)."""

    http_status = 400
    close_code = 1008
    error_type = "invalid_request_error"
    code = "duplicate_member"


_EVENT_ID_NEXT = b',"event_id":"'
_AUDIO_NEXT = b',"audio":"'


def plain_append(data: bytes, start: int) -> bool:
    """Whether a frame that starts with an audio append's type (``start``: the prefix's
    length, which the caller matched) holds no second ``"type"`` member and no escape in a
    name, so it is that append to every parser.

    Every uplink audio frame asks, so the SDKs' own spelling is proved without scanning the
    audio for names: after the type, an ``event_id`` with no escape (its first ``"`` closes
    it), then the audio as the last member (base64 has no ``"``, so the first one after it
    closes it, right before the ``}``); an escape inside the audio changes only the audio. Any
    other spelling is scanned whole (~0.8 us for 20 ms of audio, against ~0.2)."""
    at = start
    if data.startswith(_EVENT_ID_NEXT, at):
        value = at + len(_EVENT_ID_NEXT)
        closing = data.find(b'"', value, value + 256)
        if closing < 0 or data.find(b"\\", value, closing) >= 0:
            return _scanned(data)
        at = closing + 1
    if (
        data.startswith(_AUDIO_NEXT, at)
        and data.find(b'"', at + len(_AUDIO_NEXT)) == len(data) - 2
        and data[-1:] == b"}"
    ):
        return True
    return _scanned(data)


def _scanned(data: bytes) -> bool:
    return data.find(b'"type"', 2) < 0 and b"\\" not in data


def read_client(text: str, *, tolerant: bool = False) -> Any:
    """A client frame parsed, or None when it is no JSON (forwarded unread: the upstream
    answers it). ``tolerant``: what orjson refuses but the standard library reads (a lone
    surrogate escape, RFC 8259 8.2) is read too, as the provider's parser may. Raises
    ``DuplicateMember`` for a frame that repeats a name in any object."""
    try:
        event = orjson.loads(text)
    except orjson.JSONDecodeError:
        if not tolerant:
            return None
        event = _Standard.loads(text)
        return None if event is _Standard.REFUSED else event
    _Standard.loads(text)  # orjson keeps the last of a repeated name without a word
    return event


class _Standard:
    """The standard library's parser, which reports each object's members as written."""

    REFUSED: Any = object()

    @staticmethod
    def loads(text: str) -> Any:
        try:
            return json.loads(text, object_pairs_hook=_unique)
        except DuplicateMember:
            raise
        except (ValueError, RecursionError):
            return _Standard.REFUSED


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise DuplicateMember(
                    f"The event names `{name}` twice in one object: each name may appear once.",
                    param=name,
                )
            seen.add(name)
    return out
