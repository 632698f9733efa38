"""WebRTC and SIP calls relayed upstream (docs/protocol.md 3, 3.1, 3.2), and their sidebands.

A call's media flows between the client and the provider, never through the gateway; what the
gateway keeps is the call's *sideband*: its own WebSocket to ``{base}/realtime?call_id=...``
with the provider's key, read as a metered session billed to the key that placed the call. When
the key's budget is crossed or the session's cap is reached, the call is hung up upstream.

A sideband is a live session like a relayed socket (``Gateway.live``): the admin API lists it
and closes it, and shutdown ends it, and ending it hangs its call up. Every sideband task is
owned by a ``CallRegistry`` (one per app), which ends the calls still live at shutdown.

A GPT-Live WebRTC or SIP session (``live``, docs/protocol-live.md 9) is a call too: created at
``{base}/live/sessions``, controlled at ``{base}/live/sessions/{id}/{action}``, its sideband
``{base}/live/sessions/{id}/attach``, metered by its voice seconds (``protocol/live.py``). The
provider bills ``live_startup_seconds`` as a created (WebRTC) session starts, credited against its
duration: recorded as the sideband opens, the snapshots then bill only what exceeds it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from rtgate.auth.policy import KeyPolicy
from rtgate.catalog import Route
from rtgate.errors import (
    GatewayError,
    LedgerUnavailable,
    UnsupportedUpstream,
    UpstreamError,
    upstream_refused,
)
from rtgate.gateway import Gateway, shutting_down
from rtgate.protocol.relay import sendable
from rtgate.protocol.relay_session import RelaySession
from rtgate.relay.admission import metered_session, record_end, record_start
from rtgate.relay.aiohttp_leg import AiohttpLeg
from rtgate.relay.call_owners import CALL_ID
from rtgate.relay.live import commit_usage, go_live, relay_pump, run_live
from rtgate.relay.upstream import provider_key, upstream_headers, upstream_url
from rtgate.store.port import KeyInfo

log = logging.getLogger("rtgate.calls")

ACTIONS = ("accept", "reject", "refer", "hangup")
INTENT = "webrtc"

# Every wait on the upstream while a call ends is bounded, so shutdown always ends.
HANGUP_TIMEOUT_S = 5.0
SOCKET_CLOSE_TIMEOUT_S = 2.0
#: How long ``Sideband.close`` waits for the sideband's task to record its end.
END_WAIT_S = 10.0
SHUTDOWN_WAIT_S = 15.0


def http_base(base_url: str) -> str:
    """The upstream's HTTP base: its ws(s) base with http(s)."""
    if base_url.startswith("wss://"):
        return "https://" + base_url[len("wss://") :]
    if base_url.startswith("ws://"):
        return "http://" + base_url[len("ws://") :]
    return base_url


def call_base(route: Route, *, live: bool = False) -> str:
    """``{http base}/realtime/calls`` (``live``: ``/live/sessions``) of a route's upstream; the
    local engine has no calls."""
    if route.upstream.kind == "local":
        raise UnsupportedUpstream("The local engine does not take WebRTC or SIP calls.")
    if route.upstream.kind == "gemini":
        raise UnsupportedUpstream("Gemini Live models do not take WebRTC or SIP calls.")
    path = "/live/sessions" if live else "/realtime/calls"
    return http_base(route.upstream.base_url).rstrip("/") + path


def call_id_from(location: str | None) -> str:
    """The call id at the end of the upstream's ``Location``."""
    tail = (location or "").rstrip("/").rsplit("/", 1)[-1]
    if not CALL_ID.match(tail):
        raise UpstreamError("The upstream answered the call without a valid Location.")
    return tail


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        old = out.get(k)
        out[k] = deep_merge(old, v) if isinstance(old, dict) and isinstance(v, dict) else v
    return out


