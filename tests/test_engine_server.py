"""The local engine over real loopback sockets, event by event against docs/protocol.md section 6.

Two ways in: a plain ``websockets`` client against ``FakeProvider`` (the engine with an echo
brain, a tone voice and a fake recognizer behind OpenAI's front door), and the official SDK
through the gateway to an embedded engine built for the test (scripted and OpenAI-compatible
brains, Silero VAD). Every server event received is validated against the SDK's own types, and
every ``response.done`` against the usage invariants of docs/protocol.md 4.1.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import re
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiohttp import web
from openai import AsyncOpenAI
from websockets.asyncio.client import ClientConnection, connect

from rtgate.api.app import create_app, set_local_base_url
from rtgate.config import Settings
from rtgate.engine.audio import AudioFormat, alaw_decode, from_pcm24k, ulaw_decode
from rtgate.engine.brain import (
    BrainOutput,
    BrainRequest,
    EchoBrain,
    OpenAICompatibleBrain,
    ScriptedBrain,
    TextDelta,
    chat_messages,
    last_user_text,
)
from rtgate.engine.options import EngineOptions
from rtgate.engine.tokens import count_tokens
from rtgate.engine.tts import ToneSynthesizer
from rtgate.relay.endpoint import GATEWAY
from tests.provider import PROVIDER_KEY, FakeProvider, FakeTranscriber
from tests.sdk_events import validate_server_event

Event = dict[str, Any]
TIMEOUT = 15.0
#: ``ToneSynthesizer`` speaks 60 ms a character.
TONE_MS_PER_CHAR = 60


# -- reading the wire -------------------------------------------------------------------------


def check_usage(response: dict[str, Any]) -> None:
    """docs/protocol.md 4.1, for every ``response.done``."""
    u = response["usage"]
    itd, otd = u["input_token_details"], u["output_token_details"]
    assert u["total_tokens"] == u["input_tokens"] + u["output_tokens"], u
    assert u["input_tokens"] == itd["text_tokens"] + itd["audio_tokens"] + itd["image_tokens"], u
    assert u["output_tokens"] == otd["text_tokens"] + otd["audio_tokens"], u
    cached = itd["cached_tokens_details"]
    assert itd["cached_tokens"] == sum(cached.values()) <= u["input_tokens"], u
    assert all(v >= 0 for v in (*itd.values(), *otd.values()) if isinstance(v, int))


class Wire:
    """The server side of one connection as raw frames: each one validated, all kept in order."""

    def __init__(
        self,
        recv: Callable[[], Awaitable[str | bytes]],
        send: Callable[[str], Awaitable[None]],
    ) -> None:
        self._recv = recv
        self._send = send
        self.events: list[Event] = []

    async def send(self, etype: str, **fields: Any) -> None:
        await self._send(json.dumps({"type": etype, **fields}))

    async def next(self, within: float = TIMEOUT) -> Event:
        event: Event = orjson.loads(await asyncio.wait_for(self._recv(), within))
        validate_server_event(event)
        assert re.fullmatch(r"event_[0-9A-Za-z]{21}", event["event_id"]), event["event_id"]
        if event["type"] == "response.done":
            check_usage(event["response"])
        self.events.append(event)
        return event

    async def until(self, etype: str, **match: Any) -> list[Event]:
        """Events up to and including the first ``etype`` whose fields equal ``match``."""
        got = []
        while True:
            e = await self.next()
            got.append(e)
            if e["type"] == etype and all(e.get(k) == v for k, v in match.items()):
                return got

    async def done(self, rid: str | None = None) -> dict[str, Any]:
        """Wait for ``response.done`` (of ``rid``, if given) and its ``rate_limits.updated``."""
        while True:
            e = await self.next()
            if e["type"] == "response.done" and rid in (None, e["response"]["id"]):
                response: dict[str, Any] = e["response"]
                break
        # rate_limits.updated closes every response (docs/protocol.md 5.5; GA: a tokens entry only).
        limits = await self.until("rate_limits.updated")
        assert not [x for x in limits if x["type"].startswith("response.")], limits
        assert [r["name"] for r in limits[-1]["rate_limits"]] == ["tokens"]
        return response

    async def quiet(self, seconds: float) -> list[Event]:
        """Whatever arrives within ``seconds`` (a test of silence, when expected empty)."""
        got = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(await self.next(left))
            except TimeoutError:
                break
        return got


@dataclass
class Trace:
    """One response's events, from ``response.created`` to ``rate_limits.updated``."""

    events: list[Event]
    response: dict[str, Any]
    items: list[str] = field(default_factory=list)

    @property
    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def of(self, etype: str) -> list[Event]:
        return [e for e in self.events if e["type"] == etype]

    def audio(self) -> bytes:
        return b"".join(
            base64.b64decode(e["delta"]) for e in self.of("response.output_audio.delta")
        )


# docs/protocol.md section 6, steps 10-22 and the text and function call variants, per output item.
_AUDIO = (
    r"response\.output_item\.added (?P<c1>conversation\.item\.added )?"
    r"response\.content_part\.added "
    r"((response\.output_audio_transcript\.delta|response\.output_audio\.delta) )*"
    r"response\.output_audio\.done response\.output_audio_transcript\.done "
    r"response\.content_part\.done response\.output_item\.done (?P<c2>conversation\.item\.done )?"
)
_TEXT = (
    r"response\.output_item\.added (conversation\.item\.added )?response\.content_part\.added "
    r"(response\.output_text\.delta )*response\.output_text\.done response\.content_part\.done "
    r"response\.output_item\.done (conversation\.item\.done )?"
)
_CALL = (
    r"response\.output_item\.added (conversation\.item\.added )?"
    r"(response\.function_call_arguments\.delta )*response\.function_call_arguments\.done "
    r"response\.output_item\.done (conversation\.item\.done )?"
)
_RESPONSE = re.compile(
    rf"response\.created ((?:{_AUDIO})|(?:{_TEXT})|(?:{_CALL}))*"
    r"response\.done rate_limits\.updated "
)


