"""The GA client event table (``protocol/client_schema.py``, written in the kinds of
``protocol/schema.py``) against the installed SDK's own GA parameter types
(``openai/types/realtime/*_param.py``): the same events, fields, required fields, nullable
fields and closed sets of values, at every depth. A new SDK release that adds a field or a
value fails here until the table has it. The few places where the table is narrower or wider
on purpose are listed in ``DELIBERATE`` (docs/engine-fidelity.md says why).
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal, NotRequired, Required, Union, get_args, get_origin

from openai._types import SequenceNotStr
from openai.types.realtime import RealtimeClientEventParam
from openai.types.realtime.realtime_response_create_params_with_references_param import (
    RealtimeResponseCreateParamsWithReferencesParam,
)
from openai.types.realtime.response_create_event_param import ResponseCreateEventParam
from typing_extensions import get_type_hints, is_typeddict

from rtgate.engine.turns import SEMANTIC_SILENCE_MS
from rtgate.protocol import client_schema as cs
from rtgate.protocol import schema as sk
from rtgate.protocol.session_fields import TRANSCRIPTION_MODELS

#: Where the table differs from the SDK's types on purpose: path -> what the table has.
DELIBERATE = {
    # OpenAI refuses assistant audio from a client: "Value must be 'output_text'".
    "item.content[].type@assistant": "values",
    "response.input[].content[].type@assistant": "values",
    # Voices: the ten OpenAI lists when it refuses another name (the SDK takes any string).
    "session.audio.output.voice": "values",
    "response.audio.output.voice": "values",
    # Transcription models: the SDK's current options (pinned below); it takes any string.
    "session.audio.input.transcription.model": "values",
    # Null turns input transcription off, as session.created shows it.
    "session.audio.input.transcription": "nullable",
    "session.include": "nullable",
    # LiveKit Agents sends null here on every reply it asks for without instructions (the SDK's
    # pydantic model is Optional): a client in wide use against OpenAI.
    "response.instructions": "nullable",
}
_NONE = type(None)


def _strip(tp: Any) -> Any:
    while get_origin(tp) in (Annotated, Required, NotRequired):
        tp = get_args(tp)[0]
    return tp


def _members(tp: Any) -> list[Any]:
    tp = _strip(tp)
    if get_origin(tp) in (Union, types.UnionType):
        return [m for a in get_args(tp) for m in _members(a)]
    return [tp]


def _literals(members: Iterable[Any]) -> list[Any]:
    return [v for m in members if get_origin(m) is Literal for v in get_args(m)]


def _fields(td: Any) -> dict[str, Any]:
    return get_type_hints(td, include_extras=True)


def _required(td: Any, name: str) -> bool:
    """Whether ``td`` requires ``name`` (read from its hints: the SDK's modules postpone their
    annotations, so ``__required_keys__`` does not see ``Required[...]``)."""
    hint = _fields(td)[name]
    while get_origin(hint) is Annotated:
        hint = get_args(hint)[0]
    if get_origin(hint) is Required:
        return True
    if get_origin(hint) is NotRequired:
        return False
    return bool(td.__total__)


def compare(spec: sk.Spec, tp: Any, path: str, nullable: bool | None = None) -> list[str]:
    """Where ``spec`` and the SDK type ``tp`` disagree (empty: they agree)."""
    members = _members(tp)
    found: list[str] = []
    if nullable is not None and _NONE in members and not nullable and path not in DELIBERATE:
        found.append(f"{path}: the SDK takes null")
    if nullable and _NONE not in members and path not in DELIBERATE:
        found.append(f"{path}: the table takes null, the SDK does not")
    members = [m for m in members if m is not _NONE]
    dicts = [m for m in members if is_typeddict(m)]
    lits = _literals(members)
    plain = [m for m in members if not is_typeddict(m) and get_origin(m) is not Literal]
    if isinstance(spec, sk.Obj):
        assert len(dicts) == 1 and not lits and not plain, (path, members)
        return found + compare_obj(spec, dicts[0], path)
    if isinstance(spec, sk.Tagged):
        return found + compare_tagged(spec, dicts, path)
    if isinstance(spec, sk.OneOf):
        for choice in spec.choices:
            if isinstance(choice, sk.Str):
                strings = tuple(m for m in members if not is_typeddict(m))
                found += compare(choice, Union[strings], path)  # noqa: UP007
            elif isinstance(choice, sk.Int):
                found += compare(choice, int, path)
            elif isinstance(choice, sk.Arr):
                found += compare(choice, next(m for m in plain if get_origin(m) is not None), path)
            else:
                found += compare(choice, Union[tuple(dicts)], path)  # noqa: UP007
        return found
    if isinstance(spec, sk.Str):
        if str in plain:  # an open string (with or without suggested values)
            if spec.values and path not in DELIBERATE:
                found.append(f"{path}: the SDK takes any string")
        elif sorted(spec.values) != sorted(lits) and DELIBERATE.get(path) != "values":
            found.append(f"{path}: values {sorted(spec.values)} != SDK {sorted(lits)}")
        return found
    if isinstance(spec, sk.Int):
        if lits:
            assert sorted(spec.values) == sorted(lits), (path, spec, lits)
        else:
            assert plain == [int], (path, plain)
        return found
    if isinstance(spec, sk.Num):
        assert plain == [float], (path, plain)
        return found
    if isinstance(spec, sk.Bool):
        assert plain == [bool], (path, plain)
        return found
    if isinstance(spec, sk.Free):
        assert plain in ([object], [dict[str, object]]) or all(
            get_origin(p) is dict for p in plain
        ), (path, plain)
        return found
    (seq,) = plain
    origin = get_origin(seq)
    if isinstance(spec, sk.Arr):
        assert origin in (list, Iterable, SequenceNotStr, Sequence) or (
            origin is not None and issubclass(origin, Iterable)
        ), (path, seq)
        return found + compare(spec.items, get_args(seq)[0], f"{path}[]")
    assert isinstance(spec, sk.Map) and origin is dict, (path, seq)
    return found + compare(spec.values, get_args(seq)[1], f"{path}.*")


def compare_obj(spec: sk.Obj, td: Any, path: str) -> list[str]:
    hints = _fields(td)
    found = []
    if set(spec.fields) != set(hints):
        found.append(f"{path}: fields {sorted(spec.fields)} != SDK {sorted(hints)}")
    for name in set(spec.fields) & set(hints):
        f = spec.fields[name]
        where = f"{path}.{name}" if path else name
        if f.required != _required(td, name):
            found.append(f"{where}: required {f.required} != SDK")
        found += compare(f.spec, hints[name], where, f.nullable)
    return found


def compare_tagged(spec: sk.Tagged, dicts: list[Any], path: str) -> list[str]:
    """Union members told apart by ``spec.key`` (a message's three roles share one type)."""
    by_tag: dict[str, list[Any]] = {}
    for td in dicts:
        tag_type = _fields(td).get(spec.key)
        (tag,) = _literals(_members(tag_type)) if tag_type is not None else (spec.default,)
        by_tag.setdefault(tag, []).append(td)
    found = []
    if set(by_tag) != set(spec.variants):
        found.append(f"{path}.{spec.key}: variants {sorted(spec.variants)} != SDK {sorted(by_tag)}")
    for tag in set(by_tag) & set(spec.variants):
        variant, tds = spec.variants[tag], by_tag[tag]
        if isinstance(variant, sk.Tagged):
            found += compare_tagged(variant, tds, path)
            continue
        (td,) = tds
        assert isinstance(variant, sk.Obj)
        role = _literals(_members(_fields(td).get("role", _NONE)))
        found += [
            f.replace(f"{path}.content[].type:", f"{path}.content[].type@{role[0]}:") if role else f
            for f in _compare_variant(variant, td, path, role[0] if role else None)
        ]
    return found


def _compare_variant(variant: sk.Obj, td: Any, path: str, role: str | None) -> list[str]:
    if role is None:
        return compare_obj(variant, td, path)
    # A message's part types are checked per role (DELIBERATE names them with @role).
    key = f"{path}.content[].type@{role}"
    deliberate = DELIBERATE.get(key)
    saved = dict(DELIBERATE)
    if deliberate is not None:
        DELIBERATE[f"{path}.content[].type"] = deliberate
    try:
        return compare_obj(variant, td, path)
    finally:
        DELIBERATE.clear()
        DELIBERATE.update(saved)


def sdk_events() -> dict[str, Any]:
    out = {}
    for td in get_args(_strip(RealtimeClientEventParam)):
        (etype,) = get_args(_strip(_fields(td)["type"]))
        out[etype] = td
    return out


def test_the_table_has_every_ga_client_event_and_only_those() -> None:
    assert set(cs.CLIENT_EVENTS) == set(sdk_events())


def test_every_event_agrees_with_the_sdks_ga_parameter_types() -> None:
    found = []
    for etype, td in sdk_events().items():
        spec = cs.CLIENT_EVENTS[etype]
        if etype == "response.create":
            # The SDK's response.create parameter omits item references; its
            # ``...WithReferences`` twin has them, as the server takes them (docs/protocol.md 2.1).
            found += compare_obj(
                sk.Obj({k: f for k, f in spec.fields.items() if k != "response"}),
                _without(ResponseCreateEventParam, "response"),
                "",
            )
            found += compare_obj(
                _as_obj(spec.fields["response"].spec),
                RealtimeResponseCreateParamsWithReferencesParam,
                "response",
            )
            continue
        found += compare_obj(spec, td, "")
    assert found == [], found


def test_the_eagerness_values_are_the_turn_takers() -> None:
    semantic = cs.TURN_DETECTION.variants["semantic_vad"]
    assert isinstance(semantic, sk.Obj)
    eagerness = semantic.fields["eagerness"].spec
    assert isinstance(eagerness, sk.Str)
    assert set(eagerness.values) == set(SEMANTIC_SILENCE_MS)


def _as_obj(spec: sk.Spec) -> sk.Obj:
    assert isinstance(spec, sk.Obj)
    return spec


def _without(td: Any, name: str) -> Any:
    from typing_extensions import TypedDict

    hints = {k: v for k, v in _fields(td).items() if k != name}
    required = {k for k in hints if _required(td, k)}
    fields = {k: (Required[v] if k in required else NotRequired[v]) for k, v in hints.items()}
    return TypedDict(f"{td.__name__}Without", fields)  # type: ignore[operator]


def test_the_transcription_models_are_the_sdks_current_options() -> None:
    # A new SDK release naming another model fails here until the table (and the engine,
    # which refuses any other name) has it.
    from openai.types.realtime.audio_transcription_param import AudioTranscriptionParam

    hint = get_type_hints(AudioTranscriptionParam)["model"]
    assert sorted(_literals(list(get_args(_strip(hint))))) == sorted(TRANSCRIPTION_MODELS)
    spec = cs.TRANSCRIPTION.fields["model"].spec
    assert isinstance(spec, sk.Str) and spec.values == TRANSCRIPTION_MODELS
