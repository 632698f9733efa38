"""rtgate.heap: when a burst's memory is given back, and that it is."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest

from rtgate import heap
from rtgate.heap import BurstTrim


def samples(policy: BurstTrim, counts: list[int]) -> list[int]:
    """The counts at which the policy trims."""
    return [n for n in counts if policy.observe(n)]


def test_a_fall_trims_at_the_next_sample_once_teardown_has_freed() -> None:
    policy = BurstTrim(drop=64)
    # 1,000 live; 600 close (the fall is seen at 400); the trim comes one sample later.
    assert samples(policy, [500, 1000, 400, 400, 400]) == [400]


def test_a_fall_that_leaves_more_than_half_live_does_not_trim() -> None:
    # The collection would walk more live sessions than the fall freed.
    policy = BurstTrim(drop=64)
    assert samples(policy, [1000, 900, 800, 600, 600]) == []
    assert samples(policy, [500, 500]) == [500]


def test_steady_churn_never_trims() -> None:
    policy = BurstTrim(drop=64)
    assert samples(policy, [1000, 980, 1010, 950, 1000, 970] * 5) == []


def test_a_small_burst_trims_once_every_session_has_closed() -> None:
    policy = BurstTrim(drop=64)
    assert samples(policy, [10, 30, 20, 0, 0, 0]) == [0]


def test_after_a_trim_only_another_fall_trims_again() -> None:
    policy = BurstTrim(drop=64)
    # Falls to half, sampled twice: a trim after each, none while the count holds.
    got = samples(policy, [1000, 500, 500, 500, 200, 200, 200, 200])
    assert got == [500, 200]


def test_a_rise_after_a_fall_is_the_new_peak() -> None:
    policy = BurstTrim(drop=64)
    assert samples(policy, [1000, 400, 1000, 1200, 500, 500]) == [1000, 500]


# Freed blocks under a live one at the heap's top: free() alone keeps them in the process.
BURST = textwrap.dedent(
    """
    import sys
    from rtgate import heap

    def rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024

    burst = [bytes(1000) for _ in range(100_000)]  # ~100 MB in blocks malloc() serves
    survivor = bytes(1000)  # allocated last, still live
    del burst
    before = rss_mb()
    if sys.argv[1] == "trim":
        heap.trim()
    elif sys.argv[1] == "startup":  # the end of a serving process's start-up
        from rtgate.serving import freeze_startup_heap

        freeze_startup_heap()
    print(before, rss_mb())
    """
)


def rss_after_burst(how: str) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", BURST, how], capture_output=True, text=True, check=True
    )
    before, after = out.stdout.split()
    return int(before), int(after)


def test_trim_returns_a_freed_burst_that_free_alone_keeps() -> None:
    assert heap.trimmable()
    held_before, held_after = rss_after_burst("none")
    assert held_after > 80 and held_after >= held_before - 5  # kept without a trim
    before, after = rss_after_burst("trim")
    assert before > 80 and after < before - 60  # returned


def test_the_end_of_start_up_returns_what_start_up_freed() -> None:
    """Start-up's scratch (the imports' sources, the collection before the freeze) is given
    back before the gateway idles (docs/performance.md 9.23)."""
    before, after = rss_after_burst("startup")
    assert before > 80 and after < before - 60


async def test_the_sampler_trims_after_a_fall(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[int] = []
    counts = iter([100, 100, 10, 10, 10, 10])
    live = [100]

    def count() -> int:
        live[0] = next(counts, 10)
        return live[0]

    def trim() -> bool:
        trims.append(live[0])
        return True

    monkeypatch.setattr(heap, "trim", trim)
    task = asyncio.create_task(heap.trim_after_bursts(count, every=0.001))
    try:
        for _ in range(200):
            await asyncio.sleep(0.001)
            if trims:
                break
    finally:
        task.cancel()
    assert trims == [10]
