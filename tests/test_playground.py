"""The voice playground in headless Chromium, against the embedded local engine: a fake
microphone speaks a WAV made with piper; the page mints a client secret with the key, opens the
session from the browser, and shows the transcript, the reply, its cost and the audio played.
An operator then force-closes the live session from the console, in another browser context."""

from __future__ import annotations

import re
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.async_api import Page, expect

from rtgate.config import Settings
from rtgate.metering.cost import usd_str
from tests.browser import chromium, fake_microphone
from tests.conftest import TOKEN, RunningGateway
from tests.speech import speak
from tests.test_engine_e2e import SENTENCE, word_errors

APPENDS = (
    "document.querySelectorAll(\"#pg-events li.client[data-type='input_audio_buffer.append']\")"
)
PRICES = '[prices.local]\naudio_in = "40"\naudio_out = "80"\ntext_in = "4"\ntext_out = "16"\n'


def speech_wav(path: Path) -> Path:
    """One second of silence, the sentence, then silence: 24 kHz mono PCM16."""
    pcm = bytes(48_000) + speak(SENTENCE) + bytes(48_000 * 4)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24_000)
        w.writeframes(pcm)
    return path


async def local_gateway(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Any], tmp_path: Path
) -> RunningGateway:
    config = tmp_path / "rtgate.toml"
    config.write_text(PRICES)
    settings = make_settings(OPENAI_API_KEY="", RTGATE_ADMIN_TOKEN=TOKEN, RTGATE_CONFIG=str(config))
    gw: RunningGateway = await start_gateway(settings)
    return gw


async def sign_in(page: Page, gw: RunningGateway) -> None:
    await page.goto(f"{gw.http}/ui/sessions")
    await page.get_by_label("Admin token").fill(TOKEN)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Sessions", exact=True)).to_be_visible()


async def test_a_spoken_turn_in_the_playground_then_a_forced_close_from_the_console(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Any], tmp_path: Path
) -> None:
    gw = await local_gateway(make_settings, start_gateway, tmp_path)
    key = await gw.new_key("voice")
    wav = speech_wav(tmp_path / "speech.wav")
    async with chromium(*fake_microphone(wav)) as browser:
        talk = await browser.new_page()
        await talk.goto(f"{gw.http}/ui/playground")
        await talk.get_by_label("Gateway key").fill(key)
        await talk.get_by_role("button", name="Connect and start the microphone").click()

        # The user's words, as the engine heard them, and the echo brain's reply.
        heard = talk.locator("#pg-transcript li.user")
        await expect(heard.first).to_have_text(re.compile(r"Paris", re.I), timeout=60_000)
        said = talk.locator("#pg-transcript li.assistant")
        await expect(said.first).to_have_text(re.compile(r"Paris", re.I), timeout=60_000)
        assert word_errors(SENTENCE, await heard.first.inner_text()) <= 1
        # The turn: latency from the end of speech, tokens, its cost, and audio played.
        row = talk.locator("#pg-turns tr[data-ref^='resp_']").first
        await expect(row.locator("[data-cell=cost]")).to_have_attribute(
            "data-usd", re.compile(r"^0\.\d{9}$"), timeout=30_000
        )
        await expect(row.locator("[data-cell=played]")).to_have_attribute(
            "data-ms", re.compile(r"^[1-9]\d*$"), timeout=30_000
        )
        latency_ms = int(await row.locator("[data-cell=latency]").get_attribute("data-ms") or -1)
        assert 0 < latency_ms < 10_000
        ref = await row.get_attribute("data-ref")
        shown_cost = await row.locator("[data-cell=cost]").get_attribute("data-usd")
        # Every event is in the log, client and server, filterable and expandable.
        await expect(talk.locator("#pg-events li.server[data-type='response.done']")).to_have_count(
            1
        )
        await expect(
            talk.locator("#pg-events li.client[data-type='input_audio_buffer.append']")
        ).not_to_have_count(0)
        await talk.get_by_label("Filter").fill("response.done")
        visible = talk.locator("#pg-events li:visible")
        await expect(visible).to_have_count(1)
        await visible.locator("summary").click()
        await expect(visible.locator("pre")).to_contain_text('"usage"')

        # What the page says it cost is what the gateway metered for that response.
        sessions = await gw.store.recent_sessions()
        assert len(sessions) == 1
        records = await gw.store.session_usage(sessions[0].id)
        metered = next(r for r in records if r.ref == ref)
        assert shown_cost == usd_str(metered.charged_nanos) and metered.charged_nanos > 0
        assert key not in await talk.content()

        # The operator sees the session live and closes it from the console.
        console = await (await browser.new_context()).new_page()
        await sign_in(console, gw)
        live_row = console.locator(f"#live tr[data-session-id='{sessions[0].id}']")
        await expect(live_row).to_be_visible()
        # Refreshed in place, and said when in UTC, as the pages' own times are.
        await expect(console.locator("#live-updated")).to_have_text(
            re.compile(r"^\(updated \d\d:\d\d:\d\d UTC\)$"), timeout=10_000
        )
        await live_row.get_by_role("link", name="Close").click()
        await console.get_by_role("button", name="Close the session").click()
        await expect(console.get_by_role("status")).to_contain_text("closed")
        await expect(talk.locator("#pg-error")).to_contain_text("An operator closed this session")
        await expect(talk.locator("#pg-status")).to_contain_text("1008")
    (ended,) = await gw.store.recent_sessions()
    assert ended.close_code == 1008 and ended.closed_by == "operator"


