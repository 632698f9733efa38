"""WebRTC and SIP calls relayed upstream (docs/protocol.md 3, 3.1, 3.2), and their sidebands.

A call's media flows between the client and the provider, never through the gateway; what the
gateway keeps is the call's *sideband*: its own WebSocket to ``{base}/realtime?call_id=...``
with the provider's key, read as a metered session billed to the key that placed the call. When
the key's budget is crossed or the session's cap is reached, the call is hung up upstream.

A sideband is a live session like a relayed socket (``Gateway.live``): the admin API lists it
and closes it, and shutdown ends it, and ending it hangs its call up. Every sideband task is
owned by a ``CallRegistry`` (one per app), which ends the calls still live at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from rtgate.auth.client_secrets import revoked_secret_error
from rtgate.auth.policy import KeyPolicy
from rtgate.catalog import Route
from rtgate.errors import (
    GatewayError,
    LedgerUnavailable,
    RelayFailed,
    SessionExpired,
    UpstreamError,
)
from rtgate.gateway import Gateway, shutting_down
from rtgate.protocol.relay_session import RelaySession, received_close_code
from rtgate.relay.admission import budget_crossed, metered_session, record_end, record_start
from rtgate.relay.bridge import commit_usage, expiry_message, keep_alive, sendable, sever
from rtgate.relay.call_owners import CALL_ID
from rtgate.relay.keepalive import Keepalive, upstream_cadence
from rtgate.relay.upstream import upstream_headers, upstream_url
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


class CallsUnsupported(GatewayError):
    http_status = 400
    error_type = "invalid_request_error"
    code = "unsupported_upstream"


def http_base(base_url: str) -> str:
    """The upstream's HTTP base: its ws(s) base with http(s)."""
    if base_url.startswith("wss://"):
        return "https://" + base_url[len("wss://") :]
    if base_url.startswith("ws://"):
        return "http://" + base_url[len("ws://") :]
    return base_url


def provider_key(route: Route) -> str | None:
    up = route.upstream
    return up.api_key.get_secret_value() if up.api_key else None


def call_base(route: Route) -> str:
    """``{http base}/realtime/calls`` of a route's upstream; the local engine has no calls."""
    if route.upstream.kind == "local":
        raise CallsUnsupported("The local engine does not take WebRTC or SIP calls.")
    return http_base(route.upstream.base_url).rstrip("/") + "/realtime/calls"


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
) -> tuple[int, bytes, Mapping[str, str]]:
    """POST to ``{calls base}{path}`` with the provider's credentials."""
    headers = upstream_headers(route.upstream, {}, provider_key(route))
    if json_body is not None:
        headers["Content-Type"] = "application/json"
        data = json_body
    try:
        async with asyncio.timeout(route.upstream.connect_timeout_s + 10):
            async with gw.http.post(call_base(route) + path, data=data, headers=headers) as resp:
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


async def hangup_upstream(gw: Gateway, route: Route, call_id: str) -> int:
    status, _, _ = await upstream_post(gw, route, f"/{call_id}/hangup")
    return status


