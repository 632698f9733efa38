"""The beta translator against the installed openai SDK's own unions (docs/protocol.md 2.2-2.4).

Every GA server event type the SDK knows goes through ``to_client`` and must come out as a valid
beta server event, or be dropped (and then be one of the documented GA-only types, or carry an
item beta cannot spell); every beta client event type goes through ``to_upstream`` and must come
out as a valid GA client event. The payloads are built from the pydantic models' fields, so a
new SDK release that adds an event, a field or a choice is covered without editing this file.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import orjson
import pytest
from openai.types.beta.realtime import ConversationItem as BetaItem
from openai.types.beta.realtime import RealtimeClientEvent as BetaClientUnion
from openai.types.beta.realtime import RealtimeServerEvent as BetaServerUnion
from openai.types.realtime import ConversationItem as GaItem
from openai.types.realtime import RealtimeClientEvent as GaClientUnion
from openai.types.realtime import RealtimeResponseCreateParams, ResponseCreateEvent
from openai.types.realtime import RealtimeServerEvent as GaServerUnion
from openai.types.realtime.response_item_reference import ResponseItemReference
from pydantic import BaseModel

from rtgate.protocol.beta import GA_ONLY_SERVER_EVENTS, BetaTranslator
from tests.sdk_events import BETA_ITEM_TYPES, beta_server_errors, discriminated, members


# -- the SDK's unions -----------------------------------------------------------------------------
class _ResponseParamsWithReferences(RealtimeResponseCreateParams):
    input: list[GaItem | ResponseItemReference] | None = None


class _ResponseCreateWithReferences(ResponseCreateEvent):
    """GA ``response.create`` whose ``input`` also takes item references, as the SDK's own
    ``ResponseCreateEventWithReferencesParam`` and the server do (its pydantic model omits them)."""

    response: _ResponseParamsWithReferences | None = None


GA_SERVER = members(GaServerUnion)
BETA_SERVER = members(BetaServerUnion)
BETA_CLIENT = members(BetaClientUnion)
GA_CLIENT = {**members(GaClientUnion), "response.create": _ResponseCreateWithReferences}
_GA_SERVER = discriminated(GA_SERVER)
_BETA_SERVER = discriminated(BETA_SERVER)
_BETA_CLIENT = discriminated(BETA_CLIENT)
_GA_CLIENT = discriminated(GA_CLIENT)


# -- sample payloads from the models' fields ------------------------------------------------------
_SCALARS: dict[Any, Any] = {str: "x", int: 1, float: 1.0, bool: True, object: {}, Any: {}}
# Plain-string fields whose docstring allows only some strings: beta ``include`` (List[str]).
_STRINGS = {"include": "item.input_audio_transcription.logprobs"}
_NONE = type(None)


def _options(tp: Any) -> list[Any]:
    """What a value of ``tp`` may be: union members flattened (None last), or ``tp`` itself."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _options(get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        flat = [o for a in get_args(tp) for o in _options(a)]
        return [o for o in flat if o is not _NONE] + [o for o in flat if o is _NONE]
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def minimal(tp: Any) -> Any:
    """The smallest JSON value of ``tp``: required fields only, empty lists, first choices."""
    chosen = _options(tp)[0]
    if chosen is _NONE:
        return None
    if get_origin(chosen) is Literal:
        return get_args(chosen)[0]
    if _is_model(chosen):
        return {
            f.alias or name: minimal(f.annotation)
            for name, f in chosen.model_fields.items()
            if f.is_required()
        }
    if get_origin(chosen) in (list, dict):
        return get_origin(chosen)()
    return _SCALARS[chosen]


def full(tp: Any, name: str = "", depth: int = 0) -> list[Any]:
    """JSON values of ``tp`` (a field ``name``) with every optional field set, that between
    them take every choice at every union and literal: a union yields the values of each member
    in turn, a literal each of its values, a model zips its fields' values, cycling the shorter
    lists."""
    assert depth < 25, f"too deep: {tp!r}"
    out: list[Any] = []
    for chosen in _options(tp):
        if chosen is _NONE:
            continue
        origin = get_origin(chosen)
        if origin is Literal:
            out += get_args(chosen)
        elif _is_model(chosen):
            fields = {
                f.alias or key: full(f.annotation, key, depth + 1)
                for key, f in chosen.model_fields.items()
            }
            width = max((len(v) for v in fields.values()), default=1)
            out += [{k: v[i % len(v)] for k, v in fields.items()} for i in range(width)]
        elif origin is list:
            out += [[v] for v in full(get_args(chosen)[0], name, depth + 1)]
        elif origin is dict:
            out += [{"k": v} for v in full(get_args(chosen)[1], name, depth + 1)]
        elif chosen is str:
            out.append(_STRINGS.get(name, "x"))
        else:
            out.append(_SCALARS[chosen])
    return out or [None]


