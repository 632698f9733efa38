"""A LiveKit voice agent with a tool, through a gateway: the caller's question spoken into
``AgentSession``'s audio input (no room), on the Realtime API (``RealtimeModel``) or on GPT-Live
(``GPTLiveModel`` as it comes, for a ``gpt-live-*`` MODEL).

Runs in the frameworks' own environment (``tests/frameworks/requirements.txt``). On the
Realtime API the model calls the tool and the session answers it with a
``function_call_output`` item and a new response; GPT-Live runs an agent's tools through its
Responses backend: the backend calls the tool, LiveKit's session runs it and sends its output
back (``response.item.create``, ``response.create``), and the voice speaks the backend's answer.
Prints one JSON object: the tool's calls, the conversation items the session added, and every
warning or error LiveKit logged.

    python livekit_spoken_agent.py BASE_URL KEY MODEL SPEECH.pcm   (24 kHz PCM16 mono)
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aiohttp
from livekit import rtc
from livekit.agents import Agent, AgentSession, function_tool
from livekit.agents.voice import io
from livekit.plugins import openai
from livekit_warnings import watch


class Microphone(io.AudioInput):
    """The speech in 20 ms frames at the pace a microphone gives them, then silence."""

    def __init__(self, pcm: bytes) -> None:
        super().__init__(label="speech")
        self.pcm = pcm + bytes(-len(pcm) % 960)
        self.offset = 0

    async def __anext__(self) -> rtc.AudioFrame:
        await asyncio.sleep(0.02)
        chunk = self.pcm[self.offset : self.offset + 960] or bytes(960)
        self.offset += 960
        return rtc.AudioFrame(
            data=chunk, sample_rate=24000, num_channels=1, samples_per_channel=480
        )


async def main(base_url: str, key: str, model: str, speech: bytes) -> dict[str, Any]:
    warnings = watch()
    calls: list[str] = []
    items: list[dict[str, Any]] = []

    @function_tool
    async def get_weather(city: str) -> str:
        """Get the weather forecast for a city."""
        calls.append(city)
        return f"sunny and twenty degrees in {city}"

    def answered() -> bool:
        return any(i["role"] == "assistant" and "forecast" in (i["text"] or "") for i in items)

    async with aiohttp.ClientSession() as http:
        kind = (
            openai.realtime.GPTLiveModel
            if model.startswith("gpt-live")
            else openai.realtime.RealtimeModel
        )
        llm = kind(model=model, api_key=key, base_url=base_url, http_session=http)
        async with AgentSession(llm=llm) as session:
            session.on(
                "conversation_item_added",
                lambda ev: (
                    items.append({"role": ev.item.role, "text": ev.item.text_content})
                    if ev.item.type == "message"
                    else None
                ),
            )
            session.input.audio = Microphone(speech)
            await session.start(
                Agent(
                    instructions="Answer weather questions with the get_weather tool.",
                    tools=[get_weather],
                )
            )
            for _ in range(600):
                if answered():
                    break
                await asyncio.sleep(0.1)
        await llm.aclose()
    return {"calls": calls, "items": items, "warnings": warnings.seen}


if __name__ == "__main__":
    base_url, key, model, path = sys.argv[1:5]
    with open(path, "rb") as f:
        print(json.dumps(asyncio.run(main(base_url, key, model, f.read()))))
