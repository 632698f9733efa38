"""Token usage as the protocol reports it (docs/protocol.md section 4), flattened for the ledger.

The provider's numbers are taken as given; only the billing split is derived here:
cached tokens are a subset of input tokens, so uncached = input - cached per modality.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

UsageKind = Literal["response", "transcription"]


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
    #: Duration-billed transcription (``whisper-1``), in milliseconds.
    audio_ms: int = 0

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
        vals = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in fields(self)
            if f.name != "kind"
        }
        return Usage(kind=self.kind, **vals)


TOKEN_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Usage) if f.name != "kind")


# No real event carries more; the cap keeps a corrupt number from overflowing a BIGINT column
# once multiplied by a price.
MAX_TOKENS = 10**12


def _int(obj: Any, key: str) -> int:
    if not isinstance(obj, dict):
        return 0
    v = obj.get(key)
    return min(v, MAX_TOKENS) if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0


def usage_from_response(usage: Any) -> Usage:
    """``response.done.response.usage`` (GA or beta shape) -> ``Usage``; missing parts count 0."""
    if not isinstance(usage, dict):
        return Usage()
    ind = usage.get("input_token_details") or {}
    cached = ind.get("cached_tokens_details") or {} if isinstance(ind, dict) else {}
    outd = usage.get("output_token_details") or {}
    text_in, audio_in, image_in = (
        _int(ind, "text_tokens"),
        _int(ind, "audio_tokens"),
        _int(ind, "image_tokens"),
    )
    if not (text_in or audio_in or image_in):
        # A provider that reports only the totals: bill them as text, the cheapest honest reading.
        text_in = _int(usage, "input_tokens")
    text_out, audio_out = _int(outd, "text_tokens"), _int(outd, "audio_tokens")
    if not (text_out or audio_out):
        text_out = _int(usage, "output_tokens")
    return Usage(
        kind="response",
        text_in=text_in,
        text_in_cached=min(_int(cached, "text_tokens"), text_in),
        audio_in=audio_in,
        audio_in_cached=min(_int(cached, "audio_tokens"), audio_in),
        image_in=image_in,
        image_in_cached=min(_int(cached, "image_tokens"), image_in),
        text_out=text_out,
        audio_out=audio_out,
    )


def usage_from_transcription(usage: Any) -> Usage:
    """``...input_audio_transcription.completed.usage``: tokens or duration
    (docs/protocol.md 4.2)."""
    if not isinstance(usage, dict):
        return Usage(kind="transcription")
    if usage.get("type") == "duration":
        secs = usage.get("seconds")
        ms = 0
        if isinstance(secs, int | float) and 0 < secs < MAX_TOKENS:
            ms = round(float(secs) * 1000)
        return Usage(kind="transcription", audio_ms=ms)
    ind = usage.get("input_token_details") or {}
    text_in, audio_in = _int(ind, "text_tokens"), _int(ind, "audio_tokens")
    if not (text_in or audio_in):
        audio_in = _int(usage, "input_tokens")
    return Usage(
        kind="transcription",
        text_in=text_in,
        audio_in=audio_in,
        text_out=_int(usage, "output_tokens"),
    )
