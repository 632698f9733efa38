"""A fake Gemini Live upstream built from the reference (``docs/protocol-gemini.md``), for tests.

What it keeps of the real service:

* the endpoint path (protocol-gemini.md 1) and the key in ``x-goog-api-key``; a wrong key is
  accepted, then closed with 1008 and Google's words (protocol-gemini.md 7);
* ``setup`` first and once: anything else first, a second ``setup``, a model it does not serve
  or a message without exactly one of the four keys close the socket (1007 / 1008,
  protocol-gemini.md 3, 7); ``setupComplete`` answers the setup;
* its messages as binary frames by default, as Google sends them (``binary``), or text;
* input audio is read as the ``mimeType`` declares it (``audio_rates`` records each rate);
  automatic activity detection by energy over 16 kHz PCM16, or ``activityStart``/``End``;
* a turn: ``inputTranscription`` (when asked for), ``modelTurn`` audio at 24 kHz paced in real
  time with ``outputTranscription``, ``generationComplete``, then ``turnComplete`` with
  ``usageMetadata``; speech during a turn interrupts it (``interrupted``, then
  ``turnComplete``, no ``generationComplete``, protocol-gemini.md 4);
* a user text naming "weather in CITY" with tools declared: a ``toolCall`` (with its usage), then
  the answer once the ``toolResponse`` comes;
* usage re-bills the whole context every turn (protocol-gemini.md 2), in the AI Studio or Vertex
  dialect (``dialect``), with details that under-sum the prompt count by ``GAP`` tokens and thinking
  tokens beside the response count (protocol-gemini.md 9 quirks); every ``usageMetadata`` sent is
  kept in ``usage_sent`` so a test can price it on its own;
* ``sessionResumptionUpdate`` with a new handle and ``lastConsumedClientMessageIndex`` after
  each turn and every few messages while idle; a ``setup`` with a known handle resumes the
  session (its context and message count), an unknown one is closed 1007; ``go_away`` sends
  ``goAway`` and ends the connection after ``timeLeft``.

The message index counts a session's client messages after its setup from 0, across
resumptions (the reference does not say where it starts: ❓, docs/protocol-gemini.md 4).
"""

from __future__ import annotations

import asyncio
import base64
import math
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import WSMsgType, web

GEMINI_KEY = "AIzaFakeGeminiKey0123456789abcdefghijklm"
LIVE_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
MODELS = ("models/gemini-3.8-live",)
#: Tokens a second of audio counts for (25 or 32 is unverified, protocol-gemini.md 2; the fake picks
#: 25).
AUDIO_TOKENS_PER_S = 25
#: How far the modality details under-sum the prompt count (seen on the wire, protocol-gemini.md 9).
GAP = 7
THOUGHTS = 11
#: Output audio: 100 ms a chunk, sent every ``pace`` seconds.
CHUNK_MS = 100


def speech24k(ms: int, hz: int = 220) -> bytes:
    n = 24 * ms
    return struct.pack(
        f"<{n}h", *(int(6000 * math.sin(2 * math.pi * hz * i / 24000)) for i in range(n))
    )


@dataclass
class _Session:
    """What a Gemini session remembers, across its resumptions."""

    setup: dict[str, Any]
    #: Text tokens of the context (instructions, turns, answers) and audio seconds heard/said.
    text_tokens: int = 0
    audio_in_s: float = 0.0
    audio_out_s: float = 0.0
    #: Client messages after setup, counted across connections (the last one's index).
    last_index: int = -1
    handles: int = 0


