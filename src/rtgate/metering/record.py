"""One row of the usage ledger: what a metered event consumed and what it cost."""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from rtgate.config import PriceUnit
from rtgate.protocol.ids import new_id
from rtgate.protocol.usage import Usage

#: Why a record wants an operator's review (``UsageRecord.review``):
#: ``unparseable_frame``: the frame named a usage event but was no JSON object, so nothing in it
#: was metered; ``unreadable_usage``: its usage was missing or held values that are no counts,
#: so only the counts that did read were metered; ``unconfirmed_usage``: a GPT-Live session
#: ended without the provider's final total (``session.closed``), so it was billed to its last
#: usage snapshot (the record itself counts nothing).
Review = Literal["unparseable_frame", "unreadable_usage", "unconfirmed_usage"]

#: Who counted a record's usage (``UsageRecord.metered_by``): ``provider``, read from its event;
#: ``gateway``, counted by rtgate where the provider reports none (a translation session's input
#: audio, ``protocol/translation.py``), to reconcile against the provider's invoice.
MeteredBy = Literal["provider", "gateway"]


def new_record_id() -> str:
    return new_id("ur")


def utc_day(ts: float) -> str:
    """The UTC day of unix time ``ts``, as the ledger groups usage: ``YYYY-MM-DD``."""
    # A UTC day has 86,400 s (POSIX time has no leap seconds): its number names it, and the
    # name is formatted once per day, not twice per record (the ledger's and the store's).
    return _day_name(math.floor(ts / SECONDS_PER_DAY))


SECONDS_PER_DAY = 86400


@functools.lru_cache(maxsize=4)
def _day_name(day: int) -> str:
    return datetime.fromtimestamp(day * SECONDS_PER_DAY, UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True, slots=True)
class UsageRecord:
    session_id: str
    key_id: str
    #: The model name the client asked for (or the transcription model, for transcription).
    model: str
    #: The price row used (the model's family unless the catalog says otherwise).
    price_key: str
    usage: Usage
    provider_nanos: int
    charged_nanos: int
    #: Unix seconds.
    created_at: float
    #: The provider's id of what was metered: ``resp_...`` or the transcribed ``item_...``.
    ref: str | None = None
    #: False when no price row matched: the tokens are kept, the cost is 0.
    priced: bool = True
    #: Set when the event's usage could not be read in full (see ``Review``); None otherwise.
    review: Review | None = None
    #: Unique per record: the store writes a record once however often it is replayed.
    record_id: str = field(default_factory=new_record_id)
    #: What the usage counts in, as priced (``rtgate.metering.cost.billed_unit``): ``token``, or
    #: the ``second`` or ``minute`` of its duration row.
    unit: PriceUnit = "token"
    #: Who counted the usage (see ``MeteredBy``).
    metered_by: MeteredBy = "provider"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> UsageRecord:
        if not raw.get("record_id"):
            # Spilled before records had ids: an id from the content keeps a replay idempotent.
            digest = hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()
            raw = {**raw, "record_id": "ur_" + digest[:21]}
        if "unit" not in raw:
            raw = {**raw, "unit": legacy_unit(raw["usage"].get("audio_ms", 0))}
        return cls(**{**raw, "usage": Usage(**raw["usage"])})


def legacy_unit(audio_ms: int) -> PriceUnit:
    """The unit of a record kept before records had one: then only ``whisper-1`` was priced by
    duration, per minute (the store's migration fills its column by the same rule)."""
    return "minute" if audio_ms else "token"
