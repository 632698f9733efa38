"""Where the engine is served, and who may open an engine session: only the gateway that runs it.

The engine's routes sit on the gateway's own port under an internal path; the relay dials them
with a per-process token (``EngineOptions.token``), so a client cannot skip admission and
metering by calling the engine directly.

The handlers import the engine's protocol modules on first use: they pull in numpy and soxr
(13 MB of resident memory), which a gateway whose sessions all go to a provider never needs.
The first import runs in a thread, so the relay's loop keeps moving meanwhile.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib

from aiohttp import web

from rtgate.engine.options import EngineOptions

ENGINE_OPTIONS: web.AppKey[EngineOptions] = web.AppKey("engine_options", EngineOptions)


def authorized(request: web.Request, opts: EngineOptions) -> bool:
    """Whether the request carries the engine's token (compared in constant time)."""
    auth = request.headers.get("Authorization", "")
    return hmac.compare_digest(auth.encode(), f"Bearer {opts.token}".encode())


async def _engine_realtime(request: web.Request) -> web.StreamResponse:
    server = await asyncio.to_thread(importlib.import_module, "rtgate.engine.server")
    response: web.StreamResponse = await server.engine_realtime(request)
    return response


async def _engine_live(request: web.Request) -> web.StreamResponse:
    live = await asyncio.to_thread(importlib.import_module, "rtgate.engine.live_server")
    response: web.StreamResponse = await live.engine_live(request)
    return response


def add_engine_routes(app: web.Application, opts: EngineOptions, base: str = "/_engine/v1") -> None:
    """The engine's two protocols under ``base``, where the relay's local upstream points:
    ``/realtime`` (the Realtime API) and ``/live/sessions`` (GPT-Live)."""
    app[ENGINE_OPTIONS] = opts
    app.router.add_get(base + "/realtime", _engine_realtime)
    app.router.add_get(base + "/live/sessions", _engine_live)
