"""Brains: what the assistant says, given the instructions, the conversation and the tools.

* ``EchoBrain`` repeats the user (deterministic; the default).
* ``ScriptedBrain`` follows rules from a TOML file, including function calls, so tool-using
  agents can be tested offline.
* ``OpenAICompatibleBrain`` streams from any ``/v1/chat/completions`` server (Ollama, vLLM,
  llama.cpp), tools included.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from rtgate.errors import ConfigError
from rtgate.protocol.ids import new_id


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """A function call starts, with the start of its ``arguments`` (a scripted brain gives them
    whole); any ``ArgumentsDelta`` that follows continues them."""

    name: str
    arguments: str
    call_id: str = field(default_factory=lambda: new_id("call", 16))


@dataclass(frozen=True, slots=True)
class ArgumentsDelta:
    """More of the arguments of the function call started last, as the model produced them."""

    text: str


BrainOutput = TextDelta | FunctionCall | ArgumentsDelta


@dataclass(frozen=True, slots=True)
class BrainRequest:
    instructions: str
    #: Conversation items in their public GA shape (transcripts filled in where known).
    items: Sequence[dict[str, Any]]
    tools: Sequence[dict[str, Any]] = ()
    tool_choice: Any = "auto"


def item_text(item: dict[str, Any]) -> str:
    """The words of a message item: its text parts and audio transcripts."""
    parts = []
    for c in item.get("content") or []:
        t = c.get("type")
        if t in ("input_text", "output_text", "text"):
            parts.append(str(c.get("text") or ""))
        elif t in ("input_audio", "output_audio", "audio") and c.get("transcript"):
            parts.append(str(c["transcript"]))
    return " ".join(p for p in parts if p).strip()


def last_user_text(items: Sequence[dict[str, Any]]) -> str:
    for item in reversed(items):
        if item.get("type") == "message" and item.get("role") == "user":
            return item_text(item)
    return ""


def words(text: str) -> list[str]:
    """Stream-sized pieces of a reply: words, each after its space, as model tokens come.

    Joined, the pieces are the reply itself, as the ``.done`` text must be (docs/protocol.md 6).
    """
    return [w if i == 0 else " " + w for i, w in enumerate(text.split())]


class EchoBrain:
    async def reply(self, request: BrainRequest) -> AsyncIterator[BrainOutput]:
        text = last_user_text(request.items) or "I am listening."
        for w in words(text):
            yield TextDelta(w)


@dataclass(frozen=True, slots=True)
class Rule:
    match: re.Pattern[str] | None
    on_tool_output: str | None
    say: str | None
    call: tuple[str, str] | None


class ScriptedBrain:
    """Rules, first match wins::

        [[rules]]
        match = "weather in (?P<city>[a-z]+)"     # regex on the last user text, case-insensitive
        call = { name = "get_weather", arguments = '{{"city": "{city}"}}' }

        [[rules]]
        on_tool_output = "get_weather"            # the last item is this tool's output
        say = "The weather is {output}."

        [[rules]]
        match = "."
        say = "You said: {text}"

    ``say`` and ``arguments`` are ``str.format`` templates over the regex groups, ``text`` (the
    user's words) and ``output`` (the tool output). No rule matching: the brain echoes.
    """

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = list(rules)

    @classmethod
    def from_file(cls, path: str | Path) -> ScriptedBrain:
        import tomllib  # only with a script: as config.load_settings imports it

        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"engine.script: cannot read {path}: {exc}") from exc
        rules = []
        for i, r in enumerate(raw.get("rules", [])):
            call = r.get("call")
            if (r.get("say") is None) == (call is None):
                raise ConfigError(f"engine.script: rule {i} needs exactly one of say, call")
            try:
                pattern = re.compile(r["match"], re.IGNORECASE) if "match" in r else None
            except re.error as exc:
                raise ConfigError(f"engine.script: rule {i} match: {exc}") from exc
            rules.append(
                Rule(
                    pattern,
                    r.get("on_tool_output"),
                    r.get("say"),
                    (call["name"], call.get("arguments", "{{}}")) if call else None,
                )
            )
        return cls(rules)

    async def reply(self, request: BrainRequest) -> AsyncIterator[BrainOutput]:
        items = request.items
        pending = _unanswered_output(items)
        text = last_user_text(items)
        for rule in self.rules:
            values: dict[str, str] = {"text": text, "output": ""}
            if rule.on_tool_output is not None:
                if pending is None:
                    continue
                call = next(
                    (
                        i
                        for i in items
                        if i.get("type") == "function_call"
                        and i.get("call_id") == pending.get("call_id")
                    ),
                    None,
                )
                if call is None or call.get("name") != rule.on_tool_output:
                    continue
                values["output"] = str(pending.get("output") or "")
            if rule.match is not None:
                if pending is not None and rule.on_tool_output is None:
                    continue
                m = rule.match.search(text)
                if m is None:
                    continue
                values.update({k: v for k, v in m.groupdict().items() if v is not None})
            if rule.call is not None:
                yield FunctionCall(rule.call[0], rule.call[1].format(**values))
            else:
                assert rule.say is not None
                for w in words(rule.say.format(**values)):
                    yield TextDelta(w)
            return
        async for out in EchoBrain().reply(request):
            yield out


def _unanswered_output(items: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest tool output the assistant has not spoken to yet: the last item, or one the
    caller's words followed while the tool ran (no assistant message after it)."""
    for item in reversed(items):
        if item.get("type") == "function_call_output":
            found: dict[str, Any] = item
            return found
        if item.get("type") == "message" and item.get("role") == "assistant":
            return None
    return None


def chat_messages(request: BrainRequest) -> list[dict[str, Any]]:
    """The conversation as Chat Completions messages."""
    msgs: list[dict[str, Any]] = []
    if request.instructions:
        msgs.append({"role": "system", "content": request.instructions})
    # A call still waiting for its output is left out: Chat Completions refuses an assistant
    # message whose tool calls are not each answered by the tool messages right after it.
    answered = {i.get("call_id") for i in request.items if i.get("type") == "function_call_output"}
    for item in request.items:
        t = item.get("type")
        if t == "function_call" and item.get("call_id") not in answered:
            continue
        if t == "message":
            role = item.get("role", "user")
            text = item_text(item)
            if text:
                msgs.append(
                    {
                        "role": role if role in ("user", "assistant", "system") else "user",
                        "content": text,
                    }
                )
        elif t == "function_call":
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "")},
            }
            if msgs and msgs[-1].get("tool_calls"):
                # Parallel calls share one assistant message: Chat Completions wants every
                # call's tool message right after the message that made it.
                msgs[-1]["tool_calls"].append(call)
            else:
                msgs.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif t == "function_call_output":
            msgs.append(
                {
                    "role": "tool",
                    "tool_call_id": item.get("call_id"),
                    "content": str(item.get("output") or ""),
                }
            )
    return msgs


