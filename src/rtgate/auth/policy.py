"""Per-key policy: which models, how many sessions, how much money, how long, which events.

Pure decisions over plain values; the endpoint and the relay core ask, and act on the answer.
A policy is checked when a session opens and again during it: the model named by every
``session.update``, the events a client may send, and the key's spend after every metered event.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import Annotated, Any, Literal

import msgspec
import orjson
from msgspec import Meta

from rtgate.catalog import Catalog
from rtgate.clock import rfc3339
from rtgate.config import model_family
from rtgate.errors import (
    AuthError,
    GatewayError,
    InvalidValue,
    ModelNotAllowed,
    PolicyError,
    QuotaExceeded,
)
from rtgate.metering.cost import NANOS_PER_USD, usd_str, usd_words
from rtgate.protocol.schema import invalid_value
from rtgate.protocol.session_fields import (
    DEFAULT_TRANSCRIPTION_MODEL,
    REALTIME,
    TRANSCRIPTION,
    applicable,
    chooses_transcription,
    merge,
    transcription_model,
    transcription_models,
)
from rtgate.validation import remove_at, value_at


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    #: Allowed model names or families; empty allows every catalog model.
    models: tuple[str, ...] = ()
    max_sessions: int | None = None
    sessions_per_minute: int | None = None
    #: Client secrets the key may mint per minute (the sessions they open count as above).
    secrets_per_minute: int | None = None
    budget_day_nanos: int | None = None
    budget_month_nanos: int | None = None
    budget_total_nanos: int | None = None
    #: Cap on one session, within the gateway's own (60 minutes by default).
    max_duration_s: float | None = None
    #: Unix seconds after which the key no longer authenticates.
    expires_at: float | None = None
    #: GA session fields applied with an initial ``session.update``
    #: (``instructions``, ``audio.output.voice``, ``audio.input.turn_detection`` ...).
    session_defaults: Mapping[str, Any] | None = None
    #: Client event types the key may not send; ``session.update:instructions`` blocks only
    #: session updates that touch ``instructions``.
    blocked_events: tuple[str, ...] = ()
    #: Keep the session's transcript (text only, never audio).
    keep_transcripts: bool = False

    @property
    def has_budget(self) -> bool:
        """Whether spend must be summed: at connect, and after every metered event."""
        # A budget of 0 is one: it refuses every session (``over_budget``).
        budgets = (self.budget_day_nanos, self.budget_month_nanos, self.budget_total_nanos)
        return any(b is not None for b in budgets)

    def to_json(self) -> str:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        # What is left out reads back as its default; a 0 (a budget of $0) is kept, so the
        # test is by identity, not ``in (None, (), False)``, which 0 equals.
        kept = {k: v for k, v in out.items() if not (v is None or v is False or v == ())}
        return orjson.dumps(kept).decode()

    @classmethod
    def from_json(cls, raw: str | None) -> KeyPolicy:
        if not raw:
            return cls()
        data = orjson.loads(raw)
        for k in ("models", "blocked_events"):
            if k in data:
                data[k] = tuple(data[k])
        return cls(**data)

    def replace(self, **changes: Any) -> KeyPolicy:
        current = {f.name: getattr(self, f.name) for f in fields(self)}
        return KeyPolicy(**{**current, **changes})


@dataclass(frozen=True, slots=True)
class Spend:
    """A key's charged spend in nano-dollars: this UTC day, this UTC month, ever."""

    day: int = 0
    month: int = 0
    total: int = 0


def allows_model(policy: KeyPolicy, model: str) -> bool:
    return not policy.models or model in policy.models or model_family(model) in policy.models


def check_model(policy: KeyPolicy, model: str, param: str = "model") -> None:
    if model and not allows_model(policy, model):
        raise ModelNotAllowed(
            f"This key may not use the model `{model}`. Allowed: {', '.join(policy.models)}.",
            param=param,
        )


#: Where a transcription session names its model (``docs/protocol.md`` 2.5).
TRANSCRIPTION_MODEL_PARAM = "session.audio.input.transcription.model"


