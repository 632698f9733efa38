"""Structured JSON logs that never carry a secret.

A filter on the root handler rewrites every record: the provider keys the gateway holds are
replaced wherever they appear, and anything shaped like a key (``sk-…``, ``rtg_…``, ``ek_…``,
a ``Bearer`` value) is cut to its first characters.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable

import orjson

_SHAPES = re.compile(
    r"(?P<k>(?:sk-|rtg_|ek_)[A-Za-z0-9_\-]{4})[A-Za-z0-9_\-]{4,}"
    r"|(?P<b>Bearer\s+)[^\s\"',]+"
)


def _shape_sub(m: re.Match[str]) -> str:
    if m.group("k"):
        return m.group("k") + "…"
    return m.group("b") + "…"


class RedactingFilter(logging.Filter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s]

    def redact(self, text: str) -> str:
        for s in self._secrets:
            if s in text:
                text = text.replace(s, "[redacted]")
        return _SHAPES.sub(_shape_sub, text)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    _EXTRA = ("session_id", "key_id", "model", "upstream", "close_code")

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k in self._EXTRA:
            v = record.__dict__.get(k)
            if v is not None:
                out[k] = v
        if record.exc_text:
            out["exc"] = record.exc_text
        return orjson.dumps(out).decode()


def configure_logging(level: str, secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
