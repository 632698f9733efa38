"""Token usage as the protocol reports it (docs/protocol.md section 4), flattened for the ledger.

The provider's numbers are taken as given; only the billing split is derived here:
cached tokens are a subset of input tokens, so uncached = input - cached per modality.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

#: ``translation``: input audio of a translation session, counted by the gateway
#: (``protocol/translation.py``). ``live``: a GPT-Live session's voice seconds (a delta of its
#: cumulative ``usage.seconds``); ``backend``: the tokens of a Responses model a Live session
#: delegated to (``protocol/live.py``).
UsageKind = Literal["response", "transcription", "translation", "live", "backend"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens by kind for one metered event. Input counts include their cached subsets."""

    kind: UsageKind = "response"
    text_in: int = 0
    text_in_cached: int = 0
    audio_in: int = 0
    audio_in_cached: int = 0
    image_in: int = 0
    image_in_cached: int = 0
    text_out: int = 0
    audio_out: int = 0
    #: Audio the provider reports as a duration (``usage.seconds`` of a transcription billed
    #: by the minute), in milliseconds: fractional seconds kept, never rounded up.
    audio_ms: int = 0

    @property
    def audio_seconds(self) -> float:
        """``audio_ms`` in seconds, for display."""
        return self.audio_ms / 1000

    @property
    def input_tokens(self) -> int:
        return self.text_in + self.audio_in + self.image_in

    @property
    def output_tokens(self) -> int:
        return self.text_out + self.audio_out

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        # Field by field, spelled out: a session adds one usage per metered event, and a
        # loop over ``fields()`` cost it more than the rest of the sum (test_metering pins the
        # fields, so a new one cannot be left out here unnoticed).
        return Usage(
            self.kind,
            self.text_in + other.text_in,
            self.text_in_cached + other.text_in_cached,
            self.audio_in + other.audio_in,
            self.audio_in_cached + other.audio_in_cached,
            self.image_in + other.image_in,
            self.image_in_cached + other.image_in_cached,
            self.text_out + other.text_out,
            self.audio_out + other.audio_out,
            self.audio_ms + other.audio_ms,
        )


#: Every count a usage holds (the ledger's columns); ``TOKEN_FIELDS``, those that count tokens.
USAGE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Usage) if f.name != "kind")
TOKEN_FIELDS: tuple[str, ...] = tuple(f for f in USAGE_FIELDS if f != "audio_ms")


# No real event carries more; the cap keeps a corrupt number from overflowing a BIGINT column
# once multiplied by a price.
MAX_TOKENS = 10**12


@dataclass(frozen=True, slots=True)
class UsageReading:
    """Usage as read from an event, and whether all of it read as the protocol defines it."""

    usage: Usage
    #: False when usage was missing, or a count held something other than a count (a fraction,
    #: a negative number, null, an object, a word): the counts that did read are in ``usage``,
    #: the rest is unknown and the event wants review.
    complete: bool = True


def count(value: Any) -> int | None:
    """A token count, or None when ``value`` is no count. The protocol sends non-negative
    integers; an integer-valued float (``12.0``) and a string of digits (``"12"``) mean the same
    and read as such. Anything past ``MAX_TOKENS`` is corrupt, not a count."""
    if type(value) is int:  # the protocol's own shape, first: one test
        n = value
    elif isinstance(value, bool):
        return None
    elif isinstance(value, int):
        n = value
    elif isinstance(value, float):
        if not value.is_integer():  # also NaN and the infinities
            return None
        n = int(value)
    elif isinstance(value, str):
        digits = value.strip()
        if not (digits.isascii() and digits.isdigit()):
            return None
        n = int(digits)
    else:
        return None
    return n if 0 <= n <= MAX_TOKENS else None


def _seconds(value: Any) -> float | None:
    """A transcription's billed duration (``usage.seconds``): a non-negative number, also as a
    numeric string; None otherwise."""
    if isinstance(value, str) and value.strip().isascii():
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0 <= value < MAX_TOKENS else None  # NaN compares False


class _Reader:
    """Reads counts out of usage objects, noting anything that is not one (``complete``)."""

    __slots__ = ("complete",)

    def __init__(self) -> None:
        self.complete = True

    def part(self, obj: dict[str, Any], key: str) -> dict[str, Any]:
        """A nested object; absent reads as empty (a provider may report only totals)."""
        if key not in obj:
            return {}
        v = obj[key]
        if isinstance(v, dict):
            return v
        self.complete = False
        return {}

    def tokens(self, obj: dict[str, Any], key: str) -> int:
        """A count; absent reads as 0."""
        if key not in obj:
            return 0
        n = count(obj[key])
        if n is None:
            self.complete = False
            return 0
        return n

    def rest(self, obj: dict[str, Any], key: str, detailed: int) -> int:
        """What the total ``key`` counts beyond the ``detailed`` tokens its details name; a
        shortfall of details that name some is not complete. A total below its details adds
        nothing: the details are the more precise."""
        rest = self.tokens(obj, key) - detailed
        if rest <= 0:
            return 0
        if detailed:
            self.complete = False
        return rest


