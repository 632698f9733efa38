"""GPT-Live over WebRTC and SIP (docs/protocol-live.md 9): ``POST /v1/live/sessions`` and the
session controls, relayed like ``/v1/realtime/calls`` (``api/calls_http.py``).

- ``POST /v1/live/sessions``: JSON ``{session: {model, …}, transport: {type: "webrtc", sdp}}``
  with a gateway key (Live has no client secrets: a browser posts its offer with a key its
  server trusts it with, or through its server). The key's policy applies as on the WebSocket;
  the body goes upstream with the provider's key (``session.model`` as the route's upstream id)
  and the provider's answer (``{session: {id}, transport: {type, sdp}}``) comes back as sent.
  The session is then the key's (``relay/call_owners.py``, before the answer goes back) and the
  gateway attaches its sideband and meters it (``relay/calls.py``, ``live``).
- ``POST /v1/live/sessions/{id}/accept|reject|refer|hangup``: relayed for the key that owns the
  session; another key's is answered 404, as an unknown one. ``accept`` (a SIP call, body
  ``{session: {model, …}}``) claims a session no key owns yet before the provider hears of it,
  and opens a metered sideband; ``hangup`` ends the sideband before it answers. A ``reject``,
  ``refer`` or ``hangup`` of a SIP call no key owns yet goes to the default upstream, as on
  ``/v1/realtime/calls`` (``call_owners.control_route``).

A session whose sideband cannot be opened is hung up: the gateway never leaves one unmetered.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web

from rtgate.api.bodies import MissingParameter, json_object, read_body
from rtgate.api.calls_http import CALLS, act_on_call, control_body, hang_up_unmetered
from rtgate.api.openai_errors import openai_errors
from rtgate.auth.client_secrets import refuse_unknown
from rtgate.catalog import Route
from rtgate.errors import GatewayError, InvalidValue, UnknownLiveParameter, UpstreamError
from rtgate.gateway import Gateway
from rtgate.protocol import session_fields
from rtgate.protocol.live import live_settings
from rtgate.relay.admission import admit, note_refusal, route_for
from rtgate.relay.call_owners import CALL_ID, call_of, claim_call, control_route
from rtgate.relay.calls import CallRegistry, upstream_post
from rtgate.relay.endpoint import GATEWAY

log = logging.getLogger("rtgate.api")

PREFIX = "/v1/live/sessions"


def _session_model(
    body: dict[str, Any], members: frozenset[str], fields: frozenset[str]
) -> tuple[dict[str, Any], str]:
    """The body's session and model, every member of the body (``members``) and of its session
    (``fields``) one Live defines for this route (``protocol/session_fields.py``): only those go
    upstream, anything else refused as the provider's strict objects would refuse it."""
    refuse_unknown(body, members, error=UnknownLiveParameter)
    session = body.get("session")
    if not isinstance(session, dict):
        raise MissingParameter("Missing required parameter: 'session'.", param="session")
    model = session.get("model")
    if not isinstance(model, str) or not model:
        raise MissingParameter(
            "Missing required parameter: 'session.model'.", param="session.model"
        )
    refuse_unknown(session, fields, "session.", error=UnknownLiveParameter)
    return session, model


def _upstream_body(body: dict[str, Any], session: dict[str, Any], route: Route) -> bytes:
    """The body as the client sent it, but for the model's upstream id."""
    if session["model"] == route.upstream_model:
        return orjson.dumps(body)
    return orjson.dumps({**body, "session": {**session, "model": route.upstream_model}})


async def create_session(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    try:
        return await _create(gw, request.app[CALLS], request)
    except GatewayError as err:
        note_refusal(gw, err, "live session")
        raise


async def _create(gw: Gateway, calls: CallRegistry, request: web.Request) -> web.Response:
    """Policy first (the provider sees no offer the key may not place), then the offer goes
    upstream and the session's sideband is opened; one that cannot be metered is hung up."""
    gw.check_accepting()
    key, policy = await gw.authenticator.key(request.headers, request.remote)
    body = json_object(await read_body(request))
    session, model = _session_model(body, session_fields.LIVE_CREATE, session_fields.LIVE_MEDIA)
    transport = body.get("transport")
    if not isinstance(transport, dict) or not isinstance(transport.get("sdp"), str):
        raise MissingParameter("Missing required parameter: 'transport.sdp'.", param="transport")
    refuse_unknown(
        transport, session_fields.LIVE_TRANSPORT, "transport.", error=UnknownLiveParameter
    )
    route = route_for(gw, policy, model, live_settings(session), protocol="live")
    await admit(gw, key, policy)
    try:
        status, raw, _ = await upstream_post(
            gw, route, "", json_body=_upstream_body(body, session, route), live=True
        )
        if not 200 <= status < 300:
            log.warning("upstream %s refused a live session: HTTP %s", route.upstream_name, status)
            raise UpstreamError(f"The upstream refused the session (HTTP {status}).")
        session_id = _created_id(raw)
        try:
            # Its owner is on record before anyone hears of the session (the answer, a sideband).
            owned = await claim_call(gw, session_id, key, route)
            if owned:
                await calls.start(gw, session_id, key, policy, route, live=True, startup=True)
        except BaseException:
            # Whatever stopped it, a session that is not metered does not go on.
            await hang_up_unmetered(gw, route, session_id, live=True)
            raise
        if not owned:
            raise UpstreamError("The upstream answered with the id of a session already placed.")
    except BaseException:
        await gw.limiter.release(key.id)
        raise
    log.info(
        "live session created",
        extra={"key_id": key.id, "model": route.model, "call_id": session_id},
    )
    return web.Response(status=status, body=raw, content_type="application/json")


def _created_id(raw: bytes) -> str:
    """``session.id`` of the provider's answer (docs/protocol-live.md 9)."""
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        answer = None
    session = answer.get("session") if isinstance(answer, dict) else None
    sid = session.get("id") if isinstance(session, dict) else None
    if not isinstance(sid, str) or not CALL_ID.match(sid):
        raise UpstreamError("The upstream answered the session without a valid id.")
    return sid


async def session_action(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    action = request.match_info["action"]
    session_id = request.match_info["session_id"]
    key, policy = await gw.authenticator.key(request.headers, request.remote)
    # Another key's session answers as if it did not exist; None: no key owns it.
    owned = await call_of(gw, session_id, key)
    raw = await read_body(request)
    body = json_object(raw) if raw.strip() else None
    if action == "accept":
        gw.check_accepting()
        session, model = _session_model(
            body or {}, session_fields.LIVE_ACCEPT_BODY, session_fields.LIVE_ACCEPT
        )
        if session.get("type", "live") != "live":
            raise InvalidValue(
                "Invalid value for 'session.type': expected 'live'.", param="session.type"
            )
        route = route_for(gw, policy, model, live_settings(session), protocol="live")
        upstream_body: bytes | None = _upstream_body(body or {}, session, route)
    else:
        route = control_route(gw, owned)
        upstream_body = control_body(action, body, live=True)
    return await act_on_call(
        gw,
        request.app[CALLS],
        (key, policy),
        session_id,
        action,
        route,
        upstream_body,
        owned,
        live=True,
    )


def add_live_routes(app: web.Application) -> None:
    """After ``add_call_routes`` (the sidebands' registry is the calls')."""
    app.router.add_post(PREFIX, openai_errors(create_session))
    app.router.add_post(
        PREFIX + "/{session_id}/{action:accept|reject|refer|hangup}",
        openai_errors(session_action),
    )
