"""``rtgate talk``: a terminal client for any Realtime endpoint (rtgate's, or OpenAI's).

It sends a WAV file (any rate, 16-bit) or a typed line, prints the events as they arrive, saves
the spoken reply as a WAV file, and prints the usage and what it is charged.
Manual turns (``turn_detection: null``), so a whole file is one user turn.
"""

from __future__ import annotations

import base64
import ssl
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from yarl import URL

from rtgate.catalog import Catalog
from rtgate.config import Settings
from rtgate.errors import GatewayError
from rtgate.metering.cost import cost_of, usd_str
from rtgate.protocol.usage import read_response_usage

APPEND_MS = 20


class TalkError(GatewayError):
    code = "talk_failed"


def read_wav_24k(path: Path) -> bytes:
    """A 16-bit WAV file as 24 kHz mono PCM16."""
    try:
        with wave.open(str(path)) as w:
            if w.getsampwidth() != 2:
                raise TalkError(f"{path}: only 16-bit PCM WAV files are supported")
            channels, rate = w.getnchannels(), w.getframerate()
            pcm = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        why = str(exc)
        if "65534" in why:  # WAVE_FORMAT_EXTENSIBLE, which the standard library cannot read
            why = "an extensible WAV: save it as plain 16-bit PCM"
        raise TalkError(f"{path}: not a WAV file" + (f" ({why})" if why else "")) from exc
    if not pcm:
        raise TalkError(f"{path}: holds no audio")
    if channels > 1:
        import numpy as np

        pcm = bytes(
            np.frombuffer(pcm, dtype="<i2")
            .reshape(-1, channels)
            .mean(axis=1)
            .astype("<i2")
            .tobytes()
        )
    if rate != 24000:
        from rtgate.engine.audio import resample_pcm16

        pcm = resample_pcm16(pcm, rate)
    return bytes(pcm)


def write_wav_24k(path: Path, pcm: bytes) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24000)
        w.writeframes(pcm)


@dataclass
class TalkResult:
    transcript: str = ""
    text: str = ""
    user_transcript: str = ""
    audio: bytearray = field(default_factory=bytearray)
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    #: ``response.done``'s ``status`` (``completed``, ``failed``, ``incomplete``, ``cancelled``)
    #: and, when not completed, why (its ``status_details``).
    status: str | None = None
    status_details: dict[str, Any] | None = None

    def failure(self) -> str | None:
        """Why the reply did not complete, in a line; None when it did."""
        if self.status in (None, "completed"):
            return None
        details = self.status_details or {}
        err = details.get("error")
        if not isinstance(err, dict):
            err = {}
        why = err.get("message") or err.get("code") or details.get("reason")
        said = {"incomplete": "is incomplete", "cancelled": "was cancelled"}
        return f"the response {said.get(self.status, self.status)}" + (f": {why}" if why else "")


def realtime_url(base: str, model: str) -> str:
    """``base`` (the gateway's ``.../v1``, or its ``.../v1/realtime``, as the start-up banner
    prints it) as the URL of a realtime session with ``model``."""
    url = URL(base)
    path = url.path.rstrip("/")
    if not path.endswith("/realtime"):
        path += "/realtime"
    # ``with_path`` drops the query: what the URL carried is kept, the model set.
    return str(url.with_path(path).with_query(url.query).update_query(model=model))


async def talk(
    url: str,
    key: str,
    *,
    model: str,
    text: str | None = None,
    pcm: bytes | None = None,
    instructions: str | None = None,
    on_event: Callable[[dict[str, Any]], None] = lambda e: None,
    timeout_s: float = 120.0,
    tls: ssl.SSLContext | None = None,
) -> TalkResult:
    """One user turn (text or audio) and the assistant's whole reply. ``tls``: the context a
    ``wss://`` dial verifies with (None: the system's trust)."""
    result = TalkResult()
    ws_url = realtime_url(url, model)
    timeout = aiohttp.ClientWSTimeout(ws_receive=timeout_s, ws_close=5.0)
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            ws_url,
            headers={"Authorization": f"Bearer {key}"},
            max_msg_size=0,
            timeout=timeout,
            ssl=tls if tls is not None else True,
        ) as ws,
    ):
        session: dict[str, Any] = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}
        if pcm is not None:
            session["audio"]["input"]["transcription"] = {"model": "gpt-4o-mini-transcribe"}
        if instructions:
            session["instructions"] = instructions
        await ws.send_str(orjson.dumps({"type": "session.update", "session": session}).decode())
        if pcm is not None:
            step = 48 * APPEND_MS
            for off in range(0, len(pcm), step):
                chunk = base64.b64encode(pcm[off : off + step]).decode()
                await ws.send_str('{"type":"input_audio_buffer.append","audio":"' + chunk + '"}')
            await ws.send_str('{"type":"input_audio_buffer.commit"}')
        if text is not None:
            item = {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": text}],
            }
            await ws.send_str(
                orjson.dumps({"type": "conversation.item.create", "item": item}).decode()
            )
        await ws.send_str('{"type":"response.create"}')
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            event = orjson.loads(msg.data)
            on_event(event)
            t = event.get("type")
            if t == "response.output_audio.delta":
                result.audio += base64.b64decode(event["delta"])
            elif t == "response.output_audio_transcript.delta":
                result.transcript += event.get("delta", "")
            elif t == "response.output_text.delta":
                result.text += event.get("delta", "")
            elif t == "conversation.item.input_audio_transcription.completed":
                result.user_transcript = event.get("transcript", "")
            elif t == "error":
                result.error = event.get("error")
                if ws.closed:
                    break
            elif t == "response.done":
                response = event.get("response") or {}
                result.usage = response.get("usage")
                result.status = response.get("status")
                result.status_details = response.get("status_details")
                break
    if result.usage is None and result.error is not None:
        raise TalkError(f"{result.error.get('code')}: {result.error.get('message')}")
    return result


def trusting(certfile: Path | None) -> ssl.SSLContext | None:
    """The system's trust and the certificate the settings serve with (``tls_certfile``): the
    gateway on this machine is dialled over ``wss://`` with its own certificate, a
    self-signed one from ``scripts/dev-cert`` included. None without one."""
    if certfile is None:
        return None
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cafile=str(certfile))
    return ctx


def charged_price(settings: Settings, model: str, usage: dict[str, Any] | None) -> str | None:
    """What the reply is charged at the gateway's prices for ``model``, its row's markup
    included (an operator's find: it was called the list price), or None if unpriced."""
    try:
        route = Catalog(settings).resolve(model)
    except GatewayError:
        return None
    prices = route.prices
    if prices is None:
        return None
    return usd_str(cost_of(read_response_usage(usage).usage, prices).charged_nanos)
