"""One spoken turn through pipecat's OpenAI Realtime service, pointed at a gateway by base URL.

Runs in the frameworks' own environment (``tests/frameworks/requirements.txt``), not rtgate's:
pipecat is used as a pipecat app uses it, a pipeline with ``OpenAIRealtimeLLMService`` in it,
fed the user's speech as input audio frames. Prints one JSON object: the frames the service
pushed down the pipeline, what it heard and said, its usage metrics and every error it raised.

    python pipecat_turn.py URL KEY MODEL SPEECH.pcm [audio|text]   (24 kHz PCM16 mono)

The last argument is the session's output modality: ``text`` as a pipecat app with its own TTS
service after the realtime one asks for it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass, field

from loguru import logger
from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    LLMFullResponseEndFrame,
    LLMTextFrame,
    MetricsFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
)
from pipecat.metrics.metrics import LLMUsageMetricsData
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.task import PipelineParams
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.openai.realtime.events import (
    AudioConfiguration,
    AudioInput,
    InputAudioTranscription,
    SessionProperties,
    TurnDetection,
)
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pipecat.workers.runner import WorkerRunner


@dataclass
class Summary:
    """What the realtime service pushed: the reply downstream, the user's transcript upstream
    (a full app's user context aggregator takes it there)."""

    done: asyncio.Event
    heard: list[str] = field(default_factory=list)
    said: list[str] = field(default_factory=list)
    audio: int = 0
    usage: dict[str, int | None] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    frames: list[str] = field(default_factory=list)


class Tap(FrameProcessor):
    """Passes every frame on, noting in ``summary`` what the service pushed its way."""

    def __init__(self, summary: Summary) -> None:
        super().__init__()
        self.summary = summary

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        s = self.summary
        name = type(frame).__name__
        if not s.frames or s.frames[-1] != name:
            s.frames.append(name)
        if isinstance(frame, TranscriptionFrame):
            s.heard.append(frame.text)
        elif isinstance(frame, LLMTextFrame):
            s.said.append(frame.text)
        elif isinstance(frame, TTSAudioRawFrame):
            s.audio += len(frame.audio)
        elif isinstance(frame, MetricsFrame):
            for m in frame.data:
                if isinstance(m, LLMUsageMetricsData):
                    s.usage = m.value.model_dump()
        elif isinstance(frame, ErrorFrame):
            s.errors.append(frame.error)
        elif isinstance(frame, LLMFullResponseEndFrame) and s.said:
            s.done.set()
        await self.push_frame(frame, direction)


async def main(url: str, key: str, model: str, speech: bytes, modality: str) -> dict[str, object]:
    llm = OpenAIRealtimeLLMService(
        api_key=key,
        base_url=url,
        settings=OpenAIRealtimeLLMService.Settings(
            model=model,
            system_instruction="You are a helpful assistant.",
            session_properties=SessionProperties(
                output_modalities=[modality],
                audio=AudioConfiguration(
                    input=AudioInput(
                        transcription=InputAudioTranscription(model="gpt-4o-mini-transcribe"),
                        turn_detection=TurnDetection(silence_duration_ms=500),
                    )
                ),
            ),
        ),
    )
    summary = Summary(asyncio.Event())
    # pipecat logs with loguru: what it logs at WARNING or above (an event it could not parse,
    # an error event) is kept; a faithful gateway gives it none.
    logger.remove()
    logger.add(sys.stderr, level="INFO")
    logger.add(lambda m: summary.warnings.append(m.record["message"]), level="WARNING")
    worker = PipelineWorker(
        Pipeline([Tap(summary), llm, Tap(summary)]),
        params=PipelineParams(enable_metrics=True, enable_usage_metrics=True),
    )

    @worker.event_handler("on_pipeline_error")
    async def on_error(_worker: PipelineWorker, frame: ErrorFrame) -> None:
        summary.errors.append(frame.error)

    async def speak() -> None:
        # 20 ms frames in real time, as a transport delivers a microphone's.
        for off in range(0, len(speech), 960):
            await worker.queue_frame(
                InputAudioRawFrame(audio=speech[off : off + 960], sample_rate=24000, num_channels=1)
            )
            await asyncio.sleep(0.02)

    async def end() -> None:
        try:
            await asyncio.wait_for(summary.done.wait(), 60)
        except TimeoutError:
            summary.errors.append("no spoken reply within 60 s")
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await asyncio.gather(runner.run(), speak(), end())
    return {
        "frames": summary.frames,
        "heard": " ".join(summary.heard),
        "said": "".join(summary.said),
        "audio_bytes": summary.audio,
        "usage": summary.usage,
        "errors": summary.errors,
        "warnings": summary.warnings,
    }


if __name__ == "__main__":
    url, key, model, path = sys.argv[1:5]
    modality = sys.argv[5] if len(sys.argv) > 5 else "audio"
    with open(path, "rb") as f:
        summary = asyncio.run(main(url, key, model, f.read(), modality))
    print(json.dumps(summary))
