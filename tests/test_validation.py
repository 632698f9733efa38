"""msgspec's validation errors, placed as the configuration and the APIs name fields."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import pytest

from rtgate.validation import problem


class Inner(msgspec.Struct, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1)] = 1

    def __post_init__(self) -> None:
        if self.limit == 13:
            raise ValueError("limit: unlucky")


class Outer(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    clear: list[Literal["a", "b"]] = []
    inner: Inner = msgspec.field(default_factory=Inner)


@pytest.mark.parametrize(
    ("raw", "where", "path", "says"),
    [
        (b'{"name": "x", "clear": ["a", "z"]}', "", "clear.1", "Invalid enum value 'z'"),
        (b'{"name": "x", "inner": {"limit": 0}}', "", "inner.limit", ">= 1"),
        (b'{"name": "x", "inner": {"limit": 13}}', "", "inner.limit", "unlucky"),
        (b'{"name": "x", "colour": 1}', "", "colour", "contains unknown field"),
        (b'{"clear": []}', "", "name", "missing required field"),
        (b"[1]", "", "", "Expected `object`, got `array`"),
        (b'{"name": 1}', "upstreams.a", "upstreams.a.name", "Expected `str`, got `int`"),
    ],
)
def test_a_problem_names_its_field(raw: bytes, where: str, path: str, says: str) -> None:
    with pytest.raises(msgspec.ValidationError) as err:
        msgspec.json.decode(raw, type=Outer)
    found, message = problem(err.value, where)
    assert found == path
    assert says in message
