"""Request bodies of the HTTP routes: read under a cap, decoded, and parsed into what the gateway
can store and send back, or refused with a 4xx before anything is minted, stored or relayed.

- Size: a body is at most ``max_http_body_bytes`` (1 MiB by default), the application's
  ``client_max_size``; a larger one is 413 ``request_too_large``. WebSocket frames have their own
  limit (``max_message_bytes``, on the WebSocket response), which this cap does not touch.
- Text: an SDP offer is UTF-8 (RFC 8866 section 5); another charset, or bytes that are not UTF-8,
  are refused.
- JSON: what a route keeps (a session template) or echoes (a beta session) is written back with
  orjson, which takes integers of at most 64 bits and at most 255 levels of nesting. A body
  past either limit, or with a number that is not finite, is refused here with its ``param``,
  so no request fails after its secret was minted.
- ``multipart/form-data`` (RFC 7578): parsed from the bytes already read by the stdlib's email
  parser, which records a missing boundary or a truncated body as a defect instead of raising.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from email.utils import collapse_rfc2231_value
from typing import Any

import orjson
from aiohttp import web

from rtgate.errors import GatewayError

#: Nesting a body may have; orjson writes 255 levels, and a template is wrapped in a few more
#: (``session.update``, the key's defaults) on its way upstream.
MAX_JSON_DEPTH = 128
#: orjson's integer range: signed 64-bit below zero, unsigned 64-bit above.
_INT_RANGE = (-(2**63), 2**64 - 1)
_UTF8 = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})


class MalformedBody(GatewayError):
    """The body is not JSON."""

    http_status = 400
    error_type = "invalid_request_error"
    code = "invalid_json"


class UnreadableBody(MalformedBody):
    """The body is not in a form the route reads: a content type, charset or multipart form
    it cannot parse."""

    code = "invalid_body"


class InvalidRequest(GatewayError):
    """A query parameter or a body field the operation's models refuse."""

    http_status = 422
    error_type = "invalid_request_error"
    code = "invalid_request"


class InvalidType(InvalidRequest):
    """A body member of the wrong kind, refused as OpenAI refuses it (``invalid_type``)."""

    http_status = 400
    code = "invalid_type"


class MissingParameter(InvalidRequest):
    """A required body member left out, refused as OpenAI refuses it."""

    http_status = 400
    code = "missing_required_parameter"


class UnknownBodyParameter(InvalidRequest):
    http_status = 400
    code = "unknown_parameter"


class IntegerBelowMin(InvalidRequest):
    http_status = 400
    code = "integer_below_min_value"


class IntegerAboveMax(InvalidRequest):
    http_status = 400
    code = "integer_above_max_value"


class DecimalBelowMin(InvalidRequest):
    http_status = 400
    code = "decimal_below_min_value"


class DecimalAboveMax(InvalidRequest):
    http_status = 400
    code = "decimal_above_max_value"


#: The refusal of a body member, by OpenAI's code (``validation.openai_refusal``).
REFUSALS: dict[str, type[InvalidRequest]] = {
    c.code: c
    for c in (
        InvalidType,
        MissingParameter,
        UnknownBodyParameter,
        IntegerBelowMin,
        IntegerAboveMax,
        DecimalBelowMin,
        DecimalAboveMax,
    )
}


class BodyTooLarge(GatewayError):
    http_status = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


async def read_body(request: web.Request) -> bytes:
    """The whole body, at most the application's ``client_max_size`` bytes."""
    cap = request.client_max_size
    too_large = BodyTooLarge(f"The request body is too large: the limit is {cap} bytes.")
    # A declared length over the cap is refused before a byte of it is read.
    if request.content_length is not None and request.content_length > cap:
        raise too_large
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:  # a chunked body that grew past the cap
        raise too_large from exc


def utf8_text(raw: bytes, charset: str | None, param: str | None = None) -> str:
    """``raw`` as text: UTF-8 (or its subset US-ASCII) is the only charset taken."""
    if charset is not None and charset.strip().lower() not in _UTF8:
        raise UnreadableBody(f"Unsupported charset {charset[:40]!r}: send UTF-8.", param=param)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableBody("The text is not valid UTF-8.", param=param) from exc


def check_json(value: Any, where: tuple[str | int, ...] = ()) -> None:
    """Refuse ``value`` (parsed JSON) unless orjson can write it back as it is."""
    # Depth first with an explicit stack: a body nested past Python's recursion limit is refused
    # without recursing into it.
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, where)]
    while stack:
        item, at = stack.pop()
        children: Mapping[str | int, Any] | None = None
        if isinstance(item, dict):
            children = item
        elif isinstance(item, list):
            children = dict(enumerate(item))
        if children is not None:
            if len(at) - len(where) >= MAX_JSON_DEPTH:
                top = _param(at[: len(where) + 1])
                raise InvalidRequest(
                    f"The body nests deeper than {MAX_JSON_DEPTH} levels.", param=top
                )
            stack.extend((v, (*at, k)) for k, v in children.items())
        elif isinstance(item, bool) or item is None or isinstance(item, str):
            continue
        elif isinstance(item, int) and not _INT_RANGE[0] <= item <= _INT_RANGE[1]:
            raise InvalidRequest(
                f"Invalid value for '{_param(at)}': integers must fit in 64 bits.", param=_param(at)
            )
        elif isinstance(item, float) and not math.isfinite(item):
            raise InvalidRequest(
                f"Invalid value for '{_param(at)}': numbers must be finite.", param=_param(at)
            )


def _param(at: tuple[str | int, ...]) -> str | None:
    """``("session", "tools", 0, "name")`` -> ``session.tools[0].name``, at most 120 characters."""
    out = ""
    for part in at:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else part
    return out[:120] or None


def json_object(raw: bytes | str, param: str | None = None) -> dict[str, Any]:
    """``raw`` as a JSON object within ``check_json``'s limits."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        message = "We could not parse the JSON body of your request."
        raise MalformedBody(message, param=param) from exc
    if not isinstance(parsed, dict):
        raise MalformedBody("The body must be a JSON object.", param=param)
    check_json(parsed, (param,) if param else ())
    return parsed


@dataclass(frozen=True, slots=True)
class FormPart:
    payload: bytes
    #: The part's ``Content-Type`` charset, lower-cased; None if it names none.
    charset: str | None


def form_parts(content_type: str, raw: bytes) -> dict[str, FormPart]:
    """The named parts of a ``multipart/form-data`` body (``Content-Type`` header and bytes); a
    name sent twice keeps its last part."""
    # The email parser takes the header and the body as one message (RFC 7578 section 4: a form
    # is a MIME multipart); headers arrive decoded with surrogateescape, so this is lossless.
    if "\r" in content_type or "\n" in content_type:
        raise UnreadableBody("The Content-Type header cannot be parsed.")
    head = b"Content-Type: " + content_type.encode("utf-8", "surrogateescape") + b"\r\n\r\n"
    message = BytesParser().parsebytes(head + raw)
    if message.defects or not message.is_multipart():
        raise UnreadableBody(
            "The multipart body cannot be parsed: it needs a boundary, and every part must "
            "end with it."
        )
    parts: dict[str, FormPart] = {}
    for part in message.get_payload():
        if not isinstance(part, Message):
            continue
        name = part.get_param("name", header="content-disposition")
        if name is None:
            continue
        payload = part.get_payload(decode=True)
        if part.defects or not isinstance(payload, bytes):
            raise UnreadableBody("A part of the multipart body cannot be parsed.")
        parts[collapse_rfc2231_value(name)] = FormPart(payload, part.get_content_charset())
    return parts
