"""The admin API under ``/admin/v1/``: keys, client secrets, usage, sessions, the instance's
drain, and its OpenAPI document.

One operator token guards it: ``RTGATE_ADMIN_TOKEN``, sent as ``Authorization: Bearer <token>``
and compared in constant time. With no token configured the API is disabled and every route
answers 404. Errors carry OpenAI's body, ``{"error": {"message", "type", "code", "param"}}``, with
the error's ``http_status``; nothing the caller sent is echoed back but an id.

Every route is declared once, in ``OPERATIONS`` (``rtgate.api.operation``): aiohttp is wired from
that table, and the OpenAPI document (``rtgate.api.openapi``) is generated from it and from the
msgspec structs it names, which are the same models that parse requests and render responses.

Live sessions (``rtgate.api.live``) are this instance's and, with ``redis_url``, those of every
instance sharing its Redis, listed and ended through ``Gateway.fleet``.
"""

from __future__ import annotations

import functools
import logging
from typing import Annotated, Any

import msgspec
import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from msgspec import Meta

from rtgate.api.bodies import InvalidRequest
from rtgate.api.catalog_views import ModelView, UpstreamView, list_models, list_upstreams
from rtgate.api.live import (
    close_here,
    end_revoked_keys,
    live_everywhere,
    revoke_elsewhere,
    revoke_here,
)
from rtgate.api.openai_errors import http_error, openai_error, retry_headers, server_error
from rtgate.api.openapi import openapi_document
from rtgate.api.operation import Call, Operation, Reply
from rtgate.api.queries import SecretsQuery, SessionsQuery, UsageQuery
from rtgate.api.reports import (
    KeyActivityView,
    OverviewView,
    SessionDetail,
    key_activity,
    overview,
    session_detail,
)
from rtgate.api.views import (
    ClientSecretView,
    ClosedSession,
    DrainView,
    KeyView,
    LiveSession,
    NewKeyView,
    RevokedClientSecret,
    RevokedKey,
    SessionRow,
    TranscriptEntryView,
    UsageRow,
    client_secret_view,
    key_view,
    new_key_view,
    session_row,
    timestamp,
    transcript_entry,
    usage_csv,
    usage_row,
)
from rtgate.auth.client_secrets import id_hash_prefix
from rtgate.auth.keyring import no_such_key
from rtgate.auth.operator_token import OperatorToken, bearer
from rtgate.auth.policy import KeyPolicy, PolicyDocument, PolicyUpdate, apply_update, new_policy
from rtgate.config import Secret, Settings
from rtgate.drain import DRAIN
from rtgate.errors import AuthError, GatewayError, PolicyError
from rtgate.fleet import FleetUnavailable, LoneInstance
from rtgate.gateway import Gateway
from rtgate.relay.endpoint import GATEWAY

PREFIX = "/admin/v1"

log = logging.getLogger("rtgate.admin")


# -- errors ---------------------------------------------------------------------------------------


class AdminDisabled(GatewayError):
    http_status = 404
    error_type = "invalid_request_error"
    code = "admin_api_disabled"


class NotFound(GatewayError):
    http_status = 404
    error_type = "invalid_request_error"
    code = "not_found"


def _gateway_error(err: GatewayError) -> web.Response:
    headers = retry_headers(err)
    if err.http_status == 401:
        # RFC 6750 section 3: a 401 names the scheme the client should use.
        headers["WWW-Authenticate"] = 'Bearer realm="rtgate-admin"'
    return openai_error(err.http_status, err.error_type, err.code, err.message, err.param, headers)


# -- the token ------------------------------------------------------------------------------------


def _guard(token: Secret | None) -> Middleware:
    expected = None if token is None else OperatorToken(token.get_secret_value())

    async def answer(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if expected is None:
                raise AdminDisabled(
                    "The admin API is disabled; set RTGATE_ADMIN_TOKEN to enable it."
                )
            given = bearer(request.headers)

            async def check() -> None:
                if given is None:
                    raise AuthError(
                        "You didn't provide an admin token. Send it in an Authorization header "
                        "using Bearer auth (i.e. Authorization: Bearer YOUR_ADMIN_TOKEN)."
                    )
                if not expected.matches(given):
                    raise AuthError("Incorrect admin token provided.")

            # Wrong tokens count against the address as wrong keys and console sign-ins do:
            # the sign-in form's throttle spared nothing while this took any number of guesses
            # at the same token (a security audit's find).
            gw: Gateway = request.config_dict[GATEWAY]
            await gw.authenticator.checked(
                request.headers, request.remote, check, offered=given is not None
            )
            return await handler(request)
        except GatewayError as err:
            return _gateway_error(err)
        except web.HTTPException as exc:
            return http_error(exc)
        except Exception:
            # The boundary: a bug still answers in the documented shape.
            log.exception("admin request failed: %s %s", request.method, request.path)
            return server_error()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await answer(request, handler)
        # New keys' secrets, spend, who is connected: nothing here may sit in a cache.
        response.headers["Cache-Control"] = "no-store"
        return response

    return guard


# -- requests -------------------------------------------------------------------------------------


class CreateKey(PolicyUpdate, kw_only=True):
    """A new key: a name for its owner, and any policy fields."""

    # Names are printed in terminals and stored in a 200-character column: no control characters
    # (escape sequences, NUL).
    name: Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]


