"""Serve legacy beta clients (``OpenAI-Beta: realtime=v1``) from a GA upstream
(docs/protocol.md 2.4).

OpenAI removed the beta event shapes in 2026-05 (docs/protocol.md 0, fact 1), but old SDKs still
send the header. The gateway translates instead of refusing them: beta client events become GA
ones on the way up, GA server events become beta ones on the way down. Pure: strings in, strings
out.

Rules:

* Only frames whose shape differs are rewritten; every other frame (including a parsed one whose
  translation came out equal) is returned as the very same string, so it reaches the other side
  byte for byte: what the relay does not act on, it forwards as it came.
* Frames are recognised cheaply. A server frame that opens with its ``type`` (as OpenAI's and the
  local engine's do) is looked up by that name: a pure rename (the deltas among them) is done by
  string surgery, a GA-only event is dropped, and any other name the tables do not hold is
  returned untouched, all without a parse. Any other frame is scanned for the quoted names the
  tables hold. Only a frame that matches is parsed, and its parsed ``type`` decides.
* A beta client's SDK types are the beta union (docs/protocol.md 2.3), so it receives only events
  that union can spell. These GA events have no beta counterpart and are dropped
  (``GA_ONLY_SERVER_EVENTS``):

  - ``conversation.item.done``: beta's single ``conversation.item.created`` is GA's
    ``conversation.item.added``; the finished item reaches a beta client in
    ``response.output_item.done`` and ``response.done``, as it did from the beta server.
  - ``input_audio_buffer.timeout_triggered``: ``idle_timeout_ms`` is GA-only. The commit and the
    response it starts arrive as usual.
  - ``input_audio_buffer.dtmf_event_received``: SIP calls only, never on a beta socket.
  - ``conversation.item.input_audio_transcription.segment``: diarized segments; the whole
    transcript still arrives in ``...input_audio_transcription.completed``.
  - ``mcp_list_tools.*``, ``response.mcp_call_arguments.*``, ``response.mcp_call.*``: beta had no
    MCP tools.

  Likewise an item event (``conversation.item.added``/``created``/``retrieved``,
  ``response.output_item.added``/``done``) whose item is not a beta item type (``message``,
  ``function_call``, ``function_call_output``; GA adds the MCP items) is dropped, such items are
  left out of ``response.output``, and ``input_image`` parts (beta had no image input) are left
  out of an item's ``content``. The ``output_index`` of later items then counts the MCP items
  the beta client never saw.
* GA-only fields with no beta spelling (``prompt``, ``truncation``, ``reasoning``...) are left in
  place (beta clients ignore unknown fields), but a field the beta types spell differently is
  rewritten or left out of a session: a function ``tool_choice`` becomes the bare function name
  (beta's "specify a function"; the reverse on the way up), an MCP ``tool_choice``, MCP
  ``tools`` and a custom ``voice`` object (``{"id": "voice_..."}``) are left out. Beta-only
  fields with no GA spelling (``temperature``, ``client_secret``) are dropped on the way up.
* A GA transcription session (``session.type == "transcription"``) reaches the client as
  ``transcription_session.created`` / ``.updated``, the beta names (the first is in the beta
  spec though not in the SDK's union). Model names newer than the beta SDK's literals are
  relayed as they are.
* An ``error`` that names a GA session or response member in its ``param``
  (``session.audio.output.voice``) names the beta one (``session.voice``).
* Not translated: a beta ``item_reference`` *content part* inside a message (GA references whole
  items only); the GA server answers it with an ``error``.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from rtgate.protocol.beta_shapes import (
    Event,
    is_beta_item,
    item_to_beta,
    item_to_ga,
    param_to_beta,
    part_to_beta,
    response_to_beta,
    response_to_ga,
    session_to_beta,
    session_to_ga,
)


# -- whole events ---------------------------------------------------------------------------------
def _with_item(new_type: str | None = None) -> Callable[[Event], Event | None]:
    def convert(event: Event) -> Event | None:
        item = event.get("item")
        if not is_beta_item(item):
            return None
        out = {**event, "item": item_to_beta(item)}
        if new_type is not None:
            out["type"] = new_type
        return out

    return convert


def _part(event: Event) -> Event:
    return {**event, "part": part_to_beta(event.get("part"))}


def _response(event: Event) -> Event:
    return {**event, "response": response_to_beta(event.get("response"))}


def _session(suffix: str) -> Callable[[Event], Event | None]:
    def convert(event: Event) -> Event:
        session = event.get("session")
        transcription = isinstance(session, dict) and session.get("type") == "transcription"
        out = {**event, "session": session_to_beta(session)}
        if transcription:
            out["type"] = "transcription_session." + suffix
        return out

    return convert


def _drop(event: Event) -> None:
    return None


#: The roots of the paths an ``error``'s ``param`` names that beta spells its own way.
_PARAM_ROOTS = ("session.", "response.")


def _error(event: Event) -> Event:
    """An ``error`` naming a GA session or response member (``session.audio.output.voice``)
    names the beta one the client sent (``session.voice``)."""
    error = event.get("error")
    if not isinstance(error, dict):
        return event
    param = error.get("param")
    if not isinstance(param, str) or not param.startswith(_PARAM_ROOTS):
        return event
    root, _, path = param.partition(".")
    return {**event, "error": {**error, "param": f"{root}.{param_to_beta(path)}"}}


# GA server events that differ from beta in their name alone.
_RENAMED = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
}


def _rename(event: Event) -> Event:
    return {**event, "type": _RENAMED[event["type"]]}


# GA server event type -> its beta form (None: no beta counterpart, drop the frame). A type not
# here is the same in both (``error``, ``input_audio_buffer.committed``...) or unknown to both.
_DOWN: dict[str, Callable[[Event], Event | None]] = {
    **dict.fromkeys(_RENAMED, _rename),
    "conversation.item.added": _with_item("conversation.item.created"),
    "conversation.item.created": _with_item(),
    "conversation.item.retrieved": _with_item(),
    "response.output_item.added": _with_item(),
    "response.output_item.done": _with_item(),
    "response.content_part.added": _part,
    "response.content_part.done": _part,
    "response.created": _response,
    "response.done": _response,
    "session.created": _session("created"),
    "session.updated": _session("updated"),
    "error": _error,
    # No beta counterpart (see the module docstring).
    **dict.fromkeys(
        (
            "conversation.item.done",
            "conversation.item.input_audio_transcription.segment",
            "input_audio_buffer.timeout_triggered",
            "input_audio_buffer.dtmf_event_received",
            "mcp_list_tools.in_progress",
            "mcp_list_tools.completed",
            "mcp_list_tools.failed",
            "response.mcp_call_arguments.delta",
            "response.mcp_call_arguments.done",
            "response.mcp_call.in_progress",
            "response.mcp_call.completed",
            "response.mcp_call.failed",
        ),
        _drop,
    ),
}
#: The GA server events a beta client never receives.
GA_ONLY_SERVER_EVENTS = frozenset(t for t, convert in _DOWN.items() if convert is _drop)

# The frequent deltas, led by their type: renamed by their prefix, before anything else.
_DOWN_PREFIXES = tuple(
    (f'{{"type":"{ga}"', f'{{"type":"{_RENAMED[ga]}"')
    for ga in (
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.output_text.delta",
    )
)
# Any other frame led by its type: the name is read in place, and a rename is a new prefix.
_TYPE_FIRST = '{"type":"'
_NAME_AT = len(_TYPE_FIRST)
_RENAMED_PREFIX = {ga: _TYPE_FIRST + beta for ga, beta in _RENAMED.items()}
# Any other frame holding none of these quoted names (each ``_DOWN`` name holds one) needs no
# change; names quoted inside JSON strings read ``\\"name\\"`` and do not match.
_DOWN_MARKS = (
    '"response.output_',
    '"response.content_part.',
    '"response.created"',
    '"response.done"',
    '"response.mcp_call',
    '"conversation.item.added"',
    '"conversation.item.created"',
    '"conversation.item.done"',
    '"conversation.item.retrieved"',
    '"conversation.item.input_audio_transcription.segment"',
    '"input_audio_buffer.timeout_triggered"',
    '"input_audio_buffer.dtmf_event_received"',
    '"mcp_list_tools.',
    '"session.created"',
    '"session.updated"',
    '"error"',
)


def _item_create(event: Event) -> Event:
    return {**event, "item": item_to_ga(event.get("item"))}


#: The beta client event GA has no name for, with its members (the others kept their names,
#: docs/protocol.md 2.4).
BETA_ONLY_CLIENT_MEMBERS = {
    "transcription_session.update": frozenset({"type", "event_id", "session"})
}
UP_MARKS = (
    '"session.update"',
    '"transcription_session.update"',
    '"response.create"',
    '"conversation.item.create"',
)
_UP_SKIP = '{"type":"input_audio_buffer.append"'


class BetaTranslator:
    """Both directions of one beta client's session. ``transcription``: the client connected
    with ``?intent=transcription``, so its ``session.update`` configures a transcription
    session."""

    def __init__(self, *, transcription: bool = False) -> None:
        self.transcription = transcription

    def to_upstream(self, data: str) -> str:
        """A beta client frame -> the GA frame to send (``data`` itself when nothing differs)."""
        if data.startswith(_UP_SKIP) or not any(m in data for m in UP_MARKS):
            return data
        event = _loads(data)
        if event is None:
            return data
        out = self.event_to_upstream(event)
        # A user's input_text message, say, is already GA: keep its bytes.
        return data if out is event else orjson.dumps(out).decode()

    def event_to_upstream(self, event: Event) -> Event:
        """``to_upstream`` for a frame parsed already: the GA event, ``event`` itself when
        nothing differs (so the caller keeps the frame's bytes)."""
        etype = event.get("type")
        if etype == "session.update":
            session = session_to_ga(event.get("session"), transcription=self.transcription)
            out = {**event, "session": session}
        elif etype == "transcription_session.update":
            out = {
                **event,
                "type": "session.update",
                "session": session_to_ga(event.get("session"), transcription=True),
            }
        elif etype == "response.create" and "response" in event:
            out = {**event, "response": response_to_ga(event["response"])}
        elif etype == "conversation.item.create":
            out = _item_create(event)
        else:
            return event
        return event if out == event else out

    def to_client(self, data: str, parsed: Event | None = None) -> str | None:
        """A GA server frame -> the beta frame to send (``data`` itself when nothing differs),
        or None when the event has no beta counterpart. ``parsed``: the frame, parsed already
        by the caller (the relay core), which spares a second parse."""
        for ga, beta in _DOWN_PREFIXES:
            if data.startswith(ga):
                return beta + data[len(ga) :]
        if data.startswith(_TYPE_FIRST):
            end = data.find('"', _NAME_AT)
            name = data[_NAME_AT:end]
            prefix = _RENAMED_PREFIX.get(name)
            if prefix is not None:
                return prefix + data[end:]
            if name in GA_ONLY_SERVER_EVENTS:
                return None
            # A name with an escape in it is left to the parser.
            if name not in _DOWN and "\\" not in name:
                return data
        elif not any(m in data for m in _DOWN_MARKS):
            return data
        event = parsed if parsed is not None else _loads(data)
        if event is None:
            return data
        etype = event.get("type")
        convert = _DOWN.get(etype) if isinstance(etype, str) else None
        if convert is None:
            return data
        out = convert(event)
        if out is None:
            return None
        # A function_call item, say, reads the same in both shapes: keep its bytes.
        return data if out == event else orjson.dumps(out).decode()


def _loads(data: str) -> Event | None:
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None
