"""One spoken turn through LiveKit Agents' OpenAI realtime model, pointed at a gateway by base URL.

Runs in the frameworks' own environment (``tests/frameworks/requirements.txt``), not rtgate's:
the plugin's ``RealtimeModel`` and its session are used as an ``AgentSession`` drives them (audio
frames pushed in, server turn detection, a generation's text and audio streams read out), with
no LiveKit room. Prints one JSON object: what it heard and said, the audio it got, its
metrics' token counts and every error it emitted.

    python livekit_turn.py BASE_URL KEY MODEL SPEECH.pcm [audio|text]   (24 kHz PCM16 mono)

The last argument is the model's modality: ``text`` as an agent with its own TTS asks for it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aiohttp
from livekit import rtc
from livekit.agents import llm
from livekit.agents.metrics import RealtimeModelMetrics
from livekit.plugins import openai
from livekit_warnings import watch
from openai.types.realtime import AudioTranscription
from openai.types.realtime.realtime_audio_input_turn_detection import ServerVad


async def main(base_url: str, key: str, model: str, speech: bytes, modality: str) -> dict[str, Any]:
    warnings = watch()
    heard: list[str] = []
    errors: list[str] = []
    tokens: dict[str, int] = {}
    generations: asyncio.Queue[llm.GenerationCreatedEvent] = asyncio.Queue()
    async with aiohttp.ClientSession() as http:
        rt = openai.realtime.RealtimeModel(
            model=model,
            api_key=key,
            base_url=base_url,
            http_session=http,
            modalities=[modality],
            input_audio_transcription=AudioTranscription(model="gpt-4o-mini-transcribe"),
            turn_detection=ServerVad(type="server_vad", silence_duration_ms=500),
        )
        session = rt.session()
        session.on("generation_created", generations.put_nowait)
        session.on(
            "input_audio_transcription_completed",
            lambda ev: heard.append(ev.transcript) if ev.is_final else None,
        )
        session.on("error", lambda ev: errors.append(repr(ev.error)))

        def on_metrics(m: Any) -> None:
            if isinstance(m, RealtimeModelMetrics):
                tokens["input_tokens"] = m.input_tokens
                tokens["output_tokens"] = m.output_tokens

        session.on("metrics_collected", on_metrics)
        await session.update_instructions("You are a helpful assistant.")
        # 20 ms frames in real time, as a room's audio track delivers a microphone's.
        for off in range(0, len(speech), 960):
            chunk = speech[off : off + 960]
            session.push_audio(
                rtc.AudioFrame(
                    data=chunk,
                    sample_rate=24000,
                    num_channels=1,
                    samples_per_channel=len(chunk) // 2,
                )
            )
            await asyncio.sleep(0.02)
        said, audio = "", 0
        try:
            gen = await asyncio.wait_for(generations.get(), 30)
            async for message in gen.message_stream:

                async def text(stream: Any) -> str:
                    return "".join([t async for t in stream])

                async def pcm(stream: Any) -> int:
                    return sum([len(f.data) * 2 async for f in stream])

                got_text, got_audio = await asyncio.wait_for(
                    asyncio.gather(text(message.text_stream), pcm(message.audio_stream)), 30
                )
                said += got_text
                audio += got_audio
        except TimeoutError:
            errors.append("no reply within 30 s")
        # The usage metrics follow response.done.
        for _ in range(100):
            if tokens:
                break
            await asyncio.sleep(0.05)
        await session.aclose()
        await rt.aclose()
    return {
        "heard": " ".join(heard),
        "said": said,
        "audio_bytes": audio,
        "usage": tokens,
        "errors": errors,
        "warnings": warnings.seen,
    }


if __name__ == "__main__":
    base_url, key, model, path = sys.argv[1:5]
    modality = sys.argv[5] if len(sys.argv) > 5 else "audio"
    with open(path, "rb") as f:
        summary = asyncio.run(main(base_url, key, model, f.read(), modality))
    print(json.dumps(summary))
