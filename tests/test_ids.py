"""Identifiers: OpenAI's shape (docs/protocol.md 8.1), every base62 character reachable."""

from __future__ import annotations

import re
import string
from collections import Counter

import pytest

from rtgate.protocol import ids
from rtgate.protocol.ids import new_id


def test_shape_and_length() -> None:
    assert re.fullmatch(r"ur_[0-9A-Za-z]{21}", new_id("ur"))
    assert re.fullmatch(r"key_[0-9A-Za-z]{16}", new_id("key", 16))
    assert re.fullmatch(r"x_[0-9A-Za-z]{100}", new_id("x", 100))


def test_ids_differ() -> None:
    ids = [new_id("x") for _ in range(5000)]
    assert len(set(ids)) == len(ids)


def test_every_byte_value_maps_evenly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fed every byte value once, each character comes out exactly 4 times: the 8 values a
    plain modulo of 256 would give a 5th draw (so 8 characters one draw in 64 more) are
    dropped."""
    draws = iter([bytes(range(256))])
    monkeypatch.setattr(ids.os, "urandom", lambda n: next(draws))
    counts = Counter(new_id("x", 248)[2:])
    assert counts == dict.fromkeys(string.digits + string.ascii_letters, 4)


def test_draws_again_when_too_many_bytes_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter([bytes([255] * 29), bytes(range(29))])
    monkeypatch.setattr(ids.os, "urandom", lambda n: next(draws))
    assert new_id("x") == "x_" + (string.digits + string.ascii_letters)[:21]
