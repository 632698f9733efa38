"""``GET /v1/realtime``: authenticate, route, dial, bridge, account.

Authentication and routing happen after the upgrade, as OpenAI does (docs/protocol.md 5.3): a bad
key gets the 101, then an ``invalid_api_key`` error event and close 3000; an unknown model gets
``model_not_found`` and close 4004. Neither dials the upstream. Once the upstream is dialled,
every exit path closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping

import aiohttp
from aiohttp import web

from rtgate.auth.client_secrets import (
    ClientSecret,
    connection_intent,
    connection_model,
    revoked_secret_error,
    template_update,
)
from rtgate.auth.credentials import BETA_PROTOCOL, client_credential, offered_subprotocols
from rtgate.auth.policy import (
    ClientEventGuard,
    KeyPolicy,
    check_model,
    check_session_template,
    initial_session_update,
    over_budget,
)
from rtgate.catalog import Route
from rtgate.errors import GatewayError, UpstreamError
from rtgate.gateway import Gateway
from rtgate.protocol.beta import BetaTranslator
from rtgate.protocol.events import error_event_for
from rtgate.protocol.transcript import TranscriptRecorder
from rtgate.relay.admission import admit, metered_session
from rtgate.relay.bridge import Bridge
from rtgate.relay.upstream import upstream_headers, upstream_url
from rtgate.store.port import KeyInfo, SessionOpen

log = logging.getLogger("rtgate.relay")

GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)


class ShuttingDown(GatewayError):
    http_status = 503
    close_code = 1001
    code = "server_shutting_down"


async def _refuse(ws: web.WebSocketResponse, err: GatewayError) -> web.WebSocketResponse:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_str(error_event_for(err))
        await ws.close(code=err.close_code, message=err.close_reason.encode()[:123])
    return ws


async def _dial(
    gw: Gateway, route: Route, request: web.Request, intent: str | None
) -> aiohttp.ClientWebSocketResponse:
    up = route.upstream
    api_key: str | None
    if up.kind == "local":
        base_url, api_key = gw.local_base_url, gw.local_token
    else:
        base_url = up.base_url
        api_key = up.api_key.get_secret_value() if up.api_key else None
    query = [(k, v) for k, v in request.query.items() if k != "intent"]
    if intent is not None:
        query.append(("intent", intent))
    url = upstream_url(up, base_url, route.upstream_model, query)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(up.connect_timeout_s):
            upstream = await gw.http.ws_connect(
                url,
                headers=upstream_headers(up, request.headers, api_key),
                max_msg_size=0,
                compress=0,
                # The bridge pings and answers pings itself (bridge.py, Heartbeat).
                autoping=False,
                autoclose=True,
                heartbeat=None,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
            )
        gw.metrics.connect.labels(route.upstream_name).observe(time.perf_counter() - started)
        return upstream
    except aiohttp.WSServerHandshakeError as exc:
        log.warning("upstream %s refused the handshake: HTTP %s", route.upstream_name, exc.status)
        raise UpstreamError(f"The upstream refused the connection (HTTP {exc.status}).") from exc
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        log.warning("upstream %s unreachable: %s", route.upstream_name, type(exc).__name__)
        raise UpstreamError("The upstream could not be reached.") from exc


async def _secret_revoked(gw: Gateway, secret_id: str, extra: Mapping[str, object]) -> bool:
    """Whether the secret that opened a session was revoked while it dialled. The session was
    admitted with the secret valid, so a store that cannot answer does not end it (as a call's
    sideband, ``calls.py``); it is logged."""
    try:
        return await gw.keyring.secret_revoked(secret_id)
    except GatewayError as err:
        log.error("client secret %s not re-checked: %s", secret_id, err.message, extra=dict(extra))
        return False


def _answered_protocols(headers: Mapping[str, str]) -> tuple[str, ...]:
    """``realtime`` whenever offered; a beta client offering only the beta one gets it back."""
    offered = offered_subprotocols(headers)
    if "realtime" in offered or BETA_PROTOCOL not in offered:
        return ("realtime",)
    return (BETA_PROTOCOL,)


async def realtime(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    s = gw.settings
    cred = client_credential(request.headers)
    ws = web.WebSocketResponse(
        protocols=_answered_protocols(request.headers),
        compress=s.permessage_deflate,
        max_msg_size=s.max_message_bytes,
        # The bridge pings and answers pings itself (bridge.py, Heartbeat).
        autoping=False,
        autoclose=True,
        heartbeat=None,
    )
    await ws.prepare(request)

    query = request.query
    intent = query.get("intent")
    model = query.get("model")
    try:
        if gw.closing:
            raise ShuttingDown("The gateway is shutting down; reconnect shortly.")
        key, policy, grant = await gw.keyring.authenticate_session(cred.secret)
        if grant is not None:
            model = connection_model(grant, model)
            intent = connection_intent(grant, intent)
            check_session_template(policy, grant.session)
        elif model is None and intent != "transcription" and "call_id" not in query:
            model = s.default_model
        route = gw.catalog.resolve(model)
        check_model(policy, route.model)
        await admit(gw, key, policy)
    except GatewayError as err:
        log.info("session refused: %s", err.code, extra={"refusal": err.code})
        gw.metrics.refused(err.code)
        return await _refuse(ws, err)
    try:
        try:
            upstream = await _dial(gw, route, request, intent)
        except GatewayError as err:
            gw.metrics.refused(err.code)
            return await _refuse(ws, err)
        try:
            # A beta client is translated to GA, unless its upstream still speaks beta itself.
            beta = (
                BetaTranslator(transcription=intent == "transcription")
                if cred.beta and not route.upstream.beta
                else None
            )
            await _relay(gw, ws, upstream, key, policy, route, intent, grant, beta=beta)
        finally:
            if not upstream.closed:
                with contextlib.suppress(Exception):
                    await upstream.close(code=1001, message=b"gateway closing")
    finally:
        await gw.limiter.release(key.id)
    return ws


async def _relay(
    gw: Gateway,
    ws: web.WebSocketResponse,
    upstream: aiohttp.ClientWebSocketResponse,
    key: KeyInfo,
    policy: KeyPolicy,
    route: Route,
    intent: str | None,
    grant: ClientSecret | None = None,
    *,
    beta: BetaTranslator | None = None,
) -> None:
    session = metered_session(
        gw, key, policy, route, intent=intent, secret_id=grant.id if grant is not None else None
    )
    now = session.opened_at
    extra = {"session_id": session.session_id, "key_id": key.id, "model": route.model}
    try:
        await gw.store.open_session(
            SessionOpen(
                session.session_id, key.id, route.model or "", route.upstream_name, intent, now
            )
        )
    except GatewayError as err:
        log.error("session not opened: %s", err.message, extra=extra)
        await _refuse(ws, err)
        return

    async def budget_left() -> GatewayError | None:
        return over_budget(policy, await gw.keyring.spend(key.id))

    guard = ClientEventGuard(policy)
    bridge = Bridge(
        ws,
        upstream,
        session,
        gw.ledger,
        gw.clock,
        check_interval=gw.expiry_check_interval,
        guard=guard if guard.active else None,
        after_usage=budget_left if policy.has_budget else None,
        metrics=gw.metrics,
        recorder=TranscriptRecorder(session.session_id, key.id)
        if policy.keep_transcripts
        else None,
        store=gw.store,
        beta=beta,
        heartbeat=gw.settings.heartbeat_seconds,
    )
    transcription = intent == "transcription"
    initial = initial_session_update(policy, transcription=transcription)
    if initial is not None:
        # The key's defaults go first, so anything the client sends later overrides them.
        await upstream.send_str(initial)
    template = template_update(grant) if grant is not None else None
    if template is not None:
        # A client secret's template next: its minter chose it for this very session.
        await upstream.send_str(template)
    gw.live[session.session_id] = bridge
    gw.metrics.live.inc()
    gw.metrics.started.labels(route.model or "").inc()
    log.info("session opened", extra=extra)
    try:
        if gw.closing:
            # Shutdown began while this session dialled: it would miss the 1001 sweep.
            await bridge.close(1001, "gateway shutting down", "gateway")
        elif grant is not None and grant.id and await _secret_revoked(gw, grant.id, extra):
            # Its secret was revoked while it dialled: the revocation's sweep missed it.
            await bridge.terminate(revoked_secret_error())
        else:
            await bridge.run()
    finally:
        gw.live.pop(session.session_id, None)
        gw.metrics.live.dec()
        gw.metrics.ended.labels(str(session.close_code), session.closed_by or "gateway").inc()
        gw.metrics.duration.observe(gw.clock.now() - now)
        try:
            await gw.store.close_session(
                session.session_id,
                gw.clock.now(),
                session.close_code,
                session.close_reason,
                session.closed_by or "gateway",
            )
        except GatewayError as err:
            log.error("session end not recorded: %s", err.message, extra=extra)
        log.info(
            "session closed by %s: %s %s",
            session.closed_by,
            session.close_code,
            session.close_reason,
            extra=extra,
        )
