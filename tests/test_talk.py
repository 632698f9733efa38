"""``rtgate talk`` against a running gateway with its local engine, as a user runs it."""

from __future__ import annotations

import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from rtgate.cli import app
from rtgate.config import Settings
from rtgate.relay.endpoint import GATEWAY
from tests.speech import speak


@pytest.fixture
async def local_gateway(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Any]
) -> Any:
    return await start_gateway(make_settings(OPENAI_API_KEY=""))


async def test_talk_sends_a_wav_and_saves_the_spoken_reply(
    local_gateway: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    key = await local_gateway.new_key()
    wav_in = tmp_path / "question.wav"
    with wave.open(str(wav_in), "wb") as w:  # 16 kHz, to exercise the resampling
        from rtgate.engine.audio import resample_pcm16

        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(resample_pcm16(speak("Please set a timer for ten minutes."), 24000, 16000))
    out = tmp_path / "reply.wav"
    monkeypatch.setenv("RTGATE_HOME", str(tmp_path / "cli-home"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    args = [
        "talk",
        "--key",
        key,
        "--wav",
        str(wav_in),
        "--out",
        str(out),
        "--url",
        f"{local_gateway.ws}/v1",
    ]
    result = await asyncio.to_thread(CliRunner().invoke, app, args)
    assert result.exit_code == 0, result.output
    assert "response.done" in result.output
    said = next(ln for ln in result.output.splitlines() if ln.startswith("you said:"))
    assert "timer" in said.lower() and "minutes" in said.lower()
    assert "usage:" in result.output and "$0.000000000 charged" in result.output
    with wave.open(str(out)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
        assert w.getnframes() > 24000 // 2


async def test_talk_reports_a_refused_key(local_gateway: Any, tmp_path: Path) -> None:
    import asyncio

    args = ["talk", "--key", "rtg_wrong", "--text", "hi", "--url", f"{local_gateway.ws}/v1"]
    result = await asyncio.to_thread(CliRunner().invoke, app, args)
    assert result.exit_code == 1
    # Once: the refusal ends the talk, and is not printed as an event first.
    assert result.output.count("invalid_api_key") == 1, result.output


async def test_talk_whose_instructions_are_refused_shows_the_reply_and_fails(
    local_gateway: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newcomer's find: a key that blocks instructions answered without them, and talk
    said so but exited 0, so a script took the reply for the one it asked for."""
    import asyncio

    from rtgate.auth.policy import KeyPolicy

    policy = KeyPolicy(blocked_events=("session.update:instructions",))
    _, key = await local_gateway.app[GATEWAY].keyring.create("locked", policy)
    monkeypatch.setenv("RTGATE_HOME", str(tmp_path / "cli-home"))
    args = ["talk", "--key", key, "--text", "hello", "--instructions", "Be a pirate."]
    args += ["--url", f"{local_gateway.ws}/v1", "--out", str(tmp_path / "r.wav")]
    result = await asyncio.to_thread(CliRunner().invoke, app, args)
    assert result.exit_code == 1, result.output
    assert "event_not_allowed" in result.output and "assistant:" in result.output


async def test_talk_finds_the_gateway_on_the_port_the_settings_name(
    local_gateway: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ``--url``: the address comes from the same settings ``rtgate serve`` reads, so a
    gateway started with ``RTGATE_PORT`` is talked to there (not at the default 8080)."""
    import asyncio

    key = await local_gateway.new_key()
    monkeypatch.setenv("RTGATE_HOME", str(tmp_path / "cli-home"))
    # Listening on every interface: dialled through 127.0.0.1.
    monkeypatch.setenv("RTGATE_HOST", "0.0.0.0")
    monkeypatch.setenv("RTGATE_PORT", local_gateway.ws.rsplit(":", 1)[1])
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    args = ["talk", "--key", key, "--text", "hello there", "--out", str(tmp_path / "r.wav")]
    result = await asyncio.to_thread(CliRunner().invoke, app, args)
    assert result.exit_code == 0, result.output
    assert "response.done" in result.output


def test_talk_with_no_gateway_says_where_it_dialled_and_how_to_point_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.process import free_port

    port = free_port()  # nothing listens there
    monkeypatch.setenv("RTGATE_HOME", str(tmp_path / "cli-home"))
    monkeypatch.setenv("RTGATE_PORT", str(port))
    result = CliRunner().invoke(app, ["talk", "--key", "rtg_x", "--text", "hi"])
    assert result.exit_code == 1
    assert f"no gateway answers at ws://127.0.0.1:{port}/v1" in result.output
    assert "RTGATE_PORT" in result.output and "--url" in result.output
    # The reason in a line, without aiohttp's "ssl:default [Connect call failed ...]".
    assert f"error: cannot connect to ws://127.0.0.1:{port}/v1: " in result.output
    assert "ssl:default" not in result.output
    # A URL given on the command line is the one to fix: the settings' port plays no part.
    url = f"ws://127.0.0.1:{port}/v1"
    result = CliRunner().invoke(app, ["talk", "--key", "rtg_x", "--text", "hi", "--url", url])
    assert result.exit_code == 1
    assert "give talk its --url" in result.output and "RTGATE_PORT" not in result.output


async def test_talk_to_a_path_that_is_no_websocket_says_what_answered(local_gateway: Any) -> None:
    """Not a hint about TLS (the connection was answered: with a 404)."""
    import asyncio

    url = f"{local_gateway.ws}/v2"
    args = ["talk", "--key", "rtg_x", "--text", "hi", "--url", url]
    result = await asyncio.to_thread(CliRunner().invoke, app, args)
    assert result.exit_code == 1
    said = " ".join(result.output.split())
    assert f"error: {url} refused the WebSocket: HTTP 404" in said
    assert "wss://" not in said and "Traceback" not in said


def test_talk_given_a_file_that_is_no_wav_says_so_in_one_line(tmp_path: Path) -> None:
    """A newcomer's find: a 40-line traceback ending in wave's "file does not start with RIFF
    id"."""
    text = tmp_path / "notes.txt"
    text.write_text("not audio")
    result = CliRunner().invoke(app, ["talk", "--key", "rtg_x", "--wav", str(text)])
    assert result.exit_code == 1
    assert f"error: {text}: not a WAV file" in result.output
    assert "Traceback" not in result.output
    empty = tmp_path / "empty.wav"
    with wave.open(str(empty), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24000)
    result = CliRunner().invoke(app, ["talk", "--key", "rtg_x", "--wav", str(empty)])
    assert result.exit_code == 1 and f"error: {empty}: holds no audio" in result.output


def test_talk_refuses_what_it_cannot_use_before_it_dials(tmp_path: Path) -> None:
    """Newcomer's finds: an empty --text was sent, a URL with no scheme failed with the URL
    alone as its message, and an --out in no directory failed with a traceback after the turn
    was billed. None dials now (nothing listens on port 9)."""
    runner = CliRunner()
    base = ["talk", "--key", "rtg_x", "--url", "ws://127.0.0.1:9/v1"]
    said = runner.invoke(app, [*base, "--text", "  "])
    assert said.exit_code == 2 and "--text: give something to say" in said.output
    bare = runner.invoke(app, ["talk", "--key", "rtg_x", "--text", "hi", "--url", "127.0.0.1:9"])
    assert bare.exit_code == 2 and "is not a ws:// or wss:// URL" in bare.output
    out = runner.invoke(app, [*base, "--text", "hi", "--out", str(tmp_path / "no" / "r.wav")])
    assert out.exit_code == 2 and "--out: no directory" in out.output
    assert "Traceback" not in out.output


def test_a_reply_that_did_not_complete_is_a_failure_that_says_why() -> None:
    from rtgate.talk import TalkResult, realtime_url

    failed = TalkResult(
        status="failed",
        status_details={"type": "failed", "error": {"code": "brain_error", "message": "down"}},
    )
    assert failed.failure() == "the response failed: down"
    cut = TalkResult(status="incomplete", status_details={"reason": "max_output_tokens"})
    assert cut.failure() == "the response is incomplete: max_output_tokens"
    assert TalkResult(status="completed").failure() is None
    # The banner's URL (…/v1/realtime) and the base (…/v1) dial the same session.
    for given in ("ws://h:1/v1", "ws://h:1/v1/", "ws://h:1/v1/realtime"):
        assert realtime_url(given, "gpt-realtime") == "ws://h:1/v1/realtime?model=gpt-realtime"
    # A query the URL carries is kept (a review's find: it was dropped).
    assert realtime_url("ws://h:1/v1?x=1", "m") == "ws://h:1/v1/realtime?x=1&model=m"


async def test_talk_to_the_banners_realtime_url(local_gateway: Any, tmp_path: Path) -> None:
    import asyncio

    key = await local_gateway.new_key()
    args = ["talk", "--key", key, "--text", "hello", "--url", f"{local_gateway.ws}/v1/realtime"]
    args += ["--out", str(tmp_path / "r.wav")]
    result = await asyncio.to_thread(CliRunner().invoke, app, args)
    assert result.exit_code == 0, result.output


def test_talk_says_what_the_reply_is_charged_markup_included(tmp_path: Path) -> None:
    """An operator's find: the price it printed, called the list price, was the charge with
    the row's markup in it. It is called what it is."""
    from rtgate.config import load_settings
    from rtgate.talk import charged_price

    cfg = tmp_path / "rtgate.toml"
    cfg.write_text('[prices.local]\ntext_in = "1000"\nmarkup_percent = "20"\n')
    settings = load_settings(cfg, {})
    usage = {"input_tokens": 1000, "output_tokens": 0, "total_tokens": 1000}
    # 1,000 tokens at $1,000 per 1M: $1 the provider's, $1.20 charged.
    assert charged_price(settings, "local", usage) == "1.200000000"
