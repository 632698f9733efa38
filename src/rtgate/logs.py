"""Logs for two readers, neither of which may see a secret.

A person at a terminal gets one readable line per event (time, level, message, then the few
fields that matter), in colour when the terminal takes it; a log collector gets one JSON object
per line. ``auto`` picks by whether stderr is a terminal. Both come out of one structlog
pipeline over the standard ``logging`` calls the code makes, so the fields a call passes as
``extra`` (session, key id, model, close code) appear in both.

Every rendered line is redacted first: the provider keys the process holds are replaced
wherever they appear, and anything shaped like a key (``sk-…``, ``rtg_…``, ``ek_…``, a
``Bearer`` value) is cut to its first characters. Tracebacks are rendered to plain text before
that step and never with local variables, which could hold a key.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import TYPE_CHECKING, Any, Literal, TextIO

import orjson

if TYPE_CHECKING:
    from structlog.typing import EventDict, Processor, WrappedLogger

    from rtgate.config import Settings

LogFormat = Literal["auto", "console", "json"]

#: The ``extra`` fields a log call may carry, in the order a terminal line shows them.
FIELDS = ("session_id", "key_id", "model", "upstream", "close_code", "call_id", "refusal")

_SHAPES = re.compile(
    r"(?P<k>(?:sk-|rtg_|ek_)[A-Za-z0-9_\-]{4})[A-Za-z0-9_\-]{4,}"
    r"|(?P<b>Bearer\s+)[^\s\"',]+"
)


def _shape_sub(m: re.Match[str]) -> str:
    if m.group("k"):
        return m.group("k") + "…"
    return m.group("b") + "…"


class Redactor:
    """Strips the secrets the process holds, and anything shaped like a key, from text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = [s for s in secrets if s]

    def redact(self, text: str) -> str:
        for s in self._secrets:
            if s in text:
                text = text.replace(s, "[redacted]")
        return _SHAPES.sub(_shape_sub, text)

    def __call__(self, _: WrappedLogger, __: str, event: EventDict) -> EventDict:
        """A structlog processor: every string value of the event, the message included."""
        for k, v in event.items():
            if isinstance(v, str):
                event[k] = self.redact(v)
        return event


def _json_line(_: WrappedLogger, __: str, event: EventDict) -> str:
    return orjson.dumps(event, default=str).decode()


def _uses_terminal(stream: TextIO, fmt: LogFormat) -> bool:
    if fmt != "auto":
        return fmt == "console"
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _import_structlog() -> None:
    """Import structlog as if rich and greenlet were not installed (those not imported yet).

    ``import structlog`` imports ``structlog.dev`` and ``structlog.tracebacks``, which import
    rich when it is there (typer depends on it), and rich's traceback imports pygments: ~2.7 MB
    of every gateway process (docs/performance.md 9.3), for tracebacks rtgate never renders
    with them (``plain_traceback``, no locals); its deprecated ``threadlocal`` imports greenlet
    (there for PostgreSQL's engine). Each guards the import with ``except ImportError``; a
    ``None`` in ``sys.modules`` makes it raise that, for this one import only. A command that
    prints a table imports rich itself, when it runs.
    """
    if "structlog" in sys.modules:
        return
    hidden = [m for m in _NOT_FOR_STRUCTLOG if m not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import structlog  # noqa: F401
    finally:
        for name in hidden:
            del sys.modules[name]


#: What structlog imports when installed and rtgate's logs never use.
_NOT_FOR_STRUCTLOG = ("rich", "greenlet")


def formatter(
    secrets: Iterable[str] = (), fmt: LogFormat = "json", colors: bool = False
) -> logging.Formatter:
    """The formatter for one handler: ``console`` lines or ``json`` objects, redacted."""
    _import_structlog()
    import structlog

    terminal = fmt == "console"
    pre: list[Processor] = [
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="%H:%M:%S" if terminal else None, key="ts"),
        structlog.stdlib.ExtraAdder(allow=FIELDS),
    ]
    rendering: list[Processor] = [
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        # The traceback becomes text here (no locals), so the redactor sees all of it.
        structlog.processors.format_exc_info,
        Redactor(secrets),
    ]
    if terminal:
        rendering.append(
            structlog.dev.ConsoleRenderer(
                colors=colors,
                timestamp_key="ts",
                exception_formatter=structlog.dev.plain_traceback,
                sort_keys=False,
                pad_event_to=40,
            )
        )
    else:
        pre.insert(1, structlog.stdlib.add_logger_name)
        rendering += [
            structlog.processors.EventRenamer("msg"),
            _rename("exception", "exc"),
            _json_line,
        ]
    return structlog.stdlib.ProcessorFormatter(foreign_pre_chain=pre, processors=rendering)


def _rename(old: str, new: str) -> Processor:
    def rename(_: WrappedLogger, __: str, event: MutableMapping[str, Any]) -> EventDict:
        if old in event:
            event[new] = event.pop(old)
        return dict(event)

    return rename


def configure_logging(
    level: str,
    secrets: Iterable[str] = (),
    fmt: LogFormat = "auto",
    stream: TextIO | None = None,
) -> None:
    """One stderr handler for the whole process: readable on a terminal, JSON otherwise."""
    out = stream or sys.stderr
    terminal = _uses_terminal(out, fmt)
    # https://no-color.org: any value of NO_COLOR turns colour off.
    colors = terminal and "NO_COLOR" not in os.environ and _uses_terminal(out, "auto")
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter(secrets, "console" if terminal else "json", colors))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # picows (the relay's legs) logs each connection at INFO, and a peer's protocol error (a
    # frame past max_message_bytes) at ERROR: the relay logs the session's close code instead.
    logging.getLogger("picows").setLevel(logging.WARNING)
    handler.addFilter(_not_a_peer_protocol_error)


def configure_serving_logs(settings: Settings) -> None:
    """``configure_logging`` as ``settings`` ask, for ``rtgate serve``'s process and each of its
    workers: every secret the settings hold (the providers' keys, the admin, metrics and brain
    tokens) is stripped from whatever a log line would show."""
    held = [u.api_key for u in settings.upstreams.values()]
    held += [settings.admin_token, settings.metrics_token, settings.engine.brain_api_key]
    secrets = [s.get_secret_value() for s in held if s is not None]
    configure_logging(settings.log_level, secrets, settings.log_format)


def _not_a_peer_protocol_error(record: logging.LogRecord) -> bool:
    """False for picows' report of a frame it refused (its per-connection loggers are children
    of ``picows``, so only the handler sees them all)."""
    return not (record.name.startswith("picows.") and str(record.msg).startswith("WS parser"))
