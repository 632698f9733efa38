"""``/metrics`` after real sessions: what Prometheus scrapes."""

from __future__ import annotations

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from tests.conftest import RunningGateway
from tests.provider import FakeProvider


async def scrape(gw: RunningGateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http, http.get(f"{gw.http}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


async def test_metrics_count_sessions_frames_tokens_cost_and_refusals(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    key = await gateway.new_key()
    async with connect(
        f"{gateway.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key}"},
    ) as ws:
        await ws.recv()
        live = await scrape(gateway)
        assert live[("rtgate_live_sessions", ())] == 1
        event = {
            "type": "response.done",
            "event_id": "e",
            "response": {
                "id": "resp_1",
                "usage": {
                    "input_tokens": 1000,
                    "output_tokens": 0,
                    "input_token_details": {"text_tokens": 1000},
                },
            },
        }
        await ws.send(orjson.dumps({"type": "test.emit", "event": event}).decode())
        await ws.recv()
    async with connect(
        f"{gateway.ws}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": "Bearer rtg_wrong"},
    ) as bad:
        await bad.recv()
    import asyncio

    for _ in range(100):
        m = await scrape(gateway)
        if m.get(("rtgate_live_sessions", ())) == 0:
            break
        await asyncio.sleep(0.02)
    assert m[("rtgate_sessions_started_total", (("model", "gpt-realtime"),))] == 1
    assert m[("rtgate_sessions_ended_total", (("by", "client"), ("code", "1000")))] == 1
    assert m[("rtgate_tokens_total", (("kind", "text_in"), ("model", "gpt-realtime")))] == 1000
    keys = await gateway.store.list_keys()
    cost = m[("rtgate_cost_usd_total", (("key", keys[0].id), ("model", "gpt-realtime")))]
    assert abs(cost - 0.004) < 1e-12
    assert m[("rtgate_frames_total", (("direction", "up"),))] >= 1
    assert m[("rtgate_frames_total", (("direction", "down"),))] >= 2
    assert m[("rtgate_policy_refusals_total", (("reason", "invalid_api_key"),))] == 1
    assert m[("rtgate_upstream_connect_seconds_count", (("upstream", "openai"),))] == 1
    assert m[("rtgate_session_duration_seconds_count", ())] == 1