class Sideband:
    """One call's sideband, a live session (``rtgate.gateway.LiveSession``) like a relayed socket.

    It reads the call's events upstream and meters them; nothing is relayed anywhere. Ending it,
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
        self.call_id = call_id
        self.key = key
        self.policy = policy
        self.route = route
        self.session = session
        self.ws = ws
        self.task: asyncio.Task[None] | None = None
        #: Set before the one hangup request goes out, so no other path sends a second.
        self.hung_up = False

    async def close(self, code: int, reason: str, by: str) -> None:
        """End the call from outside (shutdown, admin) with ``code`` and wait, bounded, until
        its end is recorded; a call already ending is left to finish, and waited for."""
        await self.end_call(code, reason, by)
        await self._finished()

    async def terminate(self, err: GatewayError, by: str = "operator") -> None:
        """End the call from outside with ``err``'s close code and reason (an operator's forced
        close, a revoked client secret)."""
        await self.close(err.close_code, err.close_reason, by)

    async def hung_up_by_client(self) -> None:
        """The client hung the call up through the gateway: end the sideband, no second hangup."""
        self.hung_up = True
        await self.close(1000, "call hung up", "client")

    async def end_call(self, code: int, reason: str, by: str) -> bool:
        """Close the session with ``code``, hang the call up, close the socket; False (and
        nothing done) if the session was closed already."""
        if not self.session.close(code, reason, by):
            return False
        await self.hangup()
        await self.close_socket()
        return True

    async def hangup(self) -> None:
        """Hang the call up upstream, once; bounded, so a silent upstream holds nothing up."""
        if self.hung_up:
            return
        self.hung_up = True
        try:
            async with asyncio.timeout(HANGUP_TIMEOUT_S):
                status = await hangup_upstream(self.gw, self.route, self.call_id)
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

    async def _upstream_dead(self) -> None:
        """The upstream stopped answering pings: the call is ended as if its socket had gone."""
        log.warning("call %s sideband: the upstream stopped responding", self.call_id)
        sever(self.ws)
        err = UpstreamError("The upstream stopped responding.")
        await self.end_call(err.close_code, err.close_reason, "upstream")

    async def run(self) -> None:
        """Meter the call until it ends: the upstream closes, a budget or the cap is crossed,
        usage cannot be recorded, or someone ends it from outside (the socket closes)."""
        gw, session, clock, ws, policy = self.gw, self.session, self.gw.clock, self.ws, self.policy
        metered_budget = policy.has_budget
        beat = upstream_cadence(gw.settings)
        alive = Keepalive(beat, clock.monotonic()) if beat is not None else None
        while True:
            remaining = session.deadline - clock.monotonic()
            if remaining <= 0:
                err: GatewayError = SessionExpired(expiry_message(session.max_seconds))
                await self.end_call(err.close_code, err.close_reason, "gateway")
                return
            msg: aiohttp.WSMessage | None = None
            with contextlib.suppress(TimeoutError):
                # aiohttp's own receive timeout: wrapping receive() in asyncio.wait_for left a
                # cancelled task stuck in the wait (so shutdown never hung the call up).
                msg = await ws.receive(timeout=min(remaining, gw.expiry_check_interval))
            if alive is not None and not await keep_alive(
                alive, ws, msg is not None, clock.monotonic()
            ):
                await self._upstream_dead()
                return
            if msg is None:
                continue
            if msg.type is aiohttp.WSMsgType.TEXT:
                rec = session.on_upstream_text(msg.data, clock.now())
                if rec is None or isinstance(rec, str):
                    continue
                if not await commit_usage(gw.ledger, gw.metrics, rec, msg.data):
                    # The ledger logged why (once for the outage): an unmetered call must end.
                    log.error("hanging up call %s: its usage could not be recorded", self.call_id)
                    err = LedgerUnavailable("Usage could not be recorded, so the call was ended.")
                    await self.end_call(err.close_code, err.close_reason, "gateway")
                    return
                if metered_budget:
                    refusal = await budget_crossed(gw, self.key.id, policy)
                    if refusal is not None:
                        gw.metrics.refused(refusal.code)
                        await self.end_call(refusal.close_code, refusal.close_reason, "gateway")
                        return
            elif msg.type is aiohttp.WSMsgType.PING:
                # autoping is off, so that pongs reach the keepalive: answer pings here.
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.pong(msg.data)
            elif msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.PONG):
                continue
            else:
                # The upstream ended the call, or the socket was closed from here (then the
                # session is closed already and this changes nothing).
                if msg.type is aiohttp.WSMsgType.CLOSE:
                    code = received_close_code(msg.data)
                else:
                    code = ws.close_code if ws.close_code is not None else 1006
                session.close(code, str(msg.extra or ""), "upstream")
                return


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
    ) -> Sideband:
        """Dial the call's sideband and run it as a metered session. The limiter slot the caller
        acquired is released when it ends; if this raises, the slot and the call (to hang up)
        are still the caller's."""
        if self.closing or gw.closing:
            raise shutting_down()
        url = upstream_url(route.upstream.base_url, call_id=call_id)
        try:
            async with asyncio.timeout(route.upstream.connect_timeout_s):
                ws = await gw.http.ws_connect(
                    url,
                    headers=upstream_headers(route.upstream, {}, provider_key(route)),
                    max_msg_size=0,
                    compress=0,
                    # ``Sideband.run`` pings a quiet upstream and answers its pings itself.
                    autoping=False,
                    heartbeat=None,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise UpstreamError("The call's sideband could not be opened upstream.") from exc
        session = metered_session(gw, key, policy, route, intent=INTENT, secret_id=secret_id)
        sb = Sideband(gw, call_id, key, policy, route, session, ws)
        try:
            await record_start(gw, session)
        except GatewayError:
            await sb.close_socket()
            raise
        if self.closing or gw.closing:
            # Shutdown began while this call was placed: its sweep has passed this call by.
            err = shutting_down()
            session.close(err.close_code, err.close_reason, "gateway")
            await sb.close_socket()
            await self._record_end(gw, sb)
            raise err
        self.calls[call_id] = sb
        # Live from here on, before any await: an operator's close or a revocation that comes
        # after this line finds the call; one that came before is caught by ``_run``'s check.
        gw.live.add(session.session_id, sb)
        gw.metrics.live.inc()
        gw.metrics.started.labels(route.model).inc()
        sb.task = asyncio.create_task(self._run(gw, sb), name=f"sideband-{call_id}")
        self.tasks.add(sb.task)
        sb.task.add_done_callback(self.tasks.discard)
        log.info(
            "call sideband opened",
            extra={"session_id": session.session_id, "key_id": key.id, "call_id": call_id},
        )
        return sb

    async def _run(self, gw: Gateway, sb: Sideband) -> None:
        s = sb.session
        try:
            if s.secret_id is not None and await self._secret_revoked(gw, s.secret_id):
                # Revoked while the call was placed: the revocation's sweep of ``Gateway.live``
                # ran before this call was in it, so it ends here.
                err = revoked_secret_error()
                await sb.end_call(err.close_code, err.close_reason, "operator")
                return
            await sb.run()
        except asyncio.CancelledError:
            # Only shutdown's last guard cancels: an unmetered call must not outlive its gateway.
            stop = shutting_down()
            s.close(stop.close_code, stop.close_reason, "gateway")
            await sb.hangup()
            raise
        except Exception:
            log.exception("call sideband failed", extra={"call_id": sb.call_id})
            failed = RelayFailed("The gateway failed while metering this call.")
            await sb.end_call(failed.close_code, failed.close_reason, "gateway")
        finally:
            if self.calls.get(sb.call_id) is sb:
                del self.calls[sb.call_id]
            await sb.close_socket()
            await gw.limiter.release(sb.key.id)
            gw.live.discard(s.session_id)
            gw.metrics.live.dec()
            gw.metrics.ended.labels(str(s.close_code), s.closed_by or "gateway").inc()
            gw.metrics.duration.observe(gw.clock.now() - s.opened_at)
            await self._record_end(gw, sb)
            log.info(
                "call sideband closed by %s: %s %s",
                s.closed_by,
                s.close_code,
                s.close_reason,
                extra={"session_id": s.session_id, "key_id": sb.key.id, "call_id": sb.call_id},
            )

    @staticmethod
    async def _secret_revoked(gw: Gateway, secret_id: str) -> bool:
        try:
            return await gw.keyring.secret_revoked(secret_id)
        except GatewayError as err:
            # The call was admitted with the secret valid; a store hiccup does not end it.
            log.error("client secret %s not re-checked: %s", secret_id, err.message)
            return False

    @staticmethod
    async def _record_end(gw: Gateway, sb: Sideband) -> None:
        await record_end(gw, sb.session)

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
