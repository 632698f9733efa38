"""The local engine's default conversation: its items in order, and what clients do to them.

Contract (docs/protocol.md 2.1, 2.6, 5.3):
* An item is a dict as the GA API shows it, plus private fields named ``_...`` that
  ``public_item`` drops (with any audio bytes) whenever an event shows the item; ``_audio`` is
  the item's audio as 24 kHz PCM16, ``PCM_BYTES_PER_MS`` bytes a millisecond.
* Adding an item (``append``, ``add_user_audio``, ``create``) returns the id of the item now
  before it (``None``: it is first), which ``conversation.item.added`` reports as
  ``previous_item_id``. ``create`` puts a client's item after ``previous_item_id``: at the end
  when there is none, first for ``"root"``, else right after that item. ``engine.responder``
  appends the model's output items to ``items`` itself.
* ``get``, ``delete`` and ``truncate`` refuse an id no item has. ``truncate`` cuts an assistant
  audio part, and its transcript in proportion, to what the user heard; ``audio_ms_by_item``
  holds how much assistant audio each item has.
* A response's own input names items by ``item_reference`` (``unknown_reference``,
  ``resolve``); ``input_tokens`` is what items weigh as model input.
* Nothing here builds events or reads the session's configuration. Results are plain values;
  a refusal is a ``Refusal``, which ``EngineSession`` sends as an ``error`` event echoing the
  client's ``event_id``, unless it is an ``UnattributedRefusal`` (sent with ``event_id`` null).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rtgate.engine.session_config import Refusal
from rtgate.engine.tokens import count_tokens
from rtgate.protocol.ids import new_id

Item = dict[str, Any]

#: 24 kHz PCM16: the clock of the input buffer and of every item's ``_audio``.
PCM_BYTES_PER_MS = 48


@dataclass(frozen=True, slots=True)
class UnattributedRefusal(Refusal):
    """A refusal OpenAI sends without the client's ``event_id``."""


