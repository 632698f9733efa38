"""Ephemeral client secrets (``ek_…``) that rtgate mints itself (docs/protocol.md 3, 8.2).

A gateway key holder asks for a secret over HTTP and hands it to a browser. The secret reads
``ek_`` + 32 hex characters (128 random bits); only its SHA-256 is stored, with the minting key's
id, the session template (a GA session object), the model and the expiry. The upstream's own
``client_secrets`` endpoint is never called: an upstream secret would bypass the gateway's
metering and policy, so rtgate answers the three minting routes itself and checks its own secrets
on ``GET /v1/realtime``.

Rules a secret enforces when it opens a session:

- it authenticates as its minting key, so that key's revocation, expiry and policy still apply,
  and usage is billed to it;
- until ``expires_at`` it may open several sessions (a session may outlive its secret);
- the connection may only use the secret's model; naming none means the secret's model;
- its template goes upstream in the initial ``session.update``, over the key's own defaults
  (``policy.initial_session_update``);
- its session type decides the connection's: a transcription secret opens a transcription
  session (``intent=transcription`` goes upstream even if the client left it out), and a
  realtime secret cannot be used for one;
- an operator can revoke it alone (its key goes on minting); a revoked secret opens nothing.

A secret's *id* (``cs_`` + the first 20 hex digits of its SHA-256) names it in the admin API and
the logs; it is derived from the stored hash, so it reveals nothing about the secret, and the
holder of a leaked secret value can compute it (``secret_id_of``) to revoke it.

Pure: no I/O here; the ``KeyRing`` stores and looks up, the HTTP routes parse and answer.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from rtgate.auth.keys import hash_key
from rtgate.errors import GatewayError, ModelNotAllowed, PolicyError
from rtgate.protocol import session_fields

MINTED_PREFIX = "ek_"
_WELL_FORMED = re.compile(r"^ek_[0-9a-f]{32}$")
ID_PREFIX = "cs_"
_ID_HEX = 20
_ID_SHAPE = re.compile(r"^cs_[0-9a-f]{20}$")

MIN_TTL_S = 10
MAX_TTL_S = 7200
#: ``POST /v1/realtime/client_secrets`` without ``expires_after``.
DEFAULT_TTL_S = 600
#: The beta routes: "Currently, all tokens expire after one minute".
BETA_DEFAULT_TTL_S = 60

#: ``translation``: minted by ``POST /v1/realtime/translations/client_secrets``; it opens
#: ``/v1/realtime/translations`` only, and the other kinds open ``/v1/realtime`` only.
SessionKind = Literal["realtime", "transcription", "translation"]


class InvalidSession(PolicyError):
    """A session template the gateway cannot apply."""

    http_status = 400
    code = "invalid_value"


class UnknownParameter(InvalidSession):
    """A field the session object does not have: refused, never stored nor sent upstream."""

    code = "unknown_parameter"


def refuse_unknown(
    fields: Iterable[str],
    known: Collection[str],
    prefix: str = "",
    *,
    error: type[GatewayError] = UnknownParameter,
    event_id: str | None = None,
) -> None:
    """OpenAI's refusal of the first of ``fields`` not in ``known`` (``param`` names it;
    ``error``: the refusal's class, by where it is answered)."""
    for name in fields:
        if name not in known:
            raise error(
                f"Unknown parameter: '{prefix}{name}'.",
                param=prefix + name,
                client_event_id=event_id,
            )


def new_secret() -> str:
    return MINTED_PREFIX + secrets.token_hex(16)


def looks_minted(secret: str) -> bool:
    """Whether ``secret`` has the shape of a minted secret (it may still be unknown)."""
    return secret.startswith(MINTED_PREFIX)


def well_formed(secret: str) -> bool:
    return _WELL_FORMED.match(secret) is not None


def secret_id(secret_hash: str) -> str:
    """The id of the secret whose SHA-256 (hex) is ``secret_hash``."""
    return ID_PREFIX + secret_hash[:_ID_HEX]


def secret_id_of(value: str) -> str:
    """The id of a secret from its value (to revoke a leaked one)."""
    return secret_id(hash_key(value))


