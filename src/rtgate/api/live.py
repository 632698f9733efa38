"""Live sessions as the operator sees them: this instance's, read from ``Gateway.live``, and the
other instances', through ``Gateway.fleet`` (``rtgate.fleet``); and ending them, a forced close or
a revoked client secret, on whichever instance relays them. The admin API's routes sit on this.

A revoked gateway key ends its live sessions too: each instance asks the store, every
``REVOKED_KEY_CHECK_SECONDS``, which keys of its live sessions are revoked (``watch_revoked_keys``:
one read of the keys in use, whoever revoked them, the CLI, the console or the admin API on any
instance), and the admin API's revocation asks at once on the instance that served it.

This instance's part never waits on Redis: its sessions are listed and ended first, the others'
after, and an unreachable Redis is logged, never raised, except where only another instance could
act (a forced close of a session not relayed here).
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
import orjson

from rtgate.api.views import ClosedSession, LiveSession, dump, live_session
from rtgate.auth.client_secrets import revoked_secret_error, secret_id
from rtgate.errors import GatewayError
from rtgate.fleet import FleetUnavailable
from rtgate.gateway import Gateway
from rtgate.gateway import LiveSession as Relayed
from rtgate.protocol.relay_session import SessionState

log = logging.getLogger("rtgate.admin")


class SessionClosedByOperator(GatewayError):
    """Sent to a client whose live session the operator closed; 1008 is RFC 6455's "policy
    violation", the code for a session ended by the gateway's own rules."""

    http_status = 400
    close_code = 1008
    error_type = "invalid_request_error"
    code = "session_closed_by_operator"


class KeyRevoked(GatewayError):
    """Sent to a client whose session's gateway key was revoked (a leaked key's sessions must
    not run on to their cap); 1008, as for a revoked client secret."""

    http_status = 401
    close_code = 1008
    error_type = "invalid_request_error"
    code = "api_key_revoked"


#: How often an instance checks the keys of its live sessions for revocation.
REVOKED_KEY_CHECK_SECONDS = 5.0


async def end_revoked_keys(gw: Gateway) -> list[ClosedSession]:
    """End the open sessions relayed here whose gateway key is revoked (one store read, of the
    keys in use). Raises the store's ``GatewayError`` when it cannot answer."""
    in_use = {r.session.key_id for r in gw.live.values() if _open(r)}
    if not in_use:
        return []
    revoked = await gw.store.revoked_keys(in_use)
    ending = [r for r in list(gw.live.values()) if r.session.key_id in revoked and _open(r)]
    err = KeyRevoked("The API key of this session was revoked.")
    return [await _end(gw, r, err) for r in ending]


#: How long before the oldest of its sessions opened a secret's revocation is still looked for:
#: a revocation written while that session was admitted (a write waiting on SQLite's lock, a
#: CLI host whose clock is behind) is stamped before it, and admission did not see it.
REVOKED_SECRET_MARGIN_S = 3600.0


async def end_revoked_secrets(gw: Gateway) -> list[ClosedSession]:
    """End the open sessions relayed here whose client secret is revoked, by whomever (the CLI
    among them, which reaches no instance): one store read, of the secrets revoked since the
    oldest of those sessions opened, less ``REVOKED_SECRET_MARGIN_S`` (revoked rows are few:
    a secret lives minutes). Raises the store's ``GatewayError`` when it cannot answer."""
    with_secret = [r for r in gw.live.values() if r.session.secret_id and _open(r)]
    if not with_secret:
        return []
    since = min(r.session.opened_at for r in with_secret) - REVOKED_SECRET_MARGIN_S
    gone = {secret_id(h) for h in await gw.store.revoked_client_secrets(since)}
    ending = [r for r in list(gw.live.values()) if r.session.secret_id in gone and _open(r)]
    return [await _end(gw, r, revoked_secret_error()) for r in ending]


async def watch_revoked_keys(gw: Gateway) -> None:
    """``end_revoked_keys`` and ``end_revoked_secrets`` every ``REVOKED_KEY_CHECK_SECONDS``,
    for the process's life. A store that does not answer is asked again next time: the
    sessions were admitted with the key and the secret valid."""
    failing = False
    while True:
        await asyncio.sleep(REVOKED_KEY_CHECK_SECONDS)
        try:
            closed = await end_revoked_keys(gw) + await end_revoked_secrets(gw)
        except GatewayError as err:
            if not failing:  # once an outage, not every few seconds of it
                log.warning("revoked keys not checked until the store answers: %s", err.message)
            failing = True
            continue
        failing = False
        if closed:
            log.info("%d live sessions of revoked keys or client secrets closed", len(closed))


