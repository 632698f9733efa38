"""A LiveKit agent with a tool, on a gateway's realtime model: one user turn, run by
``AgentSession`` as LiveKit's own agent tests run one (``session.run``, no room).

Runs in the frameworks' own environment (``tests/frameworks/requirements.txt``). The agent's
``get_weather`` tool is the agent's to run: the model asks for it (a function call), the session
runs it and sends its output back, and the model answers. Prints one JSON object: the run's
events in order, the tool's calls, and every warning or error the framework logged.

    python livekit_agent.py BASE_URL KEY MODEL "USER TEXT"
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aiohttp
from livekit.agents import Agent, AgentSession, function_tool
from livekit.plugins import openai
from livekit_warnings import watch


async def main(base_url: str, key: str, model: str, text: str) -> dict[str, Any]:
    warnings = watch()
    calls: list[str] = []

    @function_tool
    async def get_weather(city: str) -> str:
        """Get the weather forecast for a city."""
        calls.append(city)
        return f"sunny and twenty degrees in {city}"

    events: list[dict[str, Any]] = []
    async with (
        aiohttp.ClientSession() as http,
        AgentSession(
            llm=openai.realtime.RealtimeModel(
                model=model, api_key=key, base_url=base_url, http_session=http
            )
        ) as session,
    ):
        await session.start(
            Agent(
                instructions="Answer weather questions with the get_weather tool.",
                tools=[get_weather],
            )
        )
        result = await asyncio.wait_for(session.run(user_input=text), 60)
        for ev in result.events:
            if ev.type == "message":
                events.append(
                    {"type": "message", "role": ev.item.role, "text": ev.item.text_content}
                )
            elif ev.type == "function_call":
                events.append(
                    {"type": "function_call", "name": ev.item.name, "arguments": ev.item.arguments}
                )
            elif ev.type == "function_call_output":
                events.append({"type": "function_call_output", "output": ev.item.output})
            else:
                events.append({"type": ev.type})
    return {"events": events, "calls": calls, "warnings": warnings.seen}


if __name__ == "__main__":
    base_url, key, model, text = sys.argv[1:5]
    print(json.dumps(asyncio.run(main(base_url, key, model, text))))
