"""The one place that reads settings: a TOML file, then ``RTGATE_*`` environment overrides.

Everything else receives a frozen ``Settings`` (or the parts of it it needs) as an argument.
Provider keys are read from the environment only (``OPENAI_API_KEY`` or the variable an upstream
names in ``api_key_env``), never from the file, so a config file can be shared or committed; so are
the admin API's token (``RTGATE_ADMIN_TOKEN``) and ``/metrics``' (``RTGATE_METRICS_TOKEN``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from decimal import Decimal
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta
from msgspec.structs import force_setattr

from rtgate.errors import ConfigError
from rtgate.tls import server_context
from rtgate.validation import problem

UpstreamKind = Literal["openai", "azure", "local", "gemini"]

#: Google's Gemini Live endpoint (docs/protocol-gemini.md 1): the default ``base_url`` of a
#: ``gemini`` upstream. A ``base_url`` that names a host only gets this path
#: (``relay/upstream.py``).
GEMINI_LIVE_URL = (
    "wss://generativelanguage.googleapis.com/ws/"
    "google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
)


#: OpenAI's Realtime base: the ``base_url`` of an upstream that names none (but ``gemini``).
OPENAI_URL = "wss://api.openai.com/v1"

Positive = Annotated[float, Meta(gt=0)]


class Secret:
    """A key or token read from the environment: its value only through ``get_secret_value``,
    never in a ``repr``, a ``str`` or a dump (``**********``); compared in constant time."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(Secret)


