"""The command line: ``rtgate serve``, ``keys``, ``usage``, ``sessions``.

With ``api/app.py`` this is one of the two composition roots. Every command that prints data
takes ``--json``; a new key's secret is printed once, alone on the last line.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import msgspec
import orjson
import typer

from rtgate.api.queries import SessionsQuery, UsageQuery
from rtgate.api.views import (
    KeyView,
    client_secret_view,
    dump,
    key_view,
    new_key_view,
    session_row,
    timestamp,
    usage_row,
)
from rtgate.auth.client_secrets import id_hash_prefix, looks_minted, secret_id_of
from rtgate.auth.keyring import KeyRing
from rtgate.auth.policy import CLEARABLE, KeyPolicy, PolicyUpdate, apply_update, new_policy
from rtgate.catalog import Catalog
from rtgate.clock import SystemClock
from rtgate.config import Settings, load_settings
from rtgate.errors import GatewayError, PolicyError
from rtgate.interpreter import python_m
from rtgate.metering.cost import usd_str
from rtgate.store.connections import sqlite_path
from rtgate.store.port import KeyInfo
from rtgate.store.sql import SqlStore
from rtgate.validation import Unreadable, read_as

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

#: Help as click lays it out, wrapped to the terminal: typer's rich panels share the width
#: among empty columns and cut option names at 80 columns ("--sessions-per-…").
PLAIN_HELP = None

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="rtgate: realtime voice AI gateway",
    rich_markup_mode=PLAIN_HELP,
)
keys_app = typer.Typer(
    no_args_is_help=True,
    help="Create, list and revoke gateway keys.",
    rich_markup_mode=PLAIN_HELP,
)
app.add_typer(keys_app, name="keys")
secrets_app = typer.Typer(
    no_args_is_help=True,
    help="List and revoke the client secrets keys have minted.",
    rich_markup_mode=PLAIN_HELP,
)
app.add_typer(secrets_app, name="secrets")

T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML config file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]

_state: dict[str, Any] = {}


class LogFormatChoice(StrEnum):
    auto = "auto"
    console = "console"
    json = "json"


def _settings() -> Settings:
    try:
        return load_settings(_state.get("config"))
    except GatewayError as err:
        _error(err.message)
        raise typer.Exit(2) from err


def _of_key(key_id: str | None, fn: Callable[[SqlStore], Awaitable[T]]) -> T:
    """``fn``'s rows, filtered by ``key_id`` (``--key``): an id no key has exits 1, as the
    admin API answers 404 (``KeyRing.require``), not with an empty table."""

    async def run(store: SqlStore) -> T:
        await KeyRing(store, SystemClock()).require(key_id)
        return await fn(store)

    return _with_store(run)


def _with_store(fn: Callable[[SqlStore], Awaitable[T]], *, creates: bool = False) -> T:
    """``fn`` on the gateway's store. Only a command that ``creates`` (``keys create``) starts
    a SQLite database where there is none: any other, run away from the gateway's home, says so
    and exits 1, rather than answer from an empty database of its own (a newcomer's find)."""
    settings = _settings()
    url = settings.resolved_database_url
    path = sqlite_path(url)
    fresh = path not in (None, ":memory:") and not Path(str(path)).exists()
    if fresh and not creates:
        _error(
            f"no database at {path}: run this where the gateway runs (its home is"
            f" {settings.home}), or set RTGATE_HOME (or --config, RTGATE_DATABASE_URL) as the"
            " gateway has it"
        )
        raise typer.Exit(1)

    async def run() -> T:
        settings.home.mkdir(parents=True, exist_ok=True)
        store = SqlStore(url, timeout=settings.store_timeout_seconds)
        try:
            await store.init()
            return await fn(store)
        finally:
            await store.close()

    try:
        done = asyncio.run(run())
    except GatewayError as err:
        _error(err.message)
        raise typer.Exit(1) from err
    if fresh and sys.stderr.isatty():
        # Said to a person only (a script's output stays its own): run from another directory,
        # or without the gateway's --config, a command starts a database of its own, and a key
        # made there is refused by the gateway (a newcomer's find).
        _rich_console(stderr=True).print(
            f"note: no database was at {path}: this command started a new one. A gateway "
            "reads its keys only if it runs with the same home (RTGATE_HOME, or --config "
            "naming it).",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    return done


#: The width tables are laid out in when the output is no terminal (a pipe, a file) and
#: ``COLUMNS`` says none: rich's 80 would cut model names and ids to fit.
PIPED_WIDTH = 200


def _rich_console(**kwargs: Any) -> Console:
    """rich's console, imported by the commands that print with it: ``rtgate serve`` never
    loads rich (docs/performance.md 9.3)."""
    from rich.console import Console

    stream = sys.stderr if kwargs.get("stderr") else sys.stdout
    asked = os.environ.get("COLUMNS", "").isdigit()  # as rich reads it
    if "width" not in kwargs and not asked and not stream.isatty():
        kwargs["width"] = PIPED_WIDTH
    return Console(**kwargs)


def _error(message: str) -> None:
    """``error: MESSAGE`` on stderr, the message printed as it is: not read as rich markup,
    where ``[...]`` (a TOML table, a default) would be taken for a tag and vanish."""
    from rich.markup import escape

    # soft_wrap: one line however narrow the terminal, as a log or a test reads it whole.
    _rich_console(stderr=True).print(
        f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True
    )


def _table(*columns: str, **kwargs: Any) -> Table:
    from rich.table import Table

    return Table(*columns, **kwargs)


def _console() -> Console:
    # Reports are read in terminals and in CI logs alike; never squeeze the columns below this.
    console = _rich_console()
    if console.width < 140:
        console = _rich_console(width=140)
    return console


def _print_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def _checked(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except GatewayError as err:
        _error(err.message)
        raise typer.Exit(2) from err


@app.callback()
def main_options(config: ConfigOpt = None) -> None:
    _state["config"] = config


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
    workers: Annotated[int | None, typer.Option(help="Processes sharing the port.")] = None,
    certfile: Annotated[
        Path | None, typer.Option(help="Serve TLS with this PEM certificate (chain).")
    ] = None,
    keyfile: Annotated[Path | None, typer.Option(help="The certificate's PEM private key.")] = None,
    log_format: Annotated[
        LogFormatChoice | None,
        typer.Option(help="auto: readable on a terminal, JSON lines otherwise."),
    ] = None,
) -> None:
    """Run the gateway."""
    env = dict(os.environ)
    if _state.get("config") is not None:
        env["RTGATE_CONFIG"] = str(_state["config"])
    chosen = {
        ("RTGATE_HOST", "--host"): host,
        ("RTGATE_PORT", "--port"): port,
        ("RTGATE_WORKERS", "--workers"): workers,
        ("RTGATE_TLS_CERTFILE", "--certfile"): certfile,
        ("RTGATE_TLS_KEYFILE", "--keyfile"): keyfile,
        ("RTGATE_LOG_FORMAT", "--log-format"): log_format.value if log_format else None,
    }
    given = {var: str(v) for (var, _), v in chosen.items() if v is not None}
    env.update(given)
    # The settings as the server will read them, so a bad option or file is reported here, in
    # the CLI's words (the option, not the variable it travels as), before anything starts.
    options = {var: option for (var, option) in chosen if var in given}
    _checked(lambda: load_settings(None, env, given_as=options))
    # The gateway runs in this process, re-executed without the CLI: typer, click and the
    # commands' modules would stay in a serving process's memory for nothing (~2 MB,
    # docs/performance.md 9.3). The options travel as the RTGATE_* variables they override.
    os.execve(sys.executable, serving_argv(), env)  # noqa: S606 (no shell: argv as given)


def serving_argv() -> list[str]:
    """``python -m rtgate.server ARGV0`` with this interpreter's flags (``-X dev``, ``-O``):
    ARGV0, how the person ran rtgate, is for the lines that tell them what to type next."""
    return python_m("rtgate.server", sys.argv[0])


ModelsOpt = Annotated[
    list[str] | None,
    typer.Option(
        help="Allowed models or families, comma-separated or repeated (a transcription"
        " session's model is its transcription model)."
    ),
]
MaxSessionsOpt = Annotated[int | None, typer.Option(help="Live sessions at once.", min=1)]
RateOpt = Annotated[int | None, typer.Option(help="New sessions per minute.", min=1)]
MintRateOpt = Annotated[int | None, typer.Option(help="Client secrets minted per minute.", min=1)]
BudgetOpt = Annotated[str | None, typer.Option(help="Budget in USD.")]
DurationOpt = Annotated[str | None, typer.Option(help="Longest session: 90s, 30m, 1h.")]
ExpiresOpt = Annotated[
    str | None,
    typer.Option(
        help="Last valid UTC day, YYYY-MM-DD, or an RFC 3339 timestamp (2026-12-31T18:00:00Z)."
    ),
]
InstructionsOpt = Annotated[str | None, typer.Option(help="Default session instructions.")]
VoiceOpt = Annotated[str | None, typer.Option(help="Default voice.")]
BlockOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--block-event",
        help="An event type the key may not send "
        "(session.update:instructions blocks only instruction changes). Repeatable.",
    ),
]
KeepOpt = Annotated[
    bool | None,
    typer.Option(
        "--keep-transcripts/--no-keep-transcripts", help="Keep session transcripts (text only)."
    ),
]
ClearOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--clear",
        help="Remove a limit or a default, named as its option is (budget-usd-day, voice, "
        "block-event, ...; session-defaults: every default). Repeatable.",
    ),
]


