"""The ledger's entries as JSON lines, the shape they have in the spill directory.

One line per entry, ``{"entry": KIND, ...fields}``; a line without ``entry`` is a usage record
(spilled before sessions and transcripts were journaled too). Integers are kept exact at any
size: a value the database refuses must reach it as it was, to be refused and set aside.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from typing import Any

import orjson

from rtgate.metering.record import UsageRecord
from rtgate.protocol.transcript import TranscriptEntry
from rtgate.store.port import Entry, SessionClose, SessionOpen

_KINDS: dict[type[Any], str] = {
    SessionOpen: "open",
    UsageRecord: "usage",
    TranscriptEntry: "transcript",
    SessionClose: "close",
}


def to_line(entry: Entry) -> bytes:
    fields = entry.to_json() if isinstance(entry, UsageRecord) else asdict(entry)
    raw = {"entry": _KINDS[type(entry)], **fields}
    try:
        return orjson.dumps(raw) + b"\n"
    except TypeError:
        # orjson stops at 64-bit integers; json does not.
        return json.dumps(raw, separators=(",", ":")).encode() + b"\n"


def _known(kind: type[Any], raw: dict[str, Any]) -> dict[str, Any]:
    """The members ``kind`` has: a line a later rtgate spilled (a member added since, as
    ``SessionOpen.instance`` was) is still replayed by this one, not set aside."""
    names = {f.name for f in fields(kind)}
    return {k: v for k, v in raw.items() if k in names}


def from_line(line: bytes) -> Entry:
    """The entry on ``line``; ``ValueError`` if it is not one (a line torn by a crash)."""
    try:
        # json, not orjson: orjson reads an integer past 64 bits as a float.
        raw = json.loads(line)
        if not isinstance(raw, dict):
            raise TypeError("not an object")
        kind = raw.pop("entry", "usage")
        if kind == "usage":
            return UsageRecord.from_json(raw)
        if kind == "open":
            return SessionOpen(**_known(SessionOpen, raw))
        if kind == "transcript":
            return TranscriptEntry(**_known(TranscriptEntry, raw))
        if kind == "close":
            return SessionClose(**_known(SessionClose, raw))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError) as exc:
        raise ValueError(f"unreadable spilled line: {exc}") from exc
    raise ValueError(f"unknown spilled entry {kind!r}")