def trace(events: list[Event], rid: str) -> Trace:
    """Pick response ``rid`` out of ``events`` and check its shape against docs/protocol.md 6."""
    mine: list[Event] = []
    items: list[str] = []
    response: dict[str, Any] | None = None
    for e in events:
        t = e["type"]
        if t in ("response.created", "response.done") and e["response"]["id"] == rid:
            mine.append(e)
            if t == "response.done":
                response = e["response"]
        elif e.get("response_id") == rid:
            mine.append(e)
            if t == "response.output_item.added":
                items.append(e["item"]["id"])
        elif t.startswith("conversation.item.") and (e.get("item") or {}).get("id") in items:
            mine.append(e)
        elif t == "rate_limits.updated" and response is not None:
            mine.append(e)
            break
    assert response is not None, f"no response.done for {rid}"
    tr = Trace(mine, response, items)
    assert _RESPONSE.fullmatch(" ".join(tr.types) + " "), tr.types

    created = tr.events[0]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    assert created["usage"] is None
    in_conversation = response["conversation_id"] is not None
    for index, item_id in enumerate(items):
        of_item = [
            e for e in mine if item_id in (e.get("item_id"), (e.get("item") or {}).get("id"))
        ]
        for e in of_item:
            if "output_index" in e:
                assert e["output_index"] == index, e
            if "content_index" in e:
                assert e["content_index"] == 0, e
        conv = [e for e in of_item if e["type"].startswith("conversation.item.")]
        # Out-of-band responses add nothing to the conversation (docs/protocol.md 5.9).
        assert len(conv) == (2 if in_conversation else 0), [e["type"] for e in of_item]
        if index and in_conversation:
            assert conv[0]["previous_item_id"] == items[index - 1]
        done = next(e for e in of_item if e["type"] == "response.output_item.done")["item"]
        assert response["output"][index] == done
        if done["type"] == "message":
            deltas = [e for e in of_item if e["type"].endswith("transcript.delta")] or [
                e for e in of_item if e["type"] == "response.output_text.delta"
            ]
            whole = "".join(d["delta"] for d in deltas)
            final = done["content"][0].get("transcript", done["content"][0].get("text"))
            assert whole == final, (whole, final)
            for d in deltas:
                if d["type"].endswith("transcript.delta"):
                    assert d["obfuscation"], d
    assert len(response["output"]) == len(items)
    return tr


def check_audio_tokens(tr: Trace, bytes_per_ms: int = 48) -> float:
    """Output audio is billed at 20 tokens a second of the audio actually sent
    (docs/protocol.md 4.1)."""
    ms = len(tr.audio()) / bytes_per_ms
    tokens = tr.response["usage"]["output_token_details"]["audio_tokens"]
    assert math.floor(ms / 50) <= tokens <= math.ceil(ms / 50), (ms, tokens)
    return ms


