"""Headless Chromium driven by Playwright for the console's tests (and ``make screenshots``).

The system's Chromium (``RTGATE_TEST_CHROMIUM``, else ``chromium`` on PATH; ``make test``
provides it through ``scripts/chromium``) with Playwright's driver: no browser is downloaded. It
makes no connection of its own (updates, sync, safe browsing), only the loopback pages'. A fake
microphone plays a WAV file when one is given.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import Browser, async_playwright

CHROMIUM = os.environ.get("RTGATE_TEST_CHROMIUM") or shutil.which("chromium") or "chromium"

QUIET = (
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--metrics-recording-only",
    "--no-default-browser-check",
    "--safebrowsing-disable-auto-update",
)


def fake_microphone(wav: Path) -> tuple[str, ...]:
    """Flags for a microphone that plays ``wav`` once (then silence), allowed without asking."""
    return (
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}%noloop",
        "--autoplay-policy=no-user-gesture-required",
    )


@asynccontextmanager
async def chromium(*extra: str) -> AsyncIterator[Browser]:
    assert shutil.which(CHROMIUM), (
        f"no Chromium at {CHROMIUM!r}: run the suite with make test (scripts/chromium finds or "
        "installs one), or set RTGATE_TEST_CHROMIUM"
    )
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=shutil.which(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", *QUIET, *extra],
        )
        try:
            yield browser
        finally:
            await browser.close()
