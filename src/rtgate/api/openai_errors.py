"""OpenAI's HTTP error answer for the ``/v1/realtime/...`` routes (client secrets, calls).

A refusal is ``{"error": {"message", "type", "code", "param"}}`` with the error's status, except a
body the route cannot use, which OpenAI answers with 400 (the admin API says 422 for those).
Every answer, error or not, is ``Cache-Control: no-store``: these routes hand out secrets and SDP.
"""

from __future__ import annotations

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from rtgate.api.operation import InvalidRequest, MalformedBody
from rtgate.api.views import ErrorDetail, ErrorResponse, dump
from rtgate.errors import GatewayError


def error_response(err: GatewayError) -> web.Response:
    status = 400 if isinstance(err, InvalidRequest | MalformedBody) else err.http_status
    body = ErrorResponse(
        error=ErrorDetail(message=err.message, type=err.error_type, code=err.code, param=err.param)
    )
    return web.Response(
        body=orjson.dumps(dump(body)), status=status, content_type="application/json"
    )


def openai_errors(handler: Handler) -> Handler:
    """``handler`` with its ``GatewayError``s answered in OpenAI's shape, never cached."""

    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            response = await handler(request)
        except GatewayError as err:
            response = error_response(err)
        response.headers["Cache-Control"] = "no-store"
        return response

    return answer