def tone(ms: int, amp: int = 8000) -> bytes:
    n = 24 * ms
    return struct.pack(
        f"<{n}h", *(int(amp * math.sin(2 * math.pi * 300 * i / 24000)) for i in range(n))
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def user_text(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


MANUAL: dict[str, Any] = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}


# -- a websockets client against FakeProvider -------------------------------------------------


@pytest.fixture
async def engine_ws(provider: FakeProvider) -> AsyncIterator[Callable[..., Awaitable[Wire]]]:
    sockets: list[ClientConnection] = []

    async def open_(**query: str) -> Wire:
        qs = "&".join(f"{k}={v}" for k, v in {"model": "gpt-realtime", **query}.items())
        ws = await connect(
            f"{provider.base_url}/realtime?{qs}",
            additional_headers={"Authorization": f"Bearer {PROVIDER_KEY}"},
            max_size=None,
        )
        sockets.append(ws)
        wire = Wire(ws.recv, ws.send)
        created = (await wire.until("session.created"))[-1]
        assert created["session"]["type"] == ("transcription" if query else "realtime")
        return wire

    yield open_
    for ws in sockets:
        await ws.close()


async def test_bad_client_events_get_errors_with_their_event_id_and_the_session_goes_on(
    engine_ws: Callable[..., Awaitable[Wire]],
) -> None:
    wire = await engine_ws()
    await wire.send("session.update", event_id="ev_a", session={"instructions": "x"})
    await wire.send("session.update", event_id="ev_b", session={"type": "realtime", "voice": "x"})
    await wire.send(
        "session.update",
        event_id="ev_c",
        session={"type": "realtime", "audio": {"output": {"format": {"type": "audio/ogg"}}}},
    )
    await wire.send("conversation.item.frobnicate", event_id="ev_d")
    await wire.send("response.cancel", event_id="ev_e")
    await wire.send("input_audio_buffer.commit", event_id="ev_f")
    errors = [(await wire.next())["error"] for _ in range(6)]
    assert [(e["code"], e["param"], e["event_id"]) for e in errors] == [
        ("missing_required_parameter", "session.type", "ev_a"),
        ("unknown_parameter", "session.voice", "ev_b"),
        ("invalid_value", "session.audio.output.format.type", "ev_c"),
        ("invalid_value", "type", "ev_d"),
        ("response_cancel_not_active", None, "ev_e"),
        ("input_audio_buffer_commit_empty", None, "ev_f"),
    ]
    assert errors[4]["message"] == "Cancellation failed: no active response found"
    await wire._send("{not json")
    assert (await wire.next())["error"]["code"] == "invalid_event"
    await wire.send("session.update", session={"type": "realtime", "instructions": "Hi."})
    updated = (await wire.until("session.updated"))[-1]
    assert updated["session"]["instructions"] == "Hi."


async def test_a_text_only_response_streams_text_and_no_audio(
    engine_ws: Callable[..., Awaitable[Wire]],
) -> None:
    wire = await engine_ws()
    await wire.send("session.update", session={**MANUAL, "instructions": "Repeat after me."})
    await wire.send("conversation.item.create", item=user_text("a quiet text reply"))
    await wire.send("response.create", response={"output_modalities": ["text"]})
    response = await wire.done()
    tr = trace(wire.events, response["id"])
    assert not [t for t in tr.types if "audio" in t]
    (added,) = tr.of("response.content_part.added")
    assert added["part"] == {"type": "text", "text": ""}
    assert response["status"] == "completed" and response["status_details"] is None
    assert response["output_modalities"] == ["text"]
    (item,) = response["output"]
    assert item["role"] == "assistant" and item["status"] == "completed"
    assert item["content"] == [{"type": "output_text", "text": "a quiet text reply"}]
    usage = response["usage"]
    assert usage["output_token_details"] == {
        "text_tokens": count_tokens("a quiet text reply"),
        "audio_tokens": 0,
    }
    assert usage["input_token_details"]["text_tokens"] == count_tokens(
        "Repeat after me."
    ) + count_tokens("a quiet text reply")


async def test_a_manual_voice_turn(engine_ws: Callable[..., Awaitable[Wire]]) -> None:
    wire = await engine_ws()
    await wire.send(
        "session.update",
        session={
            "type": "realtime",
            "instructions": "",
            "audio": {"input": {"turn_detection": None, "transcription": {"model": "whisper-1"}}},
        },
    )
    updated = (await wire.until("session.updated"))[-1]
    assert updated["session"]["audio"]["input"]["turn_detection"] is None
    await wire.send("input_audio_buffer.append", audio=b64(tone(40)))
    await wire.send("input_audio_buffer.commit", event_id="early")
    err = (await wire.until("error"))[-1]
    assert err["error"]["code"] == "input_audio_buffer_commit_empty"
    assert "40.00ms" in err["error"]["message"] and err["error"]["event_id"] == "early"
    await wire.send("input_audio_buffer.clear")
    await wire.until("input_audio_buffer.cleared")
    speech = tone(1000)
    for off in range(0, len(speech), 2400):  # 50 ms appends, never acknowledged
        await wire.send("input_audio_buffer.append", audio=b64(speech[off : off + 2400]))
    await wire.send("input_audio_buffer.commit")
    committed, added, done = [await wire.next() for _ in range(3)]
    assert [committed["type"], added["type"], done["type"]] == [
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    user_item = committed["item_id"]
    assert added["item"]["id"] == done["item"]["id"] == user_item
    assert added["item"]["content"] == [{"type": "input_audio", "transcript": None}]
    completed = (await wire.until("conversation.item.input_audio_transcription.completed"))[-1]
    assert completed["item_id"] == user_item
    assert completed["transcript"] == "hello from the test"
    # whisper-1 bills by duration: the 1000 ms committed, not the 40 ms cleared.
    assert completed["usage"] == {"type": "duration", "seconds": 1.0}

    await wire.send("response.create")
    response = await wire.done()
    tr = trace(wire.events, response["id"])
    (item_added,) = tr.of("conversation.item.added")
    assert item_added["previous_item_id"] == user_item
    assert tr.of("response.content_part.added")[0]["part"] == {"type": "audio", "transcript": ""}
    (item,) = response["output"]
    assert item["content"] == [{"type": "output_audio", "transcript": "hello from the test"}]
    assert "audio" not in item["content"][0]
    ms = check_audio_tokens(tr)
    assert ms == TONE_MS_PER_CHAR * len("hello from the test")
    # 1000 ms of user audio at 10 tokens a second (plus one), and no text at all.
    assert response["usage"]["input_token_details"]["audio_tokens"] == 11
    assert response["usage"]["input_token_details"]["text_tokens"] == 0
    # No VAD events in a manual session.
    assert not [e for e in wire.events if e["type"].startswith("input_audio_buffer.speech")]


async def test_items_are_placed_retrieved_truncated_and_deleted(
    engine_ws: Callable[..., Awaitable[Wire]],
) -> None:
    wire = await engine_ws()
    await wire.send("session.update", session={**MANUAL, "instructions": ""})
    await wire.send(
        "conversation.item.create", item={**user_text("first words"), "id": "item_first"}
    )
    await wire.send("response.create")
    response = await wire.done()
    (assistant,) = response["output"]
    aid = assistant["id"]
    tr = trace(wire.events, response["id"])
    assert tr.of("conversation.item.added")[0]["previous_item_id"] == "item_first"
    produced = check_audio_tokens(tr)
    # Retrieve gives the full item, with the audio every other event leaves out.
    await wire.send("conversation.item.retrieve", item_id=aid)
    got = (await wire.until("conversation.item.retrieved"))[-1]["item"]
    assert base64.b64decode(got["content"][0]["audio"]) == tr.audio()
    assert got["content"][0]["transcript"] == "first words"

    # previous_item_id: after the assistant by default, at the root, after a named item.
    await wire.send("conversation.item.create", item={**user_text("later"), "id": "item_later"})
    added = (await wire.until("conversation.item.done"))[0]
    assert added["previous_item_id"] == aid
    await wire.send(
        "conversation.item.create",
        previous_item_id="root",
        item={**user_text("system says"), "id": "item_root"},
    )
    assert (await wire.until("conversation.item.done"))[0]["previous_item_id"] is None
    await wire.send(
        "conversation.item.create",
        previous_item_id="item_first",
        item={**user_text("an aside"), "id": "item_aside"},
    )
    assert (await wire.until("conversation.item.done"))[0]["previous_item_id"] == "item_first"
    await wire.send(
        "conversation.item.create",
        event_id="ev_lost",
        previous_item_id="item_nowhere",
        item=user_text("lost"),
    )
    err = (await wire.until("error"))[-1]
    assert err["error"]["param"] == "previous_item_id" and err["error"]["event_id"] == "ev_lost"

    # Truncate what the user did not hear: beyond the audio is an error, within it shortens.
    await wire.send(
        "conversation.item.truncate",
        event_id="ev_long",
        item_id=aid,
        content_index=0,
        audio_end_ms=int(produced) + 1,
    )
    err = (await wire.until("error"))[-1]
    assert err["error"]["message"] == (
        f"Audio content of {int(produced)}ms is already shorter than {int(produced) + 1}ms"
    )
    await wire.send(
        "conversation.item.truncate", item_id=aid, content_index=0, audio_end_ms=int(produced / 2)
    )
    truncated = (await wire.until("conversation.item.truncated"))[-1]
    assert (truncated["item_id"], truncated["audio_end_ms"]) == (aid, int(produced / 2))
    await wire.send("conversation.item.retrieve", item_id=aid)
    got = (await wire.until("conversation.item.retrieved"))[-1]
    short = got["item"]["content"][0]["transcript"]
    assert "first words".startswith(short) and 0 < len(short) < len("first words")
    assert (
        base64.b64decode(got["item"]["content"][0]["audio"]) == tr.audio()[: len(tr.audio()) // 2]
    )

    # The next response re-reads the conversation: in this order, with the truncated audio.
    await wire.send("response.create", response={"output_modalities": ["text"]})
    second = await wire.done()
    # In order: item_root, item_first, item_aside, the assistant's audio, item_later.
    expected_text = sum(count_tokens(t) for t in ("system says", "first words", "an aside"))
    expected_text += count_tokens("later")
    assert second["usage"]["input_token_details"]["text_tokens"] == expected_text
    assert second["usage"]["input_token_details"]["audio_tokens"] == int(produced / 2) // 50
    (text_item,) = second["output"]
    assert text_item["content"][0]["text"] == "later"
    assert tr.items == [aid]

    # Delete: gone for retrieve, and gone from what the model reads.
    await wire.send("conversation.item.delete", item_id="item_later")
    deleted = (await wire.until("conversation.item.deleted"))[-1]
    assert deleted["item_id"] == "item_later"
    await wire.send("conversation.item.retrieve", event_id="ev_r", item_id="item_later")
    err = (await wire.until("error"))[-1]
    assert (err["error"]["param"], err["error"]["event_id"]) == ("item_id", "ev_r")
    await wire.send("conversation.item.delete", event_id="ev_d", item_id="item_later")
    err = (await wire.until("error"))[-1]
    assert err["error"]["event_id"] == "ev_d"
    await wire.send("response.create", response={"output_modalities": ["text"]})
    third = await wire.done()
    assert third["output"][0]["content"][0]["text"] == "an aside"


async def test_an_out_of_band_response_adds_nothing_to_the_conversation(
    engine_ws: Callable[..., Awaitable[Wire]],
) -> None:
    wire = await engine_ws()
    await wire.send("session.update", session=MANUAL)
    await wire.send("conversation.item.create", item={**user_text("in band"), "id": "item_in"})
    await wire.send(
        "response.create",
        response={
            "conversation": "none",
            "metadata": {"purpose": "classify"},
            "output_modalities": ["text"],
            "instructions": "Classify.",
            "input": [user_text("out of band")],
        },
    )
    response = await wire.done()
    tr = trace(wire.events, response["id"])
    assert not tr.of("conversation.item.added") and not tr.of("conversation.item.done")
    assert tr.events[0]["response"]["metadata"] == {"purpose": "classify"}
    assert response["metadata"] == {"purpose": "classify"}
    assert response["conversation_id"] is None
    assert response["output"][0]["content"][0]["text"] == "out of band"
    assert response["usage"]["input_token_details"]["text_tokens"] == count_tokens(
        "Classify."
    ) + count_tokens("out of band")
    await wire.send("conversation.item.retrieve", item_id=response["output"][0]["id"])
    assert (await wire.until("error"))[0]["error"]["param"] == "item_id"
    # The conversation still ends with the user's item.
    await wire.send("conversation.item.create", item=user_text("next"))
    assert (await wire.until("conversation.item.done"))[0]["previous_item_id"] == "item_in"


@pytest.mark.parametrize("fmt", [AudioFormat.PCMU, AudioFormat.PCMA])
async def test_g711_sessions_hear_and_speak_at_8_bytes_a_ms(
    engine_ws: Callable[..., Awaitable[Wire]], fmt: AudioFormat
) -> None:
    wire = await engine_ws()
    g711 = {"type": str(fmt)}
    await wire.send(
        "session.update",
        session={
            "type": "realtime",
            "audio": {
                "input": {
                    "format": g711,
                    "turn_detection": None,
                    "transcription": {"model": "whisper-1"},
                },
                "output": {"format": g711},
            },
        },
    )
    updated = (await wire.until("session.updated"))[-1]
    assert updated["session"]["audio"]["input"]["format"] == g711
    assert updated["session"]["audio"]["output"]["format"] == g711
    speech = from_pcm24k(tone(1200), fmt)
    assert len(speech) == 1200 * 8
    for off in range(0, len(speech), 160):  # 20 ms telephony frames
        await wire.send("input_audio_buffer.append", audio=b64(speech[off : off + 160]))
    await wire.send("input_audio_buffer.commit")
    committed = (await wire.until("input_audio_buffer.committed"))[-1]
    completed = (await wire.until("conversation.item.input_audio_transcription.completed"))[-1]
    assert completed["item_id"] == committed["item_id"]
    assert completed["usage"]["seconds"] == pytest.approx(1.2, abs=0.002)
    await wire.send("conversation.item.retrieve", item_id=committed["item_id"])
    got = (await wire.until("conversation.item.retrieved"))[-1]
    assert abs(len(base64.b64decode(got["item"]["content"][0]["audio"])) - len(speech)) <= 8

    await wire.send("response.create")
    response = await wire.done()
    tr = trace(wire.events, response["id"])
    deltas = [base64.b64decode(e["delta"]) for e in tr.of("response.output_audio.delta")]
    # FakeProvider sends 40 ms deltas: 320 bytes of G.711, the last one possibly shorter.
    assert all(len(d) == 320 for d in deltas[:-1]) and 0 < len(deltas[-1]) <= 320
    audio = b"".join(deltas)
    expected_ms = TONE_MS_PER_CHAR * len("hello from the test")
    assert len(audio) == expected_ms * 8
    assert check_audio_tokens(tr, bytes_per_ms=8) == expected_ms
    # It really is this codec: decoded with it, the 3000-amplitude tone has its RMS (3000/sqrt 2).
    decode = ulaw_decode if fmt is AudioFormat.PCMU else alaw_decode
    rms = float(np.sqrt(np.mean(decode(audio).astype(np.float64) ** 2)))
    assert rms == pytest.approx(3000 / math.sqrt(2), rel=0.05)
    await wire.send("conversation.item.retrieve", item_id=response["output"][0]["id"])
    got = (await wire.until("conversation.item.retrieved"))[-1]["item"]
    assert len(base64.b64decode(got["content"][0]["audio"])) == len(audio)
    assert response["usage"]["input_token_details"]["audio_tokens"] == 13


async def test_an_idle_user_is_prompted_once_the_answer_has_played_out(
    engine_ws: Callable[..., Awaitable[Wire]],
) -> None:
    wire = await engine_ws()
    await wire.send(
        "session.update",
        session={
            "type": "realtime",
            "instructions": "",
            "audio": {
                "input": {
                    "transcription": {"model": "whisper-1"},
                    "turn_detection": {"type": "server_vad", "idle_timeout_ms": 500},
                }
            },
        },
    )
    await wire.until("session.updated")
    await wire.send("conversation.item.create", item=user_text("are you there"))
    await wire.send("response.create")
    first = await wire.done()
    played = check_audio_tokens(trace(wire.events, first["id"]))
    assert played == TONE_MS_PER_CHAR * len("are you there")
    # A microphone streams on; nobody speaks. Nothing was appended before response.done, so
    # playback ends at audio clock `played` and the timeout falls due 500 ms later.
    for _ in range(20):
        await wire.send("input_audio_buffer.append", audio=b64(bytes(48 * 100)))
    timeout = (await wire.until("input_audio_buffer.timeout_triggered"))[-1]
    assert timeout["audio_start_ms"] == played
    assert timeout["audio_end_ms"] == math.ceil((played + 500) / 100) * 100
    committed = await wire.next()
    assert committed["type"] == "input_audio_buffer.committed"
    assert (committed["item_id"], committed["previous_item_id"]) == (
        timeout["item_id"],
        first["output"][0]["id"],
    )
    second = await wire.done()
    tr = trace(wire.events, second["id"])
    assert tr.of("conversation.item.added")[0]["previous_item_id"] == timeout["item_id"]
    # The silent item was heard like any user turn (the fake recognizer hears its line).
    heard = [
        e
        for e in wire.events
        if e["type"] == "conversation.item.input_audio_transcription.completed"
    ]
    assert [e["item_id"] for e in heard] == [timeout["item_id"]]
    assert not [e for e in wire.events if e["type"].startswith("input_audio_buffer.speech")]


async def test_a_transcription_session_transcribes_and_never_responds(
    engine_ws: Callable[..., Awaitable[Wire]],
) -> None:
    wire = await engine_ws(intent="transcription")
    await wire.send(
        "session.update",
        session={
            "type": "transcription",
            "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}},
        },
    )
    updated = (await wire.until("session.updated"))[-1]
    assert updated["session"]["object"] == "realtime.transcription_session"
    await wire.send("response.create", event_id="ev_no")
    err = (await wire.until("error"))[-1]
    assert err["error"]["event_id"] == "ev_no"
    speech = tone(600) + bytes(48 * 400)
    for off in range(0, len(speech), 960):
        await wire.send("input_audio_buffer.append", audio=b64(speech[off : off + 960]))
    events = await wire.until("conversation.item.input_audio_transcription.completed")
    events += await wire.quiet(0.5)
    types = [e["type"] for e in events]
    assert types[:5] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    assert not [t for t in types if t.startswith("response.")]
    item_id = events[2]["item_id"]
    assert events[0]["item_id"] == events[1]["item_id"] == item_id
    delta = next(e for e in events if e["type"].endswith("transcription.delta"))
    completed = next(e for e in events if e["type"].endswith("transcription.completed"))
    assert delta["item_id"] == completed["item_id"] == item_id
    assert delta["delta"] == completed["transcript"] == "hello from the test"
    usage = completed["usage"]
    assert usage["type"] == "tokens"
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["input_token_details"]["audio_tokens"] == usage["input_tokens"] > 0
    assert usage["output_tokens"] == count_tokens("hello from the test")


async def test_a_transcription_session_with_no_model_chosen_transcribes_with_the_default(
    engine_ws: Callable[..., Awaitable[Wire]],
) -> None:
    # The product page's URL, audio appended, no session.update at all.
    wire = await engine_ws(intent="transcription")
    created = wire.events[-1]["session"]
    assert created["audio"]["input"]["transcription"]["model"] == "gpt-4o-mini-transcribe"
    speech = tone(600) + bytes(48 * 400)
    for off in range(0, len(speech), 960):
        await wire.send("input_audio_buffer.append", audio=b64(speech[off : off + 960]))
    events = await wire.until("conversation.item.input_audio_transcription.completed")
    assert events[-1]["transcript"] == "hello from the test"
    assert events[-1]["usage"]["type"] == "tokens"


# -- the official SDK through the gateway to an engine built for the test -------------------


class StallingBrain:
    """Asked for a story (the last item), says a sentence and stalls like a slow model;
    otherwise echoes."""

    def __init__(self) -> None:
        self.requests: list[BrainRequest] = []

    async def reply(self, request: BrainRequest) -> AsyncIterator[BrainOutput]:
        self.requests.append(request)
        if "story" in last_user_text(request.items[-1:]):
            yield TextDelta("Once upon a time.")
            yield TextDelta(" There was")
            await asyncio.Event().wait()
        async for out in EchoBrain().reply(request):
            yield out


@dataclass
class SdkSession:
    conn: Any
    wire: Wire


@pytest.fixture
async def engine_sdk(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[Callable[..., Awaitable[SdkSession]]]:
    """``open(brain=..., vad_factory=...)``: an SDK connection to a gateway whose embedded engine
    has those options (a tone voice, the fake recognizer and 40 ms deltas unless told)."""
    runners: list[web.AppRunner] = []
    conns: list[Any] = []

    async def open_(**opts: Any) -> SdkSession:
        settings = make_settings(OPENAI_API_KEY="")
        options = EngineOptions(
            **{
                "token": "engine-test-token",
                "synthesizer": ToneSynthesizer(),
                "transcriber": FakeTranscriber(),
                "audio_chunk_ms": 40,
                **opts,
            }
        )
        app = create_app(settings, engine=options)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        set_local_base_url(app, "127.0.0.1", port)
        _, key = await app[GATEWAY].keyring.create("engine-test")
        client = AsyncOpenAI(
            api_key=key,
            base_url=f"http://127.0.0.1:{port}/v1",
            websocket_base_url=f"ws://127.0.0.1:{port}/v1",
        )
        manager = client.realtime.connect(model="gpt-realtime")
        conn = await manager.__aenter__()
        conns.append(manager)
        wire = Wire(conn.recv_bytes, conn.send_raw)
        created = (await wire.until("session.created"))[-1]
        assert created["session"]["model"] == "gpt-realtime"
        return SdkSession(conn, wire)

    yield open_
    for manager in conns:
        await manager.__aexit__(None, None, None)
    for runner in runners:
        await runner.cleanup()


async def test_response_cancel_ends_even_a_stalled_response_at_once(
    engine_sdk: Callable[..., Awaitable[SdkSession]],
) -> None:
    brain = StallingBrain()
    sdk = await engine_sdk(brain=brain)
    conn, wire = sdk.conn, sdk.wire
    await conn.session.update(session=MANUAL)
    await conn.conversation.item.create(item=user_text("tell me a story"))
    await conn.response.create()
    created = (await wire.until("response.created"))[-1]
    rid = created["response"]["id"]
    await wire.until("response.output_audio.delta")  # the first sentence is out; the brain stalls

    # One response at a time in the conversation; out-of-band ones run beside it.
    await conn.response.create(event_id="ev_second")
    err = (await wire.until("error"))[-1]
    assert err["error"]["code"] == "conversation_already_has_active_response"
    assert rid in err["error"]["message"] and err["error"]["event_id"] == "ev_second"
    await conn.response.create(
        response={
            "conversation": "none",
            "metadata": {"kind": "side"},
            "output_modalities": ["text"],
            "input": [user_text("a side question")],
        }
    )
    side = await wire.done()
    assert side["id"] != rid and side["metadata"] == {"kind": "side"}
    assert side["output"][0]["content"][0]["text"] == "a side question"

    started = time.monotonic()
    await conn.response.cancel()
    response = await wire.done(rid)
    assert time.monotonic() - started < 2.0
    assert response["status"] == "cancelled"
    assert response["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    tr = trace(wire.events, rid)
    (item,) = response["output"]
    assert item["status"] == "incomplete"
    assert item["content"][0]["transcript"] == "Once upon a time. There was"
    check_audio_tokens(tr)
    assert tr.of("conversation.item.done")[0]["item"]["status"] == "incomplete"
    # The conversation is free again, and a cancel now has nothing to cancel.
    await conn.response.cancel(event_id="ev_late")
    err = (await wire.until("error"))[-1]
    assert err["error"]["code"] == "response_cancel_not_active"
    await conn.conversation.item.create(item=user_text("short one"))
    await conn.response.create(response={"output_modalities": ["text"]})
    after = await wire.done()
    assert after["status"] == "completed"
    assert after["output"][0]["content"][0]["text"] == "short one"


WEATHER_RULES = """
[[rules]]
match = "weather in (?P<city>[a-z]+)"
call = { name = "get_weather", arguments = '{{"city": "{city}"}}' }

[[rules]]
on_tool_output = "get_weather"
match = "weather in (?P<city>[a-z]+)"
say = "In {city} it is {output}."
"""

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


async def test_a_function_call_and_its_output_round_trip_with_the_scripted_brain(
    engine_sdk: Callable[..., Awaitable[SdkSession]], tmp_path: Path
) -> None:
    script = tmp_path / "rules.toml"
    script.write_text(WEATHER_RULES)
    sdk = await engine_sdk(brain=ScriptedBrain.from_file(script))
    conn, wire = sdk.conn, sdk.wire
    await conn.session.update(session={**MANUAL, "tools": [WEATHER_TOOL]})
    await conn.conversation.item.create(item=user_text("What is the weather in Paris?"))
    user_item = (await wire.until("conversation.item.done"))[-1]["item"]["id"]
    await conn.response.create()
    first = await wire.done()
    tr = trace(wire.events, first["id"])
    # docs/protocol.md 6, "Function call", event for event.
    assert tr.types == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
        "rate_limits.updated",
    ]
    added = tr.of("response.output_item.added")[0]["item"]
    assert added["type"] == "function_call" and added["status"] == "in_progress"
    assert (added["name"], added["arguments"]) == ("get_weather", "")
    call_id = added["call_id"]
    assert tr.of("conversation.item.added")[0]["previous_item_id"] == user_item
    delta = tr.of("response.function_call_arguments.delta")[0]
    args_done = tr.of("response.function_call_arguments.done")[0]
    assert delta["call_id"] == args_done["call_id"] == call_id
    assert args_done["name"] == "get_weather"
    assert json.loads(args_done["arguments"]) == {"city": "Paris"}
    assert delta["delta"] == args_done["arguments"]
    (call,) = first["output"]
    assert call["status"] == "completed" and call["arguments"] == args_done["arguments"]
    assert first["status"] == "completed"
    assert first["usage"]["output_token_details"]["audio_tokens"] == 0
    assert first["usage"]["output_token_details"]["text_tokens"] > 0

    await conn.conversation.item.create(
        item={"type": "function_call_output", "call_id": call_id, "output": "sunny and 21 C"}
    )
    output_item = (await wire.until("conversation.item.done"))[-1]
    assert output_item["previous_item_id"] == call["id"]
    await conn.response.create()
    second = await wire.done()
    tr2 = trace(wire.events, second["id"])
    (spoken,) = second["output"]
    assert spoken["content"][0]["transcript"] == "In Paris it is sunny and 21 C."
    assert tr2.of("conversation.item.added")[0]["previous_item_id"] == output_item["item"]["id"]
    check_audio_tokens(tr2)
    # The tool output is part of what the model read.
    text_in = [r["usage"]["input_token_details"]["text_tokens"] for r in (first, second)]
    assert text_in[1] >= text_in[0] + count_tokens("sunny and 21 C")


@dataclass
class ChatServer:
    """A fake ``/v1/chat/completions`` that streams scripted SSE replies, one per request."""

    #: A reply is its chunks' deltas (an ``asyncio.Event`` among them: wait for it to be set
    #: before going on), or an HTTP status to fail with.
    replies: list[list[dict[str, Any] | asyncio.Event] | int]
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(await request.json())
        reply = self.replies.pop(0)
        if isinstance(reply, int):
            return web.json_response({"error": {"message": "model overloaded"}}, status=reply)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for delta in reply:
            if isinstance(delta, asyncio.Event):
                await delta.wait()
                continue
            chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            await asyncio.sleep(0.01)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


@pytest.fixture
async def chat_server() -> AsyncIterator[Callable[..., Awaitable[ChatServer]]]:
    runners: list[web.AppRunner] = []

    async def start(replies: list[list[dict[str, Any] | asyncio.Event] | int]) -> ChatServer:
        chat = ChatServer(replies)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        server = site._server
        assert server is not None
        chat.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"  # type: ignore[attr-defined]
        return chat

    yield start
    for runner in runners:
        await runner.cleanup()


def tool_call_chunks(
    call_id: str, name: str, arguments: str, index: int = 0
) -> list[dict[str, Any]]:
    """A streamed tool call as OpenAI-compatible servers send it: the id and name first, then
    the arguments in pieces."""
    half = len(arguments) // 2
    return [
        {
            "tool_calls": [
                {"index": index, "id": call_id, "type": "function", "function": {"name": name}}
            ]
        },
        {"tool_calls": [{"index": index, "function": {"arguments": arguments[:half]}}]},
        {"tool_calls": [{"index": index, "function": {"arguments": arguments[half:]}}]},
    ]


async def test_the_scripted_brain_answers_a_tool_output_the_caller_spoke_after(
    tmp_path: Path,
) -> None:
    """The caller said something while the tool ran (a Live turn heard meanwhile): that
    output is still the one to answer, until the assistant has spoken to it."""
    script = tmp_path / "rules.toml"
    script.write_text(
        '[[rules]]\nmatch = "weather in (?P<city>[a-z]+)"\n'
        "call = { name = \"get_weather\", arguments = '{{}}' }\n"
        '[[rules]]\non_tool_output = "get_weather"\nsay = "It is {output}."\n'
    )
    brain = ScriptedBrain.from_file(script)

    async def said(items: list[dict[str, Any]]) -> str:
        request = BrainRequest(instructions="", items=items)
        return "".join([o.text async for o in brain.reply(request) if isinstance(o, TextDelta)])

    def msg(role: str, text: str) -> dict[str, Any]:
        return {"type": "message", "role": role, "content": [{"type": "input_text", "text": text}]}

    call = {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"}
    output = {"type": "function_call_output", "call_id": "c1", "output": "sunny"}
    items = [msg("user", "What is the weather in Paris?"), call, output, msg("user", "mm-hm")]
    assert await said(items) == "It is sunny."
    # Once the assistant has spoken to it, the caller's next words are answered instead.
    items += [msg("assistant", "It is sunny."), msg("user", "Thanks.")]
    assert await said(items) == "Thanks."  # no rule: the echo


def test_a_call_still_waiting_for_its_output_is_left_out_of_the_chat_messages() -> None:
    """The caller spoke while a call waited (a GPT-Live backend's, a Realtime client's): the
    chat model gets no assistant tool call without its tool message right after it."""
    items = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Oslo?"}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "snow"},
        {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": "{}"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "And?"}]},
    ]
    msgs = chat_messages(BrainRequest(instructions="", items=items))
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "user"]
    assert [c["id"] for c in msgs[1]["tool_calls"]] == ["c1"]


async def test_the_openai_compatible_brain_streams_text_and_tool_calls(
    engine_sdk: Callable[..., Awaitable[SdkSession]],
    chat_server: Callable[..., Awaitable[ChatServer]],
) -> None:
    chat = await chat_server(
        [
            [
                {"role": "assistant", "content": "Let me"},
                {"content": " check."},
                *tool_call_chunks("call_abc123", "get_weather", '{"city": "Oslo"}'),
                *tool_call_chunks("call_def456", "get_weather", '{"city": "Bergen"}', index=1),
            ],
            [{"content": "It is"}, {"content": " snowing"}, {"content": " in Oslo."}],
            503,
        ]
    )
    brain = OpenAICompatibleBrain(chat.url, "local-llm", api_key="brain-key")
    sdk = await engine_sdk(brain=brain)
    conn, wire = sdk.conn, sdk.wire
    await conn.session.update(
        session={**MANUAL, "instructions": "You are terse.", "tools": [WEATHER_TOOL]}
    )
    await conn.conversation.item.create(item=user_text("Weather in Oslo?"))
    await conn.response.create()
    first = await wire.done()
    tr = trace(wire.events, first["id"])
    # A spoken preamble, then two parallel calls, in one response.
    message, call, call2 = first["output"]
    assert message["type"] == "message" and message["content"][0]["transcript"] == "Let me check."
    check_audio_tokens(tr)
    assert call["type"] == call2["type"] == "function_call"
    assert (call["name"], call["call_id"]) == ("get_weather", "call_abc123")
    assert (call2["name"], call2["call_id"]) == ("get_weather", "call_def456")
    assert json.loads(call["arguments"]) == {"city": "Oslo"}
    assert json.loads(call2["arguments"]) == {"city": "Bergen"}
    assert [e["arguments"] for e in tr.of("response.function_call_arguments.done")] == [
        call["arguments"],
        call2["arguments"],
    ]
    # One delta per fragment the brain received, in order (docs/protocol.md 6, "Function call").
    for c, args in ((call, '{"city": "Oslo"}'), (call2, '{"city": "Bergen"}')):
        deltas = [
            e["delta"]
            for e in tr.of("response.function_call_arguments.delta")
            if e["item_id"] == c["id"]
        ]
        assert deltas == [args[: len(args) // 2], args[len(args) // 2 :]]
    body = chat.requests[0]
    assert body["model"] == "local-llm" and body["stream"] is True
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Oslo?"},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {k: WEATHER_TOOL[k] for k in ("name", "description", "parameters")},
        }
    ]

    await conn.conversation.item.create(
        item={"type": "function_call_output", "call_id": "call_abc123", "output": "-5 C, snow"}
    )
    await conn.conversation.item.create(
        item={"type": "function_call_output", "call_id": "call_def456", "output": "2 C, rain"}
    )
    await conn.response.create(response={"output_modalities": ["text"]})
    second = await wire.done()
    trace(wire.events, second["id"])
    assert second["output"][0]["content"][0]["text"] == "It is snowing in Oslo."
    # Chat Completions wants parallel calls in one assistant message, their results after it.
    messages = chat.requests[1]["messages"]
    assert messages[-4:] == [
        {"role": "assistant", "content": "Let me check."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": c["call_id"],
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": c["arguments"]},
                }
                for c in (call, call2)
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc123", "content": "-5 C, snow"},
        {"role": "tool", "tool_call_id": "call_def456", "content": "2 C, rain"},
    ]

    # The brain server failing fails the response, which still ends with response.done.
    await conn.response.create()
    failed = await wire.done()
    assert failed["status"] == "failed"
    assert failed["status_details"]["type"] == "failed"
    assert failed["status_details"]["error"]["type"] == "server_error"
    assert failed["output"] == []


async def test_tool_call_arguments_reach_the_client_while_the_brain_still_streams_them(
    engine_sdk: Callable[..., Awaitable[SdkSession]],
    chat_server: Callable[..., Awaitable[ChatServer]],
) -> None:
    arguments = '{"city": "Tromso", "days": 3}'
    opening, first, rest = tool_call_chunks("call_tromso0001", "get_weather", arguments)
    held = asyncio.Event()
    chat = await chat_server([[opening, first, held, rest]])
    sdk = await engine_sdk(brain=OpenAICompatibleBrain(chat.url, "local-llm"))
    conn, wire = sdk.conn, sdk.wire
    await conn.session.update(session={**MANUAL, "tools": [WEATHER_TOOL]})
    await conn.conversation.item.create(item=user_text("Weather in Tromso?"))
    await conn.response.create()
    added = (await wire.until("response.output_item.added"))[-1]["item"]
    assert (added["name"], added["call_id"], added["arguments"]) == (
        "get_weather",
        "call_tromso0001",
        "",
    )
    # The brain server holds the rest back: what it sent so far is already on the wire.
    delta = (await wire.until("response.function_call_arguments.delta"))[-1]
    assert delta["delta"] == arguments[: len(arguments) // 2]
    held.set()
    response = await wire.done()
    tr = trace(wire.events, response["id"])
    assert [d["delta"] for d in tr.of("response.function_call_arguments.delta")] == [
        arguments[: len(arguments) // 2],
        arguments[len(arguments) // 2 :],
    ]
    assert response["output"][0]["arguments"] == arguments


async def test_speech_during_a_response_cancels_it_and_starts_the_next_turn(
    engine_sdk: Callable[..., Awaitable[SdkSession]],
) -> None:
    from rtgate.engine.silero import SileroModel, SileroVad
    from tests.speech import speak

    model = SileroModel()
    brain = StallingBrain()
    sdk = await engine_sdk(brain=brain, vad_factory=lambda: SileroVad(model))
    conn, wire = sdk.conn, sdk.wire
    await conn.session.update(
        session={
            "type": "realtime",
            "audio": {
                "input": {
                    "transcription": {"model": "gpt-4o-mini-transcribe"},
                    "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
                }
            },
        }
    )
    await conn.conversation.item.create(item=user_text("tell me a story"))
    await conn.response.create()
    rid = (await wire.until("response.created"))[-1]["response"]["id"]
    await wire.until("response.output_audio.delta")

    speech = bytes(48 * 400) + speak("Wait, I have a question.") + bytes(48 * 1200)
    for off in range(0, len(speech), 960):
        await conn.input_audio_buffer.append(audio=b64(speech[off : off + 960]))
    cancelled = await wire.done(rid)
    second = await wire.done()
    events = wire.events
    types = [e["type"] for e in events]

    started = types.index("input_audio_buffer.speech_started")
    assert started < types.index("response.done")
    assert cancelled["status"] == "cancelled"
    assert cancelled["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    (interrupted,) = cancelled["output"]
    assert interrupted["status"] == "incomplete"
    trace(events, rid)

    # Then the user's turn runs as steps 6-22: stopped, committed, the item, a new response.
    stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
    committed = next(e for e in events if e["type"] == "input_audio_buffer.committed")
    item_id = events[started]["item_id"]
    assert stopped["item_id"] == committed["item_id"] == item_id
    assert committed["previous_item_id"] == interrupted["id"]
    assert events[started]["audio_start_ms"] < 400 < stopped["audio_end_ms"]
    assert types.index("input_audio_buffer.committed") < types.index(
        "response.created", types.index("response.done")
    )
    tr = trace(events, second["id"])
    assert second["status"] == "completed"
    assert tr.of("conversation.item.added")[0]["previous_item_id"] == item_id
    # The echo brain answered with what the recognizer heard.
    assert second["output"][0]["content"][0]["transcript"] == "hello from the test"
    assert last_user_text(brain.requests[-1].items) == "hello from the test"

    # The client truncates what was not played of the interrupted answer.
    produced = check_audio_tokens(trace(events, rid))
    await conn.conversation.item.truncate(
        item_id=interrupted["id"], content_index=0, audio_end_ms=int(produced / 2)
    )
    truncated = (await wire.until("conversation.item.truncated"))[-1]
    assert truncated["audio_end_ms"] == int(produced / 2)
    await conn.conversation.item.retrieve(item_id=interrupted["id"])
    got = (await wire.until("conversation.item.retrieved"))[-1]
    short = got["item"]["content"][0]["transcript"]
    assert interrupted["content"][0]["transcript"].startswith(short)
    assert len(short) < len(interrupted["content"][0]["transcript"])
    assert len(base64.b64decode(got["item"]["content"][0]["audio"])) == int(produced / 2) * 48


async def test_an_out_of_band_response_is_cancelled_by_id_and_the_conversation_is_not(
    engine_sdk: Callable[..., Awaitable[SdkSession]],
) -> None:
    sdk = await engine_sdk(brain=StallingBrain())
    conn, wire = sdk.conn, sdk.wire
    await conn.session.update(session=MANUAL)
    await conn.conversation.item.create(item=user_text("tell me a story"))
    await conn.response.create()
    active = (await wire.until("response.created"))[-1]["response"]["id"]
    await conn.response.create(
        response={
            "conversation": "none",
            "metadata": {"kind": "side story"},
            "input": [user_text("another story please")],
        }
    )
    side = (await wire.until("response.created"))[-1]["response"]
    assert side["conversation_id"] is None and side["metadata"] == {"kind": "side story"}
    await wire.until("response.output_audio.delta", response_id=side["id"])
    await conn.response.cancel(response_id=side["id"])
    done = await wire.done(side["id"])
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert done["metadata"] == {"kind": "side story"}
    tr = trace(wire.events, side["id"])
    assert not tr.of("conversation.item.added")
    # The conversation's own response is still running: a second one is still refused.
    await conn.response.create(event_id="ev_busy")
    err = (await wire.until("error"))[-1]["error"]
    assert err["code"] == "conversation_already_has_active_response"
    assert active in err["message"]
    await conn.response.cancel()
    assert (await wire.done(active))["status"] == "cancelled"


async def test_cancel_then_create_in_one_breath_keeps_the_responses_in_order(
    engine_sdk: Callable[..., Awaitable[SdkSession]],
) -> None:
    sdk = await engine_sdk(brain=StallingBrain())
    conn, wire = sdk.conn, sdk.wire
    await conn.session.update(session=MANUAL)
    await conn.conversation.item.create(item=user_text("tell me a story"))
    await conn.response.create()
    first = (await wire.until("response.created"))[-1]["response"]["id"]
    await wire.until("response.output_audio.delta")
    # Handled strictly in order: the cancel ends the first, so the create is not refused.
    await conn.response.cancel()
    await conn.response.create(response={"output_modalities": ["text"], "instructions": "Go."})
    cancelled = await wire.done(first)
    second = await wire.done()
    assert not [e for e in wire.events if e["type"] == "error"]
    assert cancelled["status"] == "cancelled" and second["status"] == "completed"
    types = [(e["type"], (e.get("response") or {}).get("id")) for e in wire.events]
    assert types.index(("response.done", first)) < types.index(("response.created", second["id"]))
    # The second answer follows the interrupted one in the conversation.
    tr = trace(wire.events, second["id"])
    assert tr.of("conversation.item.added")[0]["previous_item_id"] == cancelled["output"][0]["id"]


async def test_out_of_band_input_can_reference_conversation_items(
    engine_ws: Callable[..., Awaitable[Wire]],
) -> None:
    wire = await engine_ws()
    await wire.send("session.update", session={**MANUAL, "instructions": ""})
    await wire.send("conversation.item.create", item={**user_text("referenced"), "id": "item_in"})
    await wire.send(
        "response.create",
        response={
            "conversation": "none",
            "output_modalities": ["text"],
            "input": [{"type": "item_reference", "id": "item_in"}],
        },
    )
    response = await wire.done()
    assert response["output"][0]["content"][0]["text"] == "referenced"
    assert response["usage"]["input_token_details"]["text_tokens"] == count_tokens("referenced")
    await wire.send(
        "response.create",
        event_id="ev_missing",
        response={"conversation": "none", "input": [{"type": "item_reference", "id": "item_no"}]},
    )
    err = (await wire.until("error"))[-1]["error"]
    assert (err["param"], err["event_id"]) == ("response.input", "ev_missing")


class OddSynthesizer:
    """52.5 ms of tone per sentence: lengths that are not whole milliseconds or chunks."""

    async def synthesize(self, text: str, voice: str) -> bytes:
        return tone(52) + tone(1)[:24]


async def test_audio_tokens_count_all_the_audio_sent(
    engine_sdk: Callable[..., Awaitable[SdkSession]],
) -> None:
    sdk = await engine_sdk(synthesizer=OddSynthesizer())
    conn, wire = sdk.conn, sdk.wire
    await conn.session.update(session=MANUAL)
    sentences = " ".join(f"Part {n}." for n in range(20))
    await conn.conversation.item.create(item=user_text(sentences))
    await conn.response.create()
    response = await wire.done()
    tr = trace(wire.events, response["id"])
    assert len(tr.audio()) == 20 * 2520  # twenty sentences of 52.5 ms
    assert check_audio_tokens(tr) == 1050
    assert response["usage"]["output_token_details"]["audio_tokens"] == 21
    # Truncation is measured against the same length.
    item_id = response["output"][0]["id"]
    await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=1050)
    assert (await wire.until("conversation.item.truncated"))[-1]["audio_end_ms"] == 1050


async def test_without_a_recognizer_transcription_fails_cleanly_and_the_turn_goes_on(
    engine_sdk: Callable[..., Awaitable[SdkSession]],
) -> None:
    sdk = await engine_sdk(transcriber=None)
    conn, wire = sdk.conn, sdk.wire
    await conn.session.update(
        session={
            "type": "realtime",
            "audio": {
                "input": {
                    "turn_detection": None,
                    "transcription": {"model": "gpt-4o-transcribe"},
                }
            },
        }
    )
    await conn.input_audio_buffer.append(audio=b64(tone(300)))
    await conn.input_audio_buffer.commit()
    committed = (await wire.until("input_audio_buffer.committed"))[-1]
    failed = (await wire.until("conversation.item.input_audio_transcription.failed"))[-1]
    assert failed["item_id"] == committed["item_id"]
    assert failed["error"]["type"] == "transcription_error"
    await conn.response.create()
    response = await wire.done()
    assert response["status"] == "completed"
    assert response["usage"]["input_token_details"]["audio_tokens"] == 4


async def test_speech_does_not_interrupt_when_interrupt_response_is_off(
    engine_sdk: Callable[..., Awaitable[SdkSession]],
) -> None:
    from rtgate.engine.silero import SileroModel, SileroVad
    from tests.speech import speak

    model = SileroModel()
    sdk = await engine_sdk(brain=StallingBrain(), vad_factory=lambda: SileroVad(model))
    conn, wire = sdk.conn, sdk.wire
    await conn.session.update(
        session={
            "type": "realtime",
            "audio": {
                "input": {
                    "turn_detection": {
                        "type": "server_vad",
                        "silence_duration_ms": 500,
                        "interrupt_response": False,
                    }
                }
            },
        }
    )
    await conn.conversation.item.create(item=user_text("tell me a story"))
    await conn.response.create()
    rid = (await wire.until("response.created"))[-1]["response"]["id"]
    speech = bytes(48 * 400) + speak("Wait, I have a question.") + bytes(48 * 1200)
    for off in range(0, len(speech), 960):
        await conn.input_audio_buffer.append(audio=b64(speech[off : off + 960]))
    await wire.until("input_audio_buffer.committed")
    later = await wire.quiet(0.5)
    # The turn is committed, but the story goes on and no second response starts.
    assert not [e for e in wire.events if e["type"] in ("response.done", "response.created")][1:]
    assert not [e for e in later if e["type"].startswith("response.") and "delta" not in e["type"]]
    await conn.response.cancel()
    done = await wire.done(rid)
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}


def test_the_engine_says_which_stages_it_runs_and_why(caplog: pytest.LogCaptureFixture) -> None:
    """A newcomer's find: tts=tone, chosen with piper installed, was logged as the fallback of
    a machine with no speech synthesizer."""
    from rtgate.config import EngineSettings
    from rtgate.engine.stack import build_engine

    with caplog.at_level(logging.INFO, logger="rtgate"):
        build_engine(EngineSettings(tts="tone", stt="none", vad="energy"), "t", 60)
    assert "vad=energy stt=none brain=echo tts=tone" in caplog.text
    assert "no speech synthesizer" not in caplog.text
