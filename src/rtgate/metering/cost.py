"""Cost arithmetic in integer nano-dollars (1e-9 USD): exact for any price with up to three
decimals per 1M tokens, never a float. ``usd()`` turns nanos into a ``Decimal`` for display.

Formula (docs/protocol.md 4.3): uncached input at the input rate, cached input at the cached rate
(10% of the input rate when a price row leaves it out), output at the output rate, and
duration-billed transcription at ``per_minute``.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from rtgate.config import PriceSettings
from rtgate.protocol.usage import Usage

NANOS_PER_USD = 10**9
_PER_TOKEN = Decimal(NANOS_PER_USD) / Decimal(1_000_000)  # nanos per token at $1 / 1M
_TENTH = Decimal("0.1")


@dataclass(frozen=True, slots=True)
class Cost:
    """What a usage cost the operator (provider) and what it is charged to the key."""

    provider_nanos: int
    charged_nanos: int


def cached_rate(rate: Decimal, cached: Decimal | None) -> Decimal:
    """The rate of cached input: the row's own, else a tenth of the input rate."""
    return cached if cached is not None else rate * _TENTH


def provider_cost_exact(usage: Usage, p: PriceSettings) -> Decimal:
    """Provider cost in nano-dollars, before rounding."""
    per_token = (
        (usage.text_in - usage.text_in_cached) * p.text_in
        + usage.text_in_cached * cached_rate(p.text_in, p.text_cached)
        + (usage.audio_in - usage.audio_in_cached) * p.audio_in
        + usage.audio_in_cached * cached_rate(p.audio_in, p.audio_cached)
        + (usage.image_in - usage.image_in_cached) * p.image_in
        + usage.image_in_cached * cached_rate(p.image_in, p.image_cached)
        + usage.text_out * p.text_out
        + usage.audio_out * p.audio_out
    )
    duration = Decimal(usage.audio_ms) * p.per_minute * NANOS_PER_USD / Decimal(60_000)
    return per_token * _PER_TOKEN + duration


def _round(x: Decimal) -> int:
    return int(x.to_integral_value(rounding=ROUND_HALF_EVEN))


def cost_of(usage: Usage, prices: PriceSettings | None) -> Cost:
    """Cost of one usage record; an unpriced model costs 0 (and is logged by the caller)."""
    if prices is None:
        return Cost(0, 0)
    exact = provider_cost_exact(usage, prices)
    charged = exact * (1 + prices.markup_percent / 100)
    return Cost(_round(exact), _round(charged))


def usd(nanos: int) -> Decimal:
    """Nano-dollars as a Decimal USD amount with nine places."""
    return Decimal(usd_str(nanos))


def usd_str(nanos: int) -> str:
    """Nano-dollars as a plain decimal string (``"0.000000000"``, never ``"0E-9"``)."""
    sign = "-" if nanos < 0 else ""
    whole, frac = divmod(abs(nanos), NANOS_PER_USD)
    return f"{sign}{whole}.{frac:09d}"
