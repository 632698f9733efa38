"""What the relay core (``protocol/relay.py``) asks its pump to do: small immutable values,
performed in the order given (``relay/pump.py``). No I/O."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from rtgate.metering.record import UsageRecord
from rtgate.protocol.transcript import TranscriptEntry


class Side(enum.Enum):
    CLIENT = "client"
    UPSTREAM = "upstream"


@dataclass(frozen=True, slots=True)
class SendClient:
    """A frame for the client: a text frame whose payload is ``data`` (UTF-8), or with
    ``binary`` a binary frame relayed as it came."""

    data: bytes
    binary: bool = False


@dataclass(frozen=True, slots=True)
class SendUpstream:
    """A frame for the upstream, as ``SendClient``."""

    data: bytes
    binary: bool = False


@dataclass(frozen=True, slots=True)
class Commit:
    """Make ``record`` durable (the ledger), then feed ``committed(ok)``; ``frame`` is the event
    it meters (for the review log line of a record flagged for review)."""

    record: UsageRecord
    frame: str


@dataclass(frozen=True, slots=True)
class Record:
    """Make ``record`` durable, holding no frame (usage the gateway counted itself, a
    translation's input audio), then feed ``recorded(ok)``."""

    record: UsageRecord


@dataclass(frozen=True, slots=True)
class CheckBudget:
    """Ask whether the key crossed a budget, then feed ``budget_checked(refusal)``."""


@dataclass(frozen=True, slots=True)
class KeepTranscript:
    """Queue these entries to the ledger, unawaited (it writes them in order)."""

    entries: list[TranscriptEntry]


@dataclass(frozen=True, slots=True)
class Ping:
    side: Side


@dataclass(frozen=True, slots=True)
class Sever:
    """Drop a dead leg's connection now (no close handshake)."""

    side: Side


@dataclass(frozen=True, slots=True)
class CloseClient:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class CloseUpstream:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class PauseUpstream:
    """Stop reading the upstream: frames are held behind a commit past ``HOLD_LIMIT``."""


@dataclass(frozen=True, slots=True)
class ResumeUpstream:
    """Read the upstream again: the held frames went out."""


@dataclass(frozen=True, slots=True)
class Refused:
    """A policy refusal to count (``rtgate_refusals``): a blocked event, a crossed budget."""

    code: str


@dataclass(frozen=True, slots=True)
class Hangup:
    """A call sideband only: hang the call up upstream (at most once per call)."""


@dataclass(frozen=True, slots=True)
class Ended:
    """The session is over (emitted once): the pump closes what is still open and tears down."""


Action = (
    SendClient
    | SendUpstream
    | Commit
    | Record
    | CheckBudget
    | KeepTranscript
    | Ping
    | Sever
    | CloseClient
    | CloseUpstream
    | PauseUpstream
    | ResumeUpstream
    | Refused
    | Hangup
    | Ended
)
Actions = Sequence[Action]
