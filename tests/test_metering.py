"""Usage extraction and cost arithmetic, on plain data."""

from __future__ import annotations

from decimal import Decimal

import pytest

from rtgate.config import DEFAULT_PRICES, PriceSettings
from rtgate.metering.cost import cost_of, usd, usd_str
from rtgate.protocol.usage import (
    Usage,
    count,
    read_response_usage,
    read_transcription_usage,
)

GA_USAGE = {
    "total_tokens": 331,
    "input_tokens": 140,
    "output_tokens": 191,
    "input_token_details": {
        "text_tokens": 62,
        "audio_tokens": 78,
        "image_tokens": 0,
        "cached_tokens": 64,
        "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 64, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 43, "audio_tokens": 148},
}


def test_ga_usage_is_flattened_with_cached_subsets() -> None:
    reading = read_response_usage(GA_USAGE)
    assert reading.complete
    u = reading.usage
    assert (u.text_in, u.audio_in, u.image_in) == (62, 78, 0)
    assert (u.text_in_cached, u.audio_in_cached) == (0, 64)
    assert (u.text_out, u.audio_out) == (43, 148)
    assert u.total_tokens == 331


def test_cached_can_never_exceed_its_input() -> None:
    u = read_response_usage(
        {"input_token_details": {"text_tokens": 5, "cached_tokens_details": {"text_tokens": 50}}}
    ).usage
    assert u.text_in_cached == 5


@pytest.mark.parametrize("bad", [None, "x", 3, {"input_token_details": "nope"}])
def test_malformed_usage_counts_zero_and_reads_incomplete(bad: object) -> None:
    reading = read_response_usage(bad)
    assert reading.usage.total_tokens == 0 and not reading.complete


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (7, 7),
        (0, 0),
        (7.0, 7),
        ("7", 7),
        (" 7\n", 7),
        (10**12, 10**12),
        (7.5, None),
        (-7, None),
        ("-7", None),
        ("7.0", None),
        ("seven", None),
        ("\u0667", None),  # an Arabic-Indic digit: str.isdigit, but no count on the wire
        (True, None),
        (None, None),
        ({"n": 7}, None),
        ([7], None),
        (float("nan"), None),
        (float("inf"), None),
        (10**12 + 1, None),
    ],
)
def test_what_reads_as_a_count(value: object, expected: int | None) -> None:
    assert count(value) == expected


def test_totals_only_usage_is_billed_as_text() -> None:
    u = read_response_usage({"input_tokens": 10, "output_tokens": 7}).usage
    assert (u.text_in, u.text_out) == (10, 7)


def test_transcription_usage_tokens_and_duration() -> None:
    t = read_transcription_usage(
        {
            "type": "tokens",
            "input_tokens": 13,
            "output_tokens": 9,
            "input_token_details": {"text_tokens": 0, "audio_tokens": 13},
        }
    )
    assert (t.usage.audio_in, t.usage.text_out, t.usage.kind) == (13, 9, "transcription")
    d = read_transcription_usage({"type": "duration", "seconds": 3.2})
    assert d.usage.audio_ms == 3200 and t.complete and d.complete


def test_cost_of_ga_usage_at_gpt_realtime_prices() -> None:
    u = read_response_usage(GA_USAGE).usage
    cost = cost_of(u, DEFAULT_PRICES["gpt-realtime"])
    # text in 62*$4, audio in uncached 14*$32 + cached 64*$0.40, text out 43*$16, audio out 148*$64
    exact = Decimal(62 * 4 + 14 * 32) + Decimal("64") * Decimal("0.40") + 43 * 16 + 148 * 64
    assert cost.provider_nanos == int(exact * 1000)
    assert usd(cost.provider_nanos) == Decimal("0.010881600")


def test_mini_prices_are_the_seeds() -> None:
    p = DEFAULT_PRICES["gpt-realtime-mini"]
    assert (p.text_in, p.text_out, p.audio_in, p.audio_out) == (1, 4, 8, 16)
    u = Usage(text_in=1_000_000, text_out=1_000_000, audio_in=1_000_000, audio_out=1_000_000)
    assert usd(cost_of(u, p).charged_nanos) == Decimal(29)


def test_markup_is_charged_on_top_of_provider_cost() -> None:
    p = PriceSettings(text_in=Decimal(4), markup_percent=Decimal(25))
    c = cost_of(Usage(text_in=1000), p)
    assert (c.provider_nanos, c.charged_nanos) == (4_000_000, 5_000_000)


def test_cached_rate_defaults_to_a_tenth() -> None:
    p = PriceSettings(audio_in=Decimal(32))
    c = cost_of(Usage(audio_in=100, audio_in_cached=100), p)
    assert c.provider_nanos == 100 * 3200


def test_whisper_is_billed_per_minute() -> None:
    c = cost_of(Usage(kind="transcription", audio_ms=60_000), DEFAULT_PRICES["whisper-1"])
    assert usd(c.charged_nanos) == Decimal("0.006")


def test_unpriced_costs_nothing() -> None:
    assert cost_of(Usage(text_in=5), None).charged_nanos == 0


def test_cost_is_integer_and_sums_exactly() -> None:
    p = DEFAULT_PRICES["gpt-realtime-2.1-mini"]
    parts = [cost_of(Usage(text_in=7, text_out=3), p).charged_nanos for _ in range(1000)]
    assert all(isinstance(x, int) for x in parts)
    assert sum(parts) == cost_of(Usage(text_in=7000, text_out=3000), p).charged_nanos


def test_usd_prints_plain_decimals() -> None:
    assert usd_str(0) == "0.000000000"
    assert usd_str(1) == "0.000000001"
    assert usd_str(12_345_000_000) == "12.345000000"
    assert usd_str(-5) == "-0.000000005"
    assert usd(12_345_000_000) == Decimal("12.345")
