"""Validation of server events against the official SDK's own pydantic types."""

from __future__ import annotations

from typing import Any

from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter

_SERVER = TypeAdapter(RealtimeServerEvent)


def validate_server_event(event: dict[str, Any]) -> None:
    """Raise if ``event`` is not a valid GA server event of its declared type."""
    parsed = _SERVER.validate_python(event)
    assert parsed.type == event["type"], (parsed.type, event["type"])
