"""msgspec's validation errors as rtgate reports them: where (a dotted path) and what.

msgspec says ``Expected `int` >= 1 - at `$.clear[0]```; rtgate names the place as the
configuration file and the APIs always have, ``clear.0``. A check msgspec cannot express as a
type or a constraint lives in a struct's ``__post_init__``, which msgspec reports at the struct
itself: such a check names its field first (``"expires: not a date"``), and that name joins the
path here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

if TYPE_CHECKING:
    from rtgate.protocol.schema import Problem

_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_INDEX = re.compile(r"\[(\d+)\]")
_NAMED = re.compile(r"^(?P<field>[a-z_][a-z0-9_]*): (?P<message>.+)$", re.DOTALL)
#: msgspec's messages about a field that is there but should not be, or is not but should: they
#: belong to the field, as every other problem does.
_OF_FIELD = re.compile(
    r"^Object (?P<message>contains unknown|missing required) field `(?P<field>[^`]+)`$"
)


#: The patterns a field is held to, as a person would say them (msgspec quotes the regex).
DAY_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
_PATTERN_WORDS = {DAY_PATTERN: "Expected a UTC day, YYYY-MM-DD"}
_PATTERN = re.compile(r"^Expected `str` matching regex '(?P<regex>.*)'$")


def problem(exc: msgspec.ValidationError, where: str = "") -> tuple[str, str]:
    """``(path, message)`` of ``exc``, its path under ``where``; the path is ``""`` at the top."""
    text = str(exc)
    path = ""
    at = _AT.search(text)
    if at:
        text = text[: at.start()]
        path = _INDEX.sub(r".\1", at.group("path")).lstrip(".")
    pattern = _PATTERN.match(text)
    if pattern:
        # msgspec escapes the regex once more as it quotes it.
        text = _PATTERN_WORDS.get(pattern.group("regex").replace("\\\\", "\\"), text)
    named = _NAMED.match(text) or _OF_FIELD.match(text)
    if named:
        text = (
            f"{named.group('message')} field" if named.re is _OF_FIELD else named.group("message")
        )
        path = f"{path}.{named.group('field')}" if path else named.group("field")
    if where:
        path = f"{where}.{path}" if path else where
    return path, text


S = TypeVar("S", bound=msgspec.Struct)


class Unreadable(ValueError):
    """A value ``read_as`` refused: its message names the field and what is wrong."""


def read_as(raw: Mapping[str, Any], kind: type[S], whole: str = "") -> S:
    """``raw`` (strings read as the values they spell, as from a form or a command line) as
    ``kind``, or ``Unreadable`` saying ``field: problem`` (``whole`` where no field is to
    blame), as the admin API says it of a body."""
    try:
        return msgspec.convert(raw, kind, strict=False)
    except msgspec.ValidationError as exc:
        where, message = problem(exc)
        where = where or whole
        raise Unreadable(f"{where}: {message}" if where else message) from exc


_BOUND = re.compile(r"^Expected `(?P<kind>int|float)` (?P<op>>=|<=|>|<) (?P<limit>\S+)$")
_TYPE = re.compile(r"^Expected `(?P<want>[^`]+)`, got `[^`]+`$")
_WANTED = {
    "int": "an integer",
    "float": "a decimal",
    "str": "a string",
    "bool": "a boolean",
    "object": "an object",
    "array": "an array",
}
_MISSING = object()


def openai_refusal(exc: msgspec.ValidationError, sent: Any) -> Problem:
    """``exc`` about ``sent`` (the body as parsed JSON) in the words OpenAI's APIs refuse a
    body with, as the engine refuses an event (``protocol.schema``: "Invalid
    'expires_after.seconds': integer below minimum value. Expected a value >= 10, but got 5
    instead.", ``integer_below_min_value``); msgspec's own words, code ``invalid_request``,
    for anything else."""
    from rtgate.protocol import schema

    path, text = problem(exc)
    value = value_at(sent, path.split(".") if path else (), _MISSING)
    if (bound := _BOUND.match(text)) and value is not _MISSING:
        kind = "integer" if bound["kind"] == "int" else "decimal"
        return schema.out_of_range(kind, bound["op"], bound["limit"], value, path)
    if (wrong := _TYPE.match(text)) and value is not _MISSING and wrong["want"] in _WANTED:
        if not path:
            # The body itself (a newcomer's find: "Invalid type for '': ...", naming nothing).
            return schema.Problem("invalid_type", not_an_object(value), "")
        return schema.wrong_type(_WANTED[wrong["want"]], value, path)
    if text == "missing required field":
        return schema.missing_parameter(path)
    if text == "contains unknown field":
        return schema.unknown_parameter(path)
    return schema.Problem("invalid_request", f"{path or 'body'}: {text}", path)


def not_an_object(body: Any) -> str:
    """What a request whose JSON body is no object is told, on every route."""
    from rtgate.protocol.schema import json_kind

    return f"The request body must be a JSON object, but got {json_kind(body)}."


def remove_at(tree: dict[str, Any], path: tuple[str, ...]) -> None:
    """Remove the value at ``path`` from ``tree`` (parsed JSON, the caller's own copy), and the
    objects that leaves empty; a path through something that is no object is left as it is."""
    head, rest = path[0], path[1:]
    inner = tree.get(head)
    if rest and isinstance(inner, dict):
        remove_at(inner, rest)
        if inner:
            return
    if head in tree and (not rest or isinstance(inner, dict)):
        del tree[head]


def value_at(tree: Any, path: Iterable[str], missing: Any = None) -> Any:
    """The value of parsed JSON at ``path`` (members' names, and list indexes as digits), or
    ``missing`` where there is none."""
    for part in path:
        if isinstance(tree, Mapping) and part in tree:
            tree = tree[part]
        elif isinstance(tree, list) and part.isdigit() and int(part) < len(tree):
            tree = tree[int(part)]
        else:
            return missing
    return tree
