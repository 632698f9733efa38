"""OpenAI's HTTP error answer, ``{"error": {"message", "type", "code", "param"}}``, for the
``/v1/realtime/...`` routes (client secrets, calls) and the admin API.

On the ``/v1/realtime`` routes a refusal carries the error's status, except a body the route
cannot use, which OpenAI answers with 400 (the admin API says 422 for an invalid field). Every
answer there, error or not, is ``Cache-Control: no-store``: these routes hand out secrets and SDP.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from rtgate.api.bodies import InvalidRequest, MalformedBody
from rtgate.api.views import ErrorDetail, ErrorResponse, dump
from rtgate.errors import GatewayError

log = logging.getLogger("rtgate.api")


def openai_error(
    status: int,
    error_type: str,
    code: str,
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


def error_response(err: GatewayError) -> web.Response:
    status = 400 if isinstance(err, InvalidRequest | MalformedBody) else err.http_status
    return openai_error(status, err.error_type, err.code, err.message, err.param)


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