class _Frozen(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Settings parts: immutable, and a key the type does not name is refused, not ignored."""


class UpstreamSettings(_Frozen, frozen=True, kw_only=True):
    """One provider endpoint the gateway can dial."""

    kind: UpstreamKind = "openai"
    #: WebSocket base, e.g. ``wss://api.openai.com/v1`` or ``wss://RES.openai.azure.com/openai/v1``;
    #: for ``gemini``, Google's Live endpoint (``GEMINI_LIVE_URL``, or a host alone). Left empty:
    #: the kind's own (``GEMINI_LIVE_URL`` for ``gemini``, ``OPENAI_URL`` for the others).
    base_url: str = ""
    #: Environment variable holding the provider key (never the key itself). Only the built-in
    #: ``openai`` upstream defaults to ``OPENAI_API_KEY``, and a ``gemini`` one to
    #: ``GEMINI_API_KEY`` (Google's own name for it): another upstream must name its own, so
    #: a provider's key never reaches a host it was not meant for.
    api_key_env: str | None = None
    organization: str | None = None
    project: str | None = None
    #: Send ``OpenAI-Beta: realtime=v1``. Only for upstreams that still speak the beta shape:
    #: OpenAI itself closes such sessions with 4000 since 2026.
    beta: bool = False
    connect_timeout_s: Positive = 10.0
    #: Resolved at load time from ``api_key_env``; never shown (``Secret``).
    api_key: Secret | None = None

    def __post_init__(self) -> None:
        url = self.base_url or (GEMINI_LIVE_URL if self.kind == "gemini" else OPENAI_URL)
        if not url.startswith(("ws://", "wss://", "http://", "https://")):
            raise ValueError("base_url: must start with ws://, wss://, http:// or https://")
        force_setattr(self, "base_url", url.rstrip("/"))


#: What a price row's rates are per: ``token`` (per 1M tokens, by kind), or a ``second`` or
#: ``minute`` of audio (for usage the provider reports as a duration, ``usage.seconds``).
PriceUnit = Literal["token", "second", "minute"]

#: Seconds in one unit of a duration-priced row.
UNIT_SECONDS: dict[PriceUnit, int] = {"second": 1, "minute": 60}


#: A price row's rates per 1M tokens, by kind.
TOKEN_RATES = (
    "text_in",
    "text_cached",
    "text_out",
    "audio_in",
    "audio_cached",
    "audio_out",
    "image_in",
    "image_cached",
)


class PriceSettings(_Frozen, frozen=True, kw_only=True):
    """One row of the price table: the provider's prices for a model, and the markup charged on
    them (``markup_percent`` turns the provider's cost into the price charged to a key).

    ``unit`` says what the row prices. ``token`` (the default): the token rates, in USD per 1M
    tokens. ``second`` or ``minute``: ``rate``, in USD per second or minute of audio, for usage
    reported as a duration; such a row may also set token rates, and then prices tokens too
    (the ``local`` row does, for everything the engine serves). Which usage a row leaves
    unpriced is decided in ``rtgate.metering.cost.prices_usage``.
    """

    unit: PriceUnit = "token"
    #: USD per ``unit`` of audio; only on a ``second`` or ``minute`` row.
    rate: Decimal = Decimal(0)
    #: USD per ``unit`` of a GPT-Live session's standby time (its usage's ``paused_seconds``,
    #: docs/protocol-live.md 4); None: billed at ``rate``. Only on a ``second`` or ``minute`` row.
    standby_rate: Decimal | None = None
    text_in: Decimal = Decimal(0)
    text_cached: Decimal | None = None
    text_out: Decimal = Decimal(0)
    audio_in: Decimal = Decimal(0)
    audio_cached: Decimal | None = None
    audio_out: Decimal = Decimal(0)
    image_in: Decimal = Decimal(0)
    image_cached: Decimal | None = None
    markup_percent: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        for name in ("rate", "standby_rate", *TOKEN_RATES):
            value = getattr(self, name)
            if value is not None and (not value.is_finite() or value < 0):
                raise ValueError(f"{name}: a price is a number of USD, 0 or more")
        if not self.markup_percent.is_finite() or self.markup_percent < -100:
            raise ValueError("markup_percent: at least -100 (a discount of all of it)")
        for name in ("rate", "standby_rate"):
            if self.unit == "token" and getattr(self, name):
                raise ValueError(
                    f'{name}: is per second or minute of audio: set unit = "second" or "minute"'
                )

    @property
    def charges_anything(self) -> bool:
        """Whether any rate is set (not 0): a row that sets none prices every unit at 0."""
        return bool(self.rate) or bool(self.standby_rate) or self.sets_token_rates

    @property
    def at_standby(self) -> PriceSettings:
        """The row as it prices standby time: ``standby_rate`` as its ``rate``, if set."""
        if self.standby_rate is None:
            return self
        return msgspec.structs.replace(self, rate=self.standby_rate)

    @property
    def sets_token_rates(self) -> bool:
        """Whether any token rate is set (not 0): a duration row prices tokens only then."""
        return any(getattr(self, f) for f in TOKEN_RATES)


_DATE_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")


def model_family(name: str) -> str:
    """``gpt-realtime-mini-2025-10-06`` -> ``gpt-realtime-mini``."""
    return _DATE_SUFFIX.sub("", name)


class ModelSettings(_Frozen, frozen=True, kw_only=True):
    """A model name clients may ask for, and where it goes."""

    upstream: str
    #: The model id sent upstream (for Azure: the deployment name). Defaults to the name itself.
    upstream_model: str | None = None
    #: Key into the price table. Defaults to the model's family (its name without a date suffix).
    prices: str | None = None


class EngineSettings(_Frozen, frozen=True, kw_only=True):
    """The embedded local engine's stages. ``auto`` picks the best one installed."""

    vad: Literal["auto", "silero", "energy"] = "auto"
    stt: Literal["auto", "whisper", "none"] = "auto"
    tts: Literal["auto", "piper", "espeak", "tone"] = "auto"
    brain: Literal["echo", "scripted", "openai-compatible"] = "echo"
    #: Rules file for the scripted brain (TOML, see ``rtgate.engine.brain.ScriptedBrain``).
    script: Path | None = None
    #: An OpenAI-compatible server for the brain, e.g. ``http://127.0.0.1:11434/v1`` (Ollama).
    brain_url: str | None = None
    brain_model: str = "llama3.2"
    #: Environment variable holding the brain server's key, if it wants one.
    brain_api_key_env: str | None = None
    brain_api_key: Secret | None = None
    #: Size of each ``response.output_audio.delta``.
    audio_chunk_ms: Annotated[int, Meta(ge=10, le=2000)] = 100
    #: Piper without sampling noise: the same text always gives the same audio.
    deterministic_voice: bool = False
    #: How often a GPT-Live session on the engine reports its cumulative usage
    #: (``session.usage.updated``); OpenAI's does about once a minute.
    live_usage_seconds: Annotated[float, Meta(gt=0, le=3600)] = 60.0


def _d(s: str) -> Decimal:
    return Decimal(s)


# The seed's prices for the two headline models; the rest from docs/protocol.md section 4.3.
# Cached-input rates default to 10% of the input rate when a row leaves them out.
DEFAULT_PRICES: dict[str, PriceSettings] = {
    "gpt-realtime": PriceSettings(
        text_in=_d("4"),
        text_cached=_d("0.40"),
        text_out=_d("16"),
        audio_in=_d("32"),
        audio_cached=_d("0.40"),
        audio_out=_d("64"),
        image_in=_d("5"),
        image_cached=_d("0.50"),
    ),
    "gpt-realtime-mini": PriceSettings(
        text_in=_d("1"),
        text_cached=_d("0.10"),
        text_out=_d("4"),
        audio_in=_d("8"),
        audio_cached=_d("0.30"),
        audio_out=_d("16"),
        image_in=_d("0.80"),
        image_cached=_d("0.08"),
    ),
    "gpt-realtime-1.5": PriceSettings(
        text_in=_d("4"),
        text_cached=_d("0.40"),
        text_out=_d("16"),
        audio_in=_d("32"),
        audio_cached=_d("0.40"),
        audio_out=_d("64"),
        image_in=_d("5"),
        image_cached=_d("0.50"),
    ),
    "gpt-realtime-2": PriceSettings(
        text_in=_d("4"),
        text_cached=_d("0.40"),
        text_out=_d("24"),
        audio_in=_d("32"),
        audio_cached=_d("0.40"),
        audio_out=_d("64"),
        image_in=_d("5"),
        image_cached=_d("0.50"),
    ),
    "gpt-realtime-2.1": PriceSettings(
        text_in=_d("4"),
        text_cached=_d("0.40"),
        text_out=_d("24"),
        audio_in=_d("32"),
        audio_cached=_d("0.40"),
        audio_out=_d("64"),
        image_in=_d("5"),
        image_cached=_d("0.50"),
    ),
    "gpt-realtime-2.1-mini": PriceSettings(
        text_in=_d("0.60"),
        text_cached=_d("0.06"),
        text_out=_d("2.40"),
        audio_in=_d("10"),
        audio_cached=_d("0.30"),
        audio_out=_d("20"),
        image_in=_d("0.80"),
        image_cached=_d("0.08"),
    ),
    "gpt-4o-transcribe": PriceSettings(text_in=_d("2.50"), audio_in=_d("6"), text_out=_d("10")),
    "gpt-4o-transcribe-diarize": PriceSettings(
        text_in=_d("2.50"), audio_in=_d("6"), text_out=_d("10")
    ),
    "gpt-4o-mini-transcribe": PriceSettings(text_in=_d("1.25"), audio_in=_d("3"), text_out=_d("5")),
    # Billed by the duration of the audio: OpenAI's list prices per minute (docs/protocol.md
    # 4.3). Live's voice is billed by the second at its per-minute price, which a per-second
    # rate could only round ($0.05 / 60 has no finite decimal): durations are kept to the
    # millisecond, so a per-minute rate bills every second exactly.
    "whisper-1": PriceSettings(unit="minute", rate=_d("0.006")),
    "gpt-transcribe": PriceSettings(unit="minute", rate=_d("0.0045")),
    "gpt-live-transcribe": PriceSettings(unit="minute", rate=_d("0.017")),
    "gpt-realtime-whisper": PriceSettings(unit="minute", rate=_d("0.017")),
    "gpt-realtime-translate": PriceSettings(unit="minute", rate=_d("0.034")),
    # GPT-Live's voice; its backend's tokens price by the backend model's own row.
    "gpt-live-1": PriceSettings(unit="minute", rate=_d("0.05")),
    # Active time, and standby (WebRTC only, while inference is paused): usage reports it apart
    # as paused_seconds (docs/protocol-live.md 4).
    "gpt-live-1.1": PriceSettings(unit="minute", rate=_d("0.05"), standby_rate=_d("0.02")),
    # Gemini Live, per 1M tokens by modality (docs/protocol-gemini.md 2: text from Google's page,
    # the audio rates from third-party tables citing it). Google publishes no cached rate for Live:
    # a tenth of the input rate, like every row that leaves it out. Image and video input as text.
    # Models whose rates are not known (3.8 extended thinking's audio, the previews) get no default
    # row: their usage is recorded unpriced and logged, never billed at a guess.
    "gemini-3.8-live": PriceSettings(
        text_in=_d("0.75"),
        text_out=_d("4.50"),
        audio_in=_d("3.00"),
        audio_out=_d("12.00"),
        image_in=_d("0.75"),
    ),
    # What the embedded local engine serves costs the operator nothing (catalog.py prices it
    # all by this row; `[prices.local]` in the config changes it).
    "local": PriceSettings(),
}

DEFAULT_OPENAI_MODELS = (
    "gpt-realtime",
    "gpt-realtime-mini",
    "gpt-realtime-1.5",
    "gpt-realtime-2",
    "gpt-realtime-2.1",
    "gpt-realtime-2.1-mini",
    # Served on /v1/realtime/translations only (relay/endpoint.py).
    "gpt-realtime-translate",
    # GPT-Live, on /v1/live/sessions only (relay/endpoint.py, docs/protocol-live.md 1).
    "gpt-live-1",
    "gpt-live-1.1",
)


class Settings(_Frozen, frozen=True, kw_only=True):
    home: Path = Path(".rtgate")
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8080
    workers: Annotated[int, Meta(ge=1, le=256)] = 1
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: ``auto``: readable lines on a terminal, JSON lines otherwise (a file, a pipe, a collector).
    log_format: Literal["auto", "console", "json"] = "auto"
    #: The hard cap on one connection, as OpenAI's 60 minutes.
    max_session_seconds: Positive = 3600.0
    #: How long a drain (SIGTERM, ``POST /admin/v1/drain``) lets live sessions run before it
    #: ends them with 1001; calls last minutes, so a deploy should not cut them.
    drain_seconds: Annotated[float, Meta(ge=0)] = 300.0
    #: A request's headers must arrive this long after its connection opened (or after the
    #: previous response: idle keep-alive connections close as late), and its body this long
    #: after its headers (slowloris).
    request_timeout_seconds: Positive = 15.0
    #: Accept permessage-deflate when a client offers it (off: declined, RFC 7692 section 5).
    permessage_deflate: bool = False
    #: Ping the client after this much silence and drop it when still silent half as long
    #: after: a peer gone without a FIN is not held to the cap. None: never.
    heartbeat_seconds: Positive | None = 30.0
    #: Ping the upstream (a relayed session's or a call's sideband) after this much silence, and
    #: end the session with ``upstream_unavailable`` when nothing arrives within
    #: ``upstream_pong_timeout_seconds`` of the ping: a stopped provider is noticed within
    #: their sum and a watchdog tick (8 s) of its last frame instead of leaving the caller in
    #: dead air. A session that talks is never pinged. None: never.
    upstream_ping_after_seconds: Positive | None = 4.0
    upstream_pong_timeout_seconds: Positive = 3.0
    #: A translation session's input audio (which the provider does not report, so the gateway
    #: counts it) is recorded every this many seconds of audio, and at the session's end: a
    #: crash loses at most this much audio per session unbilled.
    translation_record_seconds: Annotated[float, Meta(gt=0, le=600)] = 10.0
    #: Which audio a translation session is billed by: the client's ``input`` (the default, as
    #: the reference advises) or the translated ``output``. The provider's basis is not
    #: documented (docs/protocol.md 10); reconcile against its invoice and set this to match.
    translation_billed_audio: Literal["input", "output"] = "input"
    #: GPT-Live (``/v1/live/sessions``): how long a client may take to send its first message,
    #: ``session.start``, which names the model; past it: ``invalid_session_start``, no dial.
    live_start_seconds: Annotated[float, Meta(gt=0, le=300)] = 10.0
    #: GPT-Live: how long the upstream may take to answer ``session.close`` with
    #: ``session.closed`` (the final total) when the client or the gateway ends a session;
    #: past it the upstream is closed and the record flagged unconfirmed (docs/protocol-live.md 7:
    #: how long finalisation takes is not documented).
    live_close_seconds: Annotated[float, Meta(gt=0, le=120)] = 5.0
    #: GPT-Live over WebRTC or SIP: the voice the provider bills as a session starts, credited
    #: against its duration (docs/protocol-live.md 9: 15 s); recorded as the call's sideband
    #: opens. 0: not recorded (whether the wire's totals include it is unverified).
    live_startup_seconds: Annotated[float, Meta(ge=0, le=600)] = 15.0
    #: How long a usage commit may take; past it the records go to the local spill (fsynced)
    #: and the frame goes on, and the spill is written to the store once it answers.
    commit_timeout_seconds: Positive = 1.0
    #: How long any other store call a client waits on may take (a key lookup, a budget read,
    #: minting a secret, claiming a call); past it the call fails (``store_unavailable``) or
    #: falls back.
    store_timeout_seconds: Positive = 3.0
    #: How often the spill is offered to the store again while it does not take it.
    spill_retry_seconds: Positive = 1.0
    #: A key that authenticated within this long is admitted from memory while the store does
    #: not answer (0: never).
    key_cache_seconds: Annotated[float, Meta(ge=0)] = 300.0
    #: How often each serving process tells the database it is alive; the open sessions of
    #: one not heard from for four beats are ended there as lost (``rtgate.lost_sessions``).
    instance_beat_seconds: Annotated[float, Meta(ge=0.1, le=3600)] = 20.0
    #: Largest inbound WebSocket message, compressed or not: this many bytes pass, one more is
    #: closed with 1009. A 15 MiB append plus its JSON must fit.
    max_message_bytes: Annotated[int, Meta(ge=1024)] = 16 * 1024 * 1024
    #: Largest HTTP request body (a session, an SDP offer: a few KiB); larger is 413.
    max_http_body_bytes: Annotated[int, Meta(ge=1024)] = 1024 * 1024
    #: Upstream used when a model's route does not name one, and for ``intent=transcription``.
    default_upstream: str | None = None
    #: The model a connection without ``?model=`` gets.
    default_model: str = "gpt-realtime"
    engine: EngineSettings = msgspec.field(default_factory=EngineSettings)
    upstreams: dict[str, UpstreamSettings] = {}
    models: dict[str, ModelSettings] = {}
    prices: dict[str, PriceSettings] = {}
    #: Failed authentications one address may make at once; past them its attempts are refused
    #: unchecked (``rate_limit_exceeded``) until its allowance refills. 0: no throttle.
    auth_failures_burst: Annotated[int, Meta(ge=0)] = 20
    #: How fast an address's allowance of failures refills.
    auth_failures_per_minute: Positive = 10.0
    #: Reverse proxies (addresses or networks) whose ``X-Forwarded-For`` names the caller; the
    #: peer address is used otherwise. ``RTGATE_TRUSTED_PROXIES`` takes them comma-separated.
    #: As written; ``proxy_networks`` are the networks they name.
    trusted_proxies: tuple[str, ...] = ()
    #: Bearer token of the admin API (``/admin/v1/``); unset, the admin API is disabled. Read
    #: from ``RTGATE_ADMIN_TOKEN`` only; never shown (``Secret``).
    admin_token: Secret | None = None
    #: Bearer token ``GET /metrics`` requires (it shows key ids and spend); unset, the page is
    #: open. Read from ``RTGATE_METRICS_TOKEN`` only; never shown (``Secret``).
    metrics_token: Secret | None = None
    #: TLS on the listener (``rtgate serve --certfile --keyfile``): PEM files, both or none.
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    #: Redis holding live-session and rate counters shared by every instance (``redis://``,
    #: ``rediss://`` or ``unix://``). Unset, each process counts its own sessions.
    redis_url: str | None = None
    #: Prefix of every key rtgate writes in that Redis, so deployments can share one server.
    redis_prefix: Annotated[str, Meta(min_length=1, max_length=100)] = "rtgate:"

    def __post_init__(self) -> None:
        if not self.database_url:
            force_setattr(self, "database_url", None)  # unset: SQLite in ``home``
        else:
            # Read as the store will read it, so a URL it cannot open stops start-up here.
            from rtgate.store.connections import postgres_dsn, sqlite_path

            try:
                if sqlite_path(self.database_url) is None:
                    postgres_dsn(self.database_url)
            except ValueError as exc:
                message = str(exc).removeprefix("database_url: ")
                raise ValueError(f"database_url: {message}") from exc
        if not self.redis_url:
            force_setattr(self, "redis_url", None)
        elif not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis_url: must start with redis://, rediss:// or unix://")
        if "{" in self.redis_prefix or "}" in self.redis_prefix:
            raise ValueError(
                "redis_prefix: must not contain { or } (rtgate uses the key id as the hash tag)"
            )
        for proxy in self.trusted_proxies:
            try:
                ip_network(proxy)
            except ValueError as exc:
                raise ValueError(f"trusted_proxies: {exc}") from exc

    @property
    def proxy_networks(self) -> tuple[IPv4Network | IPv6Network, ...]:
        """The networks ``trusted_proxies`` name (an address alone is its /32 or /128)."""
        return tuple(ip_network(p) for p in self.trusted_proxies)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'rtgate.db').resolve()}"

    def local_url(self, path: str) -> str:
        """Where a client on this machine reaches ``path`` of the gateway these settings serve
        (``rtgate talk``'s default): their port, ``wss`` when they name a certificate."""
        return loopback_url("wss" if self.tls_certfile else "ws", self.host, self.port, path)


