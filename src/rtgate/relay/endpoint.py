"""``GET /v1/realtime``: authenticate, route, dial, relay (``relay/live.py``), account.

The client's socket is a picows one, handed over by the front door (``relay_door``,
``front_door.py``), or an aiohttp one (``realtime``: permessage-deflate offered and on, or no
front door); the upstream is always dialled with picows (``picows_leg.connect``). Both run the
same ``relay_socket``.

Authentication and routing happen after the upgrade, as OpenAI does (docs/protocol.md 5.3): a bad
key gets the 101, then an ``invalid_api_key`` error event and close 3000; an unknown model gets
``model_not_found`` and close 4004. Neither dials the upstream. Once the upstream is dialled,
every exit path closes it.

``?call_id=`` attaches a sideband to a WebRTC or SIP call (docs/protocol.md 3.1, 3.2): only for the
call's owner (``call_owners.py``), on the call's upstream. The call holds the key's live-session
slot and the gateway's own sideband bills its usage (``calls.py``), so this socket takes no slot
and records no usage; it relays under the key's budgets and blocked events, and sends none of
the key's or a secret's session defaults (the call has them since it was placed).

``GET /v1/realtime/translations?model=gpt-realtime-translate`` (docs/protocol.md 10) is relayed the
same way, with the same admission, slot, cap, live view and drain, to the upstream's
``{base}/realtime/translations?model=``. A session there opens with a translation client secret
only (``/v1/realtime/translations/client_secrets``; the other kinds open ``/v1/realtime`` only),
sends no ``intent``, and gets no setup frame but a secret's template. The provider reports no
usage on that route, so its input audio is counted by the gateway (intent ``translation``,
``relay/live.py``). The local engine does not translate: ``unsupported_upstream`` and 1008, no
dial.

``GET /v1/live/sessions`` (GPT-Live, docs/protocol-live.md) is relayed the same way too, to the
upstream's ``{base}/live/sessions`` with no query. Its model is in the client's first message,
``session.start`` (2), so the gateway reads that message after authenticating and before it
dials (``first_message.py``): the model is routed and checked against the key like any other,
and the message goes upstream as the session's first frame (``protocol/live.py``). No first
message within ``live_start_seconds``, another event first, or no ``session.model``: an
``error`` in Live's envelope (6) with ``invalid_session_start`` and close 1008, no dial. Live
has no client secrets (1), so a secret opens no Live session. A model routed to the local engine
is dialled at the engine's own ``/live/sessions`` route (``engine/live_server.py``) like a
provider's. Key defaults and templates are Realtime session fields and do not apply. Metering:
``protocol/live.py``, ``protocol/relay.py``.

Upstream, the query carries only what the protocol defines: the routed model, ``intent`` and a
checked ``call_id``; anything else a client adds is dropped.

A session opens with at most one ``session.update`` of rtgate's own, sent before any client
frame (``policy.initial_session_update``: the key's defaults, a client secret's template, a
transcription session's default model). rtgate's own engine applies it before its
``session.created``; a provider answers it with a ``session.updated`` after its own
``session.created``, and no frame is held back to hide that.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Mapping

from aiohttp import hdrs, web
from aiohttp.http import ws_ext_parse

from rtgate.api.openai_errors import not_a_websocket
from rtgate.auth.client_secrets import (
    IntentNotAllowed,
    check_translation_secret,
    connection_intent,
    connection_model,
)
from rtgate.auth.credentials import BETA_PROTOCOL, client_credential, offered_subprotocols
from rtgate.auth.policy import (
    initial_session_update,
    translation_session_update,
)
from rtgate.catalog import DEFAULT_TRANSLATION_MODEL, Route, WrongProtocol
from rtgate.config import Settings
from rtgate.errors import GatewayError, UnsupportedUpstream, UpstreamError, UpstreamRefused
from rtgate.gateway import Gateway
from rtgate.protocol.beta import BetaTranslator
from rtgate.protocol.events import error_event_for
from rtgate.protocol.live import LIVE, SessionStart, read_session_start
from rtgate.relay.admission import (
    admit,
    metered_session,
    note_refusal,
    record_start,
    route_for,
)
from rtgate.relay.aiohttp_leg import AiohttpLeg
from rtgate.relay.call_owners import call_route, owned_call
from rtgate.relay.first_message import FirstMessage, FirstMessageLeg
from rtgate.relay.front_door import LIVE_PATH, TRANSLATIONS_PATH, RelayDoor, RelayUpgrade
from rtgate.relay.legs import Leg
from rtgate.relay.live import TRANSLATION, go_live, relay_pump, run_live
from rtgate.relay.picows_leg import connect
from rtgate.relay.upstream import (
    SETUP_FRAMES_HEADER,
    gemini_url,
    provider_key,
    upstream_headers,
    upstream_url,
)
from rtgate.store.port import StoredCall

log = logging.getLogger("rtgate.relay")

GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)
#: The intent of a client's socket attached to one of its calls (``?call_id=``).
SIDEBAND = "sideband"


async def _refuse(client: Leg, err: GatewayError, *, live: bool = False) -> None:
    client.send_text(error_event_for(err, live=live).encode())
    client.close(err.close_code, err.close_reason)
    await client.wait_closed()


#: The largest message an upstream may send: unbounded in practice (docs/protocol.md 5.8, server
#: frames carry whole audio items), and the provider is trusted, as it always was; the client's
#: own bound is ``max_message_bytes``. picows needs a number.
UPSTREAM_MAX_MESSAGE = 1 << 31


async def _dial(
    gw: Gateway,
    route: Route,
    client_headers: Mapping[str, str],
    intent: str | None,
    call: StoredCall | None,
    setup: str | None,
) -> Leg:
    up = route.upstream
    api_key: str | None
    if up.kind == "local":
        base_url, api_key = gw.local_base_url, gw.local_token
    else:
        base_url = up.base_url
        api_key = provider_key(up)
    headers = upstream_headers(up, client_headers, api_key)
    if up.kind == "gemini":
        return await _dial_gemini(gw, route, headers, intent, call)
    if up.kind == "local":
        # rtgate's own engine applies the setup update before its session.created, so the
        # session it creates is the one the key and the secret chose (engine/server.py).
        headers[SETUP_FRAMES_HEADER] = "1" if setup is not None else "0"
    if call is not None:
        # A sideband names its call alone; the call has its model (docs/protocol.md 1.1, URLs).
        url = upstream_url(base_url, call_id=call.call_id)
    elif intent == TRANSLATION:
        # docs/protocol.md 10: the model is required in the query; there is no intent.
        url = upstream_url(base_url, model=route.upstream_model, route="realtime/translations")
    elif intent == LIVE:
        # docs/protocol-live.md 1: no query at all; the model is in session.start (the setup frame).
        url = upstream_url(base_url, route="live/sessions")
    else:
        url = upstream_url(base_url, model=route.upstream_model, intent=intent)
    return await _connect(gw, route, url, headers)


async def _dial_gemini(
    gw: Gateway,
    route: Route,
    headers: Mapping[str, str],
    intent: str | None,
    call: StoredCall | None,
) -> Leg:
    """A Gemini Live connection behind the OpenAI protocol (``relay/gemini_leg.py``); it dials
    again itself to resume the session after a ``goAway``. Gemini has realtime sessions only:
    no calls or transcription sessions (nor translation or Live ones: ``catalog.check_served``
    refused those)."""
    if call is not None or intent == "transcription":
        raise UnsupportedUpstream(
            f"The model `{route.model}` is served by Gemini Live, which takes realtime"
            " sessions only (no calls or transcription sessions)."
        )
    # The numpy/soxr resampler is needed only here (the engine extra, installed by default).
    from rtgate.relay.gemini_leg import GeminiLeg, translator_for

    url = gemini_url(route.upstream.base_url)
    leg = await _connect(gw, route, url, headers)
    return GeminiLeg(
        leg,
        translator_for(route.model or route.upstream_model, route.upstream_model),
        lambda: _connect(gw, route, url, headers),
    )


async def _connect(gw: Gateway, route: Route, url: str, headers: Mapping[str, str]) -> Leg:
    up = route.upstream
    started = time.perf_counter()
    try:
        upstream = await connect(
            url,
            headers,
            max_message=UPSTREAM_MAX_MESSAGE,
            connect_timeout=up.connect_timeout_s,
            ssl_context=gw.upstream_tls,
        )
    except UpstreamRefused as exc:
        log.warning("upstream %s refused the handshake: HTTP %s", route.upstream_name, exc.status)
        gw.upstream_health.failed(route.upstream_name, f"HTTP {exc.status}", gw.clock.now())
        raise
    except UpstreamError as exc:
        why = type(exc.__cause__ or exc).__name__
        log.warning("upstream %s unreachable: %s", route.upstream_name, why)
        gw.upstream_health.failed(route.upstream_name, why, gw.clock.now())
        raise
    took = time.perf_counter() - started
    gw.metrics.connect.labels(route.upstream_name).observe(took)
    gw.upstream_health.connected(route.upstream_name, took, gw.clock.now())
    return upstream


def message_limit(request: web.Request, settings: Settings) -> int:
    """aiohttp's ``max_msg_size`` for a largest message of ``max_message_bytes``, accepted.

    aiohttp (3.14, both readers) closes a plain message of exactly ``max_msg_size`` bytes with
    1009 but a compressed one only past it, so the limit is passed one higher unless this
    connection is compressed: the negotiation aiohttp itself runs (RFC 7692 section 5), which
    never raises on the server side.
    """
    limit = settings.max_message_bytes
    if settings.permessage_deflate:
        offered = request.headers.get(hdrs.SEC_WEBSOCKET_EXTENSIONS)
        if ws_ext_parse(offered, isserver=True)[0]:
            return limit
    return limit + 1


def _answered_protocols(headers: Mapping[str, str]) -> tuple[str, ...]:
    """``realtime`` whenever offered; a beta client offering only the beta one gets it back."""
    offered = offered_subprotocols(headers)
    if "realtime" in offered or BETA_PROTOCOL not in offered:
        return ("realtime",)
    return (BETA_PROTOCOL,)


def answered_protocol(headers: Mapping[str, str]) -> str | None:
    """The subprotocol the handshake answers: the one ``_answered_protocols`` names, when the
    client offered it (as aiohttp answers ``protocols``), else none."""
    answered = _answered_protocols(headers)[0]
    return answered if answered in offered_subprotocols(headers) else None


async def realtime(request: web.Request) -> web.StreamResponse:
    """The relay on aiohttp: an upgrade the front door passed on (permessage-deflate offered
    and on), or any upgrade where no front door serves (``relay_door``)."""
    gw = request.app[GATEWAY]
    s = gw.settings
    ws = web.WebSocketResponse(
        protocols=_answered_protocols(request.headers),
        compress=s.permessage_deflate,
        max_msg_size=message_limit(request, s),
        # The relay pings and answers pings itself (aiohttp_leg.py, protocol/relay.py).
        autoping=False,
        autoclose=True,
        heartbeat=None,
    )
    if not ws.can_prepare(request).ok:
        return not_a_websocket(request)
    await ws.prepare(request)
    await relay_socket(
        gw,
        AiohttpLeg(ws),
        request.headers,
        request.query,
        request.remote,
        translation=request.path == TRANSLATIONS_PATH,
        live=request.path == LIVE_PATH,
    )
    return ws


class RelaySockets:
    """The owner of the sessions the front door hands over (``relay_door``): one task each,
    awaited at shutdown, after the live ones were ended (``api/app.py``), for ``within``
    seconds at most."""

    def __init__(self, within: float) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self.within = within

    def spawn(self, session: Awaitable[None]) -> None:
        task = asyncio.ensure_future(session)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self) -> None:
        """Until every session has torn down; one still running after ``within`` seconds (a
        bug) is cancelled."""
        if not self._tasks:
            return
        _done, late = await asyncio.wait(set(self._tasks), timeout=self.within)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)


RELAY_SOCKETS: web.AppKey[RelaySockets] = web.AppKey("relay_sockets", RelaySockets)


def relay_door(app: web.Application) -> RelayDoor:
    """What the front door needs to serve the relay path on picows for ``app``'s gateway."""
    gw = app[GATEWAY]
    sockets = app[RELAY_SOCKETS]

    def on_relay(upgrade: RelayUpgrade) -> None:
        sockets.spawn(_serve_upgrade(gw, upgrade))

    return RelayDoor(
        on_relay,
        answered_protocol,
        gw.settings.max_message_bytes,
        deflate=gw.settings.permessage_deflate,
    )


