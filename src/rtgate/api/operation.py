"""An HTTP operation declared as data: aiohttp serves it, ``rtgate.api.openapi`` documents it.

An ``Operation`` names its handler, its query and body models and its success response; the
served route validates the query and the body with those very models before the handler runs,
and renders what the handler returns, so what is documented is what is enforced.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel, ValidationError

from rtgate.api.bodies import InvalidRequest, MalformedBody, check_json, read_body
from rtgate.api.views import View, dump
from rtgate.gateway import Gateway
from rtgate.relay.endpoint import GATEWAY

Q = TypeVar("Q", bound=BaseModel | None)
B = TypeVar("B", bound=BaseModel | None)
Reply = View | Sequence[View] | web.Response


@dataclass(frozen=True, slots=True)
class Call(Generic[Q, B]):
    """One request, its query and body already validated."""

    request: web.Request
    gw: Gateway
    query: Q
    body: B

    def path(self, name: str) -> str:
        return self.request.match_info[name]


@dataclass(frozen=True, slots=True)
class Operation(Generic[Q, B]):
    """One route: how it is served and, from the same fields, how it is documented."""

    method: str
    path: str
    handler: Callable[[Call[Q, B]], Awaitable[Reply]]
    summary: str
    #: The success status and body (a list of it when ``many``); None: a free-form object.
    status: int
    response: type[View] | None
    many: bool = False
    query: type[Q] | None = None
    body: type[B] | None = None
    #: ``format=csv`` answers ``text/csv`` instead of JSON.
    csv: bool = False
    #: What a 404 means here besides the admin API being disabled.
    not_found: str | None = None
    #: What a 500 means here besides the store failing.
    server_error: str | None = None

    @property
    def operation_id(self) -> str:
        return self.handler.__name__

    def serve(self) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            query: Any = None
            body: Any = None
            if self.query is not None:
                query = _valid(cast("type[BaseModel]", self.query), dict(request.query))
            if self.body is not None:
                body = _valid(cast("type[BaseModel]", self.body), await read_body(request))
            reply = await self.handler(Call(request, request.config_dict[GATEWAY], query, body))
            if isinstance(reply, web.Response):
                return reply
            return web.Response(
                body=orjson.dumps(dump(reply)), status=self.status, content_type="application/json"
            )

        return handle


M = TypeVar("M", bound=BaseModel)


def _valid(model: type[M], data: Mapping[str, str] | bytes) -> M:
    """A query (its strings converted) or a JSON body (strictly: ``0`` is not ``false``) that
    ``check_json`` takes."""
    try:
        if not isinstance(data, bytes):
            return model.model_validate(data)
        valid = model.model_validate_json(data, strict=True)
    except ValidationError as exc:
        problems = exc.errors(include_url=False, include_input=False)
        if problems[0]["type"] == "json_invalid":
            raise MalformedBody("The request body is not valid JSON.") from exc
        where = ".".join(str(p) for p in problems[0]["loc"]) or None
        message = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in problems
        )
        raise InvalidRequest(message, param=where) from exc
    # Free-form fields (a session, a beta session's extra fields) are kept or echoed as sent.
    check_json(valid.model_dump())
    return valid
