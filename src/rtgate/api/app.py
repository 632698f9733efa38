"""The application factory: the composition root of a running gateway.

Nothing happens at import; ``create_app`` wires settings, store, ledger, upstream client and
routes, and the aiohttp lifecycle hooks start and stop the parts that own tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler

from rtgate import __version__
from rtgate.api.admin import PREFIX as ADMIN_PATH
from rtgate.api.admin import create_admin_app
from rtgate.api.calls_http import add_call_routes
from rtgate.api.home import home
from rtgate.api.live import HeldSessions, watch_revoked_keys
from rtgate.api.live_http import add_live_routes
from rtgate.api.openai_errors import error_response, openai_errors, v1_http_errors
from rtgate.api.realtime_http import add_realtime_http_routes
from rtgate.api.request_timeouts import body_deadline
from rtgate.auth.authenticator import Authenticator
from rtgate.auth.keyring import KeyRing
from rtgate.auth.limits import LocalSessionLimiter, SessionLimiter
from rtgate.auth.operator_token import OperatorToken, bearer
from rtgate.auth.policy import KeyPolicy, allows_model
from rtgate.auth.throttle import FailureThrottle
from rtgate.catalog import Catalog
from rtgate.clock import Clock, SystemClock
from rtgate.config import Secret, Settings, loopback_url, model_family
from rtgate.drain import DRAIN, Drain
from rtgate.engine.options import EngineOptions
from rtgate.engine.routes import add_engine_routes
from rtgate.engine.stack import build_engine
from rtgate.errors import AuthError, GatewayError, ModelNotFound
from rtgate.fleet import Fleet, LoneInstance
from rtgate.gateway import Gateway, shutting_down
from rtgate.heap import trim_after_bursts
from rtgate.lost_sessions import keep_beating
from rtgate.metering.ledger import Ledger
from rtgate.metering.spend import SpendBook
from rtgate.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from rtgate.metrics import Metrics
from rtgate.relay.endpoint import GATEWAY, RELAY_SOCKETS, RelaySockets, realtime
from rtgate.store.port import Store, StoreError
from rtgate.store.sql import SqlStore
from rtgate.tls import upstream_context
from rtgate.web.console import PREFIX as CONSOLE_PATH
from rtgate.web.console import create_console_app
from rtgate.welcome import unserved

if TYPE_CHECKING:
    from rtgate.auth.redis_limits import RedisSessionLimiter

log = logging.getLogger("rtgate")

ENGINE_PATH = "/_engine/v1"


async def health(request: web.Request) -> web.Response:
    """Liveness: 200 as long as the process serves, draining or not (it must not be killed
    while its live sessions finish)."""
    gw = request.app[GATEWAY]
    return web.json_response(
        {"status": "ok", "version": __version__, "live_sessions": len(gw.live)}
    )


async def ready(request: web.Request) -> web.Response:
    """Readiness: 200 while new sessions are taken, 503 from the moment a drain begins, so a
    load balancer stops sending sessions here."""
    gw = request.app[GATEWAY]
    if gw.accepting:
        return web.json_response({"status": "ready", "live_sessions": len(gw.live)})
    return web.json_response({"status": "draining", "live_sessions": len(gw.live)}, status=503)


def metrics_page(token: Secret | None) -> Handler:
    """``GET /metrics``, behind ``metrics_token`` (a Bearer token) when one is set."""
    expected = None if token is None else OperatorToken(token.get_secret_value())

    async def page(request: web.Request) -> web.StreamResponse:
        gw = request.app[GATEWAY]
        if expected is not None:
            given = bearer(request.headers)

            async def check() -> None:
                if given is None or not expected.matches(given):
                    raise AuthError(
                        "Send the metrics token in an Authorization header using Bearer auth "
                        "(i.e. Authorization: Bearer RTGATE_METRICS_TOKEN)."
                    )

            try:
                # Wrong tokens count against the address, as wrong keys do.
                await gw.authenticator.checked(
                    request.headers, request.remote, check, offered=given is not None
                )
            except GatewayError as err:  # a wrong token, or the address throttled (429)
                response = error_response(err)
                if err.http_status == 401:
                    response.headers["WWW-Authenticate"] = 'Bearer realm="rtgate-metrics"'
                return response
        body = gw.metrics.render()
        return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})

    return page


def _models(gw: Gateway, policy: KeyPolicy) -> dict[str, dict[str, Any]]:
    """The catalog's models as ``/v1/models`` lists them to a key: those it may use, less
    those their upstream refuses (``welcome.unserved``), by name. ``created`` is when this
    gateway started listing them (the SDK's ``Model`` requires one; a provider's dates are not
    known here)."""
    refused = unserved(gw.settings)
    created = int(gw.started_at)
    return {
        name: {"id": name, "object": "model", "created": created, "owned_by": m.upstream}
        for name, m in sorted(gw.settings.models.items())
        if name not in refused and allows_model(policy, name)
    }


async def _listed(request: web.Request) -> dict[str, dict[str, Any]]:
    """What ``_models`` lists to the gateway key the request carries; as OpenAI's, the list
    is for a key only (anyone else learnt the catalog and its upstreams' names)."""
    gw = request.app[GATEWAY]
    _, policy = await gw.authenticator.key(request.headers, request.remote)
    return _models(gw, policy)


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": list((await _listed(request)).values())})


async def model(request: web.Request) -> web.Response:
    """One of ``models`` (the SDK's ``models.retrieve``), a dated snapshot as its family (as
    sessions route it), or OpenAI's 404."""
    name = request.match_info["model"]
    listed = await _listed(request)
    entry = listed.get(name) or listed.get(model_family(name))
    if entry is None:
        raise ModelNotFound(f"The model '{name}' does not exist", param="model")
    return web.json_response({**entry, "id": name})


async def end_live(app: web.Application) -> None:
    """A stop's one teardown of what is still live (none after a drain that finished): each
    session ends now with an error event and 1001 (going away), as OpenAI's SDK expects, and
    the front door's sessions (``relay_door``), which are no aiohttp handlers, are awaited, so
    every end is recorded before the ledger drains.

    ``serving.serve_async`` runs it before aiohttp's clean-up, which first stops reading every
    connection it serves (``Server.pre_shutdown``), WebSockets included: the local engine's
    upstream end and a client's permessage-deflate socket would then never read the close the
    session sends them, and each leg would wait out its close timeout (5 s). It is also the
    app's first shutdown hook, for an app aiohttp stops alone (a test's runner); run twice, the
    second finds nothing live."""
    await app[DRAIN].cancel()
    await app[GATEWAY].end_live_sessions(shutting_down())
    await app[RELAY_SOCKETS].wait()


def background(
    stack: contextlib.AsyncExitStack, work: Coroutine[Any, Any, None], name: str
) -> None:
    """Run ``work`` as a task for the app's life: cancelled, and awaited, as the app stops."""
    task = asyncio.create_task(work, name=name)

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(stop)


async def leave(store: Store, instance: str, within: float) -> None:
    """This instance has stopped; if the store cannot take that now, the others' sweep will
    find its row stale, with no session of it open (rtgate.lost_sessions)."""
    with contextlib.suppress(StoreError, TimeoutError):
        async with asyncio.timeout(within):
            await store.leave(instance)


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    store: Store | None = None,
    engine: EngineOptions | None = None,
    engine_token: str | None = None,
    expiry_check_interval: float = 1.0,
    propagate_drain: Callable[[], None] | None = None,
) -> web.Application:
    """The gateway as an aiohttp application. ``propagate_drain`` tells sibling worker
    processes when the admin API asks this one to drain (``workers.py``; ``rtgate.drain``)."""
    clock = clock or SystemClock()
    store = store or SqlStore(
        settings.resolved_database_url, timeout=settings.store_timeout_seconds
    )
    token = engine_token or secrets.token_urlsafe(32)
    engine = engine or build_engine(
        settings.engine, token, int(settings.max_session_seconds), settings.max_message_bytes
    )
    # HTTP bodies only: a WebSocket's frames have their own limit (max_msg_size, relay/endpoint).
    app = web.Application(
        client_max_size=settings.max_http_body_bytes,
        middlewares=[v1_http_errors, body_deadline(settings.request_timeout_seconds)],
    )
    metrics = Metrics()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        # Each resource is released by the exit stack in reverse order, also when a later step
        # of start-up fails (a database that will not open must not leak Redis connections).
        async with contextlib.AsyncExitStack() as stack:
            # Shared counters first: an unreachable Redis stops start-up before anything opens.
            shared: RedisSessionLimiter | None = None
            fleet: Fleet = LoneInstance()
            if settings.redis_url:
                # Imported here: the Redis client (~7 MB of modules) stays out of a gateway
                # that has no redis_url (docs/performance.md, fixed footprint).
                from rtgate.auth.redis_limits import RedisSessionLimiter
                from rtgate.redis_fleet import RedisFleet

                shared = await RedisSessionLimiter.connect(
                    settings.redis_url, clock, prefix=settings.redis_prefix
                )
                stack.push_async_callback(shared.close)
                # The live-session listing and forced closes across instances, same Redis.
                fleet = RedisFleet.from_url(settings.redis_url, clock, prefix=settings.redis_prefix)
                stack.push_async_callback(fleet.close)
            limiter: SessionLimiter = shared if shared is not None else LocalSessionLimiter()
            settings.home.mkdir(parents=True, exist_ok=True)
            stack.push_async_callback(store.close)
            await store.init()
            # This process serves from now on (rtgate.lost_sessions); it is forgotten once its
            # sessions' ends are written (the ledger drains before this runs).
            await store.beat(fleet.instance, clock.now())
            stack.push_async_callback(leave, store, fleet.instance, settings.store_timeout_seconds)
            # And goes on beating from now on, through the engine's and the spill's loading:
            # a start longer than four beats must not have its siblings forget it.
            beats = keep_beating(
                store,
                clock,
                fleet.instance,
                settings.instance_beat_seconds,
                settings.max_session_seconds,
            )
            background(stack, beats, "instance-beat")
            if settings.default_upstream == "local":
                # The models load now, once the store has opened (a start that fails on the
                # database says so first), so the engine's first caller does not wait for them.
                await asyncio.to_thread(engine.preload)
            # The TLS upstreams' trust, parsed here once, not at every session's dial; the HTTP
            # calls to the upstreams (a call's sideband, minting) verify against it too.
            upstream_tls = upstream_context(u.base_url for u in settings.upstreams.values())
            http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ssl=upstream_tls or True)
            )
            stack.push_async_callback(http.close)
            ledger = Ledger(
                store,
                spill_dir=settings.home / "usage-spill",
                commit_timeout=settings.commit_timeout_seconds,
                retry_seconds=settings.spill_retry_seconds,
                metrics=metrics,
            )
            await ledger.recover()
            keyring = KeyRing(store, clock, cache_seconds=settings.key_cache_seconds)
            throttle = (
                FailureThrottle(settings.auth_failures_burst, settings.auth_failures_per_minute)
                if settings.auth_failures_burst
                else None
            )
            gw = Gateway(
                settings=settings,
                store=store,
                clock=clock,
                keyring=keyring,
                authenticator=Authenticator(
                    keyring, clock, metrics, throttle, settings.proxy_networks
                ),
                catalog=Catalog(settings),
                ledger=ledger,
                spend=SpendBook(store, ledger, clock, timeout=settings.commit_timeout_seconds),
                http=http,
                limiter=limiter,
                metrics=metrics,
                local_token=engine.token,
                expiry_check_interval=expiry_check_interval,
                fleet=fleet,
                upstream_tls=upstream_tls,
            )
            app[GATEWAY] = gw
            writer = asyncio.create_task(ledger.run(), name="ledger")

            async def stop_ledger() -> None:
                # Every record the relay accepted is durable before the store closes.
                await ledger.drain()
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
                await ledger.close()

            stack.push_async_callback(stop_ledger)
            # A burst's memory goes back to the OS once its sessions have closed (rtgate.heap).
            background(stack, trim_after_bursts(lambda: len(gw.live)), "heap")
            # A revoked key's live sessions end within seconds, whoever revoked it (api/live.py).
            background(stack, watch_revoked_keys(gw), "revoked-keys")
            app[DRAIN] = Drain(gw, settings.drain_seconds, propagate=propagate_drain)
            stack.push_async_callback(app[DRAIN].cancel)
            if shared is not None:
                shared.start()
            await fleet.start(HeldSessions(gw))
            yield

    app[RELAY_SOCKETS] = RelaySockets(within=max(60.0, settings.drain_seconds))
    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(end_live)
    app.router.add_get("/v1/realtime", realtime)
    app.router.add_get("/v1/realtime/translations", realtime)
    app.router.add_get("/v1/live/sessions", realtime)
    add_realtime_http_routes(app)
    add_call_routes(app)
    add_live_routes(app)
    app.router.add_get("/", home)
    app.router.add_get("/healthz", health)
    app.router.add_get("/readyz", ready)
    app.router.add_get("/metrics", metrics_page(settings.metrics_token))
    # Errors in OpenAI's shape, and no answer cached: what a key may use is its own.
    app.router.add_get("/v1/models", openai_errors(models))
    app.router.add_get("/v1/models/{model}", openai_errors(model))
    add_engine_routes(app, engine, ENGINE_PATH)
    app.add_subapp(ADMIN_PATH, create_admin_app(settings))
    app.add_subapp(CONSOLE_PATH, create_console_app())
    return app


def set_local_base_url(app: web.Application, host: str, port: int) -> None:
    """Point the ``local`` upstream at this process's own engine route (known once bound)."""
    app[GATEWAY].local_base_url = loopback_url("ws", host, port, ENGINE_PATH)
