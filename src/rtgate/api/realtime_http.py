"""The Realtime HTTP routes that mint ephemeral client secrets (docs/protocol.md 3):

- ``POST /v1/realtime/client_secrets`` (GA): ``{expires_after?, session?}`` ->
  ``{value, expires_at, session}``;
- ``POST /v1/realtime/translations/client_secrets``: ``{expires_after?, session{model, audio?}}``
  -> ``{value, expires_at, session}`` with a translation session (docs/protocol.md 10); its secret
  opens ``/v1/realtime/translations`` only;
- ``POST /v1/realtime/sessions`` and ``POST /v1/realtime/transcription_sessions`` (beta): a flat
  session -> that session plus ``client_secret{value, expires_at}``; one minute by default.

Each authenticates a gateway key (``Authorization: Bearer``; a client secret cannot mint
another), applies its policy (expiry, allowed models, blocked session fields) and answers with a
secret rtgate minted itself (``rtgate.auth.client_secrets``). The upstream's ``client_secrets``
endpoint is never called: its secrets would open sessions the gateway neither meters nor polices.
Errors carry OpenAI's body and status (401 ``invalid_api_key``, 403 ``model_not_allowed``, 404
``model_not_found``, 400 for a body it refuses, ``unknown_parameter`` for a field the session does
not have, 429 ``rate_limit_exceeded`` for a key minting too fast or an address failing to
authenticate too often).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

import msgspec
import orjson
from aiohttp import web
from msgspec import Meta

from rtgate.api.openai_errors import openai_errors
from rtgate.api.operation import Call, Operation, Reply
from rtgate.auth.client_secrets import (
    BETA_DEFAULT_TTL_S,
    DEFAULT_TTL_S,
    MAX_TTL_S,
    MIN_TTL_S,
    ClientSecret,
    SessionKind,
    beta_template,
    ga_template,
    refuse_unknown,
    translation_template,
    with_transcription_model,
)
from rtgate.catalog import DEFAULT_TRANSLATION_MODEL
from rtgate.errors import GatewayError
from rtgate.gateway import Gateway
from rtgate.protocol.beta_shapes import param_to_beta
from rtgate.protocol.ids import new_id
from rtgate.relay.admission import admit, route_for

log = logging.getLogger("rtgate.api")

PREFIX = "/v1/realtime"


# -- requests -------------------------------------------------------------------------------------


Ttl = Annotated[int, Meta(ge=MIN_TTL_S, le=MAX_TTL_S)]


class ExpiresAfter(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    anchor: Literal["created_at"] = "created_at"
    seconds: Ttl = DEFAULT_TTL_S


class BetaExpiresAfter(ExpiresAfter, frozen=True, kw_only=True):
    seconds: Ttl = BETA_DEFAULT_TTL_S


class ClientSecretRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Other fields are refused by the handler, as OpenAI does (``unknown_parameter``)."""

    expires_after: ExpiresAfter = msgspec.field(default_factory=ExpiresAfter)
    #: A GA realtime or transcription session: its top-level fields are checked against the
    #: protocol's (``ga_template``), their values are the upstream's to validate.
    session: dict[str, Any] | None = None


