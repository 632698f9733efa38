"""The command line as a user runs it, against a real SQLite file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from rtgate.auth.keyring import KeyRing
from rtgate.auth.policy import KeyPolicy
from rtgate.cli import app
from rtgate.clock import SystemClock
from rtgate.metering.record import UsageRecord
from rtgate.protocol.usage import Usage
from rtgate.store.port import SessionClose, SessionOpen
from rtgate.store.sql import SqlStore


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    monkeypatch.setenv("RTGATE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RTGATE_DATABASE_URL", raising=False)
    monkeypatch.delenv("RTGATE_CONFIG", raising=False)
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == code, result.output
        return result.output

    return run


def test_keys_create_prints_the_secret_alone_on_the_last_line(
    cli: Callable[..., str], tmp_path: Path
) -> None:
    out = cli("keys", "create", "--name", "alice")
    secret = out.strip().splitlines()[-1]
    assert secret.startswith("rtg_") and " " not in secret
    db = (tmp_path / "home" / "rtgate.db").read_bytes()
    assert secret.encode() not in db
    listed = orjson.loads(cli("keys", "list", "--json"))
    assert len(listed) == 1 and listed[0]["name"] == "alice" and listed[0]["active"]
    assert secret.startswith(listed[0]["prefix"])
    assert secret not in cli("keys", "list")


def test_an_expired_key_is_listed_as_expired_not_active(cli: Callable[..., str]) -> None:
    """It authenticates nothing (``invalid_api_key``, "expired"), though it is not revoked: it
    may be given a later expiry (a newcomer's run saw "active")."""
    created = orjson.loads(cli("keys", "create", "--name", "old", "--json"))
    assert created["expired"] is False
    cli("keys", "update", created["id"], "--expires", "2020-01-01")
    (listed,) = orjson.loads(cli("keys", "list", "--json"))
    assert (listed["active"], listed["expired"]) == (True, True)
    assert "expired 2020-01-02T00:00:00Z" in cli("keys", "list")
    cli("keys", "update", created["id"], "--clear", "expires")
    assert "active" in cli("keys", "list")


def test_keys_revoke(cli: Callable[..., str]) -> None:
    created = orjson.loads(cli("keys", "create", "--name", "bob", "--json"))
    assert created["secret"].startswith("rtg_")
    revoked = orjson.loads(cli("keys", "revoke", created["id"], "--json"))
    assert revoked["active"] is False and revoked["revoked_at"]
    cli("keys", "revoke", "key_missing", code=1)
    # Again: said to be revoked already, not revoked anew (a newcomer's find).
    again = cli("keys", "revoke", created["id"])
    assert f"{created['id']} (bob) was revoked already, at {revoked['revoked_at']}" in again
    fresh = orjson.loads(cli("keys", "create", "--name", "carl", "--json"))
    assert cli("keys", "revoke", fresh["id"]).startswith(f"Revoked {fresh['id']} (carl).")


async def _seed(db_url: str, key_id: str) -> None:
    store = SqlStore(db_url)
    await store.init()
    await store.write(
        [
            SessionOpen("rs_1", key_id, "gpt-realtime", "openai", None, 1_800_000_000.0),
            *(
                UsageRecord(
                    "rs_1",
                    key_id,
                    "gpt-realtime",
                    "gpt-realtime",
                    Usage(text_in=1000, audio_out=500, audio_in=200, audio_in_cached=100),
                    40_000_000,
                    50_000_000,
                    1_800_000_000.0 + i,
                    f"resp_{i}",
                    # The second one's usage did not read in full: it wants review.
                    review="unreadable_usage" if i else None,
                )
                for i in range(2)
            ),
            SessionClose("rs_1", 1_800_000_090.0, 1000, "", "client"),
            SessionOpen("rs_2", key_id, "gpt-live-1", "openai", "live", 1_800_000_100.0),
            SessionOpen("rs_3", key_id, "", "openai", "transcription", 1_800_000_200.0),
        ]
    )
    await store.close()


def test_usage_and_sessions_report_tokens_and_decimal_cost(
    cli: Callable[..., str], tmp_path: Path
) -> None:
    import asyncio

    created = orjson.loads(cli("keys", "create", "--name", "carol", "--json"))
    asyncio.run(_seed(f"sqlite:///{tmp_path / 'home' / 'rtgate.db'}", created["id"]))
    rows = orjson.loads(cli("usage", "--json"))
    assert rows == [
        {
            "key_id": created["id"],
            "key_name": "carol",
            "model": "gpt-realtime",
            "day": "2027-01-15",
            "unit": "token",
            "records": 2,
            "needs_review": 1,
            "tokens": {
                "text_in": 2000,
                "text_in_cached": 0,
                "audio_in": 400,
                "audio_in_cached": 200,
                "image_in": 0,
                "image_in_cached": 0,
                "text_out": 0,
                "audio_out": 1000,
            },
            "audio_seconds": 0.0,
            "cost_usd": "0.100000000",
            "provider_cost_usd": "0.080000000",
        }
    ]
    assert Decimal(rows[0]["cost_usd"]) == Decimal("0.1")
    *_, sess = orjson.loads(cli("sessions", "--json"))
    assert sess["duration_s"] == 90.0 and sess["close_code"] == 1000
    assert sess["tokens"]["audio_out"] == 1000 and sess["cost_usd"] == "0.100000000"
    # Each session's intent beside its model (a newcomer's find: a Live or transcription
    # session looked like a realtime one).
    table = [ln.split("│")[3].strip() for ln in cli("sessions").splitlines() if "carol" in ln]
    assert table == ["(transcription)", "gpt-live-1 (live)", "gpt-realtime"]
    header, row = [ln for ln in cli("usage").splitlines() if "carol" in ln or "review" in ln]
    assert header.split()[-2:] == ["review", "┃"] and row.split()[-2:] == ["1", "│"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("usage", "--since", "2026-13-01"), "since: month must be in 1..12"),
        (("usage", "--since", "yesterday"), "since: Expected a UTC day, YYYY-MM-DD"),
        (("sessions", "--limit", "-1"), "limit: Expected `int` >= 1"),
        (("sessions", "--limit", "1001"), "limit: Expected `int` <= 1000"),
    ],
)
def test_a_day_or_limit_the_admin_api_refuses_is_refused_alike(
    cli: Callable[..., str], args: tuple[str, ...], says: str
) -> None:
    """A newcomer's find: these were taken silently (an empty table, or every session)."""
    assert says in cli(*args, code=2)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--models", "gpt-5"), "models: 'gpt-5' is not a model this gateway knows"),
        (("--models", "gpt-realtim"), "did you mean gpt-realtime?"),
        (("--expires", "2020-01-01"), "expires: already past"),
        (("--models", " , "), "--models: no model named; to allow every model, use --clear"),
        (("--voice", "nobody"), "voice: 'nobody' is not a voice"),
        (("--budget-usd-day", "0.0000000001"), "at most 9 decimal places"),
    ],
)
def test_a_key_that_could_never_work_is_not_created(
    cli: Callable[..., str], args: tuple[str, ...], says: str
) -> None:
    """A newcomer's find: these were created, and every session of the key was refused."""
    assert says in cli("keys", "create", "--name", "t", *args, code=2)
    # Transcription models and dated snapshots are models the gateway knows.
    cli("keys", "create", "--name", "ok", "--models", "gpt-realtime-2025-08-28,whisper-1")
    assert [k["name"] for k in orjson.loads(cli("keys", "list", "--json"))] == ["ok"]