# -- handlers -------------------------------------------------------------------------------------


def _quoted(value: str) -> str:
    return repr(value[:64])


def _storable(
    gw: Gateway, base: KeyPolicy | None, update: PolicyUpdate | PolicyDocument
) -> KeyPolicy:
    """``update`` applied to ``base`` (None: a new key's; a whole policy, ``PUT``'s, replaces
    it), refused unless it reads back from the store unchanged. (The body's values already
    fit: ``check_json`` refused integers past 64 bits, and ``parse_expiry`` dates outside
    1970-9000.)"""
    try:
        if isinstance(update, PolicyDocument):
            update = update.as_update()
        policy = (
            new_policy(update, gw.catalog, gw.clock.now())
            if base is None
            else apply_update(base, update, gw.catalog)
        )
    except PolicyError as err:
        raise InvalidRequest(err.message, param=err.param) from err
    if KeyPolicy.from_json(policy.to_json()) != policy:
        raise InvalidRequest("A policy value is out of range.")
    return policy


async def create_key(call: Call[None, CreateKey]) -> Reply:
    policy = _storable(call.gw, None, call.body)
    info, secret = await call.gw.keyring.create(call.body.name, policy)
    return new_key_view(info, secret, call.gw.clock.now())


async def list_keys(call: Call[None, None]) -> Reply:
    now = call.gw.clock.now()
    return [key_view(k, now) for k in await call.gw.keyring.list()]


async def get_key(call: Call[None, None]) -> Reply:
    key_id = call.path("key_id")
    key = await call.gw.keyring.get(key_id)
    if key is None:
        raise no_such_key(key_id)
    return key_view(key, call.gw.clock.now())


async def update_key(call: Call[None, PolicyUpdate]) -> Reply:
    return await _updated(call.gw, call.path("key_id"), call.body)


async def _updated(gw: Gateway, key_id: str, update: PolicyUpdate | PolicyDocument) -> KeyView:
    key = await gw.keyring.get(key_id)
    if key is None:
        raise no_such_key(key_id)
    updated = await gw.keyring.set_policy(
        key_id, _storable(gw, KeyPolicy.from_json(key.policy_json), update)
    )
    if updated is None:
        raise no_such_key(key_id)
    return key_view(updated, gw.clock.now())


async def replace_policy(call: Call[None, PolicyDocument]) -> Reply:
    """A key's policy replaced by the one given, in the shape ``GET /keys/{key_id}`` shows
    it: what ``PATCH`` cannot take back as it came (``max_duration_s``, ``expires_at``,
    ``session_defaults``), and where null means no limit, not "as it is"."""
    return await _updated(call.gw, call.path("key_id"), call.body)


async def revoke_key(call: Call[None, None]) -> Reply:
    key_id = call.path("key_id")
    key = await call.gw.keyring.revoke(key_id)
    if key is None:
        raise no_such_key(key_id)
    # Its live sessions here end now; the other instances' within REVOKED_KEY_CHECK_SECONDS.
    closed = await end_revoked_keys(call.gw)
    log.info("key %s revoked; %d live sessions here closed", key.id, len(closed))
    view = key_view(key, call.gw.clock.now())
    # Another key revoked elsewhere and not swept yet may have ended here too: not this one's.
    mine = [c.id for c in closed if c.key_id == key.id]
    return RevokedKey(**msgspec.structs.asdict(view), closed_sessions=mine)


async def list_client_secrets(call: Call[SecretsQuery, None]) -> Reply:
    await call.gw.keyring.require(call.query.key_id)
    now = call.gw.clock.now()
    listed = await call.gw.keyring.list_secrets(call.query.key_id)
    return [client_secret_view(c, now, key_opens) for c, key_opens in listed]


