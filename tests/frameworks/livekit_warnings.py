"""What LiveKit logs at WARNING or above, kept for a script's summary: a faithful gateway gives
it none (an event it could not parse or handle, a generation it discarded, a failed call)."""

from __future__ import annotations

import logging


class Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(f"{record.name}: {record.getMessage()}")


def watch() -> Warnings:
    """Start keeping what LiveKit's loggers say at WARNING or above."""
    warnings = Warnings()
    logging.getLogger("livekit").addHandler(warnings)
    return warnings