#: The policy options ``keys create`` and ``keys update`` share (typer needs each in both
#: signatures; the commands pass them on by name).
_POLICY_OPTIONS = frozenset(
    {
        "models",
        "max_sessions",
        "sessions_per_minute",
        "secrets_per_minute",
        "budget_usd_day",
        "budget_usd_month",
        "budget_usd_total",
        "max_duration",
        "expires",
        "instructions",
        "voice",
        "block_event",
        "keep_transcripts",
        "clear",
    }
)


def _policy_update(opts: dict[str, Any]) -> PolicyUpdate:
    raw = {k: v for k, v in opts.items() if v is not None}
    if "models" in raw:
        # Repeated and comma-separated alike (a newcomer's find: a second --models replaced
        # the first without a word).
        raw["models"] = [m for given in raw["models"] for m in given.split(",") if m.strip()]
        if not raw["models"]:
            # An empty list allows every model: that is --clear models, said on purpose, not
            # an empty variable expanded into --models "" (a newcomer's find).
            _error("--models: no model named; to allow every model, use --clear models")
            raise typer.Exit(2)
    if "block_event" in raw:
        raw["blocked_events"] = raw.pop("block_event")
    if "clear" in raw:
        raw["clear"] = [_clearable(name) for name in raw["clear"]]
    return _read_as(raw, PolicyUpdate)


