"""An HTTP operation declared as data: aiohttp serves it, ``rtgate.api.openapi`` documents it.

An ``Operation`` names its handler, its query and body models and its success response; the
served route validates the query and the body with those very models before the handler runs,
and renders what the handler returns, so what is documented is what is enforced.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import msgspec
import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from rtgate.api.bodies import (
    REFUSALS,
    InvalidRequest,
    MalformedBody,
    check_json,
    json_object,
    read_body,
)
from rtgate.api.views import View, dump
from rtgate.auth.policy import KeyPolicy
from rtgate.gateway import Gateway
from rtgate.relay.endpoint import GATEWAY
from rtgate.store.port import KeyInfo
from rtgate.validation import not_an_object, openai_refusal, problem

Q = TypeVar("Q", bound=msgspec.Struct | None)
B = TypeVar("B", bound=msgspec.Struct | None)
Reply = View | Sequence[View] | web.Response


@dataclass(frozen=True, slots=True)
class Call(Generic[Q, B]):
    """One request, its query and body already validated."""

    request: web.Request
    gw: Gateway
    query: Q
    body: B
    #: The gateway key the request carries, for an operation that takes one (``keyed``).
    auth: tuple[KeyInfo, KeyPolicy] | None = None

    @property
    def key(self) -> tuple[KeyInfo, KeyPolicy]:
        """The caller's key and its policy (a ``keyed`` operation's only)."""
        if self.auth is None:
            raise TypeError("this operation is not keyed")
        return self.auth

    def path(self, name: str) -> str:
        return self.request.match_info[name]

    async def sent(self) -> dict[str, Any]:
        """The body's fields as sent, those its model does not name included (a route that
        keeps or refuses them reads them here); the body was read and validated already."""
        return json_object(await self.request.read())


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
    #: Called with a gateway key, checked before its query or body is read: a wrong key is
    #: 401 whatever the body, as OpenAI answers (a body refused first told a caller with no
    #: valid key what the route takes).
    keyed: bool = False

    @property
    def operation_id(self) -> str:
        return self.handler.__name__

    def serve(self, *, openai: bool = False) -> Handler:
        """The route's handler; ``openai``: a body refused in OpenAI's words and codes (the
        ``/v1`` routes; the admin API keeps its own, ``field: problem``)."""

        async def handle(request: web.Request) -> web.StreamResponse:
            query: Any = None
            body: Any = None
            gw = request.config_dict[GATEWAY]
            auth = None
            if self.keyed:
                auth = await gw.authenticator.key(request.headers, request.remote)
            if self.query is not None:
                query = _valid(cast("type[msgspec.Struct]", self.query), dict(request.query))
            if self.body is not None:
                model = cast("type[msgspec.Struct]", self.body)
                body = _valid(model, await read_body(request), openai=openai)
            reply = await self.handler(Call(request, gw, query, body, auth))
            if isinstance(reply, web.Response):
                return reply
            return web.Response(
                body=orjson.dumps(dump(reply)), status=self.status, content_type="application/json"
            )

        return handle


M = TypeVar("M", bound=msgspec.Struct)


def _valid(model: type[M], data: Mapping[str, Any] | bytes, *, openai: bool = False) -> M:
    """A query (its strings converted) or a JSON body (strictly: ``0`` is not
    ``false``) that ``check_json`` takes."""
    if not isinstance(data, bytes):
        return _converted(model, data)
    try:
        parsed = msgspec.json.decode(data, type=model)
        # All of it, the fields the model does not name included (which msgspec skipped unread).
        sent = msgspec.json.decode(data)
    except msgspec.ValidationError as exc:
        where, message = problem(exc)
        if "[...]" in where:
            # Inside a free-form object, whose keys msgspec does not name (a number past a
            # double's range): the stdlib reads it (as infinity), and check_json names the place.
            check_json(_stdlib_json(data))
            where = where.partition("[...]")[0]
        elif openai:
            said = openai_refusal(exc, _stdlib_json(data))
            refusal = REFUSALS.get(said.code, InvalidRequest)
            raise refusal(said.message, param=said.param or None) from exc
        if not where and not isinstance(sent := _stdlib_json(data), dict):
            raise InvalidRequest(not_an_object(sent)) from exc
        raise InvalidRequest(f"{where or 'body'}: {message}", param=where or None) from exc
    except msgspec.DecodeError as exc:
        raise MalformedBody("The request body is not valid JSON.") from exc
    except RecursionError as exc:
        raise MalformedBody("The request body nests too deeply to be read.") from exc
    # Free-form fields (a session, a beta session's fields its model does not name) are kept or
    # echoed as sent: all of the body must be writable back.
    check_json(sent)
    return parsed


def _converted(model: type[M], data: Mapping[str, Any]) -> M:
    try:
        return msgspec.convert(data, model, strict=False)
    except msgspec.ValidationError as exc:
        where, message = problem(exc)
        raise InvalidRequest(f"{where or 'query'}: {message}", param=where or None) from exc


def _stdlib_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None