def id_hash_prefix(sid: str) -> str | None:
    """The hash prefix an id stands for; None if ``sid`` is not an id's shape."""
    return sid[len(ID_PREFIX) :] if _ID_SHAPE.match(sid) else None


@dataclass(frozen=True, slots=True)
class ClientSecret:
    """A minted secret as stored: never the secret itself."""

    key_id: str
    #: The session the secret opens; None for a transcription session with no model.
    model: str | None
    #: A GA session object (``type`` ``realtime`` or ``transcription``) without ``model``.
    session: Mapping[str, Any]
    created_at: float
    expires_at: float
    #: Its id (``cs_…``), which names it in the admin API and in live sessions.
    id: str | None = None

    @property
    def kind(self) -> SessionKind:
        kind = self.session.get("type")
        return kind if kind in ("transcription", "translation") else "realtime"

    def expired(self, now: float) -> bool:
        return now >= self.expires_at


def expiry(now: float, seconds: int, key_expires_at: float | None) -> float:
    """When a secret minted ``now`` for ``seconds`` expires: never after its key does."""
    at = float(int(now) + seconds)
    return at if key_expires_at is None else min(at, key_expires_at)


def ga_template(session: Mapping[str, Any] | None) -> tuple[str | None, dict[str, Any]]:
    """The model and the template (without ``model``) of a GA session object, whose top-level
    fields must all be the protocol's."""
    body = dict(session or {"type": "realtime"})
    kind = body.get("type", "realtime")
    if kind not in ("realtime", "transcription"):
        raise InvalidSession(
            "Invalid value for 'session.type': expected 'realtime' or 'transcription'.",
            param="session.type",
        )
    body["type"] = kind
    model = body.pop("model", None)
    if model is not None and (not isinstance(model, str) or not model):
        raise InvalidSession("Invalid value for 'session.model'.", param="session.model")
    for generated in ("id", "object", "expires_at", "client_secret"):
        body.pop(generated, None)
    known = session_fields.REALTIME if kind == "realtime" else session_fields.TRANSCRIPTION
    refuse_unknown(body, known, "session.")
    return model, body


def translation_template(session: Mapping[str, Any] | None) -> tuple[str | None, dict[str, Any]]:
    """The model and the template (``type`` ``translation``, without ``model``) of a translation
    session object (docs/protocol.md 10: ``{"model", "audio": {"output": {"language"}}}``)."""
    body = dict(session or {})
    if body.get("type", "translation") != "translation":
        raise InvalidSession(
            "Invalid value for 'session.type': expected 'translation'.", param="session.type"
        )
    body["type"] = "translation"
    model = body.pop("model", None)
    if model is not None and (not isinstance(model, str) or not model):
        raise InvalidSession("Invalid value for 'session.model'.", param="session.model")
    for generated in ("id", "object", "expires_at", "client_secret"):
        body.pop(generated, None)
    refuse_unknown(body, session_fields.TRANSLATION, "session.")
    return model, body


_BETA_FORMATS: dict[str, dict[str, Any]] = {
    "pcm16": {"type": "audio/pcm", "rate": 24000},
    "g711_ulaw": {"type": "audio/pcmu"},
    "g711_alaw": {"type": "audio/pcma"},
}


def _format(value: Any) -> Any:
    return _BETA_FORMATS.get(value, value) if isinstance(value, str) else value


def with_transcription_model(body: Mapping[str, Any]) -> dict[str, Any]:
    """A ``transcription_sessions`` body whose top-level ``model`` names the transcription model
    (the product page's example sends ``{"model": "gpt-4o-mini-transcribe"}``; the beta API had
    no such field) with that model as its ``input_audio_transcription``, unless one is given."""
    out = dict(body)
    model = out.get("model")
    if isinstance(model, str) and model and "input_audio_transcription" not in out:
        out["input_audio_transcription"] = {"model": model}
    return out