def _read_as(raw: dict[str, Any], kind: type[S]) -> S:
    """Options read as the admin API reads its body or query (``kind``): refused with its
    words, exit 2."""
    try:
        return read_as(raw, kind)
    except Unreadable as exc:
        _error(str(exc))
        raise typer.Exit(2) from exc


def _clearable(name: str) -> str:
    """What ``--clear NAME`` removes, NAME spelt as its option is (``budget-usd-day``,
    ``block-event``) or as the admin API's field (``budget_usd_day``, ``blocked_events``)."""
    field = name.strip().removeprefix("--").replace("-", "_")
    field = {"block_event": "blocked_events"}.get(field, field)
    if field not in CLEARABLE:
        shown = ", ".join(
            "block-event" if c == "blocked_events" else c.replace("_", "-") for c in CLEARABLE
        )
        _error(f"--clear {name}: nothing of that name to clear; one of: {shown}")
        raise typer.Exit(2)
    return field


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A name for the key's owner.")],
    models: ModelsOpt = None,
    max_sessions: MaxSessionsOpt = None,
    sessions_per_minute: RateOpt = None,
    secrets_per_minute: MintRateOpt = None,
    budget_usd_day: BudgetOpt = None,
    budget_usd_month: BudgetOpt = None,
    budget_usd_total: BudgetOpt = None,
    max_duration: DurationOpt = None,
    expires: ExpiresOpt = None,
    instructions: InstructionsOpt = None,
    voice: VoiceOpt = None,
    block_event: BlockOpt = None,
    keep_transcripts: KeepOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a key; its secret is printed once, alone on the last line."""
    update = _policy_update({k: v for k, v in locals().items() if k in _POLICY_OPTIONS})
    catalog = Catalog(_settings())
    policy = _checked(lambda: new_policy(update, catalog, SystemClock().now()))
    info, secret = _with_store(
        lambda st: KeyRing(st, SystemClock()).create(name, policy), creates=True
    )
    if as_json:
        _print_json(dump(new_key_view(info, secret, SystemClock().now())))
        return
    typer.echo(f"Created key {info.id} ({info.name}, {info.display_prefix}).")
    typer.echo("Store this secret now; it is not kept and cannot be shown again:")
    typer.echo(secret)


@keys_app.command("update")
def keys_update(
    key_id: str,
    models: ModelsOpt = None,
    max_sessions: MaxSessionsOpt = None,
    sessions_per_minute: RateOpt = None,
    secrets_per_minute: MintRateOpt = None,
    budget_usd_day: BudgetOpt = None,
    budget_usd_month: BudgetOpt = None,
    budget_usd_total: BudgetOpt = None,
    max_duration: DurationOpt = None,
    expires: ExpiresOpt = None,
    instructions: InstructionsOpt = None,
    voice: VoiceOpt = None,
    block_event: BlockOpt = None,
    keep_transcripts: KeepOpt = None,
    clear: ClearOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a key's policy; options left out stay as they are. Live sessions see it at
    their next metered event (budgets) or connection (the rest)."""
    update = _policy_update({k: v for k, v in locals().items() if k in _POLICY_OPTIONS})
    _checked(lambda: apply_update(KeyPolicy(), update))  # bad values fail before the store
    catalog = Catalog(_settings())

    async def run(store: SqlStore) -> KeyInfo | PolicyError | None:
        ring = KeyRing(store, SystemClock())
        key = await ring.get(key_id)
        if key is None:
            return None
        try:
            policy = apply_update(KeyPolicy.from_json(key.policy_json), update, catalog)
        except PolicyError as err:
            return err  # a bad value, as the check above: exit 2
        return await ring.set_policy(key_id, policy)

    info = _with_store(run)
    if isinstance(info, PolicyError):
        _error(info.message)
        raise typer.Exit(2)
    if info is None:
        _error(f"no key with id {key_id}")
        raise typer.Exit(1)
    if as_json:
        _print_json(dump(key_view(info, SystemClock().now())))
    else:
        typer.echo(f"Updated {info.id} ({info.name}).")
        _print_policy(key_view(info, SystemClock().now()))


