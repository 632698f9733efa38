"""Admitting a metered session, a relayed socket or a call's sideband, the same way for both:
the key's budgets and live-session limits first, then the ``RelaySession`` that meters it."""

from __future__ import annotations

from rtgate.auth.policy import KeyPolicy, over_budget, session_seconds
from rtgate.catalog import Route
from rtgate.gateway import Gateway
from rtgate.protocol.ids import new_id
from rtgate.protocol.relay_session import RelaySession
from rtgate.store.port import KeyInfo


async def admit(gw: Gateway, key: KeyInfo, policy: KeyPolicy) -> None:
    """Refuse a key over a budget (``insufficient_quota``), else take one of its live-session
    slots (``rate_limit_exceeded``); the caller releases the slot when the session ends."""
    if policy.has_budget:
        exceeded = over_budget(policy, await gw.keyring.spend(key.id))
        if exceeded is not None:
            raise exceeded
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
) -> RelaySession:
    """The metering state of a session admitted now, capped by the key and the gateway."""
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
    )