def samples(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The minimal instance of an event model, then full ones taking every choice."""
    return [minimal(model), *full(model)]


def frames(event: dict[str, Any]) -> Iterator[str]:
    """``event`` as a frame in the models' field order (``type`` last or so, which the
    translator must find by scanning) and with ``type`` first (read in place)."""
    yield orjson.dumps(event).decode()
    yield orjson.dumps({"type": event["type"], **event}).decode()


# What the beta API took in a message's content, by role (the beta ConversationItem docstring).
BETA_CONTENT = {
    "system": ("input_text",),
    "user": ("input_text", "input_audio"),
    "assistant": ("text",),
}


def beta_accepts(event: dict[str, Any]) -> bool:
    """Whether the beta API itself would take ``event``. Its SDK types are looser than its
    docstrings: every item field is optional, any content type goes with any role."""
    response = event.get("response") or {}
    for item in [event["item"]] if "item" in event else response.get("input") or []:
        if item.get("type") is None:
            return False
        if item["type"] == "message":
            allowed = BETA_CONTENT.get(item.get("role") or "", ())
            content = item.get("content")
            if content is None or any(part.get("type") not in allowed for part in content):
                return False
    return True


# -- the tests ------------------------------------------------------------------------------------
@pytest.mark.parametrize("etype", sorted(GA_SERVER))
def test_every_ga_server_event_reaches_a_beta_client_valid_or_is_dropped(etype: str) -> None:
    for event in samples(GA_SERVER[etype]):
        _GA_SERVER.validate_python(event)  # the sample itself is a valid GA event
        sent = list(frames(event))
        out = [BetaTranslator().to_client(frame) for frame in sent]
        if out[0] is None or out[1] is None:
            assert out == [None, None], (event, out)
            item = event.get("item")
            assert etype in GA_ONLY_SERVER_EVENTS or (
                isinstance(item, dict) and item["type"] not in BETA_ITEM_TYPES
            ), f"{etype} dropped, but it is not documented as GA-only: {event}"
            continue
        assert etype not in GA_ONLY_SERVER_EVENTS, f"{etype} is documented as dropped"
        beta = orjson.loads(out[0])
        assert beta == orjson.loads(out[1]), "the same event translates alike in any key order"
        assert beta_server_errors(beta) == [], (event, beta)
        if beta == event:
            assert out[0] is sent[0] and out[1] is sent[1], "an unchanged frame keeps its bytes"


@pytest.mark.parametrize("transcription", [False, True], ids=["realtime", "transcription"])
@pytest.mark.parametrize("etype", sorted(BETA_CLIENT))
def test_every_beta_client_event_reaches_the_upstream_valid(
    etype: str, transcription: bool
) -> None:
    translator = BetaTranslator(transcription=transcription)
    accepted = [e for e in samples(BETA_CLIENT[etype]) if beta_accepts(e)]
    assert accepted, "no sample the beta API would take"
    for event in accepted:
        _BETA_CLIENT.validate_python(event)  # the sample itself is a valid beta event
        sent = list(frames(event))
        out = [translator.to_upstream(frame) for frame in sent]
        first, second = (orjson.loads(frame) for frame in out)
        assert first == second, "the same event translates alike in any key order"
        parsed = _GA_CLIENT.validate_python(first)
        assert parsed.type == first["type"]
        if first == event:
            assert out[0] is sent[0] and out[1] is sent[1], "an unchanged frame keeps its bytes"


@pytest.mark.parametrize(
    ("role", "part"), [(role, part) for role, parts in BETA_CONTENT.items() for part in parts]
)
def test_every_beta_message_shape_reaches_the_upstream_valid(role: str, part: str) -> None:
    (base, *_) = full(BetaItem)
    content = {**base["content"][0], "type": part}
    item = {**base, "type": "message", "role": role, "content": [content]}
    for event in (
        {"type": "conversation.item.create", "item": item},
        {"type": "response.create", "response": {"input": [item]}},
    ):
        _BETA_CLIENT.validate_python(event)
        ga = orjson.loads(BetaTranslator().to_upstream(orjson.dumps(event).decode()))
        _GA_CLIENT.validate_python(ga)


def test_the_ga_only_set_names_only_events_the_sdk_has_and_beta_lacks() -> None:
    assert set(GA_ONLY_SERVER_EVENTS) <= set(GA_SERVER) - set(BETA_SERVER)