@keys_app.command("show")
def keys_show(key_id: str, as_json: JsonOpt = False) -> None:
    """One key and its whole policy (what keys list leaves out)."""
    view = key_view(_one_key(key_id, lambda ring: ring.get(key_id)), SystemClock().now())
    if as_json:
        _print_json(dump(view))
        return
    status = "revoked" if not view.active else "expired" if view.expired else "active"
    typer.echo(f"{view.id} ({view.name}, {view.prefix}), created {view.created_at}, {status}")
    _print_policy(view)


def _one_key(key_id: str, op: Callable[[KeyRing], Awaitable[KeyInfo | None]]) -> KeyInfo:
    """``op``'s key, or ``no key with id``, exit 1."""
    info = _with_store(lambda st: op(KeyRing(st, SystemClock())))
    if info is None:
        _error(f"no key with id {key_id}")
        raise typer.Exit(1)
    return info


def _print_policy(view: KeyView) -> None:
    """The limits and defaults a key has, one per line (none: that it has none)."""
    policy = {k: v for k, v in dump(view.policy).items() if v not in (None, [], {}, False)}
    if not policy:
        typer.echo("  no limits or defaults")
    for name, value in policy.items():
        shown = ", ".join(map(str, value)) if isinstance(value, list) else value
        if isinstance(shown, dict | bool):
            # As JSON, as the admin API and --json say it (true, not Python's True).
            shown = orjson.dumps(shown).decode()
        typer.echo(f"  {name}: {shown}")


