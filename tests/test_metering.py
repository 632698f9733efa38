"""Usage extraction and cost arithmetic, on plain data."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest

from rtgate.config import DEFAULT_PRICES, PriceSettings
from rtgate.metering.cost import billed_unit, cost_of, prices_usage, usd, usd_str
from rtgate.metering.record import utc_day
from rtgate.protocol.usage import (
    USAGE_FIELDS,
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
    reading = read_response_usage({"input_tokens": 10, "output_tokens": 7})
    assert (reading.usage.text_in, reading.usage.text_out) == (10, 7) and reading.complete


def test_details_short_of_their_totals_bill_the_rest_as_text_and_are_kept_for_review() -> None:
    """An audit's find: details naming 200 of 1,200 input tokens billed 200."""
    reading = read_response_usage(
        {
            "input_tokens": 1200,
            "output_tokens": 500,
            "input_token_details": {"text_tokens": 200},
            "output_token_details": {"text_tokens": 20, "audio_tokens": 30},
        }
    )
    u = reading.usage
    assert (u.text_in, u.audio_in, u.text_out, u.audio_out) == (1200, 0, 470, 30)
    assert not reading.complete
    # Totals below their details add nothing (the details are the more precise), and a
    # consistent report is complete.
    over = read_response_usage({"input_tokens": 5, "input_token_details": {"audio_tokens": 9}})
    assert (over.usage.audio_in, over.usage.text_in, over.complete) == (9, 0, True)
    assert read_response_usage(GA_USAGE).complete
    # A transcription's: what no detail names is the audio it transcribed.
    t = read_transcription_usage(
        {"type": "tokens", "input_tokens": 40, "input_token_details": {"text_tokens": 4}}
    )
    assert (t.usage.text_in, t.usage.audio_in, t.complete) == (4, 36, False)
    t = read_transcription_usage({"type": "tokens", "input_tokens": 40})
    assert (t.usage.text_in, t.usage.audio_in, t.complete) == (0, 40, True)


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


def seconds(ms: int) -> Usage:
    return Usage(kind="transcription", audio_ms=ms)


def test_a_per_minute_row_bills_the_exact_duration_never_a_whole_minute() -> None:
    # gpt-live-transcribe, $0.017 a minute: 3.4 s is $0.000963333..., 963333.33 nano-dollars.
    c = cost_of(seconds(3400), DEFAULT_PRICES["gpt-live-transcribe"])
    assert (c.provider_nanos, c.charged_nanos) == (963_333, 963_333)
    assert cost_of(seconds(1), DEFAULT_PRICES["gpt-live-transcribe"]).provider_nanos == 283


def test_a_per_second_row_bills_by_the_second() -> None:
    per_second = PriceSettings(unit="second", rate=Decimal("0.0001"))
    assert cost_of(seconds(2500), per_second).provider_nanos == 250_000
    # The same price per minute costs the same, to the nano-dollar, for any duration.
    per_minute = PriceSettings(unit="minute", rate=Decimal("0.006"))
    for ms in (1, 7, 999, 1001, 59_999, 3_600_000):
        assert cost_of(seconds(ms), per_second) == cost_of(seconds(ms), per_minute)


def test_markup_applies_to_duration_before_rounding() -> None:
    # 963333.33... nanos at 20 % markup is 1156000 exactly: the markup is applied to the exact
    # cost, and only the result is rounded.
    row = msgspec.structs.replace(DEFAULT_PRICES["gpt-live-transcribe"], markup_percent=Decimal(20))
    c = cost_of(seconds(3400), row)
    assert (c.provider_nanos, c.charged_nanos) == (963_333, 1_156_000)


@pytest.mark.parametrize(("ms", "nanos"), [(1, 2), (3, 4), (5, 8), (2, 3)])
def test_a_duration_rounds_half_to_even_at_the_nano_dollar(ms: int, nanos: int) -> None:
    # $0.0000015 a second is 1.5 nano-dollars a millisecond: 1 ms is 1.5 (to 2), 3 ms 4.5 (to
    # 4), 5 ms 7.5 (to 8), 2 ms exactly 3.
    row = PriceSettings(unit="second", rate=Decimal("0.0000015"))
    assert cost_of(seconds(ms), row).provider_nanos == nanos


