"""Renders each console page and the playground in headless Chromium into docs/img/ (``make
screenshots``): a fresh gateway on a temporary SQLite store with the local engine, 20 keys and
3,000 sessions over 60 days (``tests/console_load.py``), and one conversation held in the
playground, live while the sessions page is taken."""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import wave
from pathlib import Path

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.browser import chromium, fake_microphone  # noqa: E402
from tests.console_load import seed  # noqa: E402

from rtgate.api.app import create_app, set_local_base_url  # noqa: E402
from rtgate.api.request_timeouts import app_runner  # noqa: E402
from rtgate.auth.policy import KeyPolicy  # noqa: E402
from rtgate.config import load_settings  # noqa: E402
from rtgate.relay.endpoint import GATEWAY  # noqa: E402

TOKEN = "screenshot-admin-token-" + "x" * 16
PRICES = '[prices.local]\naudio_in = "40"\naudio_out = "80"\ntext_in = "4"\ntext_out = "16"\n'


def prepare(out: Path) -> Path:
    """The output folder, and a gateway home with its prices and a silent microphone."""
    out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="rtgate-screenshots-"))
    (home / "rtgate.toml").write_text(PRICES)
    with wave.open(str(home / "silence.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24_000)
        w.writeframes(bytes(48_000))
    return home


async def main(out: Path) -> None:
    home = prepare(out)
    env = {
        "RTGATE_HOME": str(home),
        "RTGATE_ADMIN_TOKEN": TOKEN,
        "RTGATE_ENGINE_STT": "none",
        "RTGATE_ENGINE_TTS": "tone",
        "RTGATE_CONFIG": str(home / "rtgate.toml"),
    }
    settings = load_settings(None, env)
    app = create_app(settings)
    runner = app_runner(app, settings)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    set_local_base_url(app, "127.0.0.1", port)
    base = f"http://127.0.0.1:{port}"
    gw = app[GATEWAY]
    await seed(gw.store, 3000, time.time())  # type: ignore[arg-type]
    _, key = await gw.keyring.create("playground", KeyPolicy(keep_transcripts=True))
    try:
        # A microphone that hears nothing: the playground's turn is typed.
        async with chromium(*fake_microphone(home / "silence.wav")) as browser:
            context = await browser.new_context(viewport={"width": 1280, "height": 860})
            page = await context.new_page()

            async def shot(name: str, full: bool = True) -> None:
                await page.screenshot(path=str(out / f"{name}.png"), full_page=full)
                print("wrote", out / f"{name}.png")

            await page.goto(f"{base}/ui/")
            await shot("signin", full=False)
            await page.get_by_label("Admin token").fill(TOKEN)
            await page.get_by_role("button", name="Sign in").click()
            await page.get_by_role("heading", name="Overview").wait_for()

            talk = await context.new_page()
            await talk.goto(f"{base}/ui/playground")
            await talk.get_by_label("Gateway key").fill(key)
            await talk.get_by_role("button", name="Connect and start the microphone").click()
            await talk.get_by_label("Message").wait_for()
            await talk.locator("#pg-message:enabled").wait_for()
            await talk.get_by_label("Message").fill("What is the weather like in Paris today?")
            await talk.get_by_role("button", name="Send").click()
            await talk.locator("#pg-turns [data-cell=cost][data-usd]").first.wait_for()
            await talk.locator("#pg-events li[data-type='response.done'] summary").click()
            await talk.screenshot(path=str(out / "playground.png"), full_page=True)
            print("wrote", out / "playground.png")

            await page.goto(f"{base}/ui/")
            await shot("overview")
            await page.goto(f"{base}/ui/sessions")
            await shot("sessions", full=False)
            await page.goto(f"{base}/ui/keys/new")
            await page.get_by_label("Name").fill("mobile app")
            await page.get_by_label("Per UTC day").fill("5")
            await page.get_by_role("button", name="Create the key").click()
            await shot("key-created", full=False)
            await page.goto(f"{base}/ui/keys")
            await shot("keys", full=False)
            await page.goto(f"{base}/ui/usage")
            await shot("usage", full=False)
            await page.goto(f"{base}/ui/models")
            await shot("models")
            await talk.get_by_role("button", name="Disconnect").click()
            await talk.locator("#pg-status", has_text="Disconnected").wait_for()
            sessions = await gw.store.recent_sessions(1, key_id=None)
            await page.goto(f"{base}/ui/sessions/{sessions[0].id}")
            await shot("session")
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "img")))
