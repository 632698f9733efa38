"""Kinds of JSON value, and the check that names the first thing wrong with a value in OpenAI's
shapes (docs/protocol.md 5.3): the ``code``, the message and the ``param`` as a path
(``item.content[0].type``).

* a field the object does not have: ``unknown_parameter``,
  "Unknown parameter: 'response.modalities'.";
* a required one missing: ``missing_required_parameter``;
* a value of the wrong JSON type: ``invalid_type``, "Invalid type for 'x': expected a string,
  but got an integer instead.";
* a value outside a closed set: ``invalid_value``, "Invalid value: 'text'. Value must be
  'output_text'." or "... Supported values are: 'a', 'b', and 'c'.";
* out of range: ``integer_below_min_value``, ``integer_above_max_value``,
  ``decimal_below_min_value``, ``decimal_above_max_value``, ``string_above_max_length``,
  ``object_above_max_properties``, ``property_name_above_max_length``.

The GA client events are described with these kinds in ``client_schema``. Pure: plain values
in, a ``Problem`` or None out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a client event is refused: the ``error`` event's code, message and param."""

    code: str
    message: str
    param: str


# -- the kinds of value ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Str:
    #: A closed set of values (``invalid_value`` outside it).
    values: tuple[str, ...] = ()
    max_length: int | None = None


@dataclass(frozen=True)
class Int:
    minimum: int | None = None
    maximum: int | None = None
    #: A closed set of values (``invalid_value`` outside it).
    values: tuple[int, ...] = ()


@dataclass(frozen=True)
class Num:
    """A decimal: an integer or a float."""

    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True)
class Bool:
    pass


@dataclass(frozen=True)
class Free:
    """Any JSON value of one kind, unchecked inside (a JSON schema, tracing metadata)."""

    kind: type = dict


@dataclass(frozen=True)
class Arr:
    items: Spec


@dataclass(frozen=True)
class Map:
    """An object of free keys (``metadata``)."""

    values: Spec
    max_properties: int | None = None
    max_key_length: int | None = None


@dataclass(frozen=True)
class F:
    """A field of an object."""

    spec: Spec
    required: bool = False
    nullable: bool = False


@dataclass(frozen=True)
class Obj:
    fields: Mapping[str, F] = field(default_factory=dict)


@dataclass(frozen=True)
class OneOf:
    """A value of one of these kinds; tried by JSON type first."""

    choices: tuple[Spec, ...]


@dataclass(frozen=True)
class Tagged:
    """Objects told apart by one field (``type``, or a message's ``role``)."""

    key: str
    variants: Mapping[str, Spec]
    #: The variant of an object that leaves ``key`` out (None: it is required).
    default: str | None = None


Spec = Str | Int | Num | Bool | Free | Arr | Map | Obj | OneOf | Tagged


# -- the check ------------------------------------------------------------------------------------


def supported(values: Sequence[str]) -> str:
    """OpenAI's list of choices: ``'a'``, ``'a' and 'b'``, ``'a', 'b', and 'c'``."""
    quoted = [f"'{v}'" for v in values]
    if len(quoted) <= 2:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + ", and " + quoted[-1]


def unknown_parameter(path: str) -> Problem:
    return Problem("unknown_parameter", f"Unknown parameter: '{path}'.", path)


def missing_parameter(path: str) -> Problem:
    return Problem("missing_required_parameter", f"Missing required parameter: '{path}'.", path)


def out_of_range(kind: str, op: str, limit: Any, value: Any, path: str) -> Problem:
    """A number past a bound: ``kind`` "integer" or "decimal", ``op`` the bound's (``>=``
    for a minimum, ``<=`` for a maximum)."""
    side = "below_min" if op.startswith(">") else "above_max"
    words = "below minimum" if op.startswith(">") else "above maximum"
    return Problem(
        f"{kind}_{side}_value",
        f"Invalid '{path}': {kind} {words} value. Expected a value {op} {limit}, but got "
        f"{value} instead.",
        path,
    )


def wrong_type(expected: str, value: Any, path: str) -> Problem:
    """A value of another JSON type than ``expected`` ("an integer")."""
    return Problem(
        "invalid_type",
        f"Invalid type for '{path}': expected {expected}, but got {json_kind(value)} instead.",
        path,
    )


