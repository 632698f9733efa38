"""The Responses backend of a GPT-Live session on the local engine (``delegation.type:
"responses"``): the nested Responses stream each ``response.event`` carries. Pure: plain
values in, Live events out.

GPT-Live hands the work it delegates (a tool to run) to a Responses model the session manages
and relays that model's streaming events to the client, each nested in a ``response.event``
tagged with its delegation (docs/protocol-live.md 5). The engine's brain plays both models: a
turn it answers with words is the voice model's own answer; a turn it answers with a function
call is delegated, ``session.delegation.created`` and then a backend response whose output is
the call. The client runs the tool, sends its output (``response.item.create``) and asks the
backend to go on (``response.create``); the brain, given the output, answers with words, a
backend response whose output is that message, and the voice speaks it.

The nested events are the Responses API's streaming events as the SDK types them
(``openai.types.responses.ResponseStreamEvent``); the lifecycle snapshots (``response.created``,
``response.completed``) omit the input and clear the instructions, tools and output, as
GPT-Live's do [SDK ``ResponseEvent`` docstring]. ``response.completed`` carries the usage rtgate
meters as backend tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rtgate.engine.session import Event
from rtgate.engine.tokens import count_tokens
from rtgate.protocol.ids import new_id


@dataclass(frozen=True, slots=True)
class Call:
    """A function call the backend makes: the client runs it and answers ``call_id``."""

    name: str
    arguments: str
    call_id: str
    item_id: str

    @classmethod
    def new(cls, name: str, arguments: str) -> Call:
        return cls(name, arguments or "{}", new_id("call"), new_id("fc"))

    def item(self, status: str = "completed") -> dict[str, Any]:
        """The ``function_call`` output item (in progress: no arguments yet)."""
        return {
            "type": "function_call",
            "id": self.item_id,
            "call_id": self.call_id,
            "name": self.name,
            "arguments": self.arguments if status == "completed" else "",
            "status": status,
        }


def usage(input_text: str, output_text: str) -> dict[str, Any]:
    """A Responses usage object: tokens counted as the engine counts them (``tokens.py``)."""
    n_in, n_out = count_tokens(input_text), count_tokens(output_text)
    return {
        "input_tokens": n_in,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": n_out,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": n_in + n_out,
    }


class BackendResponse:
    """One backend response: its nested events in order, each numbered (``sequence_number``)
    and wrapped in a ``response.event`` of ``delegation_id`` (None for a response the
    application asked for outside any delegation)."""

    def __init__(self, model: str, delegation_id: str | None, created_at: int) -> None:
        self.id = new_id("resp")
        self.model = model
        self.delegation_id = delegation_id
        self.created_at = created_at
        self._sequence = 0

    def _event(self, etype: str, **fields: Any) -> Event:
        inner = {"type": etype, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return {
            "type": "response.event",
            "event_id": new_id("event"),
            "delegation_id": self.delegation_id,
            "event": inner,
        }

    def snapshot(
        self,
        status: str,
        used: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A lifecycle snapshot: instructions, tools and output cleared, no input."""
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "model": self.model,
            "output": [],
            "instructions": None,
            "tools": [],
            "tool_choice": "auto",
            "parallel_tool_calls": True,
            "error": error,
            "incomplete_details": None,
            "usage": used,
        }

    def calls(self, calls: Sequence[Call], used: dict[str, Any]) -> list[Event]:
        """A response whose output is function calls, each streamed as the Responses API
        streams one (added, its arguments, done)."""
        events = [self._event("response.created", response=self.snapshot("in_progress"))]
        for i, call in enumerate(calls):
            events += [
                self._event(
                    "response.output_item.added", output_index=i, item=call.item("in_progress")
                ),
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=call.item_id,
                    output_index=i,
                    delta=call.arguments,
                ),
                self._event(
                    "response.function_call_arguments.done",
                    item_id=call.item_id,
                    output_index=i,
                    arguments=call.arguments,
                ),
                self._event("response.output_item.done", output_index=i, item=call.item()),
            ]
        events.append(self._event("response.completed", response=self.snapshot("completed", used)))
        return events

    def message(self, text: str, used: dict[str, Any]) -> list[Event]:
        """A response whose output is one assistant message of ``text``."""
        item_id = new_id("msg")
        part = {"type": "output_text", "text": text, "annotations": []}
        where = {"item_id": item_id, "output_index": 0, "content_index": 0}

        def item(status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                "type": "message",
                "id": item_id,
                "role": "assistant",
                "status": status,
                "content": content,
            }

        return [
            self._event("response.created", response=self.snapshot("in_progress")),
            self._event("response.output_item.added", output_index=0, item=item("in_progress", [])),
            self._event("response.content_part.added", **where, part={**part, "text": ""}),
            self._event("response.output_text.delta", **where, delta=text, logprobs=[]),
            self._event("response.output_text.done", **where, text=text, logprobs=[]),
            self._event("response.content_part.done", **where, part=part),
            self._event(
                "response.output_item.done", output_index=0, item=item("completed", [part])
            ),
            self._event("response.completed", response=self.snapshot("completed", used)),
        ]

    def failed(self, message: str) -> list[Event]:
        """A response that could not be made: created, then failed (``server_error``)."""
        error = {"code": "server_error", "message": message}
        return [
            self._event("response.created", response=self.snapshot("in_progress")),
            self._event("response.failed", response=self.snapshot("failed", error=error)),
        ]
