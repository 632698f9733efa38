"""What a GA client event may hold, as one table, and the check every event meets against it.

The table follows the official SDK's GA parameter types (``openai/types/realtime/*_param.py``:
fields, which are required, which take null, the closed sets of values);
``tests/test_client_schema.py`` walks those types and fails when the two disagree. Ranges and
lengths come from the SDK's docstrings and the spec, and a few narrowings from what OpenAI was
seen to refuse (an assistant message's content is ``output_text`` only); docs/engine-fidelity.md
lists each, and what is not known.

``problem(event)`` names the first thing wrong, in OpenAI's shapes (protocol.md 5.3): the
``code``, the message and the ``param`` as a path (``item.content[0].type``):

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

Pure: plain values in, a ``Problem`` or None out.
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


def _obj(**fields: F) -> Obj:
    return Obj(fields)


def _req(spec: Spec) -> F:
    return F(spec, required=True)


def _opt(spec: Spec) -> F:
    return F(spec)


def _null(spec: Spec) -> F:
    return F(spec, nullable=True)


# -- the GA client events (protocol.md 2.1, 2.5, 2.6) ---------------------------------------------

STRING = Str()
#: protocol.md 5.8: a client's event_id is at most 512 characters.
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
#: 1-4096 or "inf" (protocol.md 5.2).
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
    model=_opt(STRING),
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
        # 'output_text'" (a client cannot create assistant audio, protocol.md 2.1).
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
    instructions=_opt(STRING),
    max_output_tokens=_opt(MAX_OUTPUT_TOKENS),
    # protocol.md 5.8: 16 pairs, keys up to 64 characters, values up to 512.
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


#: Every GA client event by type (protocol.md 2.1), in the order OpenAI lists them.
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


# -- the check ------------------------------------------------------------------------------------


def problem(event: Mapping[str, Any]) -> Problem | None:
    """The first thing wrong with a client event whose ``type`` is one of ``CLIENT_EVENTS``."""
    return _check(CLIENT_EVENTS[event["type"]], event, "")


def supported(values: Sequence[str]) -> str:
    """OpenAI's list of choices: ``'a'``, ``'a' and 'b'``, ``'a', 'b', and 'c'``."""
    quoted = [f"'{v}'" for v in values]
    if len(quoted) <= 2:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + ", and " + quoted[-1]


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


def _check(spec: Spec, value: Any, path: str) -> Problem | None:
    if isinstance(spec, Obj):
        if not isinstance(value, dict):
            return _wrong_type(spec, value, path)
        for name in value:
            if name not in spec.fields:
                return Problem(
                    "unknown_parameter",
                    f"Unknown parameter: '{_join(path, name)}'.",
                    _join(path, name),
                )
        for name, f in spec.fields.items():
            where = _join(path, name)
            if name not in value:
                if f.required:
                    return Problem(
                        "missing_required_parameter",
                        f"Missing required parameter: '{where}'.",
                        where,
                    )
                continue
            if value[name] is None and f.nullable:
                continue
            found = _check(f.spec, value[name], where)
            if found is not None:
                return found
        return None
    if isinstance(spec, Tagged):
        if not isinstance(value, dict):
            return _wrong_type(spec, value, path)
        tag = value.get(spec.key, spec.default)
        where = _join(path, spec.key)
        if tag is None:
            return Problem(
                "missing_required_parameter", f"Missing required parameter: '{where}'.", where
            )
        if not isinstance(tag, str):
            return _wrong_type(Str(), tag, where)
        if tag not in spec.variants:
            return invalid_value(tag, list(spec.variants), where)
        return _check(spec.variants[tag], value, path)
    if isinstance(spec, OneOf):
        for choice in spec.choices:
            if _json_kind_fits(choice, value):
                return _check(choice, value, path)
        return _wrong_type(spec, value, path)
    if isinstance(spec, Arr):
        if not isinstance(value, list):
            return _wrong_type(spec, value, path)
        for i, item in enumerate(value):
            found = _check(spec.items, item, f"{path}[{i}]")
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
            found = _check(spec.values, item, where)
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
            return Problem(
                f"{kind}_below_min_value",
                f"Invalid '{path}': {kind} below minimum value. Expected a value >= "
                f"{spec.minimum}, but got {value} instead.",
                path,
            )
        if spec.maximum is not None and value > spec.maximum:
            return Problem(
                f"{kind}_above_max_value",
                f"Invalid '{path}': {kind} above maximum value. Expected a value <= "
                f"{spec.maximum}, but got {value} instead.",
                path,
            )
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


def _got(value: Any) -> str:
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
    return Problem(
        "invalid_type",
        f"Invalid type for '{path}': expected {_expected(spec)}, but got {_got(value)} instead.",
        path,
    )
