"""A fake of OpenAI's translation route, ``/v1/realtime/translations`` (docs/protocol.md 10), for
``FakeProvider``: built from the reference and the SDK's ``RealtimeTranslation*`` types.

* ``session.created`` first, with ``session{id, type: "translation", model, expires_at, audio}``;
  ``session.update`` (only ``audio``) answered with ``session.updated``.
* Every 200 ms of appended audio (9,600 bytes of 24 kHz PCM16 mono) is "translated": a
  ``session.output_transcript.delta``, a ``session.input_transcript.delta`` when transcription
  is configured, and a ``session.output_audio.delta`` of the same length, each with
  ``elapsed_ms``.
* ``session.close`` flushes what is pending, then ``session.closed`` (``event_id`` and ``type``
  only) and close 1000.
* No event carries usage: the route reports none.
* No ``model`` in the query: an ``error`` and close 1008; a bad key: ``invalid_api_key``, 3000.
"""

from __future__ import annotations

import base64
import secrets
import time
from typing import Any

import orjson
from aiohttp import WSMsgType, web

FRAME_BYTES = 9600  # 200 ms at 24 kHz PCM16 mono


def _event_id() -> str:
    return "event_" + secrets.token_hex(8)


def _error(code: str, message: str, param: str | None = None) -> str:
    return orjson.dumps(
        {
            "type": "error",
            "event_id": _event_id(),
            "error": {
                "type": "invalid_request_error",
                "code": code,
                "message": message,
                "param": param,
                "event_id": None,
            },
        }
    ).decode()


class TranslationSession:
    """One fake translation session: the state behind the socket."""

    def __init__(self, model: str) -> None:
        self.session: dict[str, Any] = {
            "id": "sess_" + secrets.token_hex(10),
            "type": "translation",
            "model": model,
            "expires_at": int(time.time()) + 3600,
            "audio": {"input": {"noise_reduction": None, "transcription": None}, "output": {}},
        }
        self.pending = b""
        self.elapsed_ms = 0
        #: Every byte of audio appended (the gateway must meter the same).
        self.received = 0

    def created(self) -> str:
        return orjson.dumps(
            {"type": "session.created", "event_id": _event_id(), "session": self.session}
        ).decode()

    def update(self, event: dict[str, Any]) -> list[str]:
        session = event.get("session")
        if not isinstance(session, dict) or set(session) - {"audio"}:
            return [_error("unknown_parameter", "Only session.audio can be updated.", "session")]
        audio = session.get("audio") or {}
        for side in ("input", "output"):
            if isinstance(audio.get(side), dict):
                self.session["audio"][side].update(audio[side])
        return [
            orjson.dumps(
                {"type": "session.updated", "event_id": _event_id(), "session": self.session}
            ).decode()
        ]

    def append(self, audio: str) -> list[str]:
        pcm = base64.b64decode(audio)
        self.received += len(pcm)
        self.pending += pcm
        out: list[str] = []
        while len(self.pending) >= FRAME_BYTES:
            frame, self.pending = self.pending[:FRAME_BYTES], self.pending[FRAME_BYTES:]
            out += self._translated(frame)
        return out

    def flush(self) -> list[str]:
        frame, self.pending = self.pending, b""
        return self._translated(frame) if frame else []

    def _translated(self, pcm: bytes) -> list[str]:
        self.elapsed_ms += len(pcm) // 48
        at = self.elapsed_ms
        out = []
        if self.session["audio"]["input"].get("transcription"):
            out.append(
                {"type": "session.input_transcript.delta", "delta": "hello ", "elapsed_ms": at}
            )
        out.append({"type": "session.output_transcript.delta", "delta": "hola ", "elapsed_ms": at})
        out.append(
            {
                "type": "session.output_audio.delta",
                "delta": base64.b64encode(pcm).decode(),
                "sample_rate": 24000,
                "channels": 1,
                "format": "pcm16",
                "elapsed_ms": at,
            }
        )
        return [orjson.dumps({**e, "event_id": _event_id()}).decode() for e in out]


async def serve_translation(
    request: web.Request, key: str, sessions: list[TranslationSession]
) -> web.StreamResponse:
    """``GET /v1/realtime/translations?model=``: one session, appended to ``sessions``."""
    ws = web.WebSocketResponse(max_msg_size=0)
    await ws.prepare(request)
    if request.headers.get("Authorization") != f"Bearer {key}":
        await ws.send_str(_error("invalid_api_key", "Incorrect API key provided."))
        await ws.close(code=3000, message=b"invalid_request_error.invalid_api_key")
        return ws
    model = request.query.get("model")
    if not model:
        await ws.send_str(
            _error("missing_model", "The model query parameter is required.", "model")
        )
        await ws.close(code=1008, message=b"invalid_request_error.missing_model")
        return ws
    state = TranslationSession(model)
    sessions.append(state)
    await ws.send_str(state.created())
    async for msg in ws:
        if msg.type is not WSMsgType.TEXT:
            continue
        try:
            event = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            await ws.send_str(_error("invalid_event", "Invalid JSON."))
            continue
        etype = event.get("type") if isinstance(event, dict) else None
        if etype == "session.input_audio_buffer.append":
            out = state.append(str(event.get("audio", "")))
        elif etype == "session.update":
            out = state.update(event)
        elif etype == "session.close":
            for frame in state.flush():
                await ws.send_str(frame)
            await ws.send_str(
                orjson.dumps({"type": "session.closed", "event_id": _event_id()}).decode()
            )
            await ws.close(code=1000)
            break
        else:
            out = [_error("invalid_event", f"Unsupported event type: {etype!r}.", "type")]
        for frame in out:
            await ws.send_str(frame)
    return ws
