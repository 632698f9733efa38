"""``GET /v1/realtime``: authenticate, route, dial, bridge, account.

Authentication and routing happen after the upgrade, as OpenAI does (protocol.md 5.3): a bad key
gets the 101, then an ``invalid_api_key`` error event and close 3000; an unknown model gets
``model_not_found`` and close 4004. Neither dials the upstream.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web

from rtgate.auth.credentials import client_credential
from rtgate.errors import BetaShapeDisabled, GatewayError, UpstreamError
from rtgate.gateway import Gateway
from rtgate.protocol.events import error_event_for
from rtgate.protocol.ids import new_id
from rtgate.protocol.relay_session import RelaySession
from rtgate.relay.bridge import Bridge
from rtgate.relay.upstream import upstream_headers, upstream_url
from rtgate.store.port import SessionOpen

log = logging.getLogger("rtgate.relay")

GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)


async def _refuse(ws: web.WebSocketResponse, err: GatewayError) -> web.WebSocketResponse:
    await ws.send_str(error_event_for(err))
    await ws.close(code=err.close_code, message=err.close_reason.encode()[:123])
    return ws


async def realtime(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    s = gw.settings
    cred = client_credential(request.headers)
    ws = web.WebSocketResponse(
        protocols=("realtime",),
        compress=s.permessage_deflate,
        max_msg_size=s.max_message_bytes,
        autoping=True,
        autoclose=True,
    )
    await ws.prepare(request)

    query = request.query
    intent = query.get("intent")
    model = query.get("model")
    try:
        key = await gw.keyring.authenticate(cred.secret)
        if cred.beta:
            raise BetaShapeDisabled(
                "The Realtime Beta API is no longer supported. Please use /v1/realtime for the "
                "GA API."
            )
        if model is None and intent != "transcription" and "call_id" not in query:
            model = s.default_model
        route = gw.catalog.resolve(model)
    except GatewayError as err:
        log.info("session refused: %s", err.code)
        return await _refuse(ws, err)

    up = route.upstream
    base_url = gw.local_base_url if up.kind == "local" else up.base_url
    api_key = (
        gw.local_token
        if up.kind == "local"
        else (up.api_key.get_secret_value() if up.api_key else None)
    )
    url = upstream_url(up, base_url, route.upstream_model, query.items())
    headers = upstream_headers(up, request.headers, api_key)
    try:
        async with asyncio.timeout(up.connect_timeout_s):
            upstream = await gw.http.ws_connect(
                url,
                headers=headers,
                max_msg_size=0,
                compress=0,
                autoping=True,
                autoclose=True,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
            )
    except aiohttp.WSServerHandshakeError as exc:
        log.warning("upstream %s refused the handshake: HTTP %s", route.upstream_name, exc.status)
        return await _refuse(
            ws, UpstreamError(f"The upstream refused the connection (HTTP {exc.status}).")
        )
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        log.warning("upstream %s unreachable: %s", route.upstream_name, type(exc).__name__)
        return await _refuse(ws, UpstreamError("The upstream could not be reached."))

    now = gw.clock.now()
    session = RelaySession(
        session_id=new_id("rs", 20),
        key_id=key.id,
        route=route,
        catalog=gw.catalog,
        opened_at=now,
        opened_mono=gw.clock.monotonic(),
        max_seconds=s.max_session_seconds,
    )
    extra = {"session_id": session.session_id, "key_id": key.id, "model": route.model}
    await gw.store.open_session(
        SessionOpen(session.session_id, key.id, route.model or "", route.upstream_name, intent, now)
    )
    bridge = Bridge(
        ws, upstream, session, gw.ledger, gw.clock, check_interval=gw.expiry_check_interval
    )
    gw.live[session.session_id] = bridge
    log.info("session opened", extra=extra)
    try:
        await bridge.run()
    finally:
        gw.live.pop(session.session_id, None)
        await gw.store.close_session(
            session.session_id,
            gw.clock.now(),
            session.close_code,
            session.close_reason,
            session.closed_by or "gateway",
        )
        log.info(
            "session closed by %s: %s %s",
            session.closed_by,
            session.close_code,
            session.close_reason,
            extra=extra,
        )
    return ws