class BetaClientSecret(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    expires_after: BetaExpiresAfter = msgspec.field(default_factory=BetaExpiresAfter)


class BetaSessionRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A flat beta session: the other fields are the beta session's (``beta_template`` refuses
    any it never had and carries the rest into the template, read with ``Call.sent``)."""

    model: str | None = None
    client_secret: BetaClientSecret = msgspec.field(default_factory=BetaClientSecret)


# -- minting --------------------------------------------------------------------------------------


async def _mint(
    call: Call[Any, Any], model: str | None, template: dict[str, Any], seconds: int
) -> tuple[str, ClientSecret]:
    gw: Gateway = call.gw
    # A secret opens a session later: a draining gateway must not hand one out.
    gw.check_accepting()
    key, policy = call.key
    if model is None and template["type"] == "realtime":
        model = gw.settings.default_model
    kind = template["type"]
    route_for(
        gw,
        policy,
        model,
        template,
        transcription=kind == "transcription",
        protocol="translation" if kind == "translation" else "realtime",
    )
    # A key over a budget gets no secret: the session it opens would be refused at connect,
    # after the browser was handed something that looked usable (a newcomer's find).
    await admit(gw, key, policy, slot=False)
    if policy.secrets_per_minute is not None:
        await gw.limiter.mint(key.id, policy.secrets_per_minute, gw.clock.now())
    secret, minted = await gw.keyring.mint(key, policy, model, template, seconds)
    log.info("client secret minted", extra={"key_id": key.id, "model": model})
    return secret, minted


def _translation_view(minted: ClientSecret) -> dict[str, Any]:
    """The effective translation session as the SDK's ``RealtimeTranslationSession`` has it:
    ``id``, ``type``, ``model``, ``expires_at`` and ``audio`` (empty unless the template set
    it)."""
    return {
        "id": new_id("sess", 21),
        "type": "translation",
        "model": minted.model,
        "expires_at": int(minted.expires_at),
        "audio": minted.session.get("audio") or {},
    }


def _session_view(minted: ClientSecret) -> dict[str, Any]:
    """The effective session as OpenAI echoes it: the template, plus id, object and model."""
    kind = minted.kind
    obj = "realtime.session" if kind == "realtime" else "realtime.transcription_session"
    out: dict[str, Any] = {"id": new_id("sess", 21), "object": obj, **minted.session}
    if minted.model is not None:
        out["model"] = minted.model
    return out


def _json(body: Any) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def create_client_secret(call: Call[None, ClientSecretRequest]) -> Reply:
    refuse_unknown(await call.sent(), ClientSecretRequest.__struct_fields__)
    model, template = ga_template(call.body.session)
    secret, minted = await _mint(call, model, template, call.body.expires_after.seconds)
    session = _session_view(minted)
    if minted.kind == "realtime":
        session["expires_at"] = 0
    return _json({"value": secret, "expires_at": int(minted.expires_at), "session": session})


async def create_translation_client_secret(call: Call[None, ClientSecretRequest]) -> Reply:
    refuse_unknown(await call.sent(), ClientSecretRequest.__struct_fields__)
    model, template = translation_template(call.body.session)
    if model is None:
        # The SDK's request requires it; a gateway can name the route's one model.
        model = DEFAULT_TRANSLATION_MODEL
    secret, minted = await _mint(call, model, template, call.body.expires_after.seconds)
    return _json(
        {
            "value": secret,
            "expires_at": int(minted.expires_at),
            "session": _translation_view(minted),
        }
    )


async def _beta(call: Call[None, BetaSessionRequest], kind: SessionKind) -> Reply:
    flat = {k: v for k, v in (await call.sent()).items() if k != "client_secret"}
    model = call.body.model if kind == "realtime" else None
    if kind == "transcription":
        flat = with_transcription_model(flat)
    try:
        secret, minted = await _mint(
            call, model, beta_template(flat, kind), call.body.client_secret.expires_after.seconds
        )
    except GatewayError as err:
        # The template is GA-shaped; the client sent the flat beta body.
        if err.param is not None and err.param.startswith("session."):
            err.param = param_to_beta(err.param.removeprefix("session."))
        raise
    session = _session_view(minted)
    return _json(
        {
            **flat,
            "id": session["id"],
            "object": session["object"],
            **({"model": minted.model} if minted.model else {}),
            "client_secret": {"value": secret, "expires_at": int(minted.expires_at)},
        }
    )


async def create_session(call: Call[None, BetaSessionRequest]) -> Reply:
    return await _beta(call, "realtime")


async def create_transcription_session(call: Call[None, BetaSessionRequest]) -> Reply:
    return await _beta(call, "transcription")


OPERATIONS: tuple[Operation[Any, Any], ...] = (
    Operation(
        "POST",
        "/client_secrets",
        create_client_secret,
        "Mint an ephemeral client secret for a realtime or transcription session",
        status=200,
        keyed=True,
        response=None,
        body=ClientSecretRequest,
    ),
    Operation(
        "POST",
        "/translations/client_secrets",
        create_translation_client_secret,
        "Mint an ephemeral client secret for a translation session",
        status=200,
        keyed=True,
        response=None,
        body=ClientSecretRequest,
    ),
    Operation(
        "POST",
        "/sessions",
        create_session,
        "Beta: a realtime session with an ephemeral client secret",
        status=200,
        keyed=True,
        response=None,
        body=BetaSessionRequest,
    ),
    Operation(
        "POST",
        "/transcription_sessions",
        create_transcription_session,
        "Beta: a transcription session with an ephemeral client secret",
        status=200,
        keyed=True,
        response=None,
        body=BetaSessionRequest,
    ),
)


def add_realtime_http_routes(app: web.Application) -> None:
    for op in OPERATIONS:
        app.router.add_route(op.method, PREFIX + op.path, openai_errors(op.serve(openai=True)))
