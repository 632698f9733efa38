"""Validation of server events against the official SDK's own pydantic types: every GA event
as the SDK's GA union takes it, and as a legacy beta client receives it (``protocol/beta.py``)
as the SDK's beta union takes it, or dropped only when beta cannot spell it (docs/protocol.md 2.4).
"""

from __future__ import annotations

from typing import Annotated, Any, Union, get_args, get_origin

import orjson
from openai.types.beta.realtime import ConversationItem as BetaItem
from openai.types.beta.realtime import RealtimeServerEvent as BetaServerUnion
from openai.types.live import ServerEvent as LiveServerUnion
from openai.types.realtime import RealtimeServerEvent as GaServerUnion
from openai.types.responses import ResponseStreamEvent as ResponsesStreamUnion
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from rtgate.protocol.beta import GA_ONLY_SERVER_EVENTS, BetaTranslator


def members(union: Any) -> dict[str, type[BaseModel]]:
    """The event models of an SDK union (``Annotated[Union[...], PropertyInfo]``) by ``type``."""
    if get_origin(union) is Annotated:
        union = get_args(union)[0]
    out: dict[str, type[BaseModel]] = {}
    for model in get_args(union):
        (etype,) = get_args(model.model_fields["type"].annotation)
        assert etype not in out, etype
        out[etype] = model
    return out


def discriminated(models: dict[str, type[BaseModel]]) -> TypeAdapter[Any]:
    """A validator that picks the member by ``type`` alone: an unknown type fails outright
    instead of being tried against every member. (The SDK marks its unions with its own
    ``PropertyInfo``, which pydantic does not read.)"""
    return TypeAdapter(Annotated[Union[tuple(models.values())], Field(discriminator="type")])  # noqa: UP007


_GA_SERVER = discriminated(members(GaServerUnion))
_BETA_SERVER = discriminated(members(BetaServerUnion))
_LIVE_SERVER = discriminated(members(LiveServerUnion))
_RESPONSES_STREAM = discriminated(members(ResponsesStreamUnion))
#: The item types a beta client can receive.
BETA_ITEM_TYPES = frozenset(get_args(get_args(BetaItem.model_fields["type"].annotation)[0]))


def _sdk_gap(tag: str, error: Any) -> bool:
    """A validation error that is the beta SDK's types lagging the wire, not a translation
    defect:

    * ``model`` literals stop at ``gpt-realtime-2025-08-28`` and at the three transcription
      models of 2025; a newer model's name is relayed as it is.
    * ``TranscriptionSession.client_secret`` is typed required, yet documented "Only present
      when the session is created on the server via REST API".
    """
    loc, kind = tuple(error["loc"][1:]), error["type"]
    if kind == "literal_error":
        return loc in {("session", "model"), ("session", "input_audio_transcription", "model")}
    return (
        tag.startswith("transcription_session.")
        and loc == ("session", "client_secret")
        and kind == "missing"
    )


def beta_server_errors(event: dict[str, Any]) -> list[Any]:
    """The beta SDK union's objections to ``event``, less the gaps in its types."""
    tag = event["type"]
    if tag == "transcription_session.created":
        # In the beta spec, not in the SDK's union; the same payload as ``.updated``.
        event = {**event, "type": "transcription_session.updated"}
    try:
        parsed = _BETA_SERVER.validate_python(event)
    except ValidationError as e:
        return [err for err in e.errors() if not _sdk_gap(tag, err)]
    assert parsed.type == event["type"]
    return []


def validate_server_event(event: dict[str, Any]) -> None:
    """Raise if ``event`` is not a valid GA server event of its declared type, or if a beta
    client would receive it in a shape the beta SDK refuses."""
    parsed = _GA_SERVER.validate_python(event)
    assert parsed.type == event["type"], (parsed.type, event["type"])
    beta = BetaTranslator().to_client(orjson.dumps(event).decode())
    if beta is None:
        item = event.get("item")
        assert event["type"] in GA_ONLY_SERVER_EVENTS or (
            isinstance(item, dict) and item["type"] not in BETA_ITEM_TYPES
        ), f"dropped for a beta client, yet beta has {event['type']}"
    else:
        translated = orjson.loads(beta)
        assert beta_server_errors(translated) == [], (event, translated)


def validate_live_event(event: dict[str, Any]) -> None:
    """Raise if ``event`` is not a valid GPT-Live server event of its declared type, as the
    SDK's ``openai.types.live.ServerEvent`` union types it (extra fields are refused too: the
    Live schema is strict, docs/protocol-live.md 2)."""
    parsed = _LIVE_SERVER.validate_python(event)
    assert parsed.type == event["type"], (parsed.type, event["type"])
    extra = set(event) - set(type(parsed).model_fields)
    assert not extra, (event["type"], extra)


def validate_responses_event(event: dict[str, Any]) -> None:
    """Raise if ``event`` (nested in a GPT-Live ``response.event``) is not a valid Responses
    streaming event of its declared type, as the SDK's ``ResponseStreamEvent`` union types it."""
    parsed = _RESPONSES_STREAM.validate_python(event)
    assert parsed.type == event["type"], (parsed.type, event["type"])
    extra = set(event) - set(type(parsed).model_fields)
    assert not extra, (event["type"], extra)
