"""Usage billed by duration, over real sockets: a transcription session on the fake provider
reports ``{"type": "duration", "seconds": …}`` and the ledger, ``rtgate usage`` and ``/metrics``
show it in its unit, priced to the nano-dollar."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from typer.testing import CliRunner
from websockets.asyncio.client import connect

from rtgate.cli import app
from rtgate.config import Settings
from tests.conftest import events_until
from tests.provider import FakeProvider
from tests.table_rows import table_rows
from tests.test_metrics import scrape

SECONDS = 3.4
PCM = bytes(int(SECONDS * 48_000))  # 24 kHz PCM16 mono: 48,000 bytes a second


async def test_a_transcription_billed_per_minute_is_in_the_ledger_to_the_nano_dollar(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
    tmp_path: Path,
    db_url: str,
) -> None:
    cfg = tmp_path / "rtgate.toml"
    cfg.write_text('[prices.gpt-live-transcribe]\nmarkup_percent = "20"\n')
    gw = await start_gateway(make_settings(RTGATE_CONFIG=str(cfg)))
    key = await gw.new_key()
    async with connect(
        f"{gw.ws}/v1/realtime?intent=transcription",
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        await events_until(ws, "session.created")
        update = {
            "type": "session.update",
            "session": {
                "type": "transcription",
                "audio": {
                    "input": {
                        "transcription": {"model": "gpt-live-transcribe"},
                        "turn_detection": None,
                    }
                },
            },
        }
        await ws.send(orjson.dumps(update).decode())
        await events_until(ws, "session.updated")
        for off in range(0, len(PCM), 9600):
            chunk = base64.b64encode(PCM[off : off + 9600]).decode()
            await ws.send(
                orjson.dumps({"type": "input_audio_buffer.append", "audio": chunk}).decode()
            )
        await ws.send('{"type":"input_audio_buffer.commit"}')
        events = await events_until(ws, "conversation.item.input_audio_transcription.completed")
        assert events[-1]["usage"] == {"type": "duration", "seconds": SECONDS}
        item_id = events[-1]["item_id"]

    # $0.017 a minute: 3.4 s is 963333.33 nano-dollars to the provider, 1156000 charged at 20 %.
    # The record was durable before the client saw the event.
    (row,) = await table_rows(gw.store, "SELECT * FROM usage_records ORDER BY id")
    assert (row.model, row.price_key, row.kind, row.unit, row.ref) == (
        "gpt-live-transcribe",
        "gpt-live-transcribe",
        "transcription",
        "minute",
        item_id,
    )
    assert (row.audio_ms, row.provider_nanos, row.charged_nanos) == (3400, 963_333, 1_156_000)

    env = {"RTGATE_DATABASE_URL": db_url, "RTGATE_HOME": str(tmp_path / "home")}
    result = await asyncio.to_thread(CliRunner().invoke, app, ["usage", "--json"], env=env)
    assert result.exit_code == 0, result.output
    (usage,) = orjson.loads(result.output)
    assert (usage["model"], usage["unit"], usage["audio_seconds"], usage["records"]) == (
        "gpt-live-transcribe",
        "minute",
        SECONDS,
        1,
    )
    assert set(usage["tokens"].values()) == {0}
    assert (usage["cost_usd"], usage["provider_cost_usd"]) == ("0.001156000", "0.000963333")

    metrics = await scrape(gw)
    labels = (("model", "gpt-live-transcribe"), ("unit", "minute"))
    assert metrics[("rtgate_audio_seconds_total", labels)] == SECONDS