def test_a_model_a_key_held_before_stays_through_an_update(
    cli: Callable[..., str], tmp_path: Path
) -> None:
    import asyncio

    created = orjson.loads(cli("keys", "create", "--name", "old", "--json"))

    async def hold_an_unknown_model() -> None:
        store = SqlStore(f"sqlite:///{tmp_path / 'home' / 'rtgate.db'}")
        await store.init()
        ring = KeyRing(store, SystemClock())
        await ring.set_policy(created["id"], KeyPolicy(models=("gpt-retired",)))
        await store.close()

    asyncio.run(hold_an_unknown_model())
    cli("keys", "update", created["id"], "--models", "gpt-retired,gpt-realtime")
    assert "gpt-nope" in cli("keys", "update", created["id"], "--models", "gpt-nope", code=2)


@pytest.mark.parametrize("command", ["usage", "sessions", "secrets list"])
def test_a_key_filter_naming_no_key_says_so(cli: Callable[..., str], command: str) -> None:
    """A newcomer's find: ``--key alice`` (a name, not an id) listed nothing, exit 0."""
    cli("keys", "create", "--name", "alice")
    said = cli(*command.split(), "--key", "alice", code=1)
    assert "No key with id 'alice'." in said
    key_id = orjson.loads(cli("keys", "list", "--json"))[0]["id"]
    cli(*command.split(), "--key", key_id)