def fingerprint(settings: Settings) -> str:
    """A digest of every value ``settings`` hold, secrets included: the parent of ``--workers
    N`` sends its own to each worker, which reads the settings itself and refuses to start on
    others (the config file or the environment changed in between)."""

    def shown(value: Any) -> Any:
        return value.get_secret_value() if isinstance(value, Secret) else str(value)

    encoded = msgspec.json.encode(settings, enc_hook=shown, order="sorted")
    return hashlib.sha256(encoded).hexdigest()


def loopback_url(scheme: str, host: str, port: int, path: str) -> str:
    """The URL a process on this machine dials for a listener bound to ``host``: one bound to
    every interface (``0.0.0.0``, ``::``, empty) through 127.0.0.1, an IPv6 address in brackets
    (RFC 3986 3.2.2)."""
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host  # noqa: S104
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}{path}"


_ENV_SCALARS: dict[str, str] = {
    "RTGATE_HOME": "home",
    "RTGATE_DATABASE_URL": "database_url",
    "RTGATE_HOST": "host",
    "RTGATE_TLS_CERTFILE": "tls_certfile",
    "RTGATE_TLS_KEYFILE": "tls_keyfile",
    "RTGATE_PORT": "port",
    "RTGATE_WORKERS": "workers",
    "RTGATE_LOG_LEVEL": "log_level",
    "RTGATE_LOG_FORMAT": "log_format",
    "RTGATE_MAX_SESSION_SECONDS": "max_session_seconds",
    "RTGATE_DRAIN_SECONDS": "drain_seconds",
    "RTGATE_PERMESSAGE_DEFLATE": "permessage_deflate",
    "RTGATE_REQUEST_TIMEOUT_SECONDS": "request_timeout_seconds",
    "RTGATE_MAX_MESSAGE_BYTES": "max_message_bytes",
    "RTGATE_HEARTBEAT_SECONDS": "heartbeat_seconds",
    "RTGATE_UPSTREAM_PING_AFTER_SECONDS": "upstream_ping_after_seconds",
    "RTGATE_UPSTREAM_PONG_TIMEOUT_SECONDS": "upstream_pong_timeout_seconds",
    "RTGATE_MAX_HTTP_BODY_BYTES": "max_http_body_bytes",
    "RTGATE_COMMIT_TIMEOUT_SECONDS": "commit_timeout_seconds",
    "RTGATE_TRANSLATION_RECORD_SECONDS": "translation_record_seconds",
    "RTGATE_TRANSLATION_BILLED_AUDIO": "translation_billed_audio",
    "RTGATE_LIVE_START_SECONDS": "live_start_seconds",
    "RTGATE_LIVE_CLOSE_SECONDS": "live_close_seconds",
    "RTGATE_LIVE_STARTUP_SECONDS": "live_startup_seconds",
    "RTGATE_STORE_TIMEOUT_SECONDS": "store_timeout_seconds",
    "RTGATE_SPILL_RETRY_SECONDS": "spill_retry_seconds",
    "RTGATE_KEY_CACHE_SECONDS": "key_cache_seconds",
    "RTGATE_INSTANCE_BEAT_SECONDS": "instance_beat_seconds",
    "RTGATE_DEFAULT_UPSTREAM": "default_upstream",
    "RTGATE_REDIS_URL": "redis_url",
    "RTGATE_AUTH_FAILURES_BURST": "auth_failures_burst",
    "RTGATE_AUTH_FAILURES_PER_MINUTE": "auth_failures_per_minute",
    "RTGATE_TRUSTED_PROXIES": "trusted_proxies",
    "RTGATE_REDIS_PREFIX": "redis_prefix",
}
_ENV_ENGINE: dict[str, str] = {
    "RTGATE_ENGINE_VAD": "vad",
    "RTGATE_ENGINE_STT": "stt",
    "RTGATE_ENGINE_TTS": "tts",
    "RTGATE_ENGINE_BRAIN": "brain",
    "RTGATE_ENGINE_SCRIPT": "script",
    "RTGATE_ENGINE_BRAIN_URL": "brain_url",
    "RTGATE_ENGINE_BRAIN_MODEL": "brain_model",
}
#: Overrides of the upstream named ``gemini`` (created, of kind ``gemini``, when absent).
_ENV_GEMINI: dict[str, str] = {"RTGATE_GEMINI_BASE_URL": "base_url"}
_ENV_OPENAI: dict[str, str] = {
    "RTGATE_OPENAI_BASE_URL": "base_url",
    "RTGATE_OPENAI_ORGANIZATION": "organization",
    "RTGATE_OPENAI_PROJECT": "project",
}