def _open(relayed: Relayed) -> bool:
    return relayed.session.state is SessionState.OPEN


def live_here(gw: Gateway) -> list[LiveSession]:
    relayed = sorted(gw.live.values(), key=lambda r: r.session.opened_at)
    return [live_session(r.session, gw.fleet.instance) for r in relayed]


async def live_everywhere(gw: Gateway) -> list[LiveSession]:
    """Every instance's live sessions by start: this one's as they are, the others' as they last
    published them (at most ~1 s old); only this one's when the others cannot be read."""
    here = live_here(gw)
    try:
        elsewhere = await gw.fleet.sessions_elsewhere()
    except FleetUnavailable as err:
        log.warning("live sessions of other instances not listed: %s", err.message)
        return here
    listed = {v.id: v for v in here}
    for raw in elsewhere:
        try:
            view = msgspec.json.decode(raw, type=LiveSession)
        except msgspec.DecodeError:
            # Another version's view during a rolling upgrade: listed by its own instance.
            log.warning("a live session published by another instance is not readable")
            continue
        listed.setdefault(view.id, view)
    # A stable sort: this instance's own sessions, in order to the microsecond, stay in order.
    return sorted(listed.values(), key=lambda v: v.started_at or "")


async def _end(gw: Gateway, relayed: Relayed, err: GatewayError) -> ClosedSession:
    """End a session relayed here with ``err``, and show it as it stood and how it ended."""
    before = live_session(relayed.session, gw.fleet.instance)
    await relayed.terminate(err)
    s = relayed.session
    return ClosedSession(
        **msgspec.structs.asdict(before),
        close_code=s.close_code,
        close_reason=s.close_reason,
        closed_by=s.closed_by,
    )


async def close_here(gw: Gateway, session_id: str) -> ClosedSession | None:
    """Close the session if this instance relays it and it is open."""
    relayed = gw.live.get(session_id)
    if relayed is None or relayed.session.state is not SessionState.OPEN:
        return None
    err = SessionClosedByOperator("The gateway operator closed this session.")
    return await _end(gw, relayed, err)


async def revoke_here(gw: Gateway, secret_id: str) -> list[ClosedSession]:
    """End the open sessions this instance relays that the client secret opened."""
    opened = [
        r
        for r in list(gw.live.values())
        if r.session.secret_id == secret_id and r.session.state is SessionState.OPEN
    ]
    err = revoked_secret_error()
    return [await _end(gw, r, err) for r in opened]


async def revoke_elsewhere(gw: Gateway, secret_id: str) -> list[str]:
    """Have the other instances end the sessions the (already revoked) secret opened; the ids
    of those they report within the bound. Best effort: what cannot be done is logged."""
    try:
        answers = await gw.fleet.ask("revoke", secret_id)
    except FleetUnavailable as err:
        log.warning(
            "client secret %s revoked; its sessions on other instances not closed: %s",
            secret_id,
            err.message,
        )
        return []
    if answers.silent:
        log.warning(
            "client secret %s revoked; %d instances did not answer in time, their sessions of "
            "it are not reported",
            secret_id,
            answers.silent,
        )
    return [sid for sid in map(_view_id, answers.closed) if sid]


def _view_id(raw: bytes) -> str | None:
    sid = orjson.loads(raw).get("id")
    return sid if isinstance(sid, str) else None


class HeldSessions:
    """This instance's live sessions as the fleet sees them (``rtgate.fleet.SessionHolder``):
    listed for the other instances, and ended at their command exactly as a local call would."""

    def __init__(self, gw: Gateway) -> None:
        self._gw = gw

    def listing(self) -> dict[str, bytes]:
        return {v.id: orjson.dumps(dump(v)) for v in live_here(self._gw)}

    async def close(self, session_id: str) -> list[bytes]:
        closed = await close_here(self._gw, session_id)
        return [] if closed is None else [orjson.dumps(dump(closed))]

    async def revoke(self, secret_id: str) -> list[bytes]:
        return [orjson.dumps(dump(c)) for c in await revoke_here(self._gw, secret_id)]
