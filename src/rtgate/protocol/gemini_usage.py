"""Gemini's ``usageMetadata`` as OpenAI's ``response.usage`` (docs/protocol-gemini.md 9).

The gateway meters the translated ``response.done`` like any other (``protocol/usage.py`` reads
the Realtime names), so this is where Gemini's counts become billable tokens by modality:

* input: ``promptTokensDetails`` by modality (TEXT, DOCUMENT -> text; AUDIO -> audio; IMAGE,
  VIDEO -> image), plus ``toolUsePromptTokenCount`` (outside ``promptTokenCount``: Google's
  total is prompt + response + tool use + thoughts). Details that under-sum their count (seen
  on the wire, protocol-gemini.md 9) leave a gap, counted as text: the provider bills those tokens
  too, and text is the cheapest honest reading of tokens of unknown modality.
* cached: ``cacheTokensDetails`` by modality, else ``cachedContentTokenCount`` as text; a
  subset of the input, as in OpenAI's usage.
* output: ``responseTokensDetails`` (AI Studio) or ``candidatesTokensDetails`` (Vertex) by
  modality, the gap to the count as text, and ``thoughtsTokenCount`` as text (it sits beside
  the response count and is billed at the output rate).

Google re-bills the whole context on every turn, so each turn's ``usageMetadata`` is billed as
it is and the turns are summed (protocol-gemini.md 2): no delta against the previous turn.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rtgate.protocol.usage import count

_TEXT = ("TEXT", "DOCUMENT", "MODALITY_UNSPECIFIED")
_IMAGE = ("IMAGE", "VIDEO")


def _n(obj: Mapping[str, Any], key: str) -> int:
    value = count(obj.get(key, 0))
    return value if value is not None else 0


def _by_modality(details: Any) -> dict[str, int]:
    """``[{modality, tokenCount}]`` summed into text / audio / image."""
    out = {"text": 0, "audio": 0, "image": 0}
    if not isinstance(details, list):
        return out
    for d in details:
        if not isinstance(d, Mapping):
            continue
        mod, n = d.get("modality"), _n(d, "tokenCount")
        if mod == "AUDIO":
            out["audio"] += n
        elif mod in _IMAGE:
            out["image"] += n
        else:
            out["text"] += n
    return out


def _with_gap(parts: dict[str, int], total: int) -> dict[str, int]:
    gap = total - sum(parts.values())
    if gap > 0:
        parts["text"] += gap
    return parts


def realtime_usage(meta: Mapping[str, Any]) -> dict[str, Any]:
    """``usageMetadata`` (either dialect) as a GA ``RealtimeResponseUsage``."""
    prompt = _with_gap(_by_modality(meta.get("promptTokensDetails")), _n(meta, "promptTokenCount"))
    tool = _with_gap(
        _by_modality(meta.get("toolUsePromptTokensDetails")), _n(meta, "toolUsePromptTokenCount")
    )
    inp = {k: prompt[k] + tool[k] for k in prompt}
    cached = _by_modality(meta.get("cacheTokensDetails"))
    if not any(cached.values()):
        cached["text"] = _n(meta, "cachedContentTokenCount")
    cached = {k: min(cached[k], inp[k]) for k in cached}
    if "responseTokensDetails" in meta or "responseTokenCount" in meta:
        details, total = meta.get("responseTokensDetails"), _n(meta, "responseTokenCount")
    else:
        details, total = meta.get("candidatesTokensDetails"), _n(meta, "candidatesTokenCount")
    out = _with_gap(_by_modality(details), total)
    out["text"] += _n(meta, "thoughtsTokenCount")
    input_tokens = sum(inp.values())
    output_tokens = out["text"] + out["audio"] + out["image"]
    return {
        "total_tokens": input_tokens + output_tokens,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "input_token_details": {
            "text_tokens": inp["text"],
            "audio_tokens": inp["audio"],
            "image_tokens": inp["image"],
            "cached_tokens": sum(cached.values()),
            "cached_tokens_details": {
                "text_tokens": cached["text"],
                "audio_tokens": cached["audio"],
                "image_tokens": cached["image"],
            },
        },
        # Gemini answers in text or audio; an image part would be counted as text here.
        "output_token_details": {
            "text_tokens": out["text"] + out["image"],
            "audio_tokens": out["audio"],
        },
    }