async def _serve_upgrade(gw: Gateway, upgrade: RelayUpgrade) -> None:
    leg = upgrade.leg
    try:
        await relay_socket(
            gw,
            leg,
            upgrade.headers,
            upgrade.query,
            upgrade.remote,
            translation=upgrade.path == TRANSLATIONS_PATH,
            live=upgrade.path == LIVE_PATH,
        )
    except Exception:
        # A bug before the session's pump ran (the pump ends its own the gateway's way).
        log.exception("relay socket failed")
    finally:
        if not leg.closed:
            leg.close(1011, "server_error")
        await leg.wait_closed()


#: What a client's ``?intent=`` on ``/v1/realtime`` may be (docs/protocol.md 1.7); the other
#: routes' intents are the gateway's own.
CLIENT_INTENTS = frozenset({None, "transcription"})


async def relay_socket(
    gw: Gateway,
    client: Leg,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    remote: str | None,
    *,
    translation: bool = False,
    live: bool = False,
) -> None:
    """One client socket, upgraded (the 101 is out), from admission to its end;
    ``translation``: on ``/v1/realtime/translations``; ``live``: on ``/v1/live/sessions``."""
    s = gw.settings
    cred = client_credential(headers)
    intent = LIVE if live else TRANSLATION if translation else query.get("intent")
    model = None if live else query.get("model")
    call_id = None if translation or live else query.get("call_id")
    call: StoredCall | None = None
    first: FirstMessage | None = None
    start: SessionStart | None = None
    try:
        gw.check_accepting()
        key, policy, grant = await gw.authenticator.key_or_secret(headers, remote)
        if not (live or translation) and intent not in CLIENT_INTENTS:
            # Forwarded upstream and stored with the session: only what the protocol defines.
            raise IntentNotAllowed(
                f"Unknown intent `{str(intent)[:40]}`: the Realtime API takes"
                " `intent=transcription`, or none.",
                param="intent",
            )
        if live:
            if grant is not None:
                # The credential is wrong, not a parameter: no model was named yet.
                raise IntentNotAllowed(
                    "GPT-Live has no client secrets; connect with a gateway key."
                )
            first = FirstMessage(client)
            message = await first.read(s.live_start_seconds)
            if first.gone:
                return  # closed before it said anything: nothing to answer
            start = read_session_start(message)
            route = route_for(gw, policy, start.model, start.settings, protocol="live")
            await admit(gw, key, policy)
        elif call_id is not None:
            # Ownership first: another key's call is answered as an unknown one, before
            # anything that depends on the call could tell them apart.
            call = await owned_call(gw, call_id, key, grant.id if grant is not None else None)
            intent = None
            if grant is not None:
                connection_model(grant, call_route(gw, call).model)
            # The call holds the live-session slot; its session was set when it was placed.
            try:
                route = route_for(gw, policy, call.model)
            except WrongProtocol as err:
                raise WrongProtocol(
                    f"The call '{call_id}' is a session of another protocol (its model is"
                    f" `{call.model}`), which takes no sideband on /v1/realtime.",
                    param="call_id",
                ) from err
            await admit(gw, key, policy, slot=False)
        elif translation:
            if grant is not None:
                check_translation_secret(grant)
                model = connection_model(grant, model)
            route = route_for(
                gw,
                policy,
                model or DEFAULT_TRANSLATION_MODEL,
                grant.session if grant is not None else None,
                protocol="translation",
            )
            await admit(gw, key, policy)
        else:
            if grant is not None:
                # The kind first: a translation secret is told where it belongs.
                intent = connection_intent(grant, intent)
                model = connection_model(grant, model)
            elif model is None and intent != "transcription":
                model = s.default_model
            route = route_for(
                gw,
                policy,
                model,
                grant.session if grant is not None else None,
                transcription=intent == "transcription",
            )
            await admit(gw, key, policy)
    except GatewayError as err:
        if start is not None and err.client_event_id is None:
            err.client_event_id = start.event_id  # Live: the session.start it answers
        note_refusal(gw, err, "session")
        await _refuse(client, err, live=live)
        return
    # What the session opens with (none for an attached sideband: the call has it already).
    template = grant.session if grant is not None else None
    if call is not None:
        setup = None
    elif start is not None:
        # The client's own session.start, the only change the model's upstream id.
        setup = start.frame_for(route.upstream_model)
    elif translation:
        setup = translation_session_update(template)
    else:
        setup = initial_session_update(policy, intent == "transcription", template)
    release = key.id if call is None else None
    try:
        upstream = await _dial(gw, route, headers, intent, call, setup)
    except GatewayError as err:
        gw.metrics.refused(err.code)
        if release is not None:
            await gw.limiter.release(release)
        await _refuse(client, err, live=live)
        return
    try:
        # A beta client is translated to GA, unless its upstream still speaks beta itself.
        beta = (
            BetaTranslator(transcription=intent == "transcription")
            if cred.beta and not route.upstream.beta and not translation and not live
            else None
        )
        attached = call is not None
        session = metered_session(
            gw,
            key,
            policy,
            route,
            intent=SIDEBAND if attached else intent,
            secret_id=grant.id if grant is not None else None,
            metered=not attached,
            live=live,
            template=template,
        )
        extra = {"session_id": session.session_id, "key_id": key.id, "model": route.model}
        try:
            await record_start(gw, session)
        except GatewayError as err:
            note_refusal(gw, err, "session", extra)
            if release is not None:
                await gw.limiter.release(release)
            await _refuse(client, err, live=live)
            return
        if first is not None:
            client = FirstMessageLeg(client, first)
        pump = relay_pump(gw, session, policy, client, upstream, setup=setup, beta=beta)
        go_live(gw, pump, extra)
        await run_live(gw, pump, extra, release=release)
    finally:
        if not upstream.closed:
            upstream.close(1001, "gateway closing")
            await upstream.wait_closed()
