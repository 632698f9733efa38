"""Admitting a session, the one way for every route that opens one (a relayed socket, a call
placed or accepted, a client secret minted for later): ``route_for`` resolves the model, checks
the key may use it and may set the session template, then ``admit`` checks the key's budgets and
takes one of its live-session slots. Then the ``RelaySession`` that meters it, its row in the
ledger, its end, and its budget checks while it lives.

A client's socket attached to one of its calls (``?call_id=``) is not a new session: the call
holds its live-session slot, so it is admitted without one (``admit(..., slot=False)``)."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Mapping
from typing import Any

from rtgate.auth.authenticator import AuthThrottled
from rtgate.auth.policy import (
    KeyPolicy,
    Spend,
    check_model,
    check_opening,
    check_session_template,
    opening_session,
    over_budget,
    session_seconds,
)
from rtgate.catalog import Protocol, Route, check_served
from rtgate.errors import GatewayError, ModelNotFound, SessionValueRefused
from rtgate.gateway import Gateway
from rtgate.metering.ledger import LedgerError
from rtgate.protocol.client_schema import problem
from rtgate.protocol.ids import new_id
from rtgate.protocol.live import LiveMeter
from rtgate.protocol.relay_session import RelaySession
from rtgate.protocol.session_fields import transcription_model
from rtgate.store.port import KeyInfo, SessionClose, SessionOpen, StoreError
from rtgate.validation import remove_at

log = logging.getLogger("rtgate.relay")


def note_refusal(
    gw: Gateway, err: GatewayError, what: str, extra: Mapping[str, object] | None = None
) -> None:
    """A refused session, call or Live session, logged and counted (``rtgate_refused_total``);
    a throttled authentication was both already, once, by the authenticator."""
    if not isinstance(err, AuthThrottled):
        log.info("%s refused: %s", what, err.code, extra={**(extra or {}), "refusal": err.code})
        gw.metrics.refused(err.code)


def route_for(
    gw: Gateway,
    policy: KeyPolicy,
    model: str | None,
    template: Mapping[str, Any] | None = None,
    *,
    transcription: bool = False,
    protocol: Protocol = "realtime",
) -> Route:
    """The route of ``model`` (None: a transcription session's default upstream) for a
    session of ``protocol``, refused unless the model is one that protocol serves
    (``model_not_found``), the key may use it (``model_not_allowed``; for a transcription
    session, the transcription model it opens with too) and may set what ``template`` sets
    (``event_not_allowed``, as its ``session.update`` would be)."""
    param = "session.model" if protocol == "live" else "model"
    try:
        route = gw.catalog.resolve(model)
    except ModelNotFound as err:
        err.param = param
        raise
    check_served(route, protocol, param)
    check_model(policy, route.model, param)
    check_opening(
        policy, template, transcription=transcription or model is None, catalog=gw.catalog
    )
    if template is not None:
        check_session_template(policy, template)
        if protocol == "realtime":
            check_session_values(route, template)
    return route


def check_session_values(route: Route, template: Mapping[str, Any]) -> None:
    """Refuse a realtime or transcription session template holding a value its session could
    not take, as the session's own ``session.update`` would be (the GA table, as the engine
    checks every event): handed out, every session the secret opens would start with an error
    its client never caused, and go on without what was asked (a newcomer's find: the voice
    ``nobody``). The transcription model is the catalog's to judge (``check_opening``: an
    operator's priced name is one), and a route to Gemini Live takes any voice by name (its
    own prebuilt voices, ``protocol/gemini_setup.py``)."""
    if template.get("type") not in ("realtime", "transcription"):
        return
    session = copy.deepcopy(dict(template))
    remove_at(session, ("audio", "input", "transcription", "model"))
    if route.upstream.kind == "gemini":
        remove_at(session, ("audio", "output", "voice"))
    found = problem({"type": "session.update", "session": session})
    if found is not None:
        raise SessionValueRefused(found.code, found.message, param=found.param)


async def admit(gw: Gateway, key: KeyInfo, policy: KeyPolicy, *, slot: bool = True) -> None:
    """Refuse a key over a budget (``insufficient_quota``; a budgeted key this process never
    read while the store does not answer: ``StoreError``), else take one of its live-session
    slots (``rate_limit_exceeded``) unless ``slot`` is False; the caller releases the slot when
    the session ends."""
    if policy.has_budget:
        exceeded = over_budget(policy, await gw.spend.spend(key.id))
        if exceeded is not None:
            raise exceeded
    if slot:
        await gw.limiter.acquire(
            key.id, policy.max_sessions, policy.sessions_per_minute, gw.clock.now()
        )


def metered_session(
    gw: Gateway,
    key: KeyInfo,
    policy: KeyPolicy,
    route: Route,
    *,
    intent: str | None,
    secret_id: str | None,
    metered: bool = True,
    live: bool = False,
    template: Mapping[str, Any] | None = None,
) -> RelaySession:
    """The metering state of a session admitted now, capped by the key and the gateway
    (``metered`` False: its usage is recorded elsewhere, see ``RelaySession``; ``live``: a
    GPT-Live session, metered by its voice seconds, ``protocol/live.py``)."""
    return RelaySession(
        session_id=new_id("rs", 20),
        key_id=key.id,
        route=route,
        catalog=gw.catalog,
        opened_at=gw.clock.now(),
        opened_mono=gw.clock.monotonic(),
        max_seconds=session_seconds(policy, gw.settings.max_session_seconds),
        intent=intent,
        secret_id=secret_id,
        metered=metered,
        live=LiveMeter() if live else None,
        # What a transcription session opens transcribing with (its initial update names it).
        transcription_model=transcription_model(opening_session(policy, True, template))
        if intent == "transcription"
        else None,
    )


async def record_start(gw: Gateway, session: RelaySession) -> None:
    """The session's row, durable (stored, or spilled while the store is away) before anything
    is relayed: its usage refers to it. ``StoreError`` if it can be kept nowhere."""
    route = session.route
    try:
        await gw.ledger.open_session(
            SessionOpen(
                session.session_id,
                session.key_id,
                session.shown_model,
                route.upstream_name,
                session.intent,
                session.opened_at,
                gw.fleet.instance,
            )
        )
    except LedgerError as exc:
        raise StoreError("The gateway cannot record sessions right now; try again.") from exc


async def record_end(gw: Gateway, session: RelaySession) -> None:
    """The session's end, with its close code and reason; never raises (the ledger has logged
    why, once for the outage)."""
    try:
        await gw.ledger.close_session(
            SessionClose(
                session.session_id,
                gw.clock.now(),
                session.close_code,
                session.close_reason,
                session.closed_by or "gateway",
            )
        )
    except LedgerError:
        log.info("session end not recorded", extra={"session_id": session.session_id})


def budget_crossed(
    gw: Gateway, key_id: str, policy: KeyPolicy
) -> asyncio.Future[GatewayError | None]:
    """After each metered event of a live session: the budget its key has crossed, if any, from
    the spend book's shared read (``SpendBook.check``); a future of this session's own, which
    it may cancel. Never fails for the store: a session admitted is not ended because the store
    cannot answer (the spend book answers from its last read and what this process metered
    since)."""
    read = gw.spend.check(key_id)
    crossed: asyncio.Future[GatewayError | None] = read.get_loop().create_future()

    def answer(done: asyncio.Future[Spend]) -> None:
        if crossed.done():  # the session stopped waiting
            return
        if done.cancelled():
            crossed.cancel()
        elif isinstance(exc := done.exception(), StoreError):
            log.warning("budget of key %s not checked: %s", key_id, exc.message)
            crossed.set_result(None)
        elif exc is not None:
            crossed.set_exception(exc)
        else:
            crossed.set_result(over_budget(policy, done.result()))

    read.add_done_callback(answer)
    return crossed
