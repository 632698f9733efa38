"""OpenAI's HTTP error answer, ``{"error": {"message", "type", "code", "param"}}``, for the
``/v1/realtime/...`` routes (client secrets, calls) and the admin API.

On the ``/v1/realtime`` routes a refusal carries the error's status, except a body the route
cannot use, which OpenAI answers with 400 (the admin API says 422 for an invalid field). Every
answer there, error or not, is ``Cache-Control: no-store``: these routes hand out secrets and SDP.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from rtgate.api.bodies import InvalidRequest, MalformedBody
from rtgate.api.views import ErrorDetail, ErrorResponse, dump
from rtgate.errors import GatewayError, QuotaExceeded

log = logging.getLogger("rtgate.api")


def openai_error(
    status: int,
    error_type: str,
    code: str | None,
    message: str,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = ErrorResponse(
        error=ErrorDetail(message=message, type=error_type, code=code, param=param)
    )
    return web.Response(
        body=orjson.dumps(dump(body)),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def server_error() -> web.Response:
    """What a bug answers at the boundary, in the documented shape (its traceback is logged)."""
    message = "The server had an error while processing your request."
    return openai_error(500, "server_error", "server_error", message)


def retry_headers(err: GatewayError) -> dict[str, str]:
    """``Retry-After`` for an error that says when to come back."""
    if err.retry_after is None:
        return {}
    # Whole seconds (RFC 9110 section 10.2.3), rounded up: a retry then finds room.
    return {"Retry-After": str(max(1, math.ceil(err.retry_after)))}


def error_response(err: GatewayError) -> web.Response:
    status = 400 if isinstance(err, InvalidRequest | MalformedBody) else err.http_status
    headers = retry_headers(err)
    if isinstance(err, QuotaExceeded):
        # A spent budget does not come back on a retry; the SDKs retry a 429 unless told not
        # to by this header (openai-python's ``_should_retry``).
        headers["x-should-retry"] = "false"
    return openai_error(status, err.error_type, err.code, err.message, err.param, headers)


def openai_errors(handler: Handler) -> Handler:
    """``handler`` with its errors answered in OpenAI's shape, never cached."""

    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            response = await handler(request)
        except GatewayError as err:
            response = error_response(err)
        except Exception:
            log.exception("request failed: %s %s", request.method, request.path)
            response = server_error()
        response.headers["Cache-Control"] = "no-store"
        return response

    return answer


# aiohttp's own refusals (no such route, wrong method, body too large), in the admin API's shape.
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def _allow(exc: web.HTTPException) -> dict[str, str]:
    """A 405's ``Allow`` (RFC 9110 15.5.6), kept on the answer that replaces it."""
    return {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}


def http_error(exc: web.HTTPException) -> web.Response:
    """One of aiohttp's refusals as the admin API answers it."""
    code = _HTTP_CODES.get(exc.status, "invalid_request")
    return openai_error(
        exc.status, "invalid_request_error", code, exc.reason + ".", headers=_allow(exc)
    )


def not_a_websocket(request: web.Request) -> web.Response:
    """A plain request on a route that takes only a WebSocket (``/v1/realtime``,
    ``/v1/live/sessions``, ...): said in OpenAI's shape, with what to do instead."""
    sdk = {
        "/v1/live/sessions": "live.connect()",
        "/v1/realtime/translations": "realtime.translations.connect()",
    }.get(request.path, "realtime.connect()")
    message = (
        f"{request.method} {request.path} takes a WebSocket: connect with Upgrade: websocket"
        f" (the SDK's {sdk})."
    )
    return openai_error(400, "invalid_request_error", None, message)


@web.middleware
async def v1_http_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's refusals under ``/v1/`` in OpenAI's words: a route that does not exist is
    ``Invalid URL (GET /v1/...)``, 404, ``code: null``, as OpenAI answers it (a wrong method:
    the same words, with its 405 and ``Allow``); elsewhere (the console, the admin API, which
    answer in their own shapes) they pass."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        v1 = request.path == "/v1" or request.path.startswith("/v1/")
        if not v1 or exc.status not in (404, 405):
            raise
        message = f"Invalid URL ({request.method} {request.path})"
        return openai_error(exc.status, "invalid_request_error", None, message, headers=_allow(exc))
