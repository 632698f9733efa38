"""A pipecat bot with a tool, on a gateway's realtime model: one typed user turn through the
pipeline a pipecat app builds (context aggregators around ``OpenAIRealtimeLLMService``).

Runs in the frameworks' own environment (``tests/frameworks/requirements.txt``). The bot's
``get_weather`` function is the bot's to run: the model asks for it (a function call), pipecat
runs the registered handler and sends its result back, and the model answers. Prints one JSON
object: the context's messages at the end, the tool's calls, what the bot said, and every
error and warning pipecat raised or logged.

    python pipecat_agent.py URL KEY MODEL "USER TEXT"
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from loguru import logger
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    LLMFullResponseEndFrame,
    LLMMessagesAppendFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.llm_service import FunctionCallParams
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pipecat.workers.runner import WorkerRunner

WEATHER = FunctionSchema(
    name="get_weather",
    description="Get the weather forecast for a city.",
    properties={"city": {"type": "string"}},
    required=["city"],
)


class Replies(FrameProcessor):
    """The bot's spoken words, reply by reply; the second reply (after the tool's) ends it."""

    def __init__(self, done: asyncio.Event) -> None:
        super().__init__()
        self.done = done
        self.replies: list[str] = [""]

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSTextFrame):
            self.replies[-1] += frame.text
        elif isinstance(frame, LLMFullResponseEndFrame):
            self.replies.append("")
            if any(self.replies[:-1]):
                self.done.set()
        await self.push_frame(frame, direction)


async def main(url: str, key: str, model: str, text: str) -> dict[str, Any]:
    errors: list[str] = []
    warnings: list[str] = []
    logger.remove()
    logger.add(sys.stderr, level="INFO")
    logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING")
    calls: list[str] = []

    async def get_weather(params: FunctionCallParams) -> None:
        calls.append(params.arguments["city"])
        await params.result_callback(f"sunny and twenty degrees in {params.arguments['city']}")

    llm = OpenAIRealtimeLLMService(
        api_key=key,
        base_url=url,
        settings=OpenAIRealtimeLLMService.Settings(
            model=model, system_instruction="Answer weather questions with the get_weather tool."
        ),
    )
    llm.register_function("get_weather", get_weather)
    context = LLMContext(tools=ToolsSchema(standard_tools=[WEATHER]))
    aggregators = LLMContextAggregatorPair(context)
    done = asyncio.Event()
    replies = Replies(done)
    worker = PipelineWorker(Pipeline([aggregators.user(), llm, replies, aggregators.assistant()]))

    @worker.event_handler("on_pipeline_error")
    async def on_error(_worker: PipelineWorker, frame: ErrorFrame) -> None:
        errors.append(frame.error)

    async def converse() -> None:
        await worker.queue_frame(
            LLMMessagesAppendFrame(messages=[{"role": "user", "content": text}], run_llm=True)
        )
        try:
            await asyncio.wait_for(done.wait(), 60)
        except TimeoutError:
            errors.append("no spoken reply within 60 s")
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await asyncio.gather(runner.run(), converse())
    messages = [
        {k: m[k] for k in ("role", "content", "tool_calls", "tool_call_id") if k in m}
        for m in context.get_messages()
        if isinstance(m, dict)
    ]
    return {
        "messages": messages,
        "calls": calls,
        "said": [r for r in replies.replies if r],
        "errors": errors,
        "warnings": warnings,
    }


if __name__ == "__main__":
    url, key, model, text = sys.argv[1:5]
    print(json.dumps(asyncio.run(main(url, key, model, text)), default=str))