async def upstream_post(
    gw: Gateway,
    route: Route,
    path: str,
    *,
    data: Any = None,
    json_body: bytes | None = None,
    live: bool = False,
) -> tuple[int, bytes, Mapping[str, str]]:
    """POST to ``{calls base}{path}`` with the provider's credentials."""
    headers = upstream_headers(route.upstream, {}, provider_key(route.upstream))
    if json_body is not None:
        headers["Content-Type"] = "application/json"
        data = json_body
    try:
        async with asyncio.timeout(route.upstream.connect_timeout_s + 10):
            url = call_base(route, live=live) + path
            async with gw.http.post(url, data=data, headers=headers) as resp:
                return resp.status, await resp.read(), dict(resp.headers)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        log.warning("upstream %s unreachable: %s", route.upstream_name, type(exc).__name__)
        raise UpstreamError("The upstream could not be reached.") from exc


async def create_upstream_call(
    gw: Gateway, route: Route, sdp: str, session: Mapping[str, Any]
) -> tuple[str, str]:
    """Relay an SDP offer and its session; the call id and the SDP answer."""
    form = aiohttp.MultipartWriter("form-data")
    part = form.append(sdp, {"Content-Type": "application/sdp"})
    part.set_content_disposition("form-data", name="sdp")
    part = form.append(orjson.dumps(dict(session)).decode(), {"Content-Type": "application/json"})
    part.set_content_disposition("form-data", name="session")
    status, body, headers = await upstream_post(gw, route, "", data=form)
    if status not in (200, 201):
        log.warning("upstream %s refused a call: HTTP %s", route.upstream_name, status)
        raise UpstreamError(f"The upstream refused the call (HTTP {status}).")
    return call_id_from(headers.get("Location")), body.decode("utf-8", "replace")


async def _dial_sideband(
    gw: Gateway, route: Route, call_id: str, *, live: bool
) -> aiohttp.ClientWebSocketResponse:
    """The gateway's own sideband socket to a call (``live``: a GPT-Live session's)."""
    if live:
        url = upstream_url(route.upstream.base_url, route=f"live/sessions/{call_id}/attach")
    else:
        url = upstream_url(route.upstream.base_url, call_id=call_id)
    try:
        async with asyncio.timeout(route.upstream.connect_timeout_s):
            return await gw.http.ws_connect(
                url,
                headers=upstream_headers(route.upstream, {}, provider_key(route.upstream)),
                max_msg_size=0,
                compress=0,
                # The relay pings a quiet upstream and answers its pings itself.
                autoping=False,
                heartbeat=None,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
            )
    except aiohttp.WSServerHandshakeError as exc:
        raise upstream_refused(exc.status) from exc
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise UpstreamError("The call's sideband could not be opened upstream.") from exc


async def hangup_upstream(gw: Gateway, route: Route, call_id: str, *, live: bool = False) -> int:
    status, _, _ = await upstream_post(gw, route, f"/{call_id}/hangup", live=live)
    return status