async def revoke_client_secret(call: Call[None, None]) -> Reply:
    sid, gw = call.path("secret_id"), call.gw
    revoked = await gw.keyring.revoke_secret(sid)
    if revoked is None:
        # Only an id's shape is echoed: what else arrives here may be a secret's very value.
        named = _quoted(sid) if id_hash_prefix(sid) else "of that shape (ids read cs_ + 20 hex)"
        raise NotFound(f"No client secret with id {named}.", param="secret_id")
    view = client_secret_view(revoked, gw.clock.now(), key_opens=False)  # revoked
    # What it opened ends now, on every instance: a leaked secret's sessions must not run on
    # until their cap. Here first, without Redis; then the others, best effort.
    closed = [c.id for c in await revoke_here(gw, view.id)]
    closed = list(dict.fromkeys(closed + await revoke_elsewhere(gw, view.id)))
    log.info("client secret %s revoked; %d live sessions closed", view.id, len(closed))
    return RevokedClientSecret(**msgspec.structs.asdict(view), closed_sessions=closed)


async def usage(call: Call[UsageQuery, None]) -> Reply:
    q = call.query
    await call.gw.keyring.require(q.key_id)
    rows = [usage_row(r) for r in await call.gw.store.usage_summary(q.key_id, q.since)]
    if q.format == "csv":
        return web.Response(text=usage_csv(rows), content_type="text/csv", charset="utf-8")
    return rows


async def recent_sessions(call: Call[SessionsQuery, None]) -> Reply:
    q = call.query
    await call.gw.keyring.require(q.key_id)
    rows = await call.gw.store.recent_sessions(q.limit, q.key_id, before=q.before)
    return [session_row(r) for r in rows]


async def session_transcript(call: Call[None, None]) -> Reply:
    session_id = call.path("session_id")
    entries = await call.gw.store.session_transcript(session_id)
    if not entries and not await call.gw.store.recent_sessions(1, session_id=session_id):
        raise NotFound(f"No session with id {_quoted(session_id)}.", param="session_id")
    return [transcript_entry(e) for e in entries]


async def live_sessions(call: Call[None, None]) -> Reply:
    return await live_everywhere(call.gw)


async def close_session(call: Call[None, None]) -> Reply:
    session_id, gw = call.path("session_id"), call.gw
    closed = await close_here(gw, session_id)
    if closed is not None:
        return closed
    missing = f"No live session with id {_quoted(session_id)}."
    if session_id not in gw.live:  # one of ours already ending is no other instance's
        try:
            answers = await gw.fleet.ask("close", session_id)
        except FleetUnavailable as err:
            log.warning("a forced close could not reach the other instances: %s", err.message)
            raise
        if answers.closed:
            return msgspec.json.decode(answers.closed[0], type=ClosedSession)
        if answers.silent:
            missing = (
                f"No instance that answered holds a live session with id {_quoted(session_id)} "
                f"({answers.silent} of {answers.reached} did not answer in time)."
            )
        elif isinstance(gw.fleet, LoneInstance) and gw.settings.workers > 1:
            missing += (
                f" This gateway runs {gw.settings.workers} workers without redis_url: the one"
                " that answered lists and closes only its own sessions; set redis_url for the"
                " admin API to reach every worker's."
            )
    raise NotFound(missing, param="session_id")


async def drain(call: Call[None, None]) -> Reply:
    """Begin this instance's drain (as SIGTERM does); asking again changes nothing."""
    under_way = call.request.config_dict[DRAIN]
    under_way.request()
    return DrainView(
        draining=not call.gw.accepting,
        instance=call.gw.fleet.instance,
        started_at=timestamp(under_way.started_at),
        deadline_at=timestamp(under_way.deadline_at),
        drain_seconds=under_way.seconds,
        live_sessions=len(call.gw.live),
    )


async def openapi(call: Call[None, None]) -> Reply:
    return web.Response(body=openapi_json(), content_type="application/json")


