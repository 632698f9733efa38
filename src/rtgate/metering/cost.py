"""Cost arithmetic in integer nano-dollars (1e-9 USD), never a float. ``usd()`` turns nanos into
a ``Decimal`` for display.

A price row has a unit (``config.PriceSettings``). Tokens cost their rates per 1M tokens
(docs/protocol.md 4.3): uncached input at the input rate, cached input at the cached rate (10% of
the input rate when a row leaves it out), output at the output rate. Audio reported as a duration
costs the row's ``rate`` per second or minute, on the exact duration (kept to the millisecond,
never rounded up to the unit). The sum is exact (``Decimal``); only the total of one record is
rounded to the nano-dollar, half to even, after the markup; records that bill parts of one
duration are rounded as their running total (``RunningCost``).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from rtgate.config import UNIT_SECONDS, PriceSettings, PriceUnit
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


def prices_usage(p: PriceSettings, usage: Usage) -> bool:
    """Whether row ``p`` has a price for every unit ``usage`` counts in. A duration is priced by
    a ``second`` or ``minute`` row only; tokens by a ``token`` row, or by a duration row that
    sets token rates. What a row has no price for is recorded at cost 0, unpriced, so a model
    that reports tokens where its row expects minutes (or the reverse) is seen, not billed 0."""
    if usage.audio_ms and p.unit == "token":
        return False
    return not (usage.total_tokens and p.unit != "token" and not p.sets_token_rates)


def billed_unit(usage: Usage, p: PriceSettings | None) -> PriceUnit:
    """The unit a record of ``usage`` counts in, for reports: ``token``; for a duration, its
    row's unit, or ``second`` (as the provider reports it) when no duration row prices it."""
    if not usage.audio_ms:
        return "token"
    return p.unit if p is not None and p.unit != "token" else "second"


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
    cost = per_token * _PER_TOKEN
    if p.unit != "token" and usage.audio_ms:
        # One division, last: a cost that ends in a tie (x.5 nanos) stays exact for rounding.
        cost += usage.audio_ms * p.rate * NANOS_PER_USD / (1000 * UNIT_SECONDS[p.unit])
    return cost


def _round(x: Decimal) -> int:
    return int(x.to_integral_value(rounding=ROUND_HALF_EVEN))


@dataclass(slots=True)
class RunningCost:
    """The cost of records that bill parts of one quantity the provider bills whole: a Live
    session's voice seconds (each snapshot's delta), a translation's audio (a record every
    ``translation_record_seconds``). Each part is charged what the exact total so far, rounded,
    adds to what the parts before it were charged, so the parts sum to the whole's cost (a
    newcomer's find: four one-second records at $0.05 a minute came to 3,333,332 nanos, not
    the 3,333,333 of four seconds)."""

    exact_provider: Decimal = Decimal(0)
    exact_charged: Decimal = Decimal(0)
    provider_nanos: int = 0
    charged_nanos: int = 0

    def add(self, usage: Usage, prices: PriceSettings) -> Cost:
        exact = provider_cost_exact(usage, prices)
        self.exact_provider += exact
        self.exact_charged += exact * (1 + prices.markup_percent / 100)
        part = Cost(
            _round(self.exact_provider) - self.provider_nanos,
            _round(self.exact_charged) - self.charged_nanos,
        )
        self.provider_nanos += part.provider_nanos
        self.charged_nanos += part.charged_nanos
        return part


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


def usd_words(nanos: int) -> str:
    """Nano-dollars as a message says them: ``usd_str`` without the zeros past the cents
    (``0.01``, ``0.012345``), where nine places would hide the figure."""
    whole, _, frac = usd_str(nanos).partition(".")
    return f"{whole}.{frac.rstrip('0').ljust(2, '0')}"


def usd_str(nanos: int) -> str:
    """Nano-dollars as a plain decimal string (``"0.000000000"``, never ``"0E-9"``)."""
    sign = "-" if nanos < 0 else ""
    whole, frac = divmod(abs(nanos), NANOS_PER_USD)
    return f"{sign}{whole}.{frac:09d}"
