"""``/v1/realtime/calls`` routes (docs/protocol.md 3, 3.1, 3.2): WebRTC calls and SIP call control.

- ``POST /v1/realtime/calls``: ``application/sdp`` (an SDP offer; a minted ``ek_`` secret, whose
  template is the call's session) or ``multipart/form-data`` with ``sdp`` and ``session`` (a
  gateway key). The key's policy applies as on the WebSocket path; the offer goes upstream with
  the provider's credentials and the answer comes back: 201, ``application/sdp``, and
  ``Location: /v1/realtime/calls/{call_id}``. The gateway then meters the call on its sideband
  (``rtgate.relay.calls``).
- ``POST /v1/realtime/calls/{call_id}/accept|reject|refer|hangup``: relayed upstream (a gateway
  key); 200 and an empty body, as the upstream answers. ``accept`` opens a metered sideband too;
  a ``hangup`` ends the call's sideband before it answers, so the key's slot is free again.

A call belongs to the key that placed or accepted it (``rtgate.relay.call_owners``): it is
recorded in the store before the 201 goes back, and an ``accept`` claims a call no key owns
yet, before the provider hears of it (or its owner's own claim whose sideband never started:
``accepted_at`` is noted once it runs). Another key's call is answered 404, as an unknown one.
A call whose sideband cannot be opened is hung up: the gateway never leaves a call unmetered.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import hdrs, web

from rtgate.api.bodies import (
    InvalidRequest,
    InvalidType,
    MissingParameter,
    UnreadableBody,
    form_parts,
    json_object,
    read_body,
    utf8_text,
)
from rtgate.api.openai_errors import openai_errors
from rtgate.auth.client_secrets import connection_model, ga_template, refuse_unknown
from rtgate.auth.policy import KeyPolicy
from rtgate.catalog import Route
from rtgate.errors import GatewayError, UpstreamError
from rtgate.gateway import Gateway
from rtgate.relay.admission import admit, note_refusal, route_for
from rtgate.relay.call_owners import (
    accepted_call,
    awaits_accept,
    call_not_found,
    call_of,
    claim_call,
    control_route,
)
from rtgate.relay.calls import (
    CallRegistry,
    create_upstream_call,
    deep_merge,
    hangup_upstream,
    upstream_post,
)
from rtgate.relay.endpoint import GATEWAY
from rtgate.store.port import KeyInfo, StoredCall, StoreError

log = logging.getLogger("rtgate.api")

PREFIX = "/v1/realtime/calls"
CALLS: web.AppKey[CallRegistry] = web.AppKey("calls", CallRegistry)


def _bad(message: str, param: str | None = None) -> InvalidRequest:
    return InvalidRequest(message, param=param)


async def _offer(request: web.Request) -> tuple[str, dict[str, Any] | None]:
    """The SDP offer and the session (multipart only) of a ``POST /calls``."""
    raw = await read_body(request)
    ctype = request.content_type
    if ctype == "application/sdp":
        return utf8_text(raw, request.charset, "sdp"), None
    if not ctype.startswith("multipart/"):
        raise UnreadableBody("Expected application/sdp or multipart/form-data.")
    parts = form_parts(request.headers[hdrs.CONTENT_TYPE], raw)
    if "sdp" not in parts:
        raise _bad("Missing required parameter: 'sdp'.", "sdp")
    sdp = utf8_text(parts["sdp"].payload, parts["sdp"].charset, "sdp")
    session = None
    if "session" in parts:
        part = parts["session"]
        session = json_object(utf8_text(part.payload, part.charset, "session"), "session")
    return sdp, session


def _upstream_session(policy: KeyPolicy, route: Route, template: dict[str, Any]) -> dict[str, Any]:
    """The key's defaults under the call's session, with the upstream's model name."""
    base = {"type": "realtime", **dict(policy.session_defaults or {})}
    out = deep_merge(base, template)
    out["model"] = route.upstream_model
    return out


