"""Request bodies as plain data: the JSON limits, the charset rule and the multipart parser."""

from __future__ import annotations

from typing import Any

import pytest

from rtgate.api.bodies import (
    MAX_JSON_DEPTH,
    InvalidRequest,
    MalformedBody,
    UnreadableBody,
    check_json,
    form_parts,
    json_object,
    utf8_text,
)


def nested(depth: int) -> Any:
    """``depth`` levels of lists, built without recursion."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def test_json_takes_what_orjson_writes_back() -> None:
    check_json({"a": [2**64 - 1, -(2**63), 1.5, None, True, "x"], "b": nested(MAX_JSON_DEPTH - 1)})


@pytest.mark.parametrize(
    ("value", "param"),
    [
        ({"session": {"tools": [{"n": 2**64}]}}, "session.tools[0].n"),
        ({"x": -(2**63) - 1}, "x"),
        ({"x": float("inf")}, "x"),
        ({"x": [float("nan")]}, "x[0]"),
        ({"deep": nested(MAX_JSON_DEPTH)}, "deep"),
        (nested(50_000), "[0]"),
    ],
)
def test_json_past_orjsons_limits_is_refused_with_its_param(value: Any, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_json(value)
    assert refused.value.param == param


def test_a_json_object_is_parsed_and_checked_under_its_param() -> None:
    assert json_object(b'{"type": "realtime"}', "session") == {"type": "realtime"}
    with pytest.raises(MalformedBody):
        json_object(b"[1]", "session")
    with pytest.raises(MalformedBody):
        json_object(b"{nope")
    with pytest.raises(InvalidRequest) as deep:
        json_object(b'{"x": ' + b"[" * 1000 + b"]" * 1000 + b"}", "session")
    assert deep.value.param == "session.x"


def test_text_is_utf8_only() -> None:
    assert utf8_text("café".encode(), None) == "café"
    assert utf8_text(b"v=0", " UTF-8 ") == utf8_text(b"v=0", "us-ascii") == "v=0"
    for raw, charset in ((b"\xff", None), ("café".encode("latin-1"), "utf-8")):
        with pytest.raises(UnreadableBody):
            utf8_text(raw, charset, "sdp")
    with pytest.raises(UnreadableBody) as other:
        utf8_text(b"v=0", "latin-1", "sdp")
    assert other.value.param == "sdp" and other.value.code == "invalid_body"


FORM = (
    b"preamble\r\n--b0\r\n"
    b'Content-Disposition: form-data; name="sdp"\r\nContent-Type: application/sdp\r\n\r\n'
    b"v=0\r\ns=caf\xc3\xa9\r\n\r\n"
    b"--b0\r\n"
    b"Content-Disposition: form-data; name*=utf-8''session\r\n"
    b"Content-Type: application/json; charset=UTF-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"eyJ0eXBlIjogInJlYWx0aW1lIn0=\r\n"
    b"--b0\r\nContent-Type: text/plain\r\n\r\nno name: skipped\r\n"
    b"--b0--\r\n"
)


def test_a_form_gives_its_named_parts_byte_for_byte() -> None:
    parts = form_parts('multipart/form-data; boundary="b0"', FORM)
    assert set(parts) == {"sdp", "session"}
    # The line break before a boundary belongs to the boundary (RFC 2046 5.1.1).
    assert parts["sdp"].payload == b"v=0\r\ns=caf\xc3\xa9\r\n"
    assert parts["sdp"].charset is None
    assert parts["session"].payload == b'{"type": "realtime"}'
    assert parts["session"].charset == "utf-8"
    bare = form_parts("multipart/form-data; boundary=b0", FORM.replace(b"\r\n", b"\n"))
    assert bare["sdp"].payload == b"v=0\ns=caf\xc3\xa9\n"


@pytest.mark.parametrize(
    ("ctype", "raw"),
    [
        ("multipart/form-data", FORM),
        ("multipart/form-data; boundary=other", FORM),
        ("multipart/form-data; boundary=b0", FORM[:-12]),
        ("multipart/form-data; boundary=b0", b""),
        ("multipart/form-data; boundary=b0\r\nX-Injected: 1", FORM),
        (
            "multipart/form-data; boundary=b0",
            b'--b0\r\nContent-Disposition: form-data; name="sdp"\r\n'
            b"Content-Type: multipart/mixed; boundary=in\r\n\r\n--in\r\n\r\nx\r\n--in--\r\n"
            b"--b0--\r\n",
        ),
    ],
    ids=["no_boundary", "wrong_boundary", "truncated", "empty", "header_break", "nested_form"],
)
def test_a_broken_form_is_refused(ctype: str, raw: bytes) -> None:
    with pytest.raises(UnreadableBody):
        form_parts(ctype, raw)