def check_opening(
    policy: KeyPolicy,
    template: Mapping[str, Any] | None,
    *,
    transcription: bool,
    catalog: Catalog | None = None,
) -> None:
    """Refuse a session as it would open (the key's defaults, a client secret's template over
    them, and for a transcription session the default model when none is named), read once:
    - a transcription session whose model the key may not use: its model is its
      transcription model (what it is billed by). A realtime session's input transcription is
      not checked, since its model is the realtime one the key allows (and the SDKs' agents
      set a transcription model of their own, ``docs/protocol.md`` 1.6);
    - with the gateway's ``catalog``, a transcription model it does not take
      (``Catalog.transcribes``), in OpenAI's words for a value outside a closed set."""
    opening = opening_session(policy, transcription, template)
    if transcription:
        model = transcription_model(opening)
        if model is not None:
            check_model(policy, model, TRANSCRIPTION_MODEL_PARAM)
    if catalog is None:
        return
    for tm in transcription_models(opening):
        if not catalog.transcribes(tm):
            said = invalid_value(tm, catalog.transcription_names(), TRANSCRIPTION_MODEL_PARAM)
            raise InvalidValue(said.message, param=said.param)


def expired(policy: KeyPolicy, now: float) -> bool:
    """Whether the key has expired: it authenticates nothing until given a later expiry."""
    return policy.expires_at is not None and now >= policy.expires_at


def check_expiry(policy: KeyPolicy, now: float) -> None:
    if expired(policy, now):
        raise AuthError("This API key has expired.")


def over_budget(policy: KeyPolicy, spend: Spend) -> QuotaExceeded | None:
    """The first budget ``spend`` has reached, as the error to send; None while within all."""
    for label, limit, used in (
        ("daily", policy.budget_day_nanos, spend.day),
        ("monthly", policy.budget_month_nanos, spend.month),
        ("total", policy.budget_total_nanos, spend.total),
    ):
        if limit == 0:
            return QuotaExceeded(f"This key's {label} budget is $0: it may not spend anything.")
        if limit is not None and used >= limit:
            return QuotaExceeded(
                f"You exceeded your {label} budget of ${usd_words(limit)}"
                f" (spent ${usd_words(used)})."
            )
    return None


def session_seconds(policy: KeyPolicy, gateway_max: float) -> float:
    if policy.max_duration_s is None:
        return gateway_max
    return min(policy.max_duration_s, gateway_max)


class EventBlocked(PolicyError):
    """Non-fatal: the event is dropped with an error, the session goes on."""

    code = "event_not_allowed"