def test_gpt_live_is_billed_by_the_millisecond_at_its_price_per_minute() -> None:
    # $0.05 a minute is 833.33... nano-dollars a millisecond; a minute is exactly $0.05.
    live = DEFAULT_PRICES["gpt-live-1"]
    assert [cost_of(seconds(ms), live).provider_nanos for ms in (1, 2, 3)] == [833, 1667, 2500]
    assert usd(cost_of(seconds(90_000), live).provider_nanos) == Decimal("0.075")


def test_each_unit_prices_only_its_own_usage() -> None:
    tokens = Usage(kind="transcription", audio_in=10, text_out=5)
    per_token, per_minute = DEFAULT_PRICES["gpt-4o-transcribe"], DEFAULT_PRICES["whisper-1"]
    assert prices_usage(per_token, tokens) and prices_usage(per_minute, seconds(1000))
    assert not prices_usage(per_token, seconds(1000))
    assert not prices_usage(per_minute, tokens)
    # A duration row that sets token rates prices both (the local row can).
    both = msgspec.structs.replace(per_minute, audio_in=Decimal(3))
    assert prices_usage(both, tokens) and prices_usage(both, seconds(1000))
    assert cost_of(tokens, both).provider_nanos == 30_000
    assert cost_of(seconds(60_000), both).provider_nanos == 6_000_000
    assert [billed_unit(u, p) for u, p in [(tokens, per_minute), (seconds(5), per_minute)]] == [
        "token",
        "minute",
    ]
    assert billed_unit(seconds(5), per_token) == billed_unit(seconds(5), None) == "second"


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


def test_usages_add_count_by_count_whatever_the_fields() -> None:
    # Every count different, so a count left out of ``__add__`` or added in another's place
    # shows; the fields come from the dataclass, so a new one is covered as it is added.
    a = Usage("response", *range(1, 1 + len(USAGE_FIELDS)))
    b = Usage("transcription", *range(100, 100 * (1 + len(USAGE_FIELDS)), 100))
    total = a + b
    assert total.kind == "response"
    for name in USAGE_FIELDS:
        assert getattr(total, name) == getattr(a, name) + getattr(b, name), name


@pytest.mark.parametrize(
    ("ts", "day"),
    [
        (0.0, "1970-01-01"),
        (86_399.999, "1970-01-01"),
        (86_400.0, "1970-01-02"),
        (-0.5, "1969-12-31"),
        (1_800_000_000.0, "2027-01-15"),
        (1_800_057_599.9, "2027-01-15"),
        (1_800_057_600.0, "2027-01-16"),
    ],
)
def test_a_record_is_filed_under_its_utc_day(ts: float, day: str) -> None:
    assert utc_day(ts) == day


def test_a_message_says_dollars_without_the_zeros_past_the_cents() -> None:
    """A newcomer's find: "daily budget of $0.010000000"."""
    from rtgate.auth.policy import KeyPolicy, Spend, over_budget
    from rtgate.metering.cost import usd_words

    assert [usd_words(n) for n in (10_000_000, 12_345_678, 5 * 10**9, 0)] == [
        "0.01",
        "0.012345678",
        "5.00",
        "0.00",
    ]
    refused = over_budget(KeyPolicy(budget_day_nanos=10_000_000), Spend(day=12_000_000))
    assert refused is not None
    assert refused.message == "You exceeded your daily budget of $0.01 (spent $0.012)."


def test_parts_of_one_duration_sum_to_the_cost_of_the_whole() -> None:
    """A newcomer's find: four one-second Live records at $0.05 a minute came to 3,333,332
    nanos, each rounded alone, where four seconds cost 3,333,333."""
    from rtgate.metering.cost import RunningCost

    row = msgspec.structs.replace(DEFAULT_PRICES["gpt-live-1"], markup_percent=Decimal(7))
    running = RunningCost()
    parts = [running.add(Usage(kind="live", audio_ms=1000), row) for _ in range(4)]
    whole = cost_of(Usage(kind="live", audio_ms=4000), row)
    assert sum(p.provider_nanos for p in parts) == whole.provider_nanos == 3_333_333
    assert sum(p.charged_nanos for p in parts) == whole.charged_nanos
    assert [p.provider_nanos for p in parts] == [833_333, 833_334, 833_333, 833_333]
