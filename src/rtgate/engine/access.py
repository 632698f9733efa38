"""Who may open an engine session: only the gateway that runs it.

The engine's routes sit on the gateway's own port under an internal path; the relay dials them
with a per-process token (``EngineOptions.token``), so a client cannot skip admission and
metering by calling the engine directly.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from rtgate.engine.options import EngineOptions

ENGINE_OPTIONS: web.AppKey[EngineOptions] = web.AppKey("engine_options", EngineOptions)


def authorized(request: web.Request, opts: EngineOptions) -> bool:
    """Whether the request carries the engine's token (compared in constant time)."""
    auth = request.headers.get("Authorization", "")
    return hmac.compare_digest(auth.encode(), f"Bearer {opts.token}".encode())