#: The words an environment variable may use for a boolean setting, beyond msgspec's own
#: ``true``/``false``/``1``/``0`` (any case): the ones rtgate has always taken.
_BOOL_WORDS = dict.fromkeys(("yes", "on", "t", "y"), "true") | dict.fromkeys(
    ("no", "off", "f", "n"), "false"
)

T = TypeVar("T")


def _from_text(kind: type[Any], value: Any) -> Any:
    """msgspec's ``dec_hook``: the types it does not read itself, from their TOML or env text.
    Anything else is refused with a ``TypeError``, which msgspec reports as a ``ValidationError``
    at the field (``_valid`` turns it into the ``ConfigError`` naming the setting)."""
    if kind in (Path, Secret) and isinstance(value, str):
        return kind(value)
    raise TypeError(f"Expected `str`, got `{type(value).__name__}`")


def _valid(raw: Any, kind: type[T], where: str, from_env: Mapping[str, str] | None = None) -> T:
    """``raw`` as ``kind`` (strings from the environment converted to numbers and booleans), or
    the ``ConfigError`` that names the setting, and the variable it was read from when it came
    from ``from_env`` (setting -> variable): ``port`` alone sent an operator who had set
    ``RTGATE_PORT`` looking through a config file (a newcomer's find)."""
    try:
        return msgspec.convert(raw, kind, strict=False, dec_hook=_from_text)
    except msgspec.ValidationError as exc:
        path, message = problem(exc, where)
        var = (from_env or {}).get(path or "")
        at = f"{path} ({var}): " if var else f"{path}: " if path else ""
        raise ConfigError(f"invalid configuration: {at}{message}") from exc