OPERATIONS: tuple[Operation[Any, Any], ...] = (
    Operation(
        "POST",
        "/keys",
        create_key,
        "Create a key; its secret is in this answer only",
        status=201,
        response=NewKeyView,
        body=CreateKey,
    ),
    Operation("GET", "/keys", list_keys, "List keys", status=200, response=KeyView, many=True),
    Operation(
        "GET",
        "/spend",
        key_activity,
        "Keys' charged spend this UTC day, this month and ever, and their last session "
        "(keys never used are left out)",
        status=200,
        response=KeyActivityView,
        many=True,
    ),
    Operation(
        "GET",
        "/keys/{key_id}",
        get_key,
        "One key",
        status=200,
        response=KeyView,
        not_found="No such key.",
    ),
    Operation(
        "PATCH",
        "/keys/{key_id}",
        update_key,
        "Change a key's policy; fields left out stay as they are",
        status=200,
        response=KeyView,
        body=PolicyUpdate,
        not_found="No such key.",
    ),
    Operation(
        "PUT",
        "/keys/{key_id}/policy",
        replace_policy,
        "Replace a key's policy with one in the shape GET shows it (null or left out: no limit)",
        status=200,
        response=KeyView,
        body=PolicyDocument,
        not_found="No such key.",
    ),
    Operation(
        "POST",
        "/keys/{key_id}/revoke",
        revoke_key,
        "Revoke a key and close its live sessions (1008: here at once, on other instances"
        " within 5 s); sessions it opens from now on are refused",
        status=200,
        response=RevokedKey,
        not_found="No such key.",
    ),
    Operation(
        "GET",
        "/client_secrets",
        list_client_secrets,
        "Client secrets not yet expired (revoked ones too), newest first; never their values",
        status=200,
        response=ClientSecretView,
        many=True,
        query=SecretsQuery,
    ),
    Operation(
        "POST",
        "/client_secrets/{secret_id}/revoke",
        revoke_client_secret,
        "Revoke one client secret and close the live sessions it opened, on every instance (1008)",
        status=200,
        response=RevokedClientSecret,
        not_found="No such client secret.",
    ),
    Operation(
        "GET",
        "/usage",
        usage,
        "Usage and cost by key, model and UTC day",
        status=200,
        response=UsageRow,
        many=True,
        query=UsageQuery,
        csv=True,
    ),
    Operation(
        "GET",
        "/sessions",
        recent_sessions,
        "Recent sessions, newest first",
        status=200,
        response=SessionRow,
        many=True,
        query=SessionsQuery,
    ),
    Operation(
        "GET",
        "/sessions/live",
        live_sessions,
        "Sessions relayed now, by every instance, with their usage so far",
        status=200,
        response=LiveSession,
        many=True,
    ),
    Operation(
        "GET",
        "/sessions/{session_id}",
        session_detail,
        "One recorded session with its turns: usage and cost per metered event, and the "
        "transcript lines of keys that keep them",
        status=200,
        response=SessionDetail,
        not_found="No session with this id.",
    ),
    Operation(
        "POST",
        "/sessions/{session_id}/close",
        close_session,
        "Close a live session on any instance: the client gets an error event, then close 1008",
        status=200,
        response=ClosedSession,
        not_found="No live session with this id.",
        server_error="fleet_unavailable: the session is not relayed by this instance and the "
        "others cannot be reached (their shared Redis).",
    ),
    Operation(
        "GET",
        "/sessions/{session_id}/transcript",
        session_transcript,
        "A session's transcript, for keys that keep them (empty otherwise)",
        status=200,
        response=TranscriptEntryView,
        many=True,
        not_found="No session with this id.",
    ),
    Operation(
        "GET",
        "/overview",
        overview,
        "Live sessions now, sessions and spend today and this UTC month, spend and sessions per "
        "day for 30 days, and how sessions ended (by close code)",
        status=200,
        response=OverviewView,
    ),
    Operation(
        "GET",
        "/models",
        list_models,
        "The catalog: each model's upstream and its prices per million tokens",
        status=200,
        response=ModelView,
        many=True,
    ),
    Operation(
        "GET",
        "/upstreams",
        list_upstreams,
        "Upstreams, the models each serves, and how they answered this process's dials",
        status=200,
        response=UpstreamView,
        many=True,
    ),
    Operation(
        "POST",
        "/drain",
        drain,
        "Drain this instance before a restart, as SIGTERM does: /readyz answers 503 and new "
        "sessions are refused (server_shutting_down); live sessions and calls run until they "
        "end or drain_seconds pass (then an error event and 1001), and the process exits",
        status=202,
        response=DrainView,
    ),
    Operation("GET", "/openapi.json", openapi, "This document", status=200, response=None),
)


@functools.cache
def openapi_json() -> bytes:
    """The admin API's OpenAPI document, built on its first request: its schemas are held only
    by a gateway that is asked for it (docs/performance.md 9.3)."""
    return orjson.dumps(openapi_document(OPERATIONS, PREFIX))


def create_admin_app(settings: Settings) -> web.Application:
    """The admin API as a sub-application, to be mounted at ``PREFIX``."""
    admin = web.Application(middlewares=[_guard(settings.admin_token)])
    for op in OPERATIONS:
        admin.router.add_route(op.method, op.path, op.serve(), name=op.operation_id)
    return admin
