"""How long the console's pages and the admin API's reports take with many sessions stored.

Seeds a fresh SQLite store (``tests/console_load.py``: 20 keys, sessions over 60 days, a usage
record each), starts a gateway on it, signs in, and fetches each page and route a few times.

    .venv/bin/python bench/console_bench.py --sessions 100000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.console_load import seed, timed  # noqa: E402

from rtgate.api.app import create_app  # noqa: E402
from rtgate.api.request_timeouts import app_runner  # noqa: E402
from rtgate.config import load_settings  # noqa: E402
from rtgate.relay.endpoint import GATEWAY  # noqa: E402

TOKEN = "bench-admin-token-" + "x" * 20


async def main(n: int, rounds: int) -> None:
    home = Path(tempfile.mkdtemp(prefix="rtgate-console-bench-"))
    settings = load_settings(
        None,
        {
            "RTGATE_HOME": str(home),
            "RTGATE_ADMIN_TOKEN": TOKEN,
            "RTGATE_ENGINE_STT": "none",
            "RTGATE_ENGINE_TTS": "tone",
        },
    )
    app = create_app(settings)
    runner = app_runner(app, settings)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    ids = await seed(app[GATEWAY].store, n, time.time())  # type: ignore[arg-type]
    print(f"seeded {n} sessions in {time.perf_counter() - started:.1f} s")
    deep = sorted(ids)[n // 2]
    admin = {"Authorization": f"Bearer {TOKEN}"}
    targets = [
        ("/admin/v1/sessions?limit=50", admin),
        (f"/admin/v1/sessions?limit=50&before={deep}", admin),
        ("/admin/v1/sessions?limit=50&key_id=key_load0007", admin),
        (f"/admin/v1/sessions/{deep}", admin),
        ("/admin/v1/overview", admin),
        ("/admin/v1/spend", admin),
        (
            "/admin/v1/usage?since="
            + time.strftime("%Y-%m-%d", time.gmtime(time.time() - 29 * 86400)),
            admin,
        ),
        ("/ui/", {}),
        ("/ui/sessions", {}),
        (f"/ui/sessions?before={deep}", {}),
        (f"/ui/sessions/{deep}", {}),
        ("/ui/keys", {}),
        ("/ui/usage", {}),
    ]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(f"{base}/ui/signin") as r:
            form = (await r.text()).split('name="form_token" value="')[1].split('"')[0]
        async with http.post(f"{base}/ui/signin", data={"token": TOKEN, "form_token": form}) as r:
            assert r.status == 200
        print(f"{'page or route':60} {'p50 ms':>8} {'max ms':>8}")
        for path, headers in targets:
            times = []
            for _ in range(rounds):
                seconds, status = await timed(http, base + path, headers=headers)
                assert status == 200, (path, status)
                times.append(seconds * 1000)
            print(f"{path[:60]:60} {statistics.median(times):8.1f} {max(times):8.1f}")
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.sessions, args.rounds))