@dataclass
class ClientEventGuard:
    """Decides, per client text frame, whether it may go upstream.

    Only frames that can matter are parsed: the hot ``input_audio_buffer.append`` is recognised
    by its prefix and passed; others are parsed only when the policy restricts something.
    """

    policy: KeyPolicy
    #: A transcription session: its ``session.update`` names the model the key must allow in
    #: ``audio.input.transcription`` (``check_opening``).
    transcription: bool = False
    _types: frozenset[str] = field(init=False)
    _fields: dict[str, frozenset[str]] = field(init=False)

    def __post_init__(self) -> None:
        types, flds = set(), dict[str, set[str]]()
        for b in self.policy.blocked_events:
            etype, _, fname = b.partition(":")
            if fname:
                flds.setdefault(etype, set()).add(fname)
            else:
                types.add(etype)
        self._types = frozenset(types)
        self._fields = {k: frozenset(v) for k, v in flds.items()}

    @property
    def active(self) -> bool:
        return bool(self.policy.models or self._types or self._fields)

    def check(self, data: str) -> GatewayError | None:
        """A whole frame judged (the setup's update; the relay core reads its frames itself,
        ``protocol/client_frames.py``)."""
        if not self.reads(data):
            return None
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(event, dict):
            return None
        return self.check_event(event)

    def reads(self, data: str) -> bool:
        """Whether a frame (not an audio append) can be refused: every frame when the policy
        blocks events or fields, else a ``session.update`` (its model), or its beta
        transcription form on an upstream that still speaks beta."""
        return (
            bool(self._types or self._fields)
            or '"session.update"' in data
            or '"transcription_session.update"' in data
        )

    def check_event(self, event: dict[str, Any]) -> GatewayError | None:
        """``check`` for a frame parsed already (by the relay core, once). A beta
        ``transcription_session.update`` (relayed as it is to a beta upstream) is judged as
        the ``session.update`` it is, under that name (``_blockable`` takes no other)."""
        etype = event.get("type")
        if etype == "transcription_session.update":
            etype = "session.update"
        eid = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        if etype in self._types:
            return _with_event(EventBlocked(f"This key may not send `{etype}` events."), eid)
        if (override := self._override(etype, event)) is not None:
            return _with_event(override, eid)
        body = event.get("session") if etype == "session.update" else event
        if isinstance(body, dict):
            for fname in self._fields.get(str(etype), ()):
                if fname in body:
                    return _with_event(
                        EventBlocked(
                            f"This key may not change `{fname}` with `{etype}`.",
                            param=f"session.{fname}",
                        ),
                        eid,
                    )
            if etype == "session.update":
                try:
                    if isinstance(body.get("model"), str):
                        check_model(self.policy, body["model"])
                    for tm in transcription_models(body) if self.transcription else ():
                        check_model(self.policy, tm, TRANSCRIPTION_MODEL_PARAM)
                except ModelNotAllowed as err:
                    return _with_event(err, eid)
        return None

    def upstream_session(self, session: Any) -> GatewayError | None:
        """The refusal of a transcription session whose upstream says (``session.updated``) it
        transcribes with a model the key may not use, however the client got there (an update
        naming none, whose default the provider chose); None otherwise. Asked by the relay
        core of a transcription session only."""
        if not isinstance(session, dict):
            return None
        for tm in transcription_models(session):
            if not allows_model(self.policy, tm):
                return ModelNotAllowed(
                    f"This session transcribes with `{tm}`, a model this key may not use."
                    f" Allowed: {', '.join(self.policy.models)}.",
                    param=TRANSCRIPTION_MODEL_PARAM,
                )
        return None

    def _override(self, etype: Any, event: dict[str, Any]) -> GatewayError | None:
        """A per-response override of a session field the key may not change with a
        ``session.update``: ``response.create``'s ``response`` sets ``instructions``,
        ``tools``, ``audio`` and the like for one response (docs/protocol.md 2.1), and a
        ``system`` message, in the conversation or a response's ``input``, instructs the model
        as ``instructions`` do. Otherwise a key's locked instructions or voice would hold for
        nothing but the session object."""
        fixed = self._fields.get("session.update")
        if not fixed:
            return None
        if etype == "response.create" and isinstance(response := event.get("response"), dict):
            if overridden := sorted(fixed & response.keys()):
                return EventBlocked(
                    f"This key may not change `{overridden[0]}`, for the session or for one"
                    " response.",
                    param=f"response.{overridden[0]}",
                )
            items = response.get("input")
            if isinstance(items, list) and "instructions" in fixed and any(map(_system, items)):
                return EventBlocked(
                    "This key may not change `instructions`, nor add system messages.",
                    param="response.input",
                )
        if (
            etype == "conversation.item.create"
            and "instructions" in fixed
            and _system(event.get("item"))
        ):
            return EventBlocked(
                "This key may not change `instructions`, nor add system messages.",
                param="item.role",
            )
        return None


def _system(item: Any) -> bool:
    return isinstance(item, dict) and item.get("role") == "system"


def check_session_template(policy: KeyPolicy, template: Mapping[str, Any]) -> None:
    """Refuse a session template (a client secret's, a call's) that sets what the key may not
    change with a ``session.update``; checked at use as well as at minting, since the key's
    policy may have changed in between."""
    update = orjson.dumps({"type": "session.update", "session": dict(template)}).decode()
    blocked = ClientEventGuard(policy).check(update)
    if blocked is not None:
        blocked.client_event_id = None
        raise blocked