def load_settings(
    config_path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    given_as: Mapping[str, str] | None = None,
) -> Settings:
    """Read the TOML file (``config_path`` or ``RTGATE_CONFIG``), apply env overrides, validate.

    Raises ``ConfigError`` naming the offending setting and where its value came from: the
    variable, or what ``given_as`` says the operator typed for it (``rtgate serve --workers 0``
    travels as ``RTGATE_WORKERS``; variable -> option). The CLI prints it and exits non-zero.
    """
    env = os.environ if environ is None else environ
    path = config_path or env.get("RTGATE_CONFIG")
    raw: dict[str, Any] = {}
    if path:
        p = Path(path)
        # Imported here: a gateway configured by its environment alone does not hold the TOML
        # parser (~0.2 MB, docs/performance.md 9.17).
        import tomllib

        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {p}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
    bools = {f.name for f in msgspec.structs.fields(Settings) if f.type is bool}
    from_env: dict[str, str] = {}
    for var, field in _ENV_SCALARS.items():
        if env.get(var):
            from_env[field] = (given_as or {}).get(var, var)
            value = env[var]
            raw[field] = _BOOL_WORDS.get(value.lower(), value) if field in bools else value
    if isinstance(raw.get("trusted_proxies"), str):
        raw["trusted_proxies"] = [p.strip() for p in raw["trusted_proxies"].split(",") if p.strip()]

    engine = dict(raw.get("engine", {}))
    for var, field in _ENV_ENGINE.items():
        if env.get(var):
            engine[field] = env[var]
    if "brain_api_key" in engine:
        raise ConfigError("engine.brain_api_key: name the variable with brain_api_key_env")
    if engine.get("brain_api_key_env") and env.get(engine["brain_api_key_env"]):
        engine["brain_api_key"] = env[engine["brain_api_key_env"]]
    raw["engine"] = engine

    if "api_key" in raw or "openai_api_key" in raw:
        # A newcomer's guess at where OpenAI's key goes (it was "contains unknown field").
        raise ConfigError(
            "api_key: provider keys are read from the environment (OPENAI_API_KEY, or the"
            " variable an upstream's api_key_env names), never from the config file"
        )
    upstreams: dict[str, Any] = {k: dict(v) for k, v in dict(raw.pop("upstreams", {})).items()}
    openai = upstreams.setdefault("openai", {"kind": "openai"})
    for var, field in _ENV_OPENAI.items():
        if env.get(var):
            openai[field] = env[var]
    openai.setdefault("api_key_env", "OPENAI_API_KEY")
    upstreams.setdefault("local", {"kind": "local", "base_url": "ws://127.0.0.1"})
    for var, field in _ENV_GEMINI.items():
        if env.get(var):
            upstreams.setdefault("gemini", {"kind": "gemini"})[field] = env[var]
    for up in upstreams.values():
        if up.get("kind") == "gemini":
            up.setdefault("api_key_env", "GEMINI_API_KEY")
        key_env = up.get("api_key_env")
        if "api_key" in up:
            raise ConfigError(
                "upstreams.*.api_key: provider keys are read from the environment; "
                "set api_key_env to the variable's name instead"
            )
        if key_env and env.get(key_env):
            up["api_key"] = env[key_env]
    raw["upstreams"] = {
        name: _valid(up, UpstreamSettings, f"upstreams.{name}") for name, up in upstreams.items()
    }

    for token, var in (
        ("admin_token", "RTGATE_ADMIN_TOKEN"),
        ("metrics_token", "RTGATE_METRICS_TOKEN"),
    ):
        if token in raw:
            raise ConfigError(f"{token}: the token is read from {var} only")
        if env.get(var):
            # A Bearer header's value is read stripped (RFC 9110 5.5), so the token is too: a
            # newline a secret file ends with, kept, matched no request and got the operator's
            # own address throttled; spaces alone turned the console on with no usable token.
            value = env[var].strip()
            if not value:
                raise ConfigError(f"{var}: a token of spaces alone; set a real one, or none")
            raw[token] = value

    if "default_upstream" not in raw:
        raw["default_upstream"] = "openai" if "api_key" in openai else "local"

    prices = {k: msgspec.structs.asdict(v) for k, v in DEFAULT_PRICES.items()}
    for name, row in dict(raw.pop("prices", {})).items():
        if isinstance(row, dict) and "per_minute" in row:
            raise ConfigError(
                f'prices.{name}.per_minute: is now unit = "minute" with rate = the price per minute'
            )
        base = prices.get(name, {})
        # A row that keeps its unit overrides the default's rates one by one; a row in another
        # unit replaces it (a per-minute rate means nothing to a per-token row).
        if "unit" in row and row["unit"] != base.get("unit"):
            base = {}
        prices[name] = {**base, **dict(row)}
    raw["prices"] = {
        name: _valid(row, PriceSettings, f"prices.{name}") for name, row in prices.items()
    }

    models: dict[str, Any] = {
        name: {"upstream": raw["default_upstream"] if name != "local" else "local"}
        for name in (*DEFAULT_OPENAI_MODELS, "local")
    }
    models.update({k: dict(v) for k, v in dict(raw.pop("models", {})).items()})
    raw["models"] = {name: _valid(m, ModelSettings, f"models.{name}") for name, m in models.items()}
    # Each table's rows are read above, where msgspec's error can be told which row it is in.
    settings = _valid(raw, Settings, "", from_env)

    for name, model in settings.models.items():
        if model.upstream not in settings.upstreams:
            raise ConfigError(f"models.{name}.upstream: no upstream named {model.upstream!r}")
        # A row named and missing would leave the model unpriced: free, silently (a
        # newcomer's find).
        row = model.prices
        if row is not None and not {row, model_family(row)} & settings.prices.keys():
            raise ConfigError(f"models.{name}.prices: no price row named {row!r}")
    eng = settings.engine
    if eng.brain == "scripted" and eng.script is None:
        raise ConfigError("engine.script: the scripted brain needs a rules file")
    if eng.brain == "openai-compatible" and not eng.brain_url:
        raise ConfigError("engine.brain_url: the openai-compatible brain needs a server URL")
    if settings.default_upstream not in settings.upstreams:
        raise ConfigError(f"default_upstream: no upstream named {settings.default_upstream!r}")
    # A certificate that cannot be used stops start-up here, naming the setting.
    server_context(settings.tls_certfile, settings.tls_keyfile)
    return settings