async def create_call(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    try:
        return await _place_call(gw, request.app[CALLS], request)
    except GatewayError as err:
        note_refusal(gw, err, "call")
        raise


async def _place_call(gw: Gateway, calls: CallRegistry, request: web.Request) -> web.Response:
    """Policy first (the upstream sees no offer the key may not place), then the offer goes
    upstream and the call's sideband is opened; a call that cannot be metered is hung up."""
    gw.check_accepting()
    key, policy, grant = await gw.authenticator.key_or_secret(request.headers, request.remote)
    sdp, session = await _offer(request)
    if not sdp.strip():
        raise _bad("Missing required parameter: 'sdp'.", "sdp")
    # A raw offer's model, as the beta WebRTC route took it (?model=); the session's, when it
    # names one, comes first (a newcomer's find: ?model= was ignored, and the call placed on
    # the default model).
    asked = session.get("model") if session else None
    if not isinstance(asked, str):
        asked = request.query.get("model") or None
    if grant is not None:
        if grant.kind != "realtime":
            raise _bad("A transcription client secret cannot place a call.")
        model = connection_model(grant, asked)
        template = dict(grant.session)
        if session:
            template = deep_merge(template, ga_template(session)[1])
    else:
        named, template = ga_template(session)
        model = named or asked or gw.settings.default_model
    if template.get("type") != "realtime":
        raise _bad("A call takes a realtime session.", "session.type")
    route = route_for(gw, policy, model, template)
    await admit(gw, key, policy)
    secret_id = grant.id if grant is not None else None
    try:
        call_id, answer = await create_upstream_call(
            gw, route, sdp, _upstream_session(policy, route, template)
        )
        try:
            # Its owner is on record before anyone hears of the call (the 201, its sideband).
            owned = await claim_call(gw, call_id, key, route, secret_id)
            if owned:
                await calls.start(gw, call_id, key, policy, route, secret_id)
        except BaseException:
            # Whatever stopped it (a store cut off mid-write raised the driver's own error, an
            # audit found), a call that is not metered does not go on.
            await hang_up_unmetered(gw, route, call_id)
            raise
        if not owned:
            # A provider's call ids are unique, so this is never seen; the call is not ours.
            raise UpstreamError("The upstream answered with the id of a call already placed.")
    except BaseException:
        await gw.limiter.release(key.id)
        raise
    log.info("call placed", extra={"key_id": key.id, "model": route.model, "call_id": call_id})
    return web.Response(
        status=201,
        body=answer.encode(),
        headers={"Content-Type": "application/sdp", "Location": f"{PREFIX}/{call_id}"},
    )


async def hang_up_unmetered(gw: Gateway, route: Route, call_id: str, *, live: bool = False) -> None:
    """A call (``live``: a GPT-Live session) the gateway cannot meter must not go on."""
    try:
        await hangup_upstream(gw, route, call_id, live=live)
    except GatewayError:
        log.warning("call %s could not be hung up", call_id)


async def call_action(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    action = request.match_info["action"]
    call_id = request.match_info["call_id"]
    key, policy = await gw.authenticator.key(request.headers, request.remote)
    # Another key's call, on any instance, answers as if it did not exist; None: no key owns it.
    call = await call_of(gw, call_id, key)
    raw = await read_body(request)
    body = json_object(raw) if raw.strip() else None
    if action == "accept":
        gw.check_accepting()
        try:
            model, template = ga_template(body)
            route = route_for(gw, policy, model or gw.settings.default_model, template)
        except GatewayError as err:
            raise _at_top_level(err) from None
        if template.get("type") != "realtime":
            raise _bad("A call takes a realtime session.", "type")
        body = _upstream_session(policy, route, template)
        upstream_body: bytes | None = orjson.dumps(body)
    else:
        route = control_route(gw, call)
        upstream_body = control_body(action, body)
    return await act_on_call(
        gw, request.app[CALLS], (key, policy), call_id, action, route, upstream_body, call
    )


def _at_top_level(err: GatewayError) -> GatewayError:
    """``err`` about an ``accept``'s body, which is the session itself (the SDK's
    ``calls.accept(call_id, type=..., model=...)``): its param named from the top, as the
    client sent it (a newcomer's find: ``foo`` was refused as ``session.foo``)."""
    if err.param is not None and err.param.startswith("session."):
        err.param = err.param.removeprefix("session.")
        err.message = err.message.replace("'session.", "'")
    return err


#: What the body of each control other than ``accept`` may hold, and the kind of each value
#: (docs/protocol.md 3, docs/protocol-live.md 9: ``reject {status_code?}``, ``refer
#: {target_uri}``, ``hangup`` none): only these go upstream.
CONTROLS: dict[str, dict[str, type]] = {
    "reject": {"status_code": int},
    "refer": {"target_uri": str},
    "hangup": {},
}
#: The members a control must hold (the SDK's ``Required``), a Realtime call's and a GPT-Live
#: session's: a ``refer`` without its target is refused here, not sent for the provider to
#: refuse (a newcomer's find); Live's ``reject`` names its status code too.
REQUIRED: dict[str, tuple[str, ...]] = {"refer": ("target_uri",)}
LIVE_REQUIRED: dict[str, tuple[str, ...]] = {**REQUIRED, "reject": ("status_code",)}


def control_body(action: str, body: dict[str, Any] | None, *, live: bool = False) -> bytes | None:
    """The body of a ``reject``, ``refer`` or ``hangup`` of a call or a Live session, as it goes
    upstream; a member the control does not take (``unknown_parameter``) or a value of the
    wrong kind (``invalid_type``) is refused before the provider hears of it."""
    for name in (LIVE_REQUIRED if live else REQUIRED).get(action, ()):
        if body is None or body.get(name) is None:
            raise MissingParameter(f"Missing required parameter: '{name}'.", param=name)
    if body is None:
        return None
    members = CONTROLS[action]
    refuse_unknown(body, members)
    for name, kind in members.items():
        value = body.get(name)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            expected = "an integer" if kind is int else "a string"
            raise InvalidType(f"Invalid type for '{name}': expected {expected}.", param=name)
    return orjson.dumps(body)


async def act_on_call(
    gw: Gateway,
    calls: CallRegistry,
    owner: tuple[KeyInfo, KeyPolicy],
    call_id: str,
    action: str,
    route: Route,
    body: bytes | None,
    call: StoredCall | None,
    *,
    live: bool = False,
) -> web.Response:
    """``accept|reject|refer|hangup`` relayed for a Realtime call or (``live``) a GPT-Live
    session, the one way for both; ``call``: its owner's row, this key's (None: no key's). An
    accept of a SIP call that awaits its owner's accept (``awaits_accept``) and has no sideband
    here claims it: makes the key its owner (atomically, before the provider hears of it) and
    opens its metered sideband once the provider has accepted."""
    key, policy = owner
    sb = calls.get(call_id)  # its sideband, if this instance runs it
    claim = action == "accept" and sb is None and awaits_accept(call, gw.clock.now())
    admitted = False  # a live-session slot is held for the sideband this accept opens
    claimed = False  # this accept made the key the call's owner
    try:
        if claim:
            # Of two keys accepting at once, the other is answered 404.
            await admit(gw, key, policy)
            admitted = True
            try:
                claimed = await claim_call(gw, call_id, key, route, accepted=False)
            except StoreError:
                # No answer in time is not no claim: it may have committed. Released
                # below (only ever this key's), so a retry finds the call unowned and
                # accepts it with a sideband, never as one accepted already.
                claimed = True
                raise
            if not claimed:
                raise call_not_found(call_id)
        status, _, _ = await upstream_post(
            gw, route, f"/{call_id}/{action}", json_body=body, live=live
        )
        if status == 404:
            raise call_not_found(call_id)
        if not 200 <= status < 300:
            log.warning("upstream %s refused %s: HTTP %s", route.upstream_name, action, status)
            raise upstream_refused(action, status)
        if admitted:
            try:
                await calls.start(gw, call_id, key, policy, route, live=live)
            except BaseException:
                # Whatever stopped it, an accepted call that is not metered does not go on.
                await hang_up_unmetered(gw, route, call_id, live=live)
                raise
            # The sideband holds the slot now, and the call is the key's.
            admitted = claimed = False
            await accepted_call(gw, call_id)
    finally:
        if admitted:
            await gw.limiter.release(key.id)
        if claimed:
            # Not accepted: the call is left as this found it, no key's.
            await release_claim(gw, call_id, key.id)
    if action == "hangup" and sb is not None:
        # Hung up through the gateway: the sideband ends now, so the key's live-session slot
        # is free by the time the client hears back. (One on another instance ends when the
        # provider closes it.)
        await sb.hung_up_by_client()
    what = "live session" if live else "call"
    log.info("%s %s relayed", what, action, extra={"key_id": key.id, "call_id": call_id})
    return web.Response(status=status)


async def release_claim(gw: Gateway, call_id: str, key_id: str) -> None:
    try:
        await gw.store.release_call(call_id, key_id)
    except GatewayError as err:
        log.error("call %s claim not released: %s", call_id, err.message)


def upstream_refused(action: str, status: int) -> GatewayError:
    return UpstreamError(f"The upstream refused the call's {action} (HTTP {status}).")


class BetaWebRtcRemoved(GatewayError):
    http_status = 400
    error_type = "invalid_request_error"
    code = "beta_api_shape_disabled"


async def beta_webrtc_offer(request: web.Request) -> web.StreamResponse:
    """``POST /v1/realtime?model=`` with an SDP offer was the beta WebRTC route
    (docs/protocol.md 2.4, 3). OpenAI removed it with the beta shapes, and it cannot be
    translated: a WebRTC session's events flow over the data channel between browser and
    provider, never through the gateway, so a beta app's events would reach a GA session as they
    are. Say where to go instead."""
    raise BetaWebRtcRemoved(
        "The beta WebRTC route (POST /v1/realtime with an SDP offer) has been removed. Send the "
        "offer to POST /v1/realtime/calls; the data channel then speaks the GA events.",
        param="model",
    )


def add_call_routes(app: web.Application) -> None:
    app[CALLS] = CallRegistry()

    async def end_calls(app: web.Application) -> None:
        await app[CALLS].shutdown()

    app.on_shutdown.append(end_calls)
    app.router.add_post(PREFIX, openai_errors(create_call))
    app.router.add_post("/v1/realtime", openai_errors(beta_webrtc_offer))
    app.router.add_post(
        PREFIX + "/{call_id}/{action:accept|reject|refer|hangup}", openai_errors(call_action)
    )
