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
* **A frame the gateway must read but cannot is refused** (``UnreadableEvent``), not forwarded
  unread: JSON that no parser of the gateway's reads, or that is no object, or that nests too
  deep to check for repeated names, might still be an event to the upstream's parser, one the
  key's policy would refuse. What orjson alone refuses (a lone surrogate escape, a number
  past a double's range) is read by the standard library first (``tolerant``). So is a binary
  frame: the protocol's events are text.
"""

from __future__ import annotations

import json
from typing import Any

from rtgate.errors import GatewayError
from rtgate.protocol.relay_session import parse_event


class RefusedFrame(GatewayError):
    """A client frame the gateway will not forward: answered with an ``error`` event and
    dropped, the session goes on."""

    http_status = 400
    close_code = 1008
    error_type = "invalid_request_error"


class DuplicateMember(RefusedFrame):
    """A client frame names a member twice in one object (``param`` the name)."""

    code = "duplicate_member"


class UnreadableEvent(RefusedFrame):
    """A client frame the gateway must read and cannot (as the local engine answers a frame
    that is not JSON: ``invalid_event``)."""

    code = "invalid_event"


#: The refusal of a client's binary frame.
BINARY_FRAME = "Binary frames are not supported; send JSON text."


#: The members an SDK writes after an append's type, compact (npm ``openai``) or spaced (the
#: Python SDK's ``json.dumps``); each value a JSON string.
_MEMBERS = (
    b',"audio":"',
    b', "audio": "',
    b',"event_id":"',
    b', "event_id": "',
)


def plain_append(data: bytes, start: int) -> bool:
    """Whether a frame that starts with an audio append's type (``start``: the prefix's
    length, which the caller matched) holds no second ``"type"`` member and no escaped name,
    so it is that append to every parser.

    Every uplink audio frame asks, so the SDKs' own spellings are proved without scanning the
    audio for names: after the type come only ``audio`` and ``event_id``, each a string whose
    first ``"`` not behind a backslash closes it (base64 has none), then the ``}``. Any other
    spelling is scanned whole for a ``"type"`` or an escape (~0.8 us for 20 ms of audio,
    against ~0.2)."""
    at, last = start, len(data) - 1
    while at < last:
        for member in _MEMBERS:
            if data.startswith(member, at):
                break
        else:
            return _scanned(data)
        closing = data.find(b'"', at + len(member))
        if closing < 0 or data[closing - 1] == 0x5C:  # a backslash: maybe an escaped quote
            return _scanned(data)
        at = closing + 1
    return at == last and data[last] == 0x7D  # "}"


def _scanned(data: bytes) -> bool:
    return data.find(b'"type"', 2) < 0 and b"\\" not in data


def read_client(text: str) -> dict[str, Any]:
    """A client frame the gateway must read, parsed: by orjson, else by the standard library
    (a lone surrogate escape, RFC 8259 8.2; a number past a double's range), as the provider's
    parser may (``relay_session.parse_event``). Raises ``UnreadableEvent`` for a frame neither
    reads as an object, and ``DuplicateMember`` for one that repeats a name in any object."""
    event = parse_event(text)
    if not isinstance(event, dict):
        raise UnreadableEvent("The event is not a JSON object the gateway can read.")
    # orjson keeps the last of a repeated name without a word; the standard library's parser
    # hands each object's members over as written.
    try:
        json.loads(text, object_pairs_hook=_unique)
    except RecursionError:
        raise UnreadableEvent("The event nests too deep to be read.") from None
    except ValueError:
        pass  # what orjson alone reads: its reading is the one judged
    return event


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
