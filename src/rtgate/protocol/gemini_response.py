"""The OpenAI responses a Gemini turn is written as (docs/protocol-gemini.md 4, 8-10), with no I/O:
the server-side half of the Gemini translator (``protocol/gemini.py``).

A ``ResponseWriter`` keeps the conversation as the client sees it: the open response and its
items, the user's spoken item being transcribed, the last item's id, the function calls by id,
and the ``usageMetadata`` no ``response.done`` has carried yet. Every event it writes is a GA
server event the ``openai`` SDK's types accept (``tests/test_gemini_translator.py``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from rtgate.protocol import gemini_setup as gs
from rtgate.protocol.gemini_events import (
    AudioConverter,
    Out,
    ToClient,
    protocol_error,
    server_event,
)
from rtgate.protocol.gemini_usage import realtime_usage
from rtgate.protocol.ids import new_id

#: ``turnCompleteReason`` values of a rejected turn (protocol-gemini.md 4), reported as OpenAI's
#: content filter.
_FILTERED = frozenset({"RESPONSE_REJECTED", "PROHIBITED_INPUT_CONTENT"})


@dataclass
class _Response:
    """The OpenAI response a Gemini turn is being written as."""

    id: str
    output: list[dict[str, Any]] = field(default_factory=list)
    #: The open assistant message item and its content part's kind (``audio`` or ``text``).
    item_id: str | None = None
    part: str | None = None
    text: list[str] = field(default_factory=list)
    #: Why the rest of the turn is dropped: ``turn_detected`` or ``client_cancelled``.
    cancelled: str | None = None


def _protocol_error(what: str) -> ToClient:
    return ToClient(protocol_error(what))


class ResponseWriter:
    """Gemini's server messages of one session as OpenAI server events."""

    def __init__(
        self, session: dict[str, Any], output_converter: Callable[[str], AudioConverter]
    ) -> None:
        """``session``: the OpenAI session (its output modality; replaced on each update);
        ``output_converter(format)``: 24 kHz PCM16 to the session's output format."""
        self.session = session
        self._new_output = output_converter
        self._output: AudioConverter | None = None
        self.output_format = "audio/pcm"
        self.resp: _Response | None = None
        #: The last ``usageMetadata``, as OpenAI usage, that no ``response.done`` carried yet.
        self.usage: dict[str, Any] | None = None
        #: Input audio appended so far, in ms (``speech_started.audio_start_ms``).
        self.audio_ms = 0
        #: The user's spoken item being transcribed, and its transcript so far.
        self.user_item: str | None = None
        self.user_text: list[str] = []
        self.last_item: str | None = None
        #: Each function call's name by its id (a tool's output is answered under it).
        self.calls: dict[str, str] = {}

    @property
    def _transcribing(self) -> bool:
        """The session transcribes its input (``audio.input.transcription`` set)."""
        audio = self.session.get("audio")
        audio_in = audio.get("input") if isinstance(audio, dict) else None
        return isinstance(audio_in, dict) and audio_in.get("transcription") is not None

    def set_output_format(self, fmt: str) -> None:
        if fmt != self.output_format:
            self.output_format = fmt
            self._output = None

    def metadata(self, meta: dict[str, Any]) -> None:
        """A ``usageMetadata``: the latest one is the turn's (protocol-gemini.md 9)."""
        self.usage = realtime_usage(meta)

    def flush_usage(self) -> list[Out]:
        """Usage Gemini reported that no ``response.done`` carried yet: a response of its own,
        so it is metered before the session ends."""
        if self.resp is not None:
            return self.lost_response()
        if self.usage is not None:
            return self._usage_only()
        return []

    def lost_response(self) -> list[Out]:
        """The open response, ended ``failed``: its connection is gone."""
        if self.resp is None:
            return []
        error = {"type": "server_error", "code": "upstream_connection_lost"}
        return self._finish("failed", None, error)

    def _drop_rest(self) -> None:
        """Barge-in: the open response's rest is not relayed; it ends ``cancelled``."""
        if self.resp is not None and self.resp.cancelled is None:
            self.resp.cancelled = "turn_detected"

    def server_content(self, content: dict[str, Any]) -> list[Out]:
        """One ``serverContent`` (protocol-gemini.md 4): its fields in the order a client needs them
        (input transcript, barge-in, model output, output transcript, generation and turn ends)."""
        out: list[Out] = []
        itr = content.get("inputTranscription")
        if isinstance(itr, dict) and isinstance(itr.get("text"), str) and itr["text"]:
            if self.user_item is None:
                self.user_item = new_id("item")
            self.user_text.append(itr["text"])
            out.append(
                ToClient(
                    server_event(
                        "conversation.item.input_audio_transcription.delta",
                        item_id=self.user_item,
                        content_index=0,
                        delta=itr["text"],
                    )
                )
            )
        if content.get("interrupted") is True:
            out += self._interrupted()
        turn = content.get("modelTurn")
        if isinstance(turn, dict):
            for part in turn.get("parts") or []:
                if isinstance(part, dict) and not part.get("thought"):
                    out += self._model_part(part)
        otr = content.get("outputTranscription")
        if isinstance(otr, dict) and isinstance(otr.get("text"), str) and otr["text"]:
            out += self._output_transcript(otr["text"])
        if content.get("generationComplete") is True and self.resp is not None:
            out += self._close_message()
        if content.get("turnComplete") is True:
            barge_in = self.resp is not None and self.resp.cancelled == "turn_detected"
            if not barge_in:
                # After a barge-in the user is still speaking: the transcript goes on.
                out += self._user_done(final=True)
            if self.resp is not None:
                out += self._turn_done(self.resp.cancelled, content.get("turnCompleteReason"))
            elif self.usage is not None:
                out += self._usage_only()
        return out

    def _turn_done(self, cancelled: str | None, why: Any) -> list[Out]:
        """``response.done`` for a turn Gemini completed: ``cancelled`` if it was cut,
        ``incomplete`` (``content_filter``) if Gemini rejected it, ``failed`` for a malformed
        function call (protocol-gemini.md 4 ``turnCompleteReason``), else ``completed``."""
        if cancelled:
            return self._finish("cancelled", cancelled)
        if why in _FILTERED:
            return self._finish("incomplete", "content_filter")
        if why == "MALFORMED_FUNCTION_CALL":
            return self._finish(
                "failed", None, {"type": "server_error", "code": "malformed_function_call"}
            )
        return self._finish("completed", None)

    def _user_done(self, *, final: bool = False) -> list[Out]:
        """The user's spoken turn is over (a response starts, or the turn ends): its
        transcript, complete. Gemini bills transcription inside the turn's usage, so the event
        reports none of its own. ``final``: the turn has ended, so the item is done even if
        Gemini heard no words in it: the transcript is empty (a client, and the relay core at a
        session's end, wait for the transcription of every committed item), and the next
        commit is an item of its own."""
        if self.user_item is None or (not self.user_text and not final):
            return []
        item, text = self.user_item, "".join(self.user_text)
        self.user_item, self.user_text = None, []
        self.last_item = item
        if not text and not self._transcribing:
            return []
        return [
            ToClient(
                server_event(
                    "conversation.item.input_audio_transcription.completed",
                    item_id=item,
                    content_index=0,
                    transcript=text,
                    usage={
                        "type": "tokens",
                        "input_tokens": 0,
                        "output_tokens": 0,
                        "total_tokens": 0,
                    },
                )
            )
        ]

    def _interrupted(self) -> list[Out]:
        """Barge-in (protocol-gemini.md 10, item 2): the client stops playing now; the response ends
        ``cancelled`` with the turn, carrying the turn's usage."""
        item = self.user_item or new_id("item")
        self.user_item = item
        out: list[Out] = [
            ToClient(
                server_event(
                    "input_audio_buffer.speech_started", audio_start_ms=self.audio_ms, item_id=item
                )
            )
        ]
        self._drop_rest()
        return out

    def _open(self, kind: str) -> list[Out]:
        """The response and its message item with one content part of ``kind``, as needed."""
        out: list[Out] = []
        if self.resp is None:
            out += self._user_done()
            self.resp = _Response(new_id("resp"))
            out.append(
                ToClient(server_event("response.created", response=self._response("in_progress")))
            )
        resp = self.resp
        if resp.item_id is None:
            resp.item_id, resp.part, resp.text = new_id("item"), kind, []
            item = {
                "id": resp.item_id,
                "object": "realtime.item",
                "type": "message",
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            }
            out.append(
                ToClient(
                    server_event(
                        "response.output_item.added",
                        response_id=resp.id,
                        output_index=len(resp.output),
                        item=item,
                    )
                )
            )
            prev, self.last_item = self.last_item, resp.item_id
            out.append(
                ToClient(server_event("conversation.item.added", previous_item_id=prev, item=item))
            )
            part = (
                {"type": "audio", "transcript": ""}
                if kind == "audio"
                else {"type": "text", "text": ""}
            )
            out.append(
                ToClient(server_event("response.content_part.added", **self._where(), part=part))
            )
        return out

    def _where(self) -> dict[str, Any]:
        resp = self.resp
        assert resp is not None
        return {
            "response_id": resp.id,
            "item_id": resp.item_id,
            "output_index": len(resp.output),
            "content_index": 0,
        }

    def _model_part(self, part: dict[str, Any]) -> list[Out]:
        if self.resp is not None and self.resp.cancelled:
            return []
        blob = part.get("inlineData")
        if isinstance(blob, dict) and isinstance(blob.get("data"), str):
            out = self._open("audio")
            delta = blob["data"]
            if self.output_format != "audio/pcm":
                if self._output is None:
                    self._output = self._new_output(self.output_format)
                try:
                    raw = base64.b64decode(delta, validate=True)
                except (binascii.Error, ValueError):
                    return [*out, _protocol_error("audio that is not base64")]
                converted = self._output.feed(raw)
                if not converted:
                    # The converter holds the start of its window back.
                    return out
                delta = base64.b64encode(converted).decode()
            out.append(
                ToClient(server_event("response.output_audio.delta", **self._where(), delta=delta))
            )
            return out
        if isinstance(part.get("text"), str):
            out = self._open("text")
            resp = self.resp
            assert resp is not None
            resp.text.append(part["text"])
            out.append(
                ToClient(
                    server_event("response.output_text.delta", **self._where(), delta=part["text"])
                )
            )
            return out
        return []

    def _output_transcript(self, text: str) -> list[Out]:
        if self.resp is not None and self.resp.cancelled:
            return []
        out = self._open("audio")
        resp = self.resp
        assert resp is not None
        if resp.part != "audio":
            return out
        resp.text.append(text)
        out.append(
            ToClient(
                server_event("response.output_audio_transcript.delta", **self._where(), delta=text)
            )
        )
        return out

    def _close_message(self) -> list[Out]:
        """The open message item's content part and item, done (``incomplete`` if cut)."""
        resp = self.resp
        if resp is None or resp.item_id is None:
            return []
        where = self._where()
        text = "".join(resp.text)
        out: list[Out] = []
        if resp.part == "audio":
            if self._output is not None:
                tail = self._output.flush()
                if tail and not resp.cancelled:
                    out.append(
                        ToClient(
                            server_event(
                                "response.output_audio.delta",
                                **where,
                                delta=base64.b64encode(tail).decode(),
                            )
                        )
                    )
            out.append(ToClient(server_event("response.output_audio.done", **where)))
            out.append(
                ToClient(
                    server_event("response.output_audio_transcript.done", **where, transcript=text)
                )
            )
            part: dict[str, Any] = {"type": "audio", "transcript": text}
            content = {"type": "output_audio", "transcript": text}
        else:
            out.append(ToClient(server_event("response.output_text.done", **where, text=text)))
            part = {"type": "text", "text": text}
            content = {"type": "output_text", "text": text}
        out.append(ToClient(server_event("response.content_part.done", **where, part=part)))
        item = {
            "id": resp.item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "incomplete" if resp.cancelled else "completed",
            "content": [content],
        }
        out += self._item_done(resp, item)
        resp.item_id = resp.part = None
        resp.text = []
        return out

    def tool_call(self, call: Any) -> list[Out]:
        calls = call.get("functionCalls") if isinstance(call, dict) else None
        if not isinstance(calls, list):
            return [_protocol_error("a toolCall without functionCalls")]
        out: list[Out] = []
        if self.resp is None:
            out += self._user_done()
            self.resp = _Response(new_id("resp"))
            out.append(
                ToClient(server_event("response.created", response=self._response("in_progress")))
            )
        out += self._close_message()
        resp = self.resp
        assert resp is not None
        for fc in calls:
            if not isinstance(fc, dict) or not isinstance(fc.get("name"), str):
                out.append(_protocol_error("a function call without a name"))
                continue
            call_id = fc["id"] if isinstance(fc.get("id"), str) and fc["id"] else new_id("call", 16)
            self.calls[call_id] = fc["name"]
            args = orjson.dumps(fc.get("args") if isinstance(fc.get("args"), dict) else {}).decode()
            item_id = new_id("item")
            item = {
                "id": item_id,
                "object": "realtime.item",
                "type": "function_call",
                "status": "in_progress",
                "call_id": call_id,
                "name": fc["name"],
                "arguments": "",
            }
            where = {"response_id": resp.id, "item_id": item_id, "output_index": len(resp.output)}
            prev, self.last_item = self.last_item, item_id
            out.append(
                ToClient(
                    server_event(
                        "response.output_item.added",
                        response_id=resp.id,
                        output_index=len(resp.output),
                        item=item,
                    )
                )
            )
            out.append(
                ToClient(server_event("conversation.item.added", previous_item_id=prev, item=item))
            )
            out.append(
                ToClient(
                    server_event(
                        "response.function_call_arguments.delta",
                        **where,
                        call_id=call_id,
                        delta=args,
                    )
                )
            )
            out.append(
                ToClient(
                    server_event(
                        "response.function_call_arguments.done",
                        **where,
                        call_id=call_id,
                        name=fc["name"],
                        arguments=args,
                    )
                )
            )
            out += self._item_done(resp, {**item, "status": "completed", "arguments": args})
        out += self._finish("completed", None)
        return out

    def _response(
        self, status: str, reason: str | None = None, error: dict[str, str] | None = None
    ) -> dict[str, Any]:
        resp = self.resp
        assert resp is not None
        modality = gs.output_modality(self.session)
        body: dict[str, Any] = {
            "id": resp.id,
            "object": "realtime.response",
            "status": status,
            "status_details": None,
            "output": resp.output if status != "in_progress" else [],
            "conversation_id": None,
            "output_modalities": [modality],
            "usage": None,
            "metadata": None,
        }
        if status in ("cancelled", "incomplete"):
            body["status_details"] = {"type": status, "reason": reason}
        elif status == "failed":
            body["status_details"] = {"type": "failed", "error": error}
        return body

    @staticmethod
    def _item_done(resp: _Response, item: dict[str, Any]) -> list[Out]:
        """An output item ends: ``response.output_item.done`` at its index, then
        ``conversation.item.done``; the response's output holds it from then on."""
        out: list[Out] = [
            ToClient(
                server_event(
                    "response.output_item.done",
                    response_id=resp.id,
                    output_index=len(resp.output),
                    item=item,
                )
            ),
            ToClient(server_event("conversation.item.done", item=item)),
        ]
        resp.output.append(item)
        return out

    def _finish(
        self, status: str, reason: str | None, error: dict[str, str] | None = None
    ) -> list[Out]:
        """``response.done`` for the open response, with the usage Gemini reported last."""
        out = self._close_message()
        body = self._response(status, reason, error)
        body["usage"] = self.usage or realtime_usage({})
        self.usage = None
        out.append(ToClient(server_event("response.done", response=body)))
        self.resp = None
        return out

    def _usage_only(self) -> list[Out]:
        self.resp = _Response(new_id("resp"))
        created = ToClient(server_event("response.created", response=self._response("in_progress")))
        return [created, *self._finish("completed", None)]
