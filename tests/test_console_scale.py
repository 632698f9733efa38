"""The console and its admin API reports with 100,000 sessions in the store: every page is
paginated or aggregated along an index, so none reads the whole table per request."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiohttp

from rtgate.api.admin import PREFIX
from rtgate.config import Settings
from tests.conftest import TOKEN, RunningGateway
from tests.console_load import seed, timed

SESSIONS = 100_000
#: Generous against a loaded 2-core machine: measured 10-150 ms each (bench/console_bench.py).
LIMIT_S = 2.0


async def test_pages_stay_fast_with_100000_sessions(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Any]
) -> None:
    gw: RunningGateway = await start_gateway(make_settings(RTGATE_ADMIN_TOKEN=TOKEN))
    ids = await seed(gw.store, SESSIONS, time.time())
    deep = sorted(ids)[SESSIONS // 2]
    admin = {"Authorization": f"Bearer {TOKEN}"}
    routes = [
        ("/sessions", {"limit": "50"}),
        ("/sessions", {"limit": "50", "before": deep}),
        ("/sessions", {"limit": "50", "key_id": "key_load0007"}),
        (f"/sessions/{deep}", {}),
        ("/overview", {}),
        ("/spend", {}),
        ("/usage", {"since": time.strftime("%Y-%m-%d", time.gmtime(time.time() - 29 * 86400))}),
    ]
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        took: dict[str, float] = {}
        for path, params in routes:
            seconds, status = await timed(
                http, f"{gw.http}{PREFIX}{path}", params=params, headers=admin
            )
            assert status == 200, path
            took[f"{path} {params}"] = seconds
        async with http.get(f"{gw.http}/ui/signin") as r:
            form = (await r.text()).split('name="form_token" value="')[1].split('"')[0]
        async with http.post(
            f"{gw.http}/ui/signin", data={"token": TOKEN, "form_token": form}
        ) as r:
            assert r.status == 200
        for page in (
            "/ui/",
            "/ui/sessions",
            f"/ui/sessions?before={deep}",
            "/ui/keys",
            f"/ui/sessions/{deep}",
        ):
            seconds, status = await timed(http, gw.http + page)
            assert status == 200, page
            took[page] = seconds
    slow = {k: round(v, 3) for k, v in took.items() if v > LIMIT_S}
    assert not slow, took