@dataclass
class FakeGemini:
    key: str = GEMINI_KEY
    binary: bool = True
    dialect: Literal["aistudio", "vertex"] = "aistudio"
    #: The model's spoken answer, word by word in ``outputTranscription``.
    answer: str = "It is sunny today"
    #: What it transcribes of any speech it hears.
    heard: str = "what's the weather"
    pace: float = 0.02
    #: How the connection ends after ``goAway`` (Google's code is not documented).
    go_away_close: int = 1000
    port: int = 0
    connections: list[dict[str, Any]] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    audio_rates: set[str] = field(default_factory=set)
    usage_sent: list[dict[str, Any]] = field(default_factory=list)
    closes: list[tuple[int, str]] = field(default_factory=list)
    #: Each handle issued: the session and its last consumed message index then.
    sessions: dict[str, tuple[_Session, int]] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    _live: list[_Conn] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        """The host alone: the gateway adds the Live path (``relay/upstream.py``)."""
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(LIVE_PATH, self._ws)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for conn in list(self._live):
            await conn.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def go_away(self, time_left: float = 0.3) -> None:
        """``goAway`` on the newest connection, closed ``time_left`` seconds later."""
        conn = self._live[-1]
        await conn.send({"goAway": {"timeLeft": f"{time_left}s"}})
        conn.ending = asyncio.ensure_future(conn.end_after(time_left, self.go_away_close))

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=1 << 26)
        await ws.prepare(request)
        conn = _Conn(self, ws)
        self.connections.append({"headers": dict(request.headers), "query": dict(request.query)})
        self._live.append(conn)
        try:
            await conn.run(request.headers.get("x-goog-api-key"))
        finally:
            self._live.remove(conn)
            conn.stop()
        return ws