def test_keys_show_and_update_print_the_whole_policy(cli: Callable[..., str]) -> None:
    """A newcomer's find: no view of a key's policy but ``keys list --json``."""
    created = orjson.loads(
        cli("keys", "create", "--name", "p", "--models", "gpt-realtime", "--json")
    )
    shown = cli("keys", "show", created["id"])
    assert f"{created['id']} (p, " in shown and "active" in shown
    assert "  models: gpt-realtime" in shown
    updated = cli("keys", "update", created["id"], "--budget-usd-day", "5")
    assert "  budget_usd_day: 5.000000000" in updated and "  models: gpt-realtime" in updated
    assert orjson.loads(cli("keys", "show", created["id"], "--json"))["policy"]["models"] == [
        "gpt-realtime"
    ]
    assert "no key with id key_nope" in cli("keys", "show", "key_nope", code=1)
    bare = orjson.loads(cli("keys", "create", "--name", "bare", "--json"))
    assert "no limits or defaults" in cli("keys", "show", bare["id"])
    # --models repeated adds up, as --block-event does (a newcomer's find: the last one won).
    both = cli(
        "keys",
        "create",
        "--name",
        "m",
        "--models",
        "gpt-realtime",
        "--models",
        "gpt-realtime-mini,gpt-realtime-2",
        "--keep-transcripts",
    )
    key_id = next(w for w in both.split() if w.startswith("key_"))
    shown = cli("keys", "show", key_id)
    assert "  models: gpt-realtime, gpt-realtime-mini, gpt-realtime-2" in shown
    assert "  keep_transcripts: true" in shown