def _with_event(err: GatewayError, event_id: str | None) -> GatewayError:
    err.client_event_id = event_id
    return err


def initial_session_update(
    policy: KeyPolicy, transcription: bool, template: Mapping[str, Any] | None = None
) -> str | None:
    """The one ``session.update`` a session opens with, or None: the key's defaults (those a
    session of this type has), a client secret's template over them (its minter chose it for
    this very session), and for a transcription session that chose no transcription model,
    the default one (docs/protocol.md 8.2: a session template goes up as an initial update)."""
    session = opening_session(policy, transcription, template)
    if set(session) == {"type"}:
        return None
    return orjson.dumps({"type": "session.update", "session": session}).decode()


def opening_session(
    policy: KeyPolicy, transcription: bool, template: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The session ``initial_session_update`` sets (only ``type`` when it sets nothing)."""
    session: dict[str, Any] = {"type": "transcription" if transcription else "realtime"}
    merge(session, applicable(policy.session_defaults or {}, transcription))
    merge(session, template or {})
    if transcription:
        audio = session.get("audio")
        inp = audio.get("input") if isinstance(audio, dict) else None
        chosen = inp.get("transcription") if isinstance(inp, dict) else None
        if not chooses_transcription(session) or (
            isinstance(chosen, dict) and not isinstance(chosen.get("model"), str)
        ):
            # None chosen, or one that names no model: the default, so that the model the key
            # is checked against is the one sent (``check_opening``).
            merge(
                session,
                {"audio": {"input": {"transcription": {"model": DEFAULT_TRANSCRIPTION_MODEL}}}},
            )
    return session


def translation_session_update(template: Mapping[str, Any] | None) -> str | None:
    """The ``session.update`` a translation session opens with: a client secret's template
    (its ``audio``), or None. The key's session defaults are a realtime session's and a
    translation session takes none of them (docs/protocol.md 10)."""
    session = {k: v for k, v in (template or {}).items() if k != "type"}
    if not session:
        return None
    return orjson.dumps({"type": "session.update", "session": session}).decode()


# -- parsing the CLI's and the API's human forms ------------------------------------------------

MAX_DURATION_S = 24 * 3600
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``1.5h`` -> seconds."""
    m = _DURATION.match(text)
    if not m or len(m.group(1)) > 12:
        raise PolicyError(f"not a duration: {text!r} (use 90s, 30m or 1h)", param="max_duration")
    # In decimal, so that 1.1h is 3960 s, not 3960.0000000000005 (which PUT could not take back).
    seconds = float(Decimal(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)])
    if not 1 <= seconds <= MAX_DURATION_S:
        raise PolicyError("max_duration: between 1 second and 24 hours", param="max_duration")
    return seconds


_RFC3339_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_RFC3339_MOMENT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})"
)
#: Plausible expiries: a key that expired before 1970 has always been expired, and years past
#: 9000 are typos (and near the end of what ``datetime`` can represent).
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FAR = datetime(9001, 1, 1, tzinfo=UTC)
#: What ``expires`` takes (``parse_expiry``), as the admin API's OpenAPI document says it.
Expiry = Annotated[
    str,
    Meta(
        extra_json_schema={
            "anyOf": [
                {"type": "string", "format": "date"},
                {"type": "string", "format": "date-time"},
            ]
        }
    ),
]


