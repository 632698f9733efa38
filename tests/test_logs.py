"""Log lines: readable on a terminal, JSON for a collector, never a secret in either."""

from __future__ import annotations

import io
import logging
import os
import pty
import re
import subprocess
import sys

import orjson
import pytest

from rtgate.logs import configure_logging, formatter

SECRETS = ("provider-secret-value", "sk-proj-abcdefghijkl", "tok123456", "rtg_abcdEFGH_0123456789")


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("rtgate", logging.INFO, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def leaky() -> logging.LogRecord:
    return record(
        "dial with %s and %s; client Bearer %s, %s",
        *SECRETS,
        session_id="sess_1",
        key_id="key_9",
    )


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_both_formats_redact_held_secrets_and_key_shapes(fmt: str) -> None:
    text = formatter(["provider-secret-value"], fmt).format(leaky())  # type: ignore[arg-type]
    for secret in SECRETS:
        assert secret not in text
    assert "sk-proj…" in text and "rtg_abcd…" in text and "Bearer …" in text


def test_json_lines_carry_time_level_message_and_fields() -> None:
    line = formatter([], "json").format(
        record("session closed by %s: %s", "client", 1000, session_id="s", close_code=1000)
    )
    out = orjson.loads(line)
    assert out["msg"] == "session closed by client: 1000"
    assert out["level"] == "info" and out["logger"] == "rtgate"
    assert out["session_id"] == "s" and out["close_code"] == 1000
    assert isinstance(out["ts"], float)


def test_console_lines_are_one_readable_line_with_the_fields() -> None:
    line = formatter([], "console").format(
        record("session opened", session_id="sess_1", key_id="key_9", model="gpt-realtime")
    )
    assert "\n" not in line and "\x1b[" not in line  # no colour unless asked
    assert re.match(r"^\d\d:\d\d:\d\d \[info\s*\] session opened", line), line
    assert "session_id=sess_1" in line and "key_id=key_9" in line
    assert "model=gpt-realtime" in line
    coloured = formatter([], "console", colors=True).format(record("x"))
    assert "\x1b[" in coloured


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_tracebacks_are_text_without_locals_and_redacted(fmt: str) -> None:
    def fail(key: str) -> None:
        raise RuntimeError(f"refused {key}")

    try:
        fail("sk-proj-abcdefghijkl")
    except RuntimeError:
        rec = logging.LogRecord(
            "rtgate", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
        )
    text = formatter([], fmt).format(rec)  # type: ignore[arg-type]
    assert "RuntimeError: refused sk-proj…" in text.replace("\\n", "\n")
    assert "sk-proj-abcdefghijkl" not in text


def test_auto_picks_json_off_a_terminal() -> None:
    buf = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("info", ["provider-secret-value"], "auto", buf)
        logging.getLogger("rtgate.x").info("held %s", "provider-secret-value")
        configure_logging("info", [], "console", buf)
        logging.getLogger("rtgate.x").info("then a line for people", extra={"key_id": "k"})
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    first, second = buf.getvalue().splitlines()
    assert orjson.loads(first)["msg"] == "held [redacted]"
    assert "then a line for people" in second and "key_id=k" in second
    assert "\x1b[" not in second  # a StringIO is no terminal: no colour even when asked


def test_a_terminal_gets_coloured_readable_lines() -> None:
    """Through a pseudo-terminal, as a person running make run sees it."""
    script = (
        "import logging\n"
        "from rtgate.logs import configure_logging\n"
        "configure_logging('info')\n"
        "logging.getLogger('rtgate').info('hello', extra={'model': 'gpt-realtime'})\n"
    )
    leader, follower = pty.openpty()
    try:
        subprocess.run(
            [sys.executable, "-c", script],
            stderr=follower,
            timeout=30,
            env={k: v for k, v in os.environ.items() if k != "NO_COLOR"},
            check=True,
        )
        out = os.read(leader, 65536).decode()
    finally:
        os.close(leader)
        os.close(follower)
    assert "\x1b[" in out  # coloured on a terminal
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    assert re.match(r"^\d\d:\d\d:\d\d \[info\s*\] hello\s+model=gpt-realtime\s*$", plain), plain
