"""One response of the local engine, from ``response.create`` (or a turn) to ``response.done``.

``EngineSession.plan_response`` fills in what the response is asked for (its ``response``
object, modalities, instructions, voice, input, tools, ``max_output_tokens``). While it runs,
``response.cancel`` and barge-in set ``cancelled`` with the reason its ``response.done``
reports (``client_cancelled``, ``turn_detected``); ``engine.responder``
counts its output and sets ``incomplete`` when ``max_output_tokens`` is reached. Once it is
``stopped``, nothing more of it is produced (docs/protocol.md 5.9).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ResponsePlan:
    """What ``engine.server`` needs to produce one response."""

    response: dict[str, Any]
    modalities: list[str]
    instructions: str
    voice: str
    conversation: bool
    input_items: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: Any = "auto"
    cancelled: bool = False
    cancel_reason: str = "client_cancelled"
    #: The response's ``max_output_tokens`` (``None``: ``"inf"``); reaching it sets ``incomplete``.
    max_output_tokens: int | None = None
    incomplete: bool = False
    #: Output counted so far (text tokens, audio milliseconds), for items already closed.
    text_out: int = 0
    audio_out_ms: int = 0

    @property
    def stopped(self) -> bool:
        """Cancelled, or out of output tokens: nothing more is produced."""
        return self.cancelled or self.incomplete
