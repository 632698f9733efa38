"""Admitting a metered session, a relayed socket or a call's sideband, the same way for both:
the key's budgets and live-session limits first, then the ``RelaySession`` that meters it.

A client's socket attached to one of its calls (``?call_id=``) is not a new session: the call
holds its live-session slot, so only the budgets are checked (``check_budget``)."""

from __future__ import annotations

from rtgate.auth.policy import KeyPolicy, over_budget, session_seconds
from rtgate.catalog import Route
from rtgate.gateway import Gateway
from rtgate.protocol.ids import new_id
from rtgate.protocol.relay_session import RelaySession
from rtgate.store.port import KeyInfo


async def check_budget(gw: Gateway, key: KeyInfo, policy: KeyPolicy) -> None:
    """Refuse a key over a budget (``insufficient_quota``)."""
    if policy.has_budget:
        exceeded = over_budget(policy, await gw.keyring.spend(key.id))
        if exceeded is not None:
            raise exceeded


async def admit(gw: Gateway, key: KeyInfo, policy: KeyPolicy) -> None:
    """Refuse a key over a budget (``insufficient_quota``), else take one of its live-session
    slots (``rate_limit_exceeded``); the caller releases the slot when the session ends."""
    await check_budget(gw, key, policy)
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
) -> RelaySession:
    """The metering state of a session admitted now, capped by the key and the gateway
    (``metered`` False: its usage is recorded elsewhere, see ``RelaySession``)."""
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
    )