def chat_tools(tools: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {k: t[k] for k in ("name", "description", "parameters") if k in t},
        }
        for t in tools
        if t.get("type") == "function"
    ]


class OpenAICompatibleBrain:
    def __init__(
        self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 60.0
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def reply(self, request: BrainRequest) -> AsyncIterator[BrainOutput]:
        body: dict[str, Any] = {
            "model": self.model,
            "stream": True,
            "messages": chat_messages(request),
        }
        tools = chat_tools(request.tools)
        if tools:
            body["tools"] = tools
            if isinstance(request.tool_choice, str):
                body["tool_choice"] = request.tool_choice
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        calls = _ToolCalls()
        async with (
            aiohttp.ClientSession(timeout=self.timeout) as http,
            http.post(self.url, json=body, headers=headers) as resp,
        ):
            if resp.status != 200:
                detail = (await resp.text())[:200]
                raise BrainError(f"brain server answered HTTP {resp.status}: {detail}")
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                chunk = orjson.loads(data)
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if delta.get("content"):
                        yield TextDelta(delta["content"])
                    for tc in delta.get("tool_calls") or []:
                        for out in calls.fragment(tc):
                            yield out
        for out in calls.end():
            yield out


class _ToolCalls:
    """Streamed Chat Completions tool calls as brain outputs, each fragment as it arrives.

    A call starts once its name is known (OpenAI-compatible servers send the id and name in
    its first chunk); its argument fragments follow as ``ArgumentsDelta``. Servers stream
    parallel calls one after another; a fragment of a call already left behind cannot be
    placed and fails the reply. A call that got no arguments at all gets ``{}``, as OpenAI's
    own calls of a function without parameters do.
    """

    def __init__(self) -> None:
        self.index: int | None = None
        self.call_id = self.name = self.pending = ""
        self.started = self.has_arguments = False
        self.done: set[int] = set()

    def fragment(self, tc: dict[str, Any]) -> list[BrainOutput]:
        index = int(tc.get("index", 0))
        fn = tc.get("function") or {}
        out: list[BrainOutput] = []
        if index != self.index:
            if index in self.done:
                raise BrainError(f"brain server interleaved tool call {index} with another")
            out.extend(self.end())
            self.index = index
        self.call_id = tc.get("id") or self.call_id
        self.name += fn.get("name") or ""
        self.pending += fn.get("arguments") or ""
        if not self.started and self.name:
            self.started = True
            out.append(FunctionCall(self.name, "", self.call_id or new_id("call", 16)))
        if self.started and self.pending:
            out.append(ArgumentsDelta(self.pending))
            self.has_arguments = True
            self.pending = ""
        return out

    def end(self) -> list[BrainOutput]:
        """The current call is over: what it still owes."""
        out: list[BrainOutput] = []
        if self.started and not self.has_arguments:
            out.append(ArgumentsDelta("{}"))
        if self.index is not None:
            self.done.add(self.index)
        self.index = None
        self.call_id = self.name = self.pending = ""
        self.started = self.has_arguments = False
        return out


class BrainError(Exception):
    """The brain could not produce a reply; the response fails with ``server_error``."""
