"""What a GA client event may hold, as one table (docs/protocol.md 2.1, 2.5, 2.6), and the check
every event the engine receives meets against it (``problem``).

The table follows the official SDK's GA parameter types (``openai/types/realtime/*_param.py``:
fields, which are required, which take null, the closed sets of values);
``tests/test_client_schema.py`` walks those types and fails when the two disagree. Ranges and
lengths come from the SDK's docstrings and the spec, and a few narrowings from what OpenAI was
seen to refuse (an assistant message's content is ``output_text`` only); docs/engine-fidelity.md
lists each, and what is not known. The kinds of value and the wording of refusals are in
``protocol.schema``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rtgate.protocol.schema import (
    Arr,
    Bool,
    F,
    Free,
    Int,
    Map,
    Num,
    Obj,
    OneOf,
    Problem,
    Spec,
    Str,
    Tagged,
    check,
    invalid_value,
)
from rtgate.protocol.session_fields import TRANSCRIPTION_MODELS

__all__ = ["CLIENT_EVENTS", "Problem", "invalid_value", "problem"]


def _obj(**fields: F) -> Obj:
    return Obj(fields)


def _req(spec: Spec) -> F:
    return F(spec, required=True)


def _opt(spec: Spec) -> F:
    return F(spec)


def _null(spec: Spec) -> F:
    return F(spec, nullable=True)


# -- the GA client events (docs/protocol.md 2.1, 2.5, 2.6) -----------------------------------------

STRING = Str()
#: docs/protocol.md 5.8: a client's event_id is at most 512 characters.
EVENT_ID = _opt(Str(max_length=512))
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
VOICE = OneOf((Str(VOICES), _obj(id=_req(STRING))))
AUDIO_FORMAT = Tagged(
    "type",
    {
        "audio/pcm": _obj(type=_opt(Str(("audio/pcm",))), rate=_opt(Int(values=(24000,)))),
        "audio/pcmu": _obj(type=_opt(Str(("audio/pcmu",)))),
        "audio/pcma": _obj(type=_opt(Str(("audio/pcma",)))),
    },
    default="audio/pcm",
)
#: 1-4096 or "inf" (docs/protocol.md 5.2).
MAX_OUTPUT_TOKENS = OneOf((Int(1, 4096), Str(("inf",))))
TURN_DETECTION = Tagged(
    "type",
    {
        "server_vad": _obj(
            type=_req(Str(("server_vad",))),
            create_response=_opt(Bool()),
            idle_timeout_ms=_null(Int(0)),
            interrupt_response=_opt(Bool()),
            prefix_padding_ms=_opt(Int(0)),
            silence_duration_ms=_opt(Int(0)),
            threshold=_opt(Num(0.0, 1.0)),
        ),
        "semantic_vad": _obj(
            type=_req(Str(("semantic_vad",))),
            create_response=_opt(Bool()),
            eagerness=_opt(Str(("low", "medium", "high", "auto"))),
            interrupt_response=_opt(Bool()),
        ),
    },
)
TRANSCRIPTION = _obj(
    delay=_opt(Str(("minimal", "low", "medium", "high", "xhigh"))),
    keywords=_opt(Arr(STRING)),
    language=_opt(STRING),
    languages=_opt(Arr(STRING)),
    model=_opt(Str(TRANSCRIPTION_MODELS)),
    prompt=_opt(STRING),
)
NOISE_REDUCTION = _obj(strength=_opt(Num()), type=_opt(Str(("near_field", "far_field"))))
AUDIO_INPUT = _obj(
    format=_opt(AUDIO_FORMAT),
    noise_reduction=_null(NOISE_REDUCTION),
    # Null turns transcription off (as session.created shows it); not in the SDK's params.
    transcription=_null(TRANSCRIPTION),
    turn_detection=_null(TURN_DETECTION),
)
AUDIO_OUTPUT = _obj(format=_opt(AUDIO_FORMAT), speed=_opt(Num(0.25, 1.5)), voice=_opt(VOICE))
INCLUDE = Arr(Str(("item.input_audio_transcription.logprobs",)))
MODALITIES = Arr(Str(("text", "audio")))
PROMPT = _obj(id=_req(STRING), variables=_null(Map(OneOf((STRING, Free())))), version=_null(STRING))
REASONING = _obj(effort=_opt(Str(("minimal", "low", "medium", "high", "xhigh"))))
TOOL_CHOICE = OneOf(
    (
        Str(("none", "auto", "required")),
        Tagged(
            "type",
            {
                "function": _obj(type=_req(Str(("function",))), name=_req(STRING)),
                "mcp": _obj(
                    type=_req(Str(("mcp",))), server_label=_req(STRING), name=_null(STRING)
                ),
            },
        ),
    )
)
_APPROVAL_FILTER = _obj(read_only=_opt(Bool()), tool_names=_opt(Arr(STRING)))
MCP_TOOL = _obj(
    type=_req(Str(("mcp",))),
    server_label=_req(STRING),
    allowed_callers=_null(Arr(Str(("direct", "programmatic")))),
    allowed_tools=_null(OneOf((Arr(STRING), _APPROVAL_FILTER))),
    authorization=_opt(STRING),
    connector_id=_opt(
        Str(
            (
                "connector_dropbox",
                "connector_gmail",
                "connector_googlecalendar",
                "connector_googledrive",
                "connector_microsoftteams",
                "connector_outlookcalendar",
                "connector_outlookemail",
                "connector_sharepoint",
            )
        )
    ),
    defer_loading=_opt(Bool()),
    headers=_null(Map(STRING)),
    require_approval=_null(
        OneOf(
            (
                Str(("always", "never")),
                _obj(always=_opt(_APPROVAL_FILTER), never=_opt(_APPROVAL_FILTER)),
            )
        )
    ),
    server_description=_opt(STRING),
    server_url=_opt(STRING),
    tunnel_id=_opt(STRING),
)
FUNCTION_TOOL = _obj(
    type=_opt(Str(("function",))),
    name=_opt(STRING),
    description=_opt(STRING),
    parameters=_opt(Free()),
)
TOOLS = Arr(Tagged("type", {"function": FUNCTION_TOOL, "mcp": MCP_TOOL}, default="function"))
TRACING = OneOf(
    (
        Str(("auto",)),
        _obj(group_id=_opt(STRING), metadata=_opt(Free()), workflow_name=_opt(STRING)),
    )
)
TRUNCATION = OneOf(
    (
        Str(("auto", "disabled")),
        _obj(
            type=_req(Str(("retention_ratio",))),
            retention_ratio=_req(Num(0.0, 1.0)),
            token_limits=_opt(_obj(post_instructions=_opt(Int(0)))),
        ),
    )
)
REALTIME_SESSION = _obj(
    type=_req(Str(("realtime",))),
    audio=_opt(_obj(input=_opt(AUDIO_INPUT), output=_opt(AUDIO_OUTPUT))),
    include=_null(INCLUDE),
    instructions=_opt(STRING),
    max_output_tokens=_opt(MAX_OUTPUT_TOKENS),
    model=_opt(STRING),
    output_modalities=_opt(MODALITIES),
    parallel_tool_calls=_opt(Bool()),
    prompt=_null(PROMPT),
    reasoning=_opt(REASONING),
    tool_choice=_opt(TOOL_CHOICE),
    tools=_opt(TOOLS),
    tracing=_null(TRACING),
    truncation=_opt(TRUNCATION),
)
TRANSCRIPTION_SESSION = _obj(
    type=_req(Str(("transcription",))),
    audio=_opt(_obj(input=_opt(AUDIO_INPUT))),
    include=_null(INCLUDE),
)

_STATUS = _opt(Str(("completed", "incomplete", "in_progress")))
_ITEM_COMMON: dict[str, F] = {
    "id": _opt(STRING),
    "object": _opt(Str(("realtime.item",))),
    "status": _STATUS,
}


def _message(role: str, part_types: tuple[str, ...], **part: F) -> Obj:
    content = _obj(type=_opt(Str(part_types)), **part)
    return Obj(
        {
            "type": _req(Str(("message",))),
            "role": _req(Str((role,))),
            "content": _req(Arr(content)),
            **_ITEM_COMMON,
        }
    )


MESSAGE = Tagged(
    "role",
    {
        "system": _message("system", ("input_text",), text=_opt(STRING)),
        "user": _message(
            "user",
            ("input_text", "input_audio", "input_image"),
            audio=_opt(STRING),
            detail=_opt(Str(("auto", "low", "high"))),
            image_url=_opt(STRING),
            text=_opt(STRING),
            transcript=_opt(STRING),
        ),
        # The SDK's type allows output_audio too; OpenAI refuses it: "Value must be
        # 'output_text'" (a client cannot create assistant audio, docs/protocol.md 2.1).
        "assistant": _message(
            "assistant",
            ("output_text",),
            audio=_opt(STRING),
            text=_opt(STRING),
            transcript=_opt(STRING),
        ),
    },
)
_MCP_ERROR = Tagged(
    "type",
    {
        "protocol_error": _obj(
            type=_req(Str(("protocol_error",))), code=_req(Int()), message=_req(STRING)
        ),
        "tool_execution_error": _obj(
            type=_req(Str(("tool_execution_error",))), message=_req(STRING)
        ),
        "http_error": _obj(type=_req(Str(("http_error",))), code=_req(Int()), message=_req(STRING)),
    },
)
ITEM_VARIANTS: dict[str, Spec] = {
    "message": MESSAGE,
    "function_call": Obj(
        {
            "type": _req(Str(("function_call",))),
            "name": _req(STRING),
            "arguments": _req(STRING),
            "call_id": _opt(STRING),
            **_ITEM_COMMON,
        }
    ),
    "function_call_output": Obj(
        {
            "type": _req(Str(("function_call_output",))),
            "call_id": _req(STRING),
            "output": _req(STRING),
            **_ITEM_COMMON,
        }
    ),
    "mcp_approval_response": _obj(
        type=_req(Str(("mcp_approval_response",))),
        id=_req(STRING),
        approval_request_id=_req(STRING),
        approve=_req(Bool()),
        reason=_null(STRING),
    ),
    "mcp_list_tools": _obj(
        type=_req(Str(("mcp_list_tools",))),
        server_label=_req(STRING),
        tools=_req(
            Arr(
                _obj(
                    input_schema=_req(Free(object)),
                    name=_req(STRING),
                    annotations=_null(Free(object)),
                    description=_null(STRING),
                )
            )
        ),
        id=_opt(STRING),
    ),
    "mcp_call": _obj(
        type=_req(Str(("mcp_call",))),
        id=_req(STRING),
        arguments=_req(STRING),
        name=_req(STRING),
        server_label=_req(STRING),
        approval_request_id=_null(STRING),
        error=_null(_MCP_ERROR),
        output=_null(STRING),
    ),
    "mcp_approval_request": _obj(
        type=_req(Str(("mcp_approval_request",))),
        id=_req(STRING),
        arguments=_req(STRING),
        name=_req(STRING),
        server_label=_req(STRING),
    ),
}
ITEM = Tagged("type", ITEM_VARIANTS)
#: A response's own input may also name conversation items.
INPUT_ITEM = Tagged(
    "type",
    {
        **ITEM_VARIANTS,
        "item_reference": _obj(type=_req(Str(("item_reference",))), id=_req(STRING)),
    },
)
RESPONSE = _obj(
    audio=_opt(_obj(output=_opt(_obj(format=_opt(AUDIO_FORMAT), voice=_opt(VOICE))))),
    conversation=_opt(STRING),
    input=_opt(Arr(INPUT_ITEM)),
    # Null is the session's instructions: LiveKit Agents sends it on every reply it asks for
    # without instructions (docs/engine-fidelity.md).
    instructions=_null(STRING),
    max_output_tokens=_opt(MAX_OUTPUT_TOKENS),
    # docs/protocol.md 5.8: 16 pairs, keys up to 64 characters, values up to 512.
    metadata=_null(Map(Str(max_length=512), max_properties=16, max_key_length=64)),
    output_modalities=_opt(MODALITIES),
    parallel_tool_calls=_opt(Bool()),
    prompt=_null(PROMPT),
    reasoning=_opt(REASONING),
    tool_choice=_opt(TOOL_CHOICE),
    tools=_opt(TOOLS),
)


def _event(name: str, **fields: F) -> Obj:
    return Obj({"type": _req(Str((name,))), "event_id": EVENT_ID, **fields})


#: Every GA client event by type (docs/protocol.md 2.1), in the order OpenAI lists them.
CLIENT_EVENTS: dict[str, Obj] = {
    "session.update": _event(
        "session.update",
        session=_req(
            Tagged("type", {"realtime": REALTIME_SESSION, "transcription": TRANSCRIPTION_SESSION})
        ),
    ),
    "input_audio_buffer.append": _event("input_audio_buffer.append", audio=_req(STRING)),
    "input_audio_buffer.commit": _event("input_audio_buffer.commit"),
    "input_audio_buffer.clear": _event("input_audio_buffer.clear"),
    "output_audio_buffer.clear": _event("output_audio_buffer.clear"),
    "conversation.item.create": _event(
        "conversation.item.create", item=_req(ITEM), previous_item_id=_opt(STRING)
    ),
    "conversation.item.retrieve": _event("conversation.item.retrieve", item_id=_req(STRING)),
    "conversation.item.truncate": _event(
        "conversation.item.truncate",
        item_id=_req(STRING),
        content_index=_req(Int(0)),
        audio_end_ms=_req(Int(0)),
    ),
    "conversation.item.delete": _event("conversation.item.delete", item_id=_req(STRING)),
    "response.create": _event("response.create", response=_opt(RESPONSE)),
    "response.cancel": _event("response.cancel", response_id=_opt(STRING)),
}


def problem(event: Mapping[str, Any]) -> Problem | None:
    """The first thing wrong with a client event whose ``type`` is one of ``CLIENT_EVENTS``."""
    return check(CLIENT_EVENTS[event["type"]], event)
