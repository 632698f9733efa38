"""WebRTC and SIP calls relayed upstream (protocol.md 3, 3.1, 3.2), and their sidebands.

A call's media flows between the client and the provider, never through the gateway; what the
gateway keeps is the call's *sideband*: its own WebSocket to ``{base}/realtime?call_id=...``
with the provider's key, read as a metered session billed to the key that placed the call. When
the key's budget is crossed or the session's cap is reached, the call is hung up upstream.

Every sideband task is owned by a ``CallRegistry`` (one per app) and cancelled at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from rtgate.auth.policy import KeyPolicy, over_budget, session_seconds
from rtgate.catalog import Route
from rtgate.errors import GatewayError, SessionExpired, UpstreamError
from rtgate.gateway import Gateway
from rtgate.metering.ledger import LedgerError
from rtgate.protocol.ids import new_id
from rtgate.protocol.relay_session import RelaySession
from rtgate.relay.bridge import expiry_message
from rtgate.relay.upstream import upstream_headers, upstream_url
from rtgate.store.port import KeyInfo, SessionOpen

log = logging.getLogger("rtgate.calls")

CALL_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
ACTIONS = ("accept", "reject", "refer", "hangup")
INTENT = "webrtc"


class CallNotFound(GatewayError):
    http_status = 404
    error_type = "invalid_request_error"
    code = "not_found"


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


@dataclass
class Sideband:
    call_id: str
    key: KeyInfo
    policy: KeyPolicy
    route: Route
    session: RelaySession
    ws: aiohttp.ClientWebSocketResponse
    task: asyncio.Task[None] | None = None
    hung_up: bool = False


@dataclass
class CallRegistry:
    """The sidebands this app runs, by call id; each one's task is owned here."""

    calls: dict[str, Sideband] = field(default_factory=dict)
    #: Every sideband task until it has fully finished (its session recorded as ended).
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    closing: bool = False

    def get(self, call_id: str) -> Sideband | None:
        return self.calls.get(call_id)

    async def start(
        self, gw: Gateway, call_id: str, key: KeyInfo, policy: KeyPolicy, route: Route
    ) -> Sideband:
        """Dial the call's sideband and run it as a metered session (the limiter slot the
        caller acquired is released when it ends)."""
        url = upstream_url(route.upstream, route.upstream.base_url, "", [("call_id", call_id)])
        try:
            async with asyncio.timeout(route.upstream.connect_timeout_s):
                ws = await gw.http.ws_connect(
                    url,
                    headers=upstream_headers(route.upstream, {}, provider_key(route)),
                    max_msg_size=0,
                    compress=0,
                    heartbeat=gw.settings.heartbeat_seconds,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise UpstreamError("The call's sideband could not be opened upstream.") from exc
        now = gw.clock.now()
        session = RelaySession(
            session_id=new_id("rs", 20),
            key_id=key.id,
            route=route,
            catalog=gw.catalog,
            opened_at=now,
            opened_mono=gw.clock.monotonic(),
            max_seconds=session_seconds(policy, gw.settings.max_session_seconds),
            intent=INTENT,
        )
        try:
            await gw.store.open_session(
                SessionOpen(
                    session.session_id, key.id, route.model, route.upstream_name, INTENT, now
                )
            )
        except GatewayError:
            with contextlib.suppress(Exception):
                await ws.close()
            raise
        sb = Sideband(call_id, key, policy, route, session, ws)
        self.calls[call_id] = sb
        sb.task = asyncio.create_task(self._run(gw, sb), name=f"sideband-{call_id}")
        self.tasks.add(sb.task)
        sb.task.add_done_callback(self.tasks.discard)
        log.info(
            "call sideband opened",
            extra={"session_id": session.session_id, "key_id": key.id, "call_id": call_id},
        )
        return sb

    async def _run(self, gw: Gateway, sb: Sideband) -> None:
        try:
            await self._pump(gw, sb)
        except asyncio.CancelledError:
            sb.session.close(1001, "gateway shutting down", "gateway")
            if not sb.hung_up:
                # An unmetered call must not outlive its gateway.
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await self._hangup(gw, sb)
            raise
        except Exception:
            log.exception("call sideband failed", extra={"call_id": sb.call_id})
            sb.session.close(1011, "sideband failed", "gateway")
        finally:
            self.calls.pop(sb.call_id, None)
            if not sb.ws.closed:
                # Bounded: an upstream that never answers the close must not hold shutdown.
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2):
                        await sb.ws.close(code=1000)
            await gw.limiter.release(sb.key.id)
            s = sb.session
            try:
                await gw.store.close_session(
                    s.session_id,
                    gw.clock.now(),
                    s.close_code,
                    s.close_reason,
                    s.closed_by or "gateway",
                )
            except GatewayError as err:
                log.error("call session end not recorded: %s", err.message)

    async def _hangup(self, gw: Gateway, sb: Sideband) -> None:
        sb.hung_up = True
        status = await hangup_upstream(gw, sb.route, sb.call_id)
        log.info("call %s hung up by the gateway: HTTP %s", sb.call_id, status)

    async def _end(self, gw: Gateway, sb: Sideband, err: GatewayError) -> None:
        if sb.session.close(err.close_code, err.close_reason, "gateway"):
            with contextlib.suppress(GatewayError):
                await self._hangup(gw, sb)

    async def _pump(self, gw: Gateway, sb: Sideband) -> None:
        session, clock, ws, policy = sb.session, gw.clock, sb.ws, sb.policy
        metered_budget = bool(
            policy.budget_day_nanos or policy.budget_month_nanos or policy.budget_total_nanos
        )
        while True:
            remaining = session.deadline - clock.monotonic()
            if remaining <= 0:
                await self._end(gw, sb, SessionExpired(expiry_message(session.max_seconds)))
                return
            try:
                # aiohttp's own receive timeout: wrapping receive() in asyncio.wait_for left a
                # cancelled task stuck in the wait (so shutdown never hung the call up).
                msg = await ws.receive(timeout=min(remaining, gw.expiry_check_interval))
            except TimeoutError:
                continue
            if msg.type is aiohttp.WSMsgType.TEXT:
                rec = session.on_upstream_text(msg.data, clock.now())
                if rec is None or isinstance(rec, str):
                    continue
                try:
                    await gw.ledger.record(rec)
                    gw.metrics.usage(rec)
                except LedgerError:
                    log.error("usage record lost, hanging up call %s", sb.call_id)
                    await self._end(gw, sb, UpstreamError("Usage could not be recorded."))
                    return
                if metered_budget:
                    refusal = over_budget(policy, await gw.keyring.spend(sb.key.id))
                    if refusal is not None:
                        gw.metrics.refused(refusal.code)
                        await self._end(gw, sb, refusal)
                        return
            elif msg.type is aiohttp.WSMsgType.BINARY:
                continue
            else:
                code = ws.close_code if ws.close_code is not None else 1006
                session.close(code, str(msg.extra or ""), "upstream")
                return

    async def shutdown(self) -> None:
        """End the live sidebands (hanging their calls up) and wait for every task to finish;
        one already ending is left to record its end, not interrupted."""
        self.closing = True
        for sb in list(self.calls.values()):
            if sb.task is not None:
                sb.task.cancel()
        tasks = list(self.tasks)
        if not tasks:
            return
        _, stuck = await asyncio.wait(tasks, timeout=15)
        for t in stuck:
            # Each step above is bounded; this is the last guard that shutdown always ends.
            log.error("call sideband %s did not end in time; abandoned", t.get_name())
            t.cancel()
