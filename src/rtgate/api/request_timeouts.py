"""Bounds on slow clients (slowloris): a request's headers, then its body, must arrive in time.

aiohttp has no header timeout of its own. Its keep-alive timer runs from the moment a connection
opens and again after each response, and closes a connection still waiting for a request's
headers when it fires: with ``keepalive_timeout`` set to ``request_timeout_seconds``
(``app_runner``), headers must be complete that long after the connection opened (or after the
previous response), and an idle keep-alive connection is closed as late. A request being handled
is never cut by it: a WebSocket session lives as long as its own caps allow.

The body is bounded here (``body_deadline``): a request whose body has not fully arrived that
long after its headers gets 408 ``request_timeout`` in OpenAI's shape, then the connection is
closed, unread rest and all (aiohttp would otherwise linger up to 10 s reading it). A request
with no body, or whose body arrived with its headers, costs one ``is_eof`` call.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from rtgate.config import Settings
from rtgate.errors import GatewayError

log = logging.getLogger("rtgate.api")


class RequestTimeout(GatewayError):
    http_status = 408
    error_type = "invalid_request_error"
    code = "request_timeout"


def body_deadline(seconds: float) -> Middleware:
    """Every request's body must be complete ``seconds`` after its headers."""

    @web.middleware
    async def deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
        body = request.content
        if body.is_eof():
            return await handler(request)
        expired = False

        def expire() -> None:
            nonlocal expired
            if not body.is_eof():
                expired = True
                # The handler's read raises it, and its route answers in its own error shape.
                body.set_exception(
                    RequestTimeout(f"The request body did not arrive within {seconds:g} s.")
                )

        timer = asyncio.get_running_loop().call_later(seconds, expire)
        try:
            response = await handler(request)
        finally:
            timer.cancel()
        if expired:
            log.info("request body too slow: %s %s", request.method, request.path)
            await response.prepare(request)
            await response.write_eof()
            request.protocol.force_close()
        return response

    return deadline


def app_runner(app: web.Application, settings: Settings, **kwargs: Any) -> web.AppRunner:
    """The runner that serves ``app``: its connections must send each request's headers within
    ``request_timeout_seconds`` (the keep-alive timer, see the module docstring)."""
    return web.AppRunner(app, keepalive_timeout=settings.request_timeout_seconds, **kwargs)