@keys_app.command("list")
def keys_list(as_json: JsonOpt = False) -> None:
    """List keys (secrets are never shown: only their prefix)."""
    keys = _with_store(lambda st: KeyRing(st, SystemClock()).list())
    now = SystemClock().now()
    views = [key_view(k, now) for k in keys]
    if as_json:
        _print_json(dump(views))
        return
    table = _table("id", "name", "prefix", "created", "status")
    for v in views:
        if not v.active:
            status = f"revoked {v.revoked_at}"
        elif v.expired:
            status = f"expired {v.policy.expires_at}"
        else:
            status = "active"
        table.add_row(v.id, v.name, v.prefix, v.created_at, status)
    _console().print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str, as_json: JsonOpt = False) -> None:
    """Revoke a key; sessions it opens from now on are refused."""
    asked = SystemClock().now()
    info = _one_key(key_id, lambda ring: ring.revoke(key_id))
    if as_json:
        _print_json(dump(key_view(info, SystemClock().now())))
    elif info.revoked_at is not None and info.revoked_at < asked:
        typer.echo(f"{info.id} ({info.name}) was revoked already, at {timestamp(info.revoked_at)}.")
    else:
        typer.echo(f"Revoked {info.id} ({info.name}).")


@secrets_app.command("list")
def secrets_list(
    key: Annotated[str | None, typer.Option(help="Only this key id's secrets.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Client secrets not yet expired (revoked ones too), newest first; never their values."""
    clock = SystemClock()
    rows = _of_key(key, lambda st: KeyRing(st, clock).list_secrets(key))
    views = [client_secret_view(c, clock.now(), opens) for c, opens in rows]
    if as_json:
        _print_json(dump(views))
        return
    table = _table("id", "key", "type", "model", "created", "expires", "status")
    for v in views:
        # Listed: not expired itself. Inactive, then: revoked, or its key is.
        status = (
            "active"
            if v.active
            else f"revoked {v.revoked_at}"
            if v.revoked_at
            else "key revoked or expired"
        )
        table.add_row(v.id, v.key_id, v.type, v.model or "-", v.created_at, v.expires_at, status)
    _console().print(table)


@secrets_app.command("revoke")
def secrets_revoke(
    secret: Annotated[str, typer.Argument(help="A secret's id (cs_...) or its value (ek_...).")],
    as_json: JsonOpt = False,
) -> None:
    """Revoke one client secret: sessions it opens from now on are refused, and the ones it
    has open end within 5 s (the admin API's revoke ends them at once)."""
    sid = secret_id_of(secret) if looks_minted(secret) else secret
    clock = SystemClock()
    row = _with_store(lambda st: KeyRing(st, clock).revoke_secret(sid))
    if row is None:
        # Only an id's shape is echoed: anything else may be a secret pasted by mistake (and
        # is no markup for rich either).
        named = f"with id {sid}" if id_hash_prefix(sid) else "of that shape (cs_... or ek_...)"
        _error(f"no client secret {named}")
        raise typer.Exit(1)
    view = client_secret_view(row, clock.now(), key_opens=False)  # revoked
    if as_json:
        _print_json(dump(view))
    else:
        typer.echo(f"Revoked {view.id} (minted by {view.key_id}).")


@app.command()
def usage(
    key: Annotated[str | None, typer.Option(help="Only this key id.")] = None,
    since: Annotated[str | None, typer.Option(help="From this UTC day (YYYY-MM-DD).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Usage and cost by key, model, UTC day and unit: tokens, or the seconds of audio a row
    priced per second or minute billed; "review" counts records whose usage could not be read in
    full (what they did count is in the totals; see the log for each)."""
    q = _read_as({"key_id": key, "since": since}, UsageQuery)
    rows = _of_key(q.key_id, lambda st: st.usage_summary(q.key_id, q.since))
    if as_json:
        _print_json(dump([usage_row(r) for r in rows]))
        return
    table = _table(
        "day",
        "key",
        "model",
        "unit",
        "text in/out",
        "audio in/out",
        "cached in",
        "audio s",
        "cost $",
        "provider $",
        "review",
    )
    for r in rows:
        u = r.usage
        table.add_row(
            r.day,
            r.key_name,
            r.model,
            r.unit,
            f"{u.text_in}/{u.text_out}",
            f"{u.audio_in}/{u.audio_out}",
            str(u.text_in_cached + u.audio_in_cached),
            f"{u.audio_seconds:.3f}",
            usd_str(r.charged_nanos),
            usd_str(r.provider_nanos),
            str(r.needs_review),
        )
    _console().print(table)


@app.command()
def sessions(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    key: Annotated[str | None, typer.Option(help="Only this key id.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Recent sessions: key, model, start, duration, close, tokens, audio seconds billed by
    duration, and cost."""
    q = _read_as({"limit": limit, "key_id": key}, SessionsQuery)
    rows = _of_key(q.key_id, lambda st: st.recent_sessions(q.limit, q.key_id))
    if as_json:
        _print_json(dump([session_row(r) for r in rows]))
        return
    table = _table("started", "key", "model", "duration", "close", "tokens", "audio s", "cost $")
    for r in rows:
        dur = f"{r.ended_at - r.started_at:.1f}s" if r.ended_at else "live"
        close = f"{r.close_code} {r.close_reason or ''}".strip() if r.close_code else "-"
        table.add_row(
            timestamp(r.started_at),
            r.key_name,
            # The intent beside the model: a transcription, translation, Live, WebRTC or
            # call-sideband session is told apart from a realtime one, as in the console.
            " ".join(filter(None, (r.model, f"({r.intent})" if r.intent else None))) or "-",
            dur,
            close,
            str(r.usage.total_tokens),
            f"{r.usage.audio_seconds:.3f}",
            usd_str(r.charged_nanos),
        )
    _console().print(table)


@app.command()
def talk(
    key: Annotated[str, typer.Option(envvar="RTGATE_API_KEY", help="Gateway key.")],
    text: Annotated[str | None, typer.Option(help="Say this (a typed line).")] = None,
    wav: Annotated[Path | None, typer.Option(help="Say this WAV file (16-bit).")] = None,
    out: Annotated[Path, typer.Option(help="Where to save the spoken reply.")] = Path("reply.wav"),
    url: Annotated[
        str | None,
        typer.Option(
            help="The gateway's WebSocket base (default: this machine's gateway, at the host, "
            "port and TLS the settings name: ws://127.0.0.1:8080/v1 unless changed)."
        ),
    ] = None,
    model: Annotated[str, typer.Option(help="Model to talk to.")] = "gpt-realtime",
    instructions: Annotated[str | None, typer.Option(help="Session instructions.")] = None,
    quiet: Annotated[bool, typer.Option(help="Do not print every event.")] = False,
) -> None:
    """Talk to a realtime model through the gateway: one turn, then the reply and its cost."""
    from aiohttp import (
        ClientConnectorCertificateError,
        ClientConnectorError,
        ClientError,
        ClientSSLError,
        ServerDisconnectedError,
        WSServerHandshakeError,
    )

    from rtgate.talk import charged_price, read_wav_24k, trusting, write_wav_24k
    from rtgate.talk import talk as run_talk

    if (text is None) == (wav is None):
        _error("give exactly one of --text, --wav")
        raise typer.Exit(2)
    if text is not None and not text.strip():
        _error("--text: give something to say")
        raise typer.Exit(2)
    if url is not None and not url.startswith(("ws://", "wss://", "http://", "https://")):
        _error(f"--url: {url!r} is not a ws:// or wss:// URL (ws://127.0.0.1:8080/v1)")
        raise typer.Exit(2)
    # Where the reply goes is checked before the turn is paid for.
    if not out.parent.is_dir():
        _error(f"--out: no directory {str(out.parent)!r} to save the reply in")
        raise typer.Exit(2)
    console = _rich_console()

    def show(event: dict[str, Any]) -> None:
        t = event.get("type", "?")
        # An error is said once, at the end: as the refusal that ended the talk, or below the
        # reply it did not stop.
        if quiet or t in ("response.output_audio.delta", "input_audio_buffer.append", "error"):
            return
        detail = event.get("delta") if isinstance(event.get("delta"), str) else ""
        console.print(f"[dim]{t}[/dim] {detail}".rstrip(), highlight=False)

    given_url = url is not None
    try:
        pcm = read_wav_24k(wav) if wav is not None else None
        settings = _settings()
        # The settings' port (RTGATE_PORT, the config file), not a fixed 8080: ``make run``
        # on another port is talked to as it is told to listen.
        url = url or settings.local_url("/v1")
        result = asyncio.run(
            run_talk(
                url,
                key,
                model=model,
                text=text,
                pcm=pcm,
                instructions=instructions,
                on_event=show,
                tls=trusting(settings.tls_certfile) if url.startswith("wss:") else None,
            )
        )
    except (GatewayError, OSError, ClientError) as err:
        if isinstance(err, WSServerHandshakeError):
            _error(f"{url} refused the WebSocket: HTTP {err.status} {err.message}")
        elif isinstance(err, ClientConnectorError) and not isinstance(err, ClientSSLError):
            # aiohttp's text names "ssl:default" and the call that failed; the reason is enough.
            _error(f"cannot connect to {url}: {err.os_error.strerror or err.os_error}")
        else:
            _error(str(err) or type(err).__name__)
        hint = None
        if isinstance(err, ClientConnectorCertificateError):
            hint = (
                f"{url} serves a certificate this machine does not trust, or not for that "
                "name: for a self-signed one (scripts/dev-cert), set SSL_CERT_FILE to it, or "
                "name it in the settings with its key (RTGATE_TLS_CERTFILE, RTGATE_TLS_KEYFILE)"
            )
        elif isinstance(err, ClientSSLError):
            hint = f"no TLS at {url}? a gateway started without a certificate is dialled ws://"
        elif isinstance(err, ClientConnectorError):
            where = "its --url" if given_url else "its port (RTGATE_PORT) or its --url"
            hint = f"no gateway answers at {url}: start one (rtgate serve), or give talk {where}"
        elif isinstance(err, ServerDisconnectedError) and (url or "").startswith("ws:"):
            hint = (
                f"{url} ended the connection unanswered: a gateway serving TLS "
                "(rtgate serve --certfile) is dialled with wss://, given as --url or by "
                "naming its certificate in the settings (RTGATE_TLS_CERTFILE, RTGATE_TLS_KEYFILE)"
            )
        if hint is not None:
            _rich_console(stderr=True).print(hint, markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from err
    if result.error is not None:
        _error(f"{result.error.get('code')}: {result.error.get('message')}")
    if result.user_transcript:
        console.print(f"you said:  {result.user_transcript.strip()}")
    console.print(f"assistant: {(result.transcript or result.text).strip()}")
    unsaved = False
    if result.audio:
        try:
            write_wav_24k(out, bytes(result.audio))
        except OSError as err:
            _error(f"--out: cannot save the reply to {str(out)!r}: {err.strerror or err}")
            unsaved = True
        else:
            console.print(f"reply audio: {out} ({len(result.audio) / 48000:.2f} s)")
    u = result.usage or {}
    price = charged_price(settings, model, result.usage)
    console.print(
        f"usage: {u.get('input_tokens', 0)} in / {u.get('output_tokens', 0)} out tokens; "
        + (f"${price} charged" if price is not None else "no price for this model")
    )
    failed = result.failure()
    if failed is not None:
        _error(failed)
    if result.error is not None or failed is not None or unsaved:
        # The reply came, but not as asked (a refused --instructions, a brain that failed):
        # not a success.
        raise typer.Exit(1)


def main() -> None:
    app()