class Sideband:
    """One call's sideband, a live session (``rtgate.gateway.LiveSession``) like a relayed socket.

    It reads the call's events upstream and meters them, through the same core and pump as a
    relayed socket with no client leg (``relay/live.py``); nothing is relayed anywhere. Ending it,
    for whatever reason the gateway or its operator has, ends the call: the session is marked
    closed (the first close wins), the call is hung up upstream (at most once, whichever path
    ends it), and the socket is closed. The task that runs it (``CallRegistry``) then records
    the end. An end the upstream starts (the call hung up elsewhere) needs no hangup.
    """

    def __init__(
        self,
        gw: Gateway,
        call_id: str,
        key: KeyInfo,
        policy: KeyPolicy,
        route: Route,
        session: RelaySession,
        ws: aiohttp.ClientWebSocketResponse,
    ) -> None:
        self.gw = gw
        #: A GPT-Live session's sideband (its hangup is Live's).
        self.live = session.live is not None
        self.call_id = call_id
        self.key = key
        self.policy = policy
        self.route = route
        self.session = session
        self.ws = ws
        self.task: asyncio.Task[None] | None = None
        #: Set before the one hangup request goes out, so no other path sends a second.
        self.hung_up = False
        self.pump = relay_pump(gw, session, policy, None, AiohttpLeg(ws), hangup=self.hangup)

    async def terminate(self, err: GatewayError, by: str = "operator") -> None:
        """End the call from outside with ``err`` (shutdown, an operator's forced close, a
        revoked client secret) and wait, bounded, until its end is recorded; a call already
        ending is left to finish, and waited for."""
        self.pump.perform(self.pump.core.terminate(err, by))
        await self._finished()

    async def hung_up_by_client(self) -> None:
        """The client hung the call up through the gateway: end the sideband, no second hangup."""
        self.hung_up = True
        self.pump.perform(self.pump.core.hung_up())
        await self._finished()

    async def hangup(self) -> None:
        """Hang the call up upstream, once; bounded, so a silent upstream holds nothing up."""
        if self.hung_up:
            return
        self.hung_up = True
        try:
            async with asyncio.timeout(HANGUP_TIMEOUT_S):
                status = await hangup_upstream(self.gw, self.route, self.call_id, live=self.live)
        except (GatewayError, TimeoutError) as exc:
            log.warning("call %s could not be hung up: %s", self.call_id, type(exc).__name__)
            return
        log.info("call %s hung up by the gateway: HTTP %s", self.call_id, status)

    async def close_socket(self) -> None:
        """Close the sideband socket with the session's close code (1000 while it is open)."""
        if self.ws.closed:
            return
        code, reason = self.session.close_code, self.session.close_reason
        try:
            # Bounded: an upstream that never answers the close must not hold anything up.
            async with asyncio.timeout(SOCKET_CLOSE_TIMEOUT_S):
                await self.ws.close(code=sendable(code), message=reason.encode()[:123])
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.info("call %s sideband closed abruptly: %s", self.call_id, type(exc).__name__)

    async def _finished(self) -> None:
        task = self.task
        if task is None or task.done() or task is asyncio.current_task():
            return
        # asyncio.wait, not wait_for: a caller cancelled while it waits must not cancel the task.
        _, pending = await asyncio.wait({task}, timeout=END_WAIT_S)
        if pending:
            log.error("call sideband %s did not end in time", self.call_id)