def parse_expiry(text: str) -> float:
    """An RFC 3339 date (``2026-12-31``: through the end of that UTC day) or timestamp
    (``2026-12-31T18:00:00Z``, which names its offset: taken as given) -> Unix seconds."""
    # RFC 3339 section 5.6: "T" and "Z" may be written in lower case.
    upper = text.upper()
    try:
        through = timedelta(0)
        if _RFC3339_DAY.fullmatch(text):
            day = date.fromisoformat(text)
            moment, through = datetime(day.year, day.month, day.day, tzinfo=UTC), timedelta(days=1)
        elif _RFC3339_MOMENT.fullmatch(upper):
            moment = datetime.fromisoformat(upper)
        else:
            raise ValueError(text)
    except ValueError as exc:
        raise PolicyError(
            f"not a date: {text[:40]!r} (use YYYY-MM-DD or a timestamp such as "
            "2026-12-31T18:00:00Z)",
            param="expires",
        ) from exc
    if not _EPOCH <= moment < _FAR:
        raise PolicyError(f"not a plausible expiry: {text[:40]!r}", param="expires")
    return (moment + through).timestamp()


# -- changes and views, shared by the CLI and the admin API ------------------------------------

CLEARABLE = (
    "models",
    "max_sessions",
    "sessions_per_minute",
    "secrets_per_minute",
    "budget_usd_day",
    "budget_usd_month",
    "budget_usd_total",
    "max_duration",
    "expires",
    "session_defaults",
    "instructions",
    "voice",
    "turn_detection",
    "blocked_events",
)

#: Where ``session_defaults`` keeps what ``instructions``, ``voice`` and ``turn_detection`` set:
#: clearing one removes it alone.
_DEFAULT_PATHS = {
    "instructions": ("instructions",),
    "voice": ("audio", "output", "voice"),
    "turn_detection": ("audio", "input", "turn_detection"),
}


#: A budget's bound, so that in nano-dollars it always fits a BIGINT.
MAX_BUDGET_USD = 1_000_000_000
#: A budget in USD: a JSON number or a decimal string (msgspec reads both; ``__post_init__``
#: bounds it, as msgspec has no numeric constraints on ``Decimal``).
Usd = Annotated[Decimal, Meta(extra_json_schema={"minimum": 0, "maximum": MAX_BUDGET_USD})]
Count = Annotated[int, Meta(ge=1, le=1_000_000)]
_BUDGETS = ("budget_usd_day", "budget_usd_month", "budget_usd_total")
_NANO_USD = Decimal("1e-9")