def test_bad_config_stops_with_the_settings_name(
    cli: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTGATE_PORT", "not-a-port")
    out = cli("keys", "list", code=2)
    assert "port" in out


def test_keys_create_and_update_carry_the_policy(cli: Callable[..., str]) -> None:
    created = orjson.loads(
        cli(
            "keys",
            "create",
            "--name",
            "dora",
            "--models",
            "gpt-realtime,gpt-realtime-mini",
            "--max-sessions",
            "3",
            "--sessions-per-minute",
            "10",
            "--secrets-per-minute",
            "20",
            "--budget-usd-day",
            "2.50",
            "--budget-usd-month",
            "40",
            "--budget-usd-total",
            "100",
            "--max-duration",
            "30m",
            "--expires",
            "2026-12-31",
            "--instructions",
            "Be kind.",
            "--voice",
            "marin",
            "--block-event",
            "session.update:instructions",
            "--keep-transcripts",
            "--json",
        )
    )
    p = created["policy"]
    assert p["models"] == ["gpt-realtime", "gpt-realtime-mini"]
    assert (p["max_sessions"], p["sessions_per_minute"], p["secrets_per_minute"]) == (3, 10, 20)
    assert (p["budget_usd_day"], p["budget_usd_month"], p["budget_usd_total"]) == (
        "2.500000000",
        "40.000000000",
        "100.000000000",
    )
    assert p["max_duration_s"] == 1800 and p["expires_at"] == "2027-01-01T00:00:00Z"
    assert p["session_defaults"] == {
        "instructions": "Be kind.",
        "audio": {"output": {"voice": "marin"}},
    }
    assert p["blocked_events"] == ["session.update:instructions"] and p["keep_transcripts"]
    updated = orjson.loads(
        cli(
            "keys",
            "update",
            created["id"],
            "--max-sessions",
            "5",
            "--clear",
            "budget_usd_day",
            "--clear",
            "secrets_per_minute",
            "--json",
        )
    )
    assert updated["policy"]["max_sessions"] == 5
    assert updated["policy"]["secrets_per_minute"] is None
    assert updated["policy"]["budget_usd_day"] is None
    assert updated["policy"]["budget_usd_total"] == "100.000000000"
    cli("keys", "update", created["id"], "--max-duration", "forever", code=2)
    # Named as the options are: one default cleared leaves the others.
    args = ("--clear", "budget-usd-total", "--clear", "voice", "--clear", "block-event")
    updated = orjson.loads(cli("keys", "update", created["id"], *args, "--json"))["policy"]
    assert updated["budget_usd_total"] is None and updated["blocked_events"] == []
    assert updated["session_defaults"] == {"instructions": "Be kind."}
    refused = cli("keys", "update", created["id"], "--clear", "nonsense", code=2)
    assert "--clear nonsense: nothing of that name to clear; one of: models," in refused
    assert "budget-usd-day" in refused and "block-event" in refused and "voice" in refused
    cli("keys", "update", "key_missing", "--max-sessions", "1", code=1)


@pytest.mark.parametrize(
    "given",
    ["rtg_" + "GatewayKeyPastedByMistake0", "[/red]not an id", "cs_" + "0" * 20 + "[/b]"],
)
def test_secrets_revoke_never_echoes_what_is_not_an_id(
    given: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTGATE_HOME", str(tmp_path))
    monkeypatch.delenv("RTGATE_DATABASE_URL", raising=False)
    assert CliRunner().invoke(app, ["keys", "create", "--name", "k"]).exit_code == 0
    result = CliRunner().invoke(app, ["secrets", "revoke", given])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert given not in result.output
    assert "no client secret" in result.output


def test_secrets_revoke_names_an_unknown_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTGATE_HOME", str(tmp_path))
    monkeypatch.delenv("RTGATE_DATABASE_URL", raising=False)
    assert CliRunner().invoke(app, ["keys", "create", "--name", "k"]).exit_code == 0
    sid = "cs_" + "ab" * 10
    result = CliRunner().invoke(app, ["secrets", "revoke", sid])
    assert result.exit_code == 1
    assert f"no client secret with id {sid}" in result.output


def test_every_option_help_is_shown_as_written() -> None:
    """Each option's help, word for word in ``--help``: typer's rich markup once swallowed a
    ``[...]`` (``talk --url`` lost its default), and the help is plain click now."""
    import typer.main

    def helps(command: Any, path: str) -> Iterator[tuple[str, Any]]:
        for name, sub in getattr(command, "commands", {}).items():
            yield f"{path} {name}", sub
            yield from helps(sub, f"{path} {name}")

    for path, command in helps(typer.main.get_command(app), "rtgate"):
        if getattr(command, "commands", None):
            continue
        args = path.split()[1:]
        shown = " ".join(
            CliRunner().invoke(app, [*args, "--help"], terminal_width=500).output.split()
        )
        for param in command.params:
            assert " ".join((getattr(param, "help", None) or "").split()) in shown, (
                path,
                param.name,
            )


@pytest.mark.parametrize("command", [["keys", "create"], ["keys", "update"], ["talk"]])
def test_help_in_80_columns_shows_every_option_whole(command: list[str]) -> None:
    """A newcomer's find: typer's panels cut option names at 80 columns
    ("--sessions-per-…")."""
    import typer.main

    click_command = typer.main.get_command(app)
    for name in command:
        click_command = click_command.commands[name]  # type: ignore[attr-defined]
    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=80)
    assert result.exit_code == 0
    assert "…" not in result.output
    for param in click_command.params:
        for opt in param.opts:
            assert opt in result.output, opt
    assert max(map(len, result.output.splitlines())) <= 80


def test_an_error_quoting_brackets_is_printed_whole(capsys: pytest.CaptureFixture[str]) -> None:
    from rtgate.cli import _error

    _error("bad value [default: 1] in [prices.local]")
    assert "error: bad value [default: 1] in [prices.local]" in capsys.readouterr().err


def test_tables_piped_are_laid_out_whole(
    cli: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Into a pipe or a file (no terminal, no ``COLUMNS``) a table is as wide as its cells:
    at rich's default 80 columns the names and ids were cut to ``gpt-realtim…``."""
    monkeypatch.delenv("COLUMNS", raising=False)
    name = "the-support-team-of-the-european-offices-night-shift-" * 2  # 106 characters
    created = orjson.loads(cli("keys", "create", "--name", name, "--json"))
    listed = cli("keys", "list")
    assert name in listed and created["id"] in listed and "…" not in listed
    monkeypatch.setenv("COLUMNS", "150")  # asked for: kept to it
    assert name not in cli("keys", "list")


def test_a_command_that_starts_a_new_database_says_so_to_a_person(tmp_path: Path) -> None:
    """A newcomer's find: run from another directory (or without the gateway's --config),
    keys create made a database of its own, said nothing, and the key was refused; and a
    command that only reads made one too, and answered from it (an empty table)."""
    import os
    import pty
    import subprocess
    import sys

    env = {**os.environ, "RTGATE_HOME": str(tmp_path / "elsewhere")}
    env.pop("RTGATE_DATABASE_URL", None)
    env.pop("RTGATE_CONFIG", None)

    def run(*args: str, code: int = 0) -> str:
        leader, follower = pty.openpty()
        proc = subprocess.run(
            [sys.executable, "-m", "rtgate", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=follower,
            env=env,
            timeout=60,
        )
        assert proc.returncode == code, proc
        os.close(follower)
        said = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal's other end is closed: all is read
                break
            if not chunk:
                break
            said += chunk
        os.close(leader)
        return said.decode() + proc.stdout.decode()

    for reading in (("keys", "list"), ("usage",), ("sessions",), ("secrets", "list")):
        refused = run(*reading, code=1).replace("\r\n", " ").replace("\n", " ")
        assert "no database at" in refused and "set RTGATE_HOME" in refused, reading
    assert not (tmp_path / "elsewhere").exists()
    first = run("keys", "create", "--name", "k")
    assert "note: no database was at" in first and str(tmp_path / "elsewhere") in first
    assert "same home (RTGATE_HOME" in first.replace("\r\n", " ").replace("\n", " ")
    assert "note:" not in run("keys", "list")  # once: it is there now


def test_a_bad_serve_option_is_named_as_typed(
    cli: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``serve``'s options travel to the server as variables; a bad one is reported as the
    option the operator typed (a newcomer's find: ``--workers 0`` said ``RTGATE_WORKERS``)."""
    out = cli("serve", "--workers", "0", code=2)
    assert "workers (--workers): Expected `int` >= 1" in out and "RTGATE_WORKERS" not in out
    assert "port (--port): Expected `int` <= 65535" in cli("serve", "--port", "70000", code=2)
    monkeypatch.setenv("RTGATE_WORKERS", "0")
    assert "workers (RTGATE_WORKERS): " in cli("serve", code=2)