@dataclass
class Conversation:
    """The items of one session's default conversation (``conv_...``)."""

    id: str = field(default_factory=lambda: new_id("conv"))
    items: list[Item] = field(default_factory=list)
    #: Audio milliseconds produced per assistant item (for truncate).
    audio_ms_by_item: dict[str, int] = field(default_factory=dict)

    def last_item_id(self) -> str | None:
        return self.items[-1]["id"] if self.items else None

    def find(self, item_id: str) -> Item | None:
        for it in self.items:
            if it.get("id") == item_id:
                return it
        return None

    def get(self, item_id: str) -> Item | Refusal:
        """The item, or the refusal retrieve, delete and truncate send for an unknown id."""
        item = self.find(item_id)
        if item is None:
            return Refusal("invalid_value", f"Item with item_id '{item_id}' not found.", "item_id")
        return item

    def append(self, item: Item) -> str | None:
        prev = self.last_item_id()
        self.items.append(item)
        return prev

    def add_user_audio(self, item_id: str, audio: bytes) -> tuple[Item, str | None]:
        """A committed turn of the input buffer, as a user audio message at the end."""
        item: Item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
            "_audio": audio,
        }
        return item, self.append(item)

    def create(
        self, fields: Item, previous_item_id: Any, audio: bytes | None = None
    ) -> tuple[Item, str | None] | Refusal:
        """A client's item (``conversation.item.create``), with ``audio`` as its ``_audio``."""
        item = copy.deepcopy(fields)
        item.setdefault("id", new_id("item"))
        item["object"] = "realtime.item"
        item.setdefault("status", "completed")
        if audio is not None:
            item["_audio"] = audio
        if previous_item_id is None:
            return item, self.append(item)
        if previous_item_id == "root":
            self.items.insert(0, item)
            return item, None
        idx = next((i for i, it in enumerate(self.items) if it["id"] == previous_item_id), None)
        if idx is None:
            return Refusal(
                "invalid_value",
                f"Previous item with id '{previous_item_id}' not found.",
                "previous_item_id",
            )
        self.items.insert(idx + 1, item)
        return item, previous_item_id

    def delete(self, item_id: str) -> Item | Refusal:
        item = self.get(item_id)
        if not isinstance(item, Refusal):
            self.items.remove(item)
        return item

    def unknown_reference(self, input_items: Iterable[Any]) -> Refusal | None:
        """The refusal for a response's own input whose first ``item_reference`` names no item."""
        for ref in input_items:
            if (
                isinstance(ref, dict)
                and ref.get("type") == "item_reference"
                and self.find(str(ref.get("id"))) is None
            ):
                return Refusal(
                    "invalid_value", f"Item with id '{ref.get('id')}' not found.", "response.input"
                )
        return None

    def resolve(self, input_items: Iterable[Any]) -> list[Any]:
        """A response's own input, each ``item_reference`` replaced by the item it names."""
        return [
            self.find(str(it.get("id"))) or it
            if isinstance(it, dict) and it.get("type") == "item_reference"
            else it
            for it in input_items
        ]

    def input_tokens(self, items: Iterable[Item]) -> tuple[int, int]:
        """(text, audio) tokens the model reads in ``items`` (these or a response's own input):
        text by ``count_tokens``; user audio a token per 100 ms begun (its ``_audio``), assistant
        audio a token per 50 ms produced."""
        text = audio = 0
        for it in items:
            for c in it.get("content") or []:
                t = c.get("type")
                if t in ("input_text", "output_text", "text"):
                    text += count_tokens(str(c.get("text") or ""))
                elif t == "input_audio":
                    ms = len(it.get("_audio", b"")) / PCM_BYTES_PER_MS
                    audio += int(ms // 100) + 1
                elif t == "output_audio":
                    audio += self.audio_ms_by_item.get(it["id"], 0) // 50
            if it.get("type") == "function_call_output":
                text += count_tokens(str(it.get("output") or ""))
        return text, audio

    def truncate(self, item_id: str, content_index: int, audio_end_ms: int) -> Refusal | None:
        """Cut an assistant audio part at ``audio_end_ms``: what the user did not hear goes.

        Checked in OpenAI's order, with its wording where it is known: the item exists; it is a
        model output audio message with audio (``unsupported_content_type``, "Only model output
        audio messages can be truncated", also when no audio was produced yet); the
        ``content_index`` names that audio part; ``audio_end_ms`` is not past its end. The
        transcript keeps the share of its characters that was heard.
        """
        item = self.get(item_id)
        if isinstance(item, Refusal):
            return item
        content = item.get("content") or []
        produced = self.audio_ms_by_item.get(item_id, 0)
        is_audio = [c.get("type") == "output_audio" for c in content]
        if item.get("role") != "assistant" or not any(is_audio) or produced <= 0:
            return Refusal(
                "unsupported_content_type", "Only model output audio messages can be truncated"
            )
        index, end = content_index, audio_end_ms  # integers >= 0 (protocol.client_schema)
        if index >= len(content) or not is_audio[index]:
            return Refusal(
                "invalid_value",
                f"Invalid 'content_index': {index}. Item '{item_id}' has its audio at "
                f"content_index {is_audio.index(True)}.",
                "content_index",
            )
        if end > produced:
            # OpenAI's words; it sends this one with no code, param or event_id (openai-python
            # era logs in pipecat-ai/pipecat#925; event_id null per ReviewStage/luke#564).
            return UnattributedRefusal(
                None, f"Audio content of {produced}ms is already shorter than {end}ms"
            )
        self.audio_ms_by_item[item_id] = end
        if "_audio" in item:
            item["_audio"] = item["_audio"][: end * PCM_BYTES_PER_MS]
        part = content[index]
        text = part.get("transcript") or ""
        part["transcript"] = text[: int(len(text) * end / produced)]
        return None


def public_item(item: Item) -> Item:
    """An item as events show it: internal fields dropped, audio bytes never included."""
    out = {k: copy.deepcopy(v) for k, v in item.items() if not k.startswith("_")}
    for c in out.get("content") or []:
        c.pop("audio", None)
    return out