async def test_the_playground_says_what_to_do_about_a_bad_key(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Any], tmp_path: Path
) -> None:
    gw = await local_gateway(make_settings, start_gateway, tmp_path)
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{gw.http}/ui/playground")
        await page.get_by_label("Gateway key").fill("rtg_not_a_real_key_at_all")
        await page.get_by_role("button", name="Connect and start the microphone").click()
        alert = page.get_by_role("alert")
        await expect(alert).to_contain_text("did not accept this key")
        await expect(alert).to_have_attribute("data-code", "invalid_api_key")
        await expect(page.locator("#pg-status")).to_have_text("Not connected.")


async def connect_push_to_talk(
    page: Page, gw: RunningGateway, key: str, *, fresh: bool = True
) -> None:
    """The playground opened (unless not ``fresh``: as it is), given ``key``, in push-to-talk
    mode, and Connect pressed."""
    if fresh:
        await page.goto(f"{gw.http}/ui/playground")
    await page.get_by_label("Gateway key").fill(key)
    await page.get_by_label("Push to talk").check()
    await page.get_by_role("button", name="Connect and start the microphone").click()


async def test_a_key_that_blocks_instructions_connects_with_the_box_empty(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Any], tmp_path: Path
) -> None:
    """A newcomer's finds: the playground always sent instructions (an empty string too), so
    a key blocking them (the README's support-bot) could not connect, and was told nothing
    it could act on; then the box came filled in, so such a key's first connect failed."""
    from rtgate.auth.policy import KeyPolicy
    from rtgate.relay.endpoint import GATEWAY

    gw = await local_gateway(make_settings, start_gateway, tmp_path)
    policy = KeyPolicy(blocked_events=("session.update:instructions",))
    _, key = await gw.app[GATEWAY].keyring.create("support-bot", policy)
    wav = speech_wav(tmp_path / "speech.wav")
    async with chromium(*fake_microphone(wav)) as browser:
        page = await browser.new_page()
        await page.goto(f"{gw.http}/ui/playground")
        await expect(page.get_by_label("Instructions")).to_have_value("")
        await page.get_by_label("Instructions").fill("Be brief.")
        await connect_push_to_talk(page, gw, key, fresh=False)
        alert = page.get_by_role("alert")
        await expect(alert).to_have_attribute("data-code", "event_not_allowed")
        await expect(alert).to_contain_text("if it is the instructions, leave that box empty")
        await page.get_by_label("Instructions").fill("  ")
        await page.get_by_role("button", name="Connect and start the microphone").click()
        await expect(page.locator("#pg-status")).to_contain_text("Connected")


async def test_push_to_talk_then_an_interruption(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Any], tmp_path: Path
) -> None:
    gw = await local_gateway(make_settings, start_gateway, tmp_path)
    key = await gw.new_key("ptt")
    wav = speech_wav(tmp_path / "speech.wav")
    async with chromium(*fake_microphone(wav)) as browser:
        page = await browser.new_page()
        await connect_push_to_talk(page, gw, key)
        ptt = page.get_by_role("button", name="Hold to talk")
        await expect(ptt).to_be_enabled()
        # Nothing is sent while the button is up; held (Space, from the keyboard), the
        # microphone streams until the sentence is over (4.6 s: 115 chunks of 40 ms).
        appends = page.locator("#pg-events li.client[data-type='input_audio_buffer.append']")
        await expect(appends).to_have_count(0)
        await ptt.focus()
        await page.keyboard.down(" ")
        await page.wait_for_function(f"() => {APPENDS}.length >= 115", timeout=30_000)
        await page.keyboard.up(" ")
        for sent in ("input_audio_buffer.commit", "response.create"):
            await expect(page.locator(f"#pg-events li.client[data-type='{sent}']")).to_have_count(1)
        said = page.locator("#pg-transcript li.assistant").first
        await expect(said).to_have_text(re.compile(r"Paris", re.I), timeout=60_000)
        await expect(
            page.locator("#pg-turns tr[data-ref^='resp_'] [data-cell=latency]")
        ).to_have_attribute("data-ms", re.compile(r"^\d+$"))

        await page.wait_for_function("() => pg.play.sources.size === 0", timeout=30_000)
        # A typed message, interrupted as soon as its reply is heard: the reply is cancelled
        # (if still running) and cut where it was heard.
        await page.get_by_label("Message").fill("tell me a long story about the sea")
        await page.get_by_role("button", name="Send").click()
        await page.wait_for_function("() => pg.play.sources.size > 0", timeout=30_000)
        await page.get_by_role("button", name="Interrupt").click()
        truncate = page.locator("#pg-events li.client[data-type='conversation.item.truncate']")
        await expect(truncate).to_have_count(1)


def test_the_playground_offers_only_models_its_route_serves(tmp_path: Path) -> None:
    """A review's find: GPT-Live's models were listed, and the engine now refuses them on
    /v1/realtime as the provider does; an alias to one too."""
    from rtgate.catalog import Catalog
    from rtgate.config import load_settings
    from rtgate.web.playground import playground_models

    cfg = tmp_path / "c.toml"
    cfg.write_text('[models.my-live]\nupstream = "local"\nupstream_model = "gpt-live-1"\n')
    offered = playground_models(Catalog(load_settings(cfg, {})))
    assert "gpt-realtime" in offered and "local" in offered
    assert not [m for m in offered if "live" in m or m.endswith("translate")]
