"""Who a call belongs to: the key that placed it (``POST /v1/realtime/calls``) or accepted it
(SIP, ``/accept``), kept in the store so that every instance sharing the database agrees.

Only the owner, or a client secret it minted (for a call the key placed, or that secret did),
may attach a sideband socket to a call (``GET /v1/realtime?call_id=``) or act on it
(``accept``, ``reject``, ``refer``, ``hangup``).
Anyone else is answered exactly as for a call id nobody placed (``call_not_found``: 404 over
HTTP, an ``error`` event and close 4004 on a socket), so a call id's existence is no oracle, and
the provider is never asked.
"""

from __future__ import annotations

import logging
import re

from rtgate.catalog import Route
from rtgate.errors import GatewayError
from rtgate.gateway import Gateway
from rtgate.store.port import KeyInfo, StoredCall

log = logging.getLogger("rtgate.calls")

CALL_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class CallNotFound(GatewayError):
    http_status = 404
    # 4xxx mirrors the HTTP status, as OpenAI's 4004 model_not_found does (docs/protocol.md 5.4).
    close_code = 4004
    error_type = "invalid_request_error"
    code = "not_found"


def call_not_found(call_id: str) -> CallNotFound:
    """The one answer for a call id that is unknown, malformed, or another key's."""
    return CallNotFound(f"No call found with id '{call_id}'.", param="call_id")


async def call_of(gw: Gateway, call_id: str, key: KeyInfo) -> StoredCall | None:
    """The call's owner row if it has one; ``call_not_found`` if ``call_id`` is malformed or
    the call is another key's. None: no key owns it (a SIP call nobody accepted yet)."""
    if not CALL_ID.match(call_id):
        raise call_not_found(call_id)
    call = await gw.store.call_owner(call_id)
    if call is not None and call.key_id != key.id:
        raise call_not_found(call_id)
    return call


async def owned_call(
    gw: Gateway, call_id: str, key: KeyInfo, secret_id: str | None = None
) -> StoredCall:
    """The call, which ``key`` owns; ``call_not_found`` for any other call id. A client
    secret (``secret_id``) reaches only a call the key placed itself or that secret placed:
    the key's secrets are handed to different end users, and one of them must not reach
    another's call by its id."""
    call = await call_of(gw, call_id, key)
    if call is None or (secret_id is not None and call.secret_id not in (None, secret_id)):
        raise call_not_found(call_id)
    return call


async def claim_call(
    gw: Gateway,
    call_id: str,
    key: KeyInfo,
    route: Route,
    secret_id: str | None = None,
    *,
    accepted: bool = True,
) -> bool:
    """Make ``key`` the call's owner unless another key owns it already (atomically, on every
    instance); whether ``key`` owns it now. ``accepted``: a call the gateway placed, whose
    sideband starts now; not a SIP call's accept, which ``accepted_call`` notes once its
    sideband runs."""
    now = gw.clock.now()
    owner = await gw.store.claim_call(
        StoredCall(
            call_id,
            key.id,
            secret_id,
            route.model,
            route.upstream_name,
            now,
            now if accepted else None,
        )
    )
    return owner.key_id == key.id


#: How long an owner's claim may wait for its sideband before another accept of the owner's
#: takes it over: an accept under way (its provider's answer, its sideband's dial) is not one
#: that will never finish.
ACCEPT_WINDOW_S = 60.0


def awaits_accept(call: StoredCall | None, now: float) -> bool:
    """Whether an ``accept`` of ``call`` is its owner's claim of a SIP call: no key owns it
    yet, or its owner's claim committed more than ``ACCEPT_WINDOW_S`` ago without its sideband
    ever starting (an accept whose store went away, whose claim could not be released either:
    an audit's find); not one under way, which would be dialled twice (a review's find)."""
    if call is None:
        return True
    return call.accepted_at is None and now - call.created_at > ACCEPT_WINDOW_S


async def accepted_call(gw: Gateway, call_id: str) -> None:
    """Note that the call's sideband runs (``StoredCall.accepted_at``); logged, not raised,
    when the store does not take it: the call is metered either way."""
    try:
        await gw.store.accept_call(call_id, gw.clock.now())
    except GatewayError as err:
        log.error("call %s not noted as accepted: %s", call_id, err.message)


def call_route(gw: Gateway, call: StoredCall) -> Route:
    """The route the call was placed on: its upstream and the model it is priced as."""
    return gw.catalog.resolve(call.model)


def control_route(gw: Gateway, call: StoredCall | None) -> Route:
    """Where a ``reject``, ``refer`` or ``hangup`` of a call goes: the route it was placed on;
    for a SIP call no key owns yet (before an ``accept``), the default upstream, whose
    provider announced it (a Realtime call and a GPT-Live session alike)."""
    return call_route(gw, call) if call is not None else gw.catalog.resolve(None)
