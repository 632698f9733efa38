"""A LiveKit agent on GPT-Live (``GPTLiveModel``), through a gateway: one typed user turn, run
by ``AgentSession`` (no room).

Runs in the frameworks' own environment (``tests/frameworks/requirements.txt``). LiveKit opens
``/v1/live/sessions`` under the base URL, starts the session with the agent's instructions and
the user's words as history, asks for a reply with a ``session.commentary.append``, and at the
end closes the session (``session.close``, then the closing usage and ``session.closed``).
Prints one JSON object: the run's events, and every warning or error LiveKit logged.

    python livekit_live.py BASE_URL KEY MODEL "USER TEXT"
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aiohttp
from livekit.agents import Agent, AgentSession
from livekit.plugins import openai
from livekit_warnings import watch


async def main(base_url: str, key: str, model: str, text: str) -> dict[str, Any]:
    warnings = watch()
    events: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http:
        # Client delegation: the agent has no tools, so nothing goes to a backend model.
        live = openai.realtime.GPTLiveModel(
            model=model, api_key=key, base_url=base_url, http_session=http, delegation="client"
        )
        async with AgentSession(llm=live) as session:
            await session.start(Agent(instructions="You are a helpful assistant."))
            result = await asyncio.wait_for(session.run(user_input=text), 60)
            for ev in result.events:
                if ev.type == "message":
                    events.append(
                        {"type": "message", "role": ev.item.role, "text": ev.item.text_content}
                    )
                else:
                    events.append({"type": ev.type})
        await live.aclose()
    return {"events": events, "warnings": warnings.seen}


if __name__ == "__main__":
    base_url, key, model, text = sys.argv[1:5]
    print(json.dumps(asyncio.run(main(base_url, key, model, text))))