@dataclass
class CallRegistry:
    """The sidebands this app runs, by call id; each one's task is owned here, and each one is
    in ``Gateway.live`` for exactly as long as its task runs."""

    calls: dict[str, Sideband] = field(default_factory=dict)
    #: Every sideband task until it has fully finished (its session recorded as ended).
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    closing: bool = False

    def get(self, call_id: str) -> Sideband | None:
        return self.calls.get(call_id)

    async def start(
        self,
        gw: Gateway,
        call_id: str,
        key: KeyInfo,
        policy: KeyPolicy,
        route: Route,
        secret_id: str | None = None,
        *,
        live: bool = False,
        startup: bool = False,
    ) -> Sideband:
        """Dial the call's sideband and run it as a metered session (``live``: a GPT-Live
        session's; ``startup``: one the gateway created, which owes the start-up charge). The
        limiter slot the caller acquired is released when it ends; if this raises, the slot and
        the call (to hang up) are still the caller's."""
        session = metered_session(
            gw, key, policy, route, intent=INTENT, secret_id=secret_id, live=live
        )
        if session.live is not None:
            # The provider's id of the session (docs/protocol-live.md 9): its records' ``ref``,
            # whether or not its sideband hears ``session.started``.
            session.live.session_id = call_id
        try:
            if self.closing or gw.closing:
                raise shutting_down()
            ws = await _dial_sideband(gw, route, call_id, live=live)
        except GatewayError as err:
            if startup:
                # The provider created the session, and bills its start-up even if it never
                # runs (docs/protocol-live.md 9): the caller hangs it up, this records it.
                await self._never_ran(gw, session, err)
            raise
        sb = Sideband(gw, call_id, key, policy, route, session, ws)
        opened = False
        try:
            await record_start(gw, session)
            opened = True
            if startup:
                await self._prepay(gw, session)
        except GatewayError as err:
            await sb.close_socket()
            if opened:  # its row ends as it began: no session is left open in the store
                session.close(err.close_code, err.close_reason, "gateway")
                await record_end(gw, session)
            raise
        if self.closing or gw.closing:
            # Shutdown began while this call was placed: its sweep has passed this call by.
            err = shutting_down()
            session.close(err.close_code, err.close_reason, "gateway")
            await sb.close_socket()
            await record_end(gw, sb.session)
            raise err
        self.calls[call_id] = sb
        # Live from here on, before any await: an operator's close or a revocation that comes
        # after this line finds the call; one that came before is caught by ``run_live``.
        go_live(gw, sb, {"session_id": session.session_id, "key_id": key.id, "call_id": call_id})
        sb.task = asyncio.create_task(self._run(gw, sb), name=f"sideband-{call_id}")
        self.tasks.add(sb.task)
        sb.task.add_done_callback(self.tasks.discard)
        return sb

    async def _never_ran(self, gw: Gateway, session: RelaySession, err: GatewayError) -> None:
        """A created session whose sideband never opened: its row, the start-up charge, and
        its end with ``err``'s close; logged, not raised, when the ledger cannot keep them
        (``err`` is what the caller hears)."""
        session.close(err.close_code, err.close_reason, "gateway")
        try:
            await record_start(gw, session)
        except GatewayError as lost:
            self._not_recorded(session, lost)
            return
        try:
            await self._prepay(gw, session)
        except GatewayError as lost:
            self._not_recorded(session, lost)
        await record_end(gw, session)

    @staticmethod
    def _not_recorded(session: RelaySession, lost: GatewayError) -> None:
        log.error(
            "start-up charge of a session that never ran not recorded: %s",
            lost.message,
            extra={"session_id": session.session_id},
        )

    @staticmethod
    async def _prepay(gw: Gateway, session: RelaySession) -> None:
        """A Live call's start-up charge (docs/protocol-live.md 9), durable before the call's
        answer goes back; ``LedgerUnavailable`` if it can be kept nowhere."""
        ms = round(gw.settings.live_startup_seconds * 1000)
        rec = session.prepay_live(ms, gw.clock.now())
        if rec is not None and not await commit_usage(gw.ledger, rec, ""):
            raise LedgerUnavailable("Usage could not be recorded, so the call was not placed.")

    async def _run(self, gw: Gateway, sb: Sideband) -> None:
        s = sb.session
        extra = {"session_id": s.session_id, "key_id": sb.key.id, "call_id": sb.call_id}

        async def unregister() -> None:
            if self.calls.get(sb.call_id) is sb:
                del self.calls[sb.call_id]
            await sb.close_socket()

        try:
            await run_live(gw, sb.pump, extra, release=sb.key.id, before_end=unregister)
        except asyncio.CancelledError:
            # Only shutdown's last guard cancels: an unmetered call must not outlive its gateway.
            stop = shutting_down()
            s.close(stop.close_code, stop.close_reason, "gateway")
            await sb.hangup()
            raise

    async def shutdown(self) -> None:
        """End the live calls (each hung up once, with 1001) and wait for every sideband task
        to finish; a call already ending is left to record its end, not interrupted."""
        self.closing = True
        ending = [sb.terminate(shutting_down(), "gateway") for sb in list(self.calls.values())]
        await asyncio.gather(*ending, return_exceptions=True)
        tasks = list(self.tasks)
        if not tasks:
            return
        _, stuck = await asyncio.wait(tasks, timeout=SHUTDOWN_WAIT_S)
        for t in stuck:
            # Each step above is bounded; this is the last guard that shutdown always ends.
            log.error("call sideband %s did not end in time; cancelled", t.get_name())
            t.cancel()
        if stuck:
            # A cancelled sideband still hangs its call up (bounded) before it lets go.
            await asyncio.wait(stuck, timeout=HANGUP_TIMEOUT_S + SOCKET_CLOSE_TIMEOUT_S)
