"""Server events the gateway itself originates. Everything else is relayed, never rebuilt."""

from __future__ import annotations

import orjson

from rtgate.errors import GatewayError
from rtgate.protocol.ids import new_id


def error_event(
    error_type: str,
    code: str | None,
    message: str,
    *,
    param: str | None = None,
    client_event_id: str | None = None,
    live: bool = False,
) -> str:
    """An OpenAI ``error`` server event (docs/protocol.md 5.3), as the text frame to send. On
    GPT-Live (``live``) the envelope is the same but for ``error.client_event_id`` in place of
    ``error.event_id`` (docs/protocol-live.md 6, the SDK's ``openai.types.live.ErrorEvent``)."""
    return orjson.dumps(
        {
            "type": "error",
            "event_id": new_id("event"),
            "error": {
                "type": error_type,
                "code": code,
                "message": message,
                "param": param,
                "client_event_id" if live else "event_id": client_event_id,
            },
        }
    ).decode()


def error_event_for(
    err: GatewayError, client_event_id: str | None = None, *, live: bool = False
) -> str:
    return error_event(
        err.error_type,
        err.code,
        err.message,
        param=err.param,
        client_event_id=client_event_id or err.client_event_id,
        live=live,
    )