def beta_template(body: Mapping[str, Any], kind: SessionKind) -> dict[str, Any]:
    """A flat beta session (``/v1/realtime/sessions`` or ``transcription_sessions``) as a GA
    session object (docs/protocol.md 2.4); fields GA dropped (``temperature``) are left out, fields
    the beta session never had are refused."""
    if kind == "realtime":
        refuse_unknown(body, session_fields.BETA_REALTIME)
    else:
        refuse_unknown(body, session_fields.BETA_TRANSCRIPTION)
    out: dict[str, Any] = {"type": kind}
    audio_in: dict[str, Any] = {}
    audio_out: dict[str, Any] = {}
    for src, dst in (
        ("input_audio_format", "format"),
        ("input_audio_transcription", "transcription"),
        ("turn_detection", "turn_detection"),
        ("input_audio_noise_reduction", "noise_reduction"),
    ):
        if src in body:
            audio_in[dst] = _format(body[src]) if dst == "format" else body[src]
    if "include" in body:
        out["include"] = body["include"]
    if kind == "realtime":
        if "output_audio_format" in body:
            audio_out["format"] = _format(body["output_audio_format"])
        for src, dst in (("voice", "voice"), ("speed", "speed")):
            if src in body:
                audio_out[dst] = body[src]
        for name in ("instructions", "tools", "tool_choice", "tracing"):
            if name in body:
                out[name] = body[name]
        if "max_response_output_tokens" in body:
            out["max_output_tokens"] = body["max_response_output_tokens"]
        modalities = body.get("modalities")
        if isinstance(modalities, list):
            out["output_modalities"] = ["audio"] if "audio" in modalities else ["text"]
    audio = {k: v for k, v in (("input", audio_in), ("output", audio_out)) if v}
    if audio:
        out["audio"] = audio
    return out


def connection_model(secret: ClientSecret, requested: str | None) -> str | None:
    """The model a session opened with ``secret`` uses: the secret's, whatever was asked."""
    if requested is not None and requested != secret.model:
        allowed = f"`{secret.model}`" if secret.model else "a transcription session"
        raise ModelNotAllowed(
            f"This client secret may not use the model `{requested}`; it was minted for {allowed}.",
            param="model",
        )
    return secret.model


class IntentNotAllowed(PolicyError):
    http_status = 400
    code = "invalid_intent"


class ClientSecretRevoked(GatewayError):
    """Sent to a client whose session was opened with a client secret the operator revoked;
    1008 is RFC 6455's "policy violation", as for an operator's forced close."""

    http_status = 401
    close_code = 1008
    error_type = "invalid_request_error"
    code = "client_secret_revoked"


def revoked_secret_error() -> ClientSecretRevoked:
    """What ends a live session whose client secret was revoked."""
    return ClientSecretRevoked("The client secret of this session was revoked.")


def connection_intent(secret: ClientSecret, requested: str | None) -> str | None:
    """The ``intent`` a session opened with ``secret`` on ``/v1/realtime`` has: the secret's
    session type decides (a translation secret opens ``/v1/realtime/translations`` only)."""
    if secret.kind == "translation":
        raise IntentNotAllowed(
            "This client secret was minted for a translation session; connect to"
            " /v1/realtime/translations.",
            param="intent",
        )
    if secret.kind == "transcription":
        if requested not in (None, "transcription"):
            raise IntentNotAllowed(
                f"This client secret was minted for a transcription session; `intent={requested}`"
                " is not allowed.",
                param="intent",
            )
        return "transcription"
    if requested == "transcription":
        raise IntentNotAllowed(
            "This client secret was minted for a realtime session; connect without"
            " `intent=transcription`, or mint a transcription secret.",
            param="intent",
        )
    return requested


def check_translation_secret(secret: ClientSecret) -> None:
    """A session on ``/v1/realtime/translations`` opens with a translation secret only."""
    if secret.kind != "translation":
        raise IntentNotAllowed(
            f"This client secret was minted for a {secret.kind} session; mint one with"
            " POST /v1/realtime/translations/client_secrets to translate.",
            param="model",
        )


#: Template fields that carry someone's credentials (an MCP tool's ``authorization`` and
#: ``headers``): kept for the session, never shown back to an operator.
_CREDENTIAL_FIELDS = frozenset({"authorization", "headers", "api_key"})
REDACTED = "[redacted]"


def shown_template(value: Any) -> Any:
    """A session template as the admin API and CLI show it: credentials replaced."""
    if isinstance(value, dict):
        return {
            k: REDACTED if k in _CREDENTIAL_FIELDS and v is not None else shown_template(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [shown_template(v) for v in value]
    return value