class _Limits(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The fields a change to a policy (``PolicyUpdate``) and a whole one (``PolicyDocument``)
    spell alike, with the budgets' bounds."""

    models: list[str] | None = None
    max_sessions: Count | None = None
    sessions_per_minute: Count | None = None
    secrets_per_minute: Count | None = None
    budget_usd_day: Usd | None = None
    budget_usd_month: Usd | None = None
    budget_usd_total: Usd | None = None

    def __post_init__(self) -> None:
        # msgspec cannot bound a ``Decimal``: refused here as the body is read (msgspec
        # reports the ``ValueError`` with the field's path).
        for name in _BUDGETS:
            usd: Decimal | None = getattr(self, name)
            if usd is not None and not (usd.is_finite() and 0 <= usd <= MAX_BUDGET_USD):
                raise ValueError(f"{name}: must be between 0 and {MAX_BUDGET_USD}")
            if usd is not None and usd != usd.quantize(_NANO_USD):
                # Spend is kept in nano-dollars: a finer budget would be rounded, and one
                # under a nano-dollar would read as $0 (no spend at all) without saying so.
                raise ValueError(f"{name}: at most 9 decimal places (a nano-dollar)")


class PolicyUpdate(_Limits, kw_only=True):
    """A change to a key's policy in human units; fields left out are left as they are."""

    #: ``90s``, ``30m``, ``1h``, or seconds.
    max_duration: str | None = None
    expires: Annotated[
        Expiry | None,
        Meta(description="YYYY-MM-DD (valid through that UTC day) or an RFC 3339 timestamp."),
    ] = None
    instructions: str | None = None
    voice: str | None = None
    turn_detection: dict[str, Any] | None = None
    blocked_events: list[str] | None = None
    keep_transcripts: bool | None = None
    clear: Annotated[
        list[Literal[CLEARABLE]],  # type: ignore[valid-type]
        Meta(
            description="Limits and defaults to remove, by field name: instructions, voice and "
            "turn_detection each leave the other session defaults; session_defaults removes "
            "them all."
        ),
    ] = []


class PolicyDocument(_Limits, kw_only=True):
    """A key's whole policy, in the shape GET /admin/v1/keys/{key_id} shows it (its
    ``policy``), to be put back edited: a field left out, null or empty has no limit."""

    # (For PATCH's body, PolicyUpdate, a null leaves a limit as it is, and the view's
    # max_duration_s, expires_at and session_defaults are not its names: a round trip through
    # it failed, a newcomer's find.)

    max_duration_s: Annotated[float, Meta(ge=1, le=MAX_DURATION_S)] | None = None
    expires_at: Annotated[
        Expiry | None, Meta(description="An RFC 3339 timestamp, or YYYY-MM-DD (through it).")
    ] = None
    #: What ``instructions``, ``voice`` and ``turn_detection`` set, as the view shows them.
    session_defaults: dict[str, Any] | None = None
    blocked_events: list[str] | None = None
    keep_transcripts: bool | None = None

    def as_update(self) -> PolicyUpdate:
        """The update that makes a policy this one: everything cleared, then set."""
        defaults = copy.deepcopy(dict(self.session_defaults or {}))
        found: dict[str, Any] = {}
        for name, path in _DEFAULT_PATHS.items():
            value = value_at(defaults, path)
            if value is not None:
                found[name] = value
                remove_at(defaults, path)
        if defaults:
            raise PolicyError(
                "session_defaults: holds only instructions, audio.output.voice and "
                "audio.input.turn_detection",
                param="session_defaults",
            )
        duration = self.max_duration_s
        # The fields both spell alike, as they are (a new limit needs no line here).
        limits = {name: getattr(self, name) for name in _Limits.__struct_fields__}
        return PolicyUpdate(
            clear=list(CLEARABLE),
            **{**limits, "models": self.models or []},
            # To the microsecond: the text form takes at most 12 digits.
            max_duration=None if duration is None else f"{duration:.6f}s",
            expires=self.expires_at,
            blocked_events=self.blocked_events or [],
            keep_transcripts=bool(self.keep_transcripts),
            **found,
        )


def _nanos(v: Decimal | None) -> int | None:
    return None if v is None else int(v * NANOS_PER_USD)


def new_policy(u: PolicyUpdate, catalog: Catalog, now: float) -> KeyPolicy:
    """A new key's policy (the CLI's ``keys create``, the admin API's ``POST /keys``): as
    ``apply_update`` makes it, and refused if it has expired already."""
    policy = apply_update(KeyPolicy(), u, catalog)
    if policy.expires_at is not None and policy.expires_at <= now:
        raise PolicyError("expires: already past: the key would never work", param="expires")
    return policy


def apply_update(policy: KeyPolicy, u: PolicyUpdate, catalog: Catalog | None = None) -> KeyPolicy:
    """``u`` applied to ``policy``. With the gateway's ``catalog``, an allowed model it does
    not know is refused (a typo would lock the key out of every model); a name the key held
    before stays, as a blocked event does."""
    changes: dict[str, Any] = {}
    for name in u.clear:
        if name in _DEFAULT_PATHS or name == "session_defaults":
            # In the session defaults, below: cleared and set again in one update, the same
            # defaults are kept (they were lost when this loop cleared them too).
            continue
        target = {
            "budget_usd_day": "budget_day_nanos",
            "budget_usd_month": "budget_month_nanos",
            "budget_usd_total": "budget_total_nanos",
            "max_duration": "max_duration_s",
            "expires": "expires_at",
        }.get(name, name)
        changes[target] = () if target in ("models", "blocked_events") else None
    if u.models is not None:
        changes["models"] = tuple(m.strip() for m in u.models if m.strip())
        for m in changes["models"]:
            if catalog is not None and m not in policy.models and not catalog.knows(m):
                raise PolicyError(
                    f"models: {m!r} is not a model this gateway knows (GET /v1/models)"
                    + _did_you_mean(m, catalog.names(), "; "),
                    param="models",
                )
    for name in ("max_sessions", "sessions_per_minute", "secrets_per_minute"):
        if getattr(u, name) is not None:
            changes[name] = getattr(u, name)
    for src, dst in (
        ("budget_usd_day", "budget_day_nanos"),
        ("budget_usd_month", "budget_month_nanos"),
        ("budget_usd_total", "budget_total_nanos"),
    ):
        if getattr(u, src) is not None:
            changes[dst] = _nanos(getattr(u, src))
    if u.max_duration is not None:
        duration = changes["max_duration_s"] = parse_duration(u.max_duration)
        cap = None if catalog is None else catalog.session_cap_s
        if cap is not None and duration > cap and duration != policy.max_duration_s:
            # Accepted, it would read as a promise the gateway's cap breaks (a newcomer's
            # find); a value the key held before stays, as after the cap is lowered.
            raise PolicyError(
                f"max_duration: at most the gateway's max_session_seconds ({cap:g} s), "
                "which every session ends at anyway",
                param="max_duration",
            )
    if u.expires is not None:
        changes["expires_at"] = parse_expiry(u.expires)
    # A copy all the way down: the setters below write into nested objects, and the policy
    # they came from is read again (the comparison below; the caller's own).
    defaults = (
        copy.deepcopy(dict(policy.session_defaults or {}))
        if "session_defaults" not in u.clear
        else {}
    )
    for name in u.clear:
        if name in _DEFAULT_PATHS:
            remove_at(defaults, _DEFAULT_PATHS[name])
    if u.instructions is not None:
        defaults["instructions"] = u.instructions
    if u.voice is not None:
        held = value_at(policy.session_defaults, _DEFAULT_PATHS["voice"])
        if catalog is not None and u.voice != held:
            _check_voice(u.voice, catalog)
        defaults.setdefault("audio", {}).setdefault("output", {})["voice"] = u.voice
    if u.turn_detection is not None:
        defaults.setdefault("audio", {}).setdefault("input", {})["turn_detection"] = (
            u.turn_detection
        )
    if defaults != dict(policy.session_defaults or {}):
        changes["session_defaults"] = defaults or None
    if u.blocked_events is not None:
        # Only what the update adds is judged: an entry the key held before names of this
        # check went in stays (it still blocks what it matches), so the key stays editable.
        changes["blocked_events"] = tuple(
            b if b in policy.blocked_events else _blockable(b) for b in u.blocked_events
        )
    if u.keep_transcripts is not None:
        changes["keep_transcripts"] = u.keep_transcripts
    return policy.replace(**changes)


def _check_voice(voice: str, catalog: Catalog) -> None:
    """Refuse a default voice no session could use: every session of the key would open with
    an error its client never caused (a newcomer's find). OpenAI's voices, or any name when a
    model goes to Gemini Live, which takes its own voices by name. A voice the key held before
    stays, as a model does."""
    from rtgate.protocol.client_schema import VOICES

    if voice in VOICES or catalog.takes_any_voice():
        return
    raise PolicyError(
        f"voice: {voice!r} is not a voice: {', '.join(VOICES)}"
        + _did_you_mean(voice.lower(), VOICES, "; "),
        param="voice",
    )


def _did_you_mean(word: str, names: Iterable[str], lead: str, tail: str = "") -> str:
    """ "did you mean NAME?" for the nearest of ``names``, between ``lead`` and ``tail``; or
    nothing when none is near."""
    close = difflib.get_close_matches(word, list(names), n=1)
    return f"{lead}did you mean {close[0]}?{tail}" if close else ""


#: What ``session.update:FIELD`` may name: a top-level field of a session object (GA realtime
#: or transcription, and GPT-Live's one changeable ``delegation``), the names the guard
#: compares (``ClientEventGuard.check_event``).
_SESSION_FIELDS = REALTIME | TRANSCRIPTION | {"delegation"}
#: Where a voice, a turn detector, a format or a transcription model lives in the GA session.
_UNDER_AUDIO = ("voice", "turn_detection", "format", "transcription", "noise_reduction", "speed")


@cache
def _client_events() -> tuple[dict[str, frozenset[str]], dict[str, str]]:
    """Every client event type a session rtgate relays may carry (GA Realtime, beta, GPT-Live,
    translation), with the top-level members any of them gives it; and those the guard never
    judges by their own name, with why. Imported here, when a policy is set, not by every
    process that judges one."""
    from rtgate.protocol import beta, client_schema, live, translation

    members: dict[str, frozenset[str]] = {}
    for table in (
        {t: frozenset(spec.fields) for t, spec in client_schema.CLIENT_EVENTS.items()},
        beta.BETA_ONLY_CLIENT_MEMBERS,
        live.CLIENT_MEMBERS,
        translation.CLIENT_MEMBERS,
    ):
        for etype, names in table.items():
            members[etype] = members.get(etype, frozenset()) | names
    appends = ("input_audio_buffer.append", "session.input_audio.append", translation.APPEND_TYPE)
    never = {
        **dict.fromkeys(
            appends,
            "audio appends are relayed unread (the hot path) and cannot be blocked",
        ),
        "transcription_session.update": "a beta client's transcription_session.update is"
        " judged as the session.update it is (use session.update)",
    }
    return members, never


def _blockable(entry: str) -> str:
    """A blocked event or field as the guard can match it, else a ``PolicyError`` that says
    what to write: a client event some protocol defines (a typo would block nothing), and a
    field that is a top-level member of that event (``response.create:response``), or of its
    session for ``session.update`` (``session.update:audio``, not
    ``session.update:audio.output.voice`` nor the beta ``voice``)."""
    etype, colon, fname = entry.partition(":")
    if not etype or (colon and not fname):
        raise PolicyError(f"not an event or TYPE:FIELD: {entry!r}", param="blocked_events")
    members, never = _client_events()
    if etype in never:
        raise PolicyError(f"{entry!r} would block nothing: {never[etype]}", param="blocked_events")
    if etype not in members:
        raise PolicyError(
            f"{entry!r} would block nothing: {etype!r} is not a client event"
            + _did_you_mean(etype, members, " (", ")"),
            param="blocked_events",
        )
    if fname and "." not in fname and etype != "session.update" and fname not in members[etype]:
        raise PolicyError(
            f"{entry!r} would block nothing: {etype} has no member {fname!r}"
            f" (it has {', '.join(sorted(members[etype]))})",
            param="blocked_events",
        )
    session = etype == "session.update"
    if "." not in fname and (not session or not fname or fname in _SESSION_FIELDS):
        return entry
    top = fname.split(".", 1)[0]
    use = "audio" if top in _UNDER_AUDIO else top
    suggestion = f" (use {etype}:{use})" if not session or use in _SESSION_FIELDS else ""
    raise PolicyError(
        f"{entry!r} would block nothing: a blocked field is a top-level member of the event"
        f" or, for session.update, of its session{suggestion}",
        param="blocked_events",
    )


def policy_view(policy: KeyPolicy) -> dict[str, Any]:
    """The policy in human units (USD strings, seconds, ISO times), for the CLI and the API."""

    def usd(n: int | None) -> str | None:
        return None if n is None else usd_str(n)

    expires = None if policy.expires_at is None else rfc3339(policy.expires_at)
    return {
        "models": list(policy.models),
        "max_sessions": policy.max_sessions,
        "sessions_per_minute": policy.sessions_per_minute,
        "secrets_per_minute": policy.secrets_per_minute,
        "budget_usd_day": usd(policy.budget_day_nanos),
        "budget_usd_month": usd(policy.budget_month_nanos),
        "budget_usd_total": usd(policy.budget_total_nanos),
        "max_duration_s": policy.max_duration_s,
        "expires_at": expires,
        "session_defaults": dict(policy.session_defaults or {}) or None,
        "blocked_events": list(policy.blocked_events),
        "keep_transcripts": policy.keep_transcripts,
    }