def invalid_value(value: Any, values: Sequence[str], path: str) -> Problem:
    if len(values) == 1:
        return Problem(
            "invalid_value", f"Invalid value: '{value}'. Value must be '{values[0]}'.", path
        )
    return Problem(
        "invalid_value",
        f"Invalid value: '{value}'. Supported values are: {supported(values)}.",
        path,
    )


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def check(spec: Spec, value: Any, path: str = "") -> Problem | None:
    """The first thing wrong with ``value`` as ``spec`` describes it, at ``path``."""
    if isinstance(spec, Obj):
        if not isinstance(value, dict):
            return _wrong_type(spec, value, path)
        for name in value:
            if name not in spec.fields:
                return unknown_parameter(_join(path, name))
        for name, f in spec.fields.items():
            where = _join(path, name)
            if name not in value:
                if f.required:
                    return missing_parameter(where)
                continue
            if value[name] is None and f.nullable:
                continue
            found = check(f.spec, value[name], where)
            if found is not None:
                return found
        return None
    if isinstance(spec, Tagged):
        if not isinstance(value, dict):
            return _wrong_type(spec, value, path)
        tag = value.get(spec.key, spec.default)
        where = _join(path, spec.key)
        if tag is None:
            return missing_parameter(where)
        if not isinstance(tag, str):
            return _wrong_type(Str(), tag, where)
        if tag not in spec.variants:
            return invalid_value(tag, list(spec.variants), where)
        return check(spec.variants[tag], value, path)
    if isinstance(spec, OneOf):
        for choice in spec.choices:
            if _json_kind_fits(choice, value):
                return check(choice, value, path)
        return _wrong_type(spec, value, path)
    if isinstance(spec, Arr):
        if not isinstance(value, list):
            return _wrong_type(spec, value, path)
        for i, item in enumerate(value):
            found = check(spec.items, item, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    if isinstance(spec, Map):
        if not isinstance(value, dict):
            return _wrong_type(spec, value, path)
        if spec.max_properties is not None and len(value) > spec.max_properties:
            return Problem(
                "object_above_max_properties",
                f"Invalid '{path}': too many properties. Expected an object with at most "
                f"{spec.max_properties} properties, but got an object with {len(value)} "
                "properties instead.",
                path,
            )
        for key, item in value.items():
            where = _join(path, key)
            if spec.max_key_length is not None and len(key) > spec.max_key_length:
                return Problem(
                    "property_name_above_max_length",
                    f"Invalid property name in '{path}': '{key}' is too long. Expected a string "
                    f"with maximum length {spec.max_key_length}, but got a string with length "
                    f"{len(key)} instead.",
                    where,
                )
            found = check(spec.values, item, where)
            if found is not None:
                return found
        return None
    return _scalar(spec, value, path)


def _scalar(spec: Str | Int | Num | Bool | Free, value: Any, path: str) -> Problem | None:
    if not _json_kind_fits(spec, value):
        return _wrong_type(spec, value, path)
    if isinstance(spec, Str):
        if spec.values and value not in spec.values:
            return invalid_value(value, spec.values, path)
        if spec.max_length is not None and len(value) > spec.max_length:
            return Problem(
                "string_above_max_length",
                f"Invalid '{path}': string too long. Expected a string with maximum length "
                f"{spec.max_length}, but got a string with length {len(value)} instead.",
                path,
            )
    elif isinstance(spec, Int) and spec.values and value not in spec.values:
        return invalid_value(value, [str(v) for v in spec.values], path)
    elif isinstance(spec, Int | Num):
        kind = "integer" if isinstance(spec, Int) else "decimal"
        if spec.minimum is not None and value < spec.minimum:
            return out_of_range(kind, ">=", spec.minimum, value, path)
        if spec.maximum is not None and value > spec.maximum:
            return out_of_range(kind, "<=", spec.maximum, value, path)
    return None


def _json_kind_fits(spec: Spec, value: Any) -> bool:
    """Whether ``value`` is of the JSON type ``spec`` takes (its values not yet checked)."""
    if isinstance(spec, Str):
        return isinstance(value, str)
    if isinstance(spec, Int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(spec, Num):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(spec, Bool):
        return isinstance(value, bool)
    if isinstance(spec, Free):
        return spec.kind is object or isinstance(value, spec.kind)
    if isinstance(spec, Arr):
        return isinstance(value, list)
    if isinstance(spec, Obj | Map | Tagged):
        return isinstance(value, dict)
    return any(_json_kind_fits(c, value) for c in spec.choices)


def _expected(spec: Spec) -> str:
    if isinstance(spec, Str):
        return f"'{spec.values[0]}'" if len(spec.values) == 1 else "a string"
    if isinstance(spec, Int):
        return "an integer"
    if isinstance(spec, Num):
        return "a decimal"
    if isinstance(spec, Bool):
        return "a boolean"
    if isinstance(spec, Arr):
        return "an array"
    if isinstance(spec, Free) and spec.kind is not dict:
        return "a JSON value"
    if isinstance(spec, OneOf):
        return "one of " + " or ".join(_expected(c) for c in spec.choices)
    return "an object"


def json_kind(value: Any) -> str:
    """A JSON value's kind as OpenAI's refusals name it ("an integer", "a string")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _wrong_type(spec: Spec, value: Any, path: str) -> Problem:
    return wrong_type(_expected(spec), value, path)
