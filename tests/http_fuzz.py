"""Hypothesis strategies for HTTP requests to the gateway's body-reading routes: JSON that is
near the real shapes or far from them (numbers past 64 bits, NaN, deep nesting, truncation,
bytes that are not UTF-8), SDP offers in any charset, and ``multipart/form-data`` forms with or
without a boundary, truncated, with odd parts and transfer encodings."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

OFFER = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=offer\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
MODELS = ("gpt-realtime", "gpt-realtime-mini", "gpt-4o-mini-transcribe", "nope")
#: Field names the routes act on, so generated objects reach past the first check.
FIELDS = (
    "type",
    "model",
    "session",
    "expires_after",
    "anchor",
    "seconds",
    "client_secret",
    "instructions",
    "audio",
    "input",
    "output",
    "format",
    "voice",
    "tools",
    "tool_choice",
    "turn_detection",
    "input_audio_format",
    "output_audio_format",
    "input_audio_transcription",
    "modalities",
    "max_response_output_tokens",
    "max_output_tokens",
    "include",
    "tracing",
    "name",
    "models",
    "max_sessions",
    "secrets_per_minute",
    "budget_usd_day",
    "max_duration",
    "expires",
    "blocked_events",
    "clear",
)


@dataclass(frozen=True)
class Fuzzed:
    method: str
    #: Relative to the gateway's root.
    path: str
    content_type: str | None
    body: bytes
    #: A 200 here mints (and stores) one client secret.
    mints: bool = False
    admin: bool = False


_BIG = st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30])
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-5, max_value=10_000)
    | st.integers()
    | _BIG
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["realtime", "transcription", "created_at", *MODELS])
)
_KEYS = st.sampled_from(FIELDS) | st.text(max_size=6)
json_values: st.SearchStrategy[Any] = st.recursive(
    _SCALARS,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(_KEYS, kids, max_size=5),
    max_leaves=16,
)


def _session() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["realtime", "transcription"]) | json_values,
            "model": st.sampled_from(MODELS) | json_values,
            "instructions": st.text(max_size=20) | json_values,
            "max_output_tokens": st.integers() | _BIG,
            "audio": json_values,
            "tools": json_values,
        },
    )


def _expires_after() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "anchor": st.just("created_at") | json_values,
            "seconds": st.integers(min_value=0, max_value=8000) | st.integers() | _BIG,
        },
    )


#: Objects in the shape of a route's body: a GA request, a beta flat session, a key policy.
shaped: st.SearchStrategy[dict[str, Any]] = st.one_of(
    st.fixed_dictionaries({}, optional={"expires_after": _expires_after(), "session": _session()}),
    st.fixed_dictionaries(
        {},
        optional={
            "model": st.sampled_from(MODELS) | json_values,
            "client_secret": st.fixed_dictionaries({}, optional={"expires_after": _expires_after()})
            | json_values,
            "expires_after": _expires_after() | json_values,
            "modalities": json_values,
            "input_audio_format": st.sampled_from(["pcm16", "g711_ulaw"]) | json_values,
            "input_audio_transcription": json_values,
            "turn_detection": json_values,
            "tools": json_values,
        },
    ),
    st.fixed_dictionaries(
        {"name": st.text(max_size=10) | json_values},
        optional={
            "max_sessions": st.integers() | _BIG,
            "budget_usd_day": st.integers() | st.floats() | st.text(max_size=8),
            "expires": st.dates().map(str) | st.datetimes().map(str) | st.text(max_size=12),
            "max_duration": st.text(max_size=8),
            "turn_detection": json_values,
            "clear": json_values,
        },
    ),
)


def _dumps(value: Any) -> bytes:
    # The stdlib writes integers of any size and NaN/Infinity, as careless clients do.
    return json.dumps(value, allow_nan=True).encode()


@st.composite
def _nested(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(min_value=100, max_value=1500))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    inner = opener * depth + b"1" + closer * depth
    wrap = draw(st.sampled_from([b"%s", b'{"session": %s}', b'{"type": "realtime", "x": %s}']))
    return wrap % inner


@st.composite
def _mangled(draw: st.DrawFn, raw: bytes) -> bytes:
    """``raw``, or ``raw`` cut short, or with a byte that is not UTF-8 spliced in."""
    how = draw(st.sampled_from(["as is", "as is", "cut", "splice"]))
    if how == "as is" or not raw:
        return raw
    at = draw(st.integers(min_value=0, max_value=len(raw)))
    if how == "cut":
        return raw[:at]
    return raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\x00", b"\xed\xa0\x80"])) + raw[at:]


json_bodies: st.SearchStrategy[bytes] = st.one_of(
    shaped.map(_dumps).flatmap(_mangled),
    json_values.map(_dumps).flatmap(_mangled),
    _nested(),
    st.binary(max_size=64),
    st.just(b""),
)

_CHARSETS = st.sampled_from(["utf-8", "UTF-8", "us-ascii", "latin-1", "klingon", "utf-16", ""])


@st.composite
def _sdp(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """An SDP payload and the charset its content type names (None: names none)."""
    text = draw(st.just(OFFER) | st.text(max_size=40) | st.just(OFFER + "s=caf\u00e9\r\n"))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "latin-1", "utf-16"]))
    raw = draw(_mangled(text.encode(encoding, "replace")))
    charset = draw(st.none() | _CHARSETS)
    return raw, charset


def _ctype(base: str, charset: str | None) -> str:
    return base if charset is None else f"{base}; charset={charset}"


@st.composite
def _part(draw: st.DrawFn) -> bytes:
    name = draw(
        st.sampled_from(["sdp", "session", "sdp", "session", "other"]) | st.text(max_size=5)
    )
    if name == "session":
        payload = draw(json_bodies | shaped.map(_dumps))
        ctype: str | None = _ctype("application/json", draw(st.none() | _CHARSETS))
    else:
        payload, charset = draw(_sdp())
        ctype = _ctype("application/sdp", charset)
    ctype = draw(st.just(ctype) | st.none() | st.sampled_from(["multipart/mixed; boundary=x"]))
    lines = [f'Content-Disposition: form-data; name="{name}"']
    if draw(st.booleans()):
        lines[0] = draw(st.sampled_from(["Content-Disposition: form-data", "X-Nothing: 1"]))
    if ctype is not None:
        lines.append(f"Content-Type: {ctype}")
    if draw(st.integers(min_value=0, max_value=5)) == 0:
        lines.append(draw(st.sampled_from(["Content-Transfer-Encoding: base64", "CTE: x"])))
    head = "\r\n".join(lines).encode("utf-8", "surrogatepass")
    return head + b"\r\n\r\n" + payload


@st.composite
def multipart(draw: st.DrawFn) -> tuple[str, bytes]:
    """A content type and a body: a form, more or less well made."""
    boundary = draw(st.sampled_from(["rtgate-b0undary", "x", "a" * 70]))
    parts = draw(st.lists(_part(), min_size=0, max_size=4))
    eol = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"]))
    sep = b"--" + boundary.encode()
    body = draw(st.sampled_from([b"", b"preamble" + eol]))
    for part in parts:
        body += sep + eol + part.replace(b"\r\n", eol) + eol
    body += sep + b"--" + eol + draw(st.sampled_from([b"", b"epilogue"]))
    body = draw(_mangled(body))
    declared = draw(
        st.sampled_from(
            [
                f"multipart/form-data; boundary={boundary}",
                f'multipart/form-data; boundary="{boundary}"',
                "multipart/form-data",
                "multipart/form-data; boundary=",
                "multipart/form-data; boundary=other",
                f"multipart/mixed; boundary={boundary}",
            ]
        )
    )
    return declared, body


@st.composite
def requests(draw: st.DrawFn, call_id: str, key_id: str) -> Fuzzed:
    """A request to one of the routes that read a body, with a body for it (or not)."""
    route = draw(
        st.sampled_from(
            [
                "client_secrets",
                "sessions",
                "transcription_sessions",
                "calls",
                "calls",
                "call_action",
                "admin_create",
                "admin_update",
            ]
        )
    )
    json_ctype = st.sampled_from(
        ["application/json", "application/json; charset=utf-8"]
    ) | st.one_of(
        st.none(), st.sampled_from(["text/plain", "application/sdp", "multipart/form-data"])
    )
    if route in ("client_secrets", "sessions", "transcription_sessions"):
        return Fuzzed(
            "POST", f"/v1/realtime/{route}", draw(json_ctype), draw(json_bodies), mints=True
        )
    if route == "calls":
        kind = draw(st.sampled_from(["sdp", "form", "form", "other"]))
        if kind == "sdp":
            raw, charset = draw(_sdp())
            return Fuzzed("POST", "/v1/realtime/calls", _ctype("application/sdp", charset), raw)
        if kind == "form":
            ctype, raw = draw(multipart())
            return Fuzzed("POST", "/v1/realtime/calls", ctype, raw)
        return Fuzzed("POST", "/v1/realtime/calls", draw(json_ctype), draw(json_bodies))
    if route == "call_action":
        action = draw(st.sampled_from(["accept", "reject", "refer", "hangup"]))
        path = f"/v1/realtime/calls/{call_id}/{action}"
        return Fuzzed("POST", path, draw(json_ctype), draw(json_bodies | st.just(b"")))
    if route == "admin_create":
        return Fuzzed("POST", "/admin/v1/keys", draw(json_ctype), draw(json_bodies), admin=True)
    return Fuzzed(
        "PATCH", f"/admin/v1/keys/{key_id}", draw(json_ctype), draw(json_bodies), admin=True
    )