def read_response_usage(usage: Any) -> UsageReading:
    """``response.done.response.usage`` (GA or beta shape) -> ``Usage``; missing parts count 0.

    The server always fills usage on ``response.done`` (docs/protocol.md 4.1), so a missing one
    reads as incomplete."""
    if not isinstance(usage, dict):
        return UsageReading(Usage(), complete=False)
    r = _Reader()
    ind = r.part(usage, "input_token_details")
    cached = r.part(ind, "cached_tokens_details")
    outd = r.part(usage, "output_token_details")
    text_in, audio_in, image_in = (
        r.tokens(ind, "text_tokens"),
        r.tokens(ind, "audio_tokens"),
        r.tokens(ind, "image_tokens"),
    )
    # A provider that reports only the totals, or details that account for less than them:
    # what no detail names is billed as text, the cheapest honest reading; details short of
    # their total are kept for review too (an audit's find: they billed the details alone).
    text_in += r.rest(usage, "input_tokens", text_in + audio_in + image_in)
    text_out, audio_out = r.tokens(outd, "text_tokens"), r.tokens(outd, "audio_tokens")
    text_out += r.rest(usage, "output_tokens", text_out + audio_out)
    u = Usage(
        kind="response",
        text_in=text_in,
        text_in_cached=min(r.tokens(cached, "text_tokens"), text_in),
        audio_in=audio_in,
        audio_in_cached=min(r.tokens(cached, "audio_tokens"), audio_in),
        image_in=image_in,
        image_in_cached=min(r.tokens(cached, "image_tokens"), image_in),
        text_out=text_out,
        audio_out=audio_out,
    )
    return UsageReading(u, r.complete)


def read_transcription_usage(usage: Any) -> UsageReading:
    """``...input_audio_transcription.completed.usage``: tokens or duration (docs/protocol.md 4.2).

    Usage is required on this event; a missing one, or a ``type`` other than ``tokens`` or
    ``duration``, reads as incomplete."""
    if not isinstance(usage, dict):
        return UsageReading(Usage(kind="transcription"), complete=False)
    utype = usage.get("type", "tokens")
    if utype == "duration":
        secs = _seconds(usage.get("seconds"))
        ms = round(secs * 1000) if secs is not None else 0
        return UsageReading(Usage(kind="transcription", audio_ms=ms), secs is not None)
    r = _Reader()
    ind = r.part(usage, "input_token_details")
    text_in, audio_in = r.tokens(ind, "text_tokens"), r.tokens(ind, "audio_tokens")
    # What no detail names is the audio transcribed (the totals-only reading), kept for review
    # when some detail named less than the total.
    audio_in += r.rest(usage, "input_tokens", text_in + audio_in)
    u = Usage(
        kind="transcription",
        text_in=text_in,
        audio_in=audio_in,
        text_out=r.tokens(usage, "output_tokens"),
    )
    return UsageReading(u, r.complete and utype == "tokens")


def read_live_seconds(usage: Any) -> UsageReading:
    """``usage`` of ``session.usage.updated`` / ``session.closed`` (docs/protocol-live.md 4): the
    session's cumulative ``seconds``, in milliseconds (fractions kept). Usage is required on
    both events; a missing or non-numeric ``seconds`` reads as incomplete, with 0."""
    secs = _seconds(usage.get("seconds")) if isinstance(usage, dict) else None
    ms = round(secs * 1000) if secs is not None else 0
    return UsageReading(Usage(kind="live", audio_ms=ms), secs is not None)


def read_live_paused_ms(usage: Any) -> int | None:
    """``usage.paused_seconds`` of a Live usage snapshot in milliseconds: the session's
    cumulative standby time, which eligible WebRTC sessions report apart (docs/protocol-live.md
    4); None when it is not reported or is no count."""
    secs = _seconds(usage.get("paused_seconds")) if isinstance(usage, dict) else None
    return round(secs * 1000) if secs is not None else None


#: Nested Responses events whose ``response.usage`` a Live session's backend is billed by: the
#: terminal events of a response, each of which carries its usage (docs/protocol-live.md 5).
BACKEND_USAGE_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def read_responses_usage(usage: Any) -> UsageReading:
    """A Responses API ``response.usage`` (``input_tokens`` with ``input_tokens_details.
    cached_tokens`` among them, ``output_tokens`` with any reasoning among them) as text tokens
    of kind ``backend``: the Responses API bills them at the model's text rates. A missing usage
    reads as incomplete."""
    if not isinstance(usage, dict):
        return UsageReading(Usage(kind="backend"), complete=False)
    r = _Reader()
    text_in = r.tokens(usage, "input_tokens")
    details = r.part(usage, "input_tokens_details") if usage.get("input_tokens_details") else {}
    cached = r.tokens(details, "cached_tokens")
    u = Usage(
        kind="backend",
        text_in=text_in,
        text_in_cached=min(cached, text_in),
        text_out=r.tokens(usage, "output_tokens"),
    )
    return UsageReading(u, r.complete)
