"""``/metrics`` after real sessions: what Prometheus scrapes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from rtgate.config import Settings, load_settings
from rtgate.errors import ConfigError
from rtgate.server import open_metrics_warning
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


METRICS_TOKEN = "mt-" + "s3cret" * 6


async def test_a_metrics_token_guards_the_page(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Any],
    provider: FakeProvider,
) -> None:
    gw: RunningGateway = await start_gateway(make_settings(RTGATE_METRICS_TOKEN=METRICS_TOKEN))
    url = f"{gw.http}/metrics"
    async with aiohttp.ClientSession() as http:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": METRICS_TOKEN},
            {"Authorization": f"Basic {METRICS_TOKEN}"},
        ):
            async with http.get(url, headers=headers) as resp:
                assert resp.status == 401
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                body = await resp.json()
                assert body["error"]["code"] == "invalid_api_key"
                assert METRICS_TOKEN not in await resp.text()
        async with http.get(url, headers={"Authorization": f"Bearer {METRICS_TOKEN}"}) as resp:
            assert resp.status == 200
            assert "rtgate_live_sessions" in await resp.text()


def test_the_metrics_token_comes_from_the_environment_only(tmp_path: Path) -> None:
    s = load_settings(None, {"RTGATE_METRICS_TOKEN": METRICS_TOKEN})
    assert s.metrics_token is not None
    assert s.metrics_token.get_secret_value() == METRICS_TOKEN
    assert METRICS_TOKEN not in msgspec.json.encode(s, enc_hook=str).decode()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'metrics_token = "{METRICS_TOKEN}"\n')
    with pytest.raises(ConfigError, match="RTGATE_METRICS_TOKEN"):
        load_settings(cfg, {})


@pytest.mark.parametrize(
    ("host", "token", "warned"),
    [
        ("127.0.0.1", None, False),
        ("::1", None, False),
        ("localhost", None, False),
        ("0.0.0.0", None, True),
        ("::", None, True),
        ("192.168.1.20", None, True),
        ("gateway.internal", None, True),
        ("0.0.0.0", METRICS_TOKEN, False),
    ],
)
def test_start_up_warns_when_metrics_are_open_beyond_loopback(
    host: str, token: str | None, warned: bool
) -> None:
    env = {"RTGATE_HOST": host, **({"RTGATE_METRICS_TOKEN": token} if token else {})}
    warning = open_metrics_warning(load_settings(None, env))
    assert (warning is not None) is warned
    if warning is not None:
        assert "RTGATE_METRICS_TOKEN" in warning and host in warning