class _Conn:
    def __init__(self, fake: FakeGemini, ws: web.WebSocketResponse) -> None:
        self.fake = fake
        self.ws = ws
        self.session: _Session | None = None
        self.turn: asyncio.Task[None] | None = None
        self.ending: asyncio.Future[None] | None = None
        self.pending_text: list[str] = []
        self.awaiting_tool: str | None = None
        # Activity detection over 16 kHz PCM16.
        self.speaking = False
        self.speech_ms = 0
        self.silence_ms = 0
        self.turn_audio_s = 0.0
        self.since_update = 0
        #: Audio short of a whole 20 ms frame, kept for the next message.
        self.carry = b""

    async def send(self, msg: dict[str, Any]) -> None:
        if self.ws.closed:
            return
        self.fake.sent.append(msg)
        data = orjson.dumps(msg)
        if self.fake.binary:
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data.decode())

    async def close(self, code: int, reason: str) -> None:
        self.fake.closes.append((code, reason))
        await self.ws.close(code=code, message=reason.encode())

    async def end_after(self, seconds: float, code: int) -> None:
        await asyncio.sleep(seconds)
        await self.close(code, "")

    def stop(self) -> None:
        for task in (self.turn, self.ending):
            if task is not None:
                task.cancel()

    async def run(self, key: str | None) -> None:
        if key != self.fake.key:
            await self.close(1008, "API key not valid. Please pass a valid API key.")
            return
        async for msg in self.ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                break
            try:
                body = orjson.loads(msg.data)
            except orjson.JSONDecodeError:
                await self.close(1007, "Request contains an invalid argument.")
                return
            self.fake.received.append(body)
            keys = [
                k for k in ("setup", "clientContent", "realtimeInput", "toolResponse") if k in body
            ]
            if len(keys) != 1 or len(body) != 1:
                await self.close(1007, "Request contains an invalid argument.")
                return
            if not await self.handle(keys[0], body[keys[0]]):
                return

    async def handle(self, kind: str, value: Any) -> bool:
        if kind == "setup":
            return await self.on_setup(value)
        if self.session is None:
            await self.close(1007, "Request contains an invalid argument.")
            return False
        self.session.last_index += 1
        self.since_update += 1
        if kind == "realtimeInput":
            await self.on_input(value)
        elif kind == "clientContent":
            await self.on_content(value)
        else:
            await self.on_tool_response(value)
        if self.since_update >= 5 and self.turn is None:
            await self.resumption_update()
        return True

    async def on_setup(self, setup: dict[str, Any]) -> bool:
        if self.session is not None:
            await self.close(1007, "Request contains an invalid argument.")
            return False
        if setup.get("model") not in MODELS:
            await self.close(
                1008,
                f"{setup.get('model')} is not found for API version v1beta, or is not supported"
                " for bidiGenerateContent.",
            )
            return False
        handle = (setup.get("sessionResumption") or {}).get("handle")
        if handle is not None:
            known = self.fake.sessions.get(handle)
            if known is None:
                await self.close(1007, "Request contains an invalid argument.")
                return False
            self.session, self.session.last_index = known[0], known[1]
        else:
            self.session = _Session(setup)
            instructions = setup.get("systemInstruction", {}).get("parts", [{}])[0].get("text", "")
            self.session.text_tokens = len(instructions.split())
        await self.send({"setupComplete": {}})
        return True

    # -- input ------------------------------------------------------------------------------------
    def auto_vad(self) -> bool:
        assert self.session is not None
        aad = self.session.setup.get("realtimeInputConfig", {}).get(
            "automaticActivityDetection", {}
        )
        return not aad.get("disabled", False)

    async def on_input(self, value: dict[str, Any]) -> None:
        assert self.session is not None
        if "audio" in value:
            blob = value["audio"]
            rate = re.search(r"rate=(\d+)", blob.get("mimeType", ""))
            self.fake.audio_rates.add(rate.group(1) if rate else "?")
            pcm = base64.b64decode(blob["data"])
            hz = int(rate.group(1)) if rate else 16000
            await self.hear(pcm, hz)
        elif "activityStart" in value:
            self.speaking = True
            await self.barge_in()
        elif ("activityEnd" in value or "audioStreamEnd" in value) and (
            self.speaking or self.turn_audio_s
        ):
            await self.end_of_speech()

    async def hear(self, pcm: bytes, hz: int) -> None:
        assert self.session is not None
        seconds = len(pcm) / 2 / hz
        self.session.audio_in_s += seconds
        self.turn_audio_s += seconds
        if not self.auto_vad():
            return
        step = hz // 50 * 2  # 20 ms
        pcm, self.carry = self.carry + pcm, b""
        whole = len(pcm) - len(pcm) % step
        self.carry = pcm[whole:]
        for off in range(0, whole, step):
            frame = struct.unpack(f"<{step // 2}h", pcm[off : off + step])
            loud = math.sqrt(sum(s * s for s in frame) / len(frame)) > 500
            if loud:
                self.speech_ms += 20
                self.silence_ms = 0
                if not self.speaking and self.speech_ms >= 60:
                    self.speaking = True
                    await self.barge_in()
            elif self.speaking:
                self.silence_ms += 20
                if self.silence_ms >= 400:
                    await self.end_of_speech()
            else:
                self.speech_ms = 0

    async def barge_in(self) -> None:
        if self.turn is not None and not self.turn.done():
            self.turn.cancel()
            self.turn = None
            await self.send({"serverContent": {"interrupted": True}})
            await self.finish_turn(interrupted=True)

    async def end_of_speech(self) -> None:
        self.speaking = False
        self.speech_ms = self.silence_ms = 0
        self.turn_audio_s = 0.0
        assert self.session is not None
        if "inputAudioTranscription" in self.session.setup:
            words = self.fake.heard.split()
            for i in range(0, len(words), 2):
                await self.send(
                    {
                        "serverContent": {
                            "inputTranscription": {"text": " ".join(words[i : i + 2]) + " "}
                        }
                    }
                )
        self.session.text_tokens += len(self.fake.heard.split())
        self.start_turn(self.fake.answer)

    async def on_content(self, value: dict[str, Any]) -> None:
        assert self.session is not None
        for turn in value.get("turns") or []:
            for part in turn.get("parts", []):
                self.pending_text.append(part.get("text", ""))
        if value.get("turnComplete"):
            # 3.8 Live: turnComplete interrupts a generation unconditionally (protocol-gemini.md 3).
            await self.barge_in()
            text = " ".join(self.pending_text)
            self.pending_text = []
            self.session.text_tokens += len(text.split()) + 4
            city = re.search(r"weather in (\w+)", text)
            if city and self.session.setup.get("tools"):
                await self.tool_call(city.group(1))
            else:
                self.start_turn(self.fake.answer)

    async def tool_call(self, city: str) -> None:
        assert self.session is not None
        name = self.session.setup["tools"][0]["functionDeclarations"][0]["name"]
        self.awaiting_tool = f"fc_{self.session.last_index}"
        call = {"functionCalls": [{"id": self.awaiting_tool, "name": name, "args": {"city": city}}]}
        await self.send({"toolCall": call, "usageMetadata": self.usage(response_audio_s=0.0)})

    async def on_tool_response(self, value: dict[str, Any]) -> None:
        assert self.session is not None
        for fr in value.get("functionResponses", []):
            if fr.get("id") == self.awaiting_tool and isinstance(fr.get("response"), dict):
                self.awaiting_tool = None
                result = fr["response"]
                self.session.text_tokens += len(orjson.dumps(result)) // 4
                said = " ".join(str(v) for v in result.values())
                self.start_turn(f"It is {said}")

    # -- output -----------------------------------------------------------------------------------
    def start_turn(self, answer: str) -> None:
        self.turn = asyncio.ensure_future(self.speak(answer))

    async def speak(self, answer: str) -> None:
        assert self.session is not None
        words = answer.split()
        audio = speech24k(len(words) * 200)
        modality = self.session.setup["generationConfig"]["responseModalities"][0]
        n = math.ceil(len(audio) / (CHUNK_MS * 48))
        for i in range(n):
            content: dict[str, Any] = {}
            if modality == "AUDIO":
                chunk = audio[i * CHUNK_MS * 48 : (i + 1) * CHUNK_MS * 48]
                data = base64.b64encode(chunk).decode()
                content["modelTurn"] = {
                    "parts": [{"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": data}}]
                }
                self.session.audio_out_s += len(chunk) / 48000
                if i < len(words) and "outputAudioTranscription" in self.session.setup:
                    content["outputTranscription"] = {"text": (" " if i else "") + words[i]}
            elif i < len(words):
                content["modelTurn"] = {"parts": [{"text": (" " if i else "") + words[i]}]}
            await self.send({"serverContent": content})
            await asyncio.sleep(self.fake.pace)
        self.session.text_tokens += len(words)
        await self.send({"serverContent": {"generationComplete": True}})
        self.turn = None
        await self.finish_turn(interrupted=False)

    async def finish_turn(self, interrupted: bool) -> None:
        usage = self.usage(response_audio_s=self.session.audio_out_s if self.session else 0.0)
        await self.send({"serverContent": {"turnComplete": True}, "usageMetadata": usage})
        await self.resumption_update()

    def usage(self, response_audio_s: float) -> dict[str, Any]:
        """The whole context, re-billed (protocol-gemini.md 2); the response this turn's."""
        s = self.session
        assert s is not None
        text, audio = s.text_tokens + 3, int(s.audio_in_s * AUDIO_TOKENS_PER_S)
        out_audio = int(response_audio_s * AUDIO_TOKENS_PER_S)
        s.audio_out_s = 0.0
        prompt = text + audio + GAP
        meta: dict[str, Any] = {
            "promptTokenCount": prompt,
            "totalTokenCount": prompt + out_audio + THOUGHTS,
            "thoughtsTokenCount": THOUGHTS,
            "promptTokensDetails": [
                {"modality": "TEXT", "tokenCount": text},
                {"modality": "AUDIO", "tokenCount": audio},
            ],
        }
        details = [{"modality": "AUDIO", "tokenCount": out_audio}] if out_audio else []
        if self.fake.dialect == "aistudio":
            meta["responseTokenCount"] = out_audio
            if details:
                meta["responseTokensDetails"] = details
        else:
            meta["candidatesTokenCount"] = out_audio
            if details:
                meta["candidatesTokensDetails"] = details
        self.fake.usage_sent.append(meta)
        return meta

    async def resumption_update(self) -> None:
        s = self.session
        if s is None or "sessionResumption" not in s.setup:
            return
        s.handles += 1
        handle = f"h_{id(s)}_{s.handles}"
        self.fake.sessions[handle] = (s, s.last_index)
        self.since_update = 0
        update: dict[str, Any] = {"newHandle": handle, "resumable": True}
        if s.setup["sessionResumption"].get("transparent"):
            update["lastConsumedClientMessageIndex"] = str(s.last_index)
        await self.send({"sessionResumptionUpdate": update})


async def inject(fake: FakeGemini, frame: str) -> None:
    """Send ``frame`` as it is on the newest connection (a malformed or unknown message)."""
    await fake._live[-1].ws.send_str(frame)
