"""The gateway instances behind one balancer as one fleet: which sessions each relays, and ending
a session on whichever instance relays it.

Every process is an instance with an id (``inst_`` and 12 hex digits, random at start) that the
admin API shows beside each live session. The admin API asks its ``Fleet`` two things: the live
sessions the *other* instances relay (its own it reads from ``Gateway.live`` directly), and to
have the others end sessions (a forced close by session id, a revocation by client secret id).

Two implementations: ``LoneInstance`` (no ``redis_url``: this process is the whole fleet, there is
nothing elsewhere) and ``RedisFleet`` (``redis_fleet.py``). This module holds the port and the
pure parts of the Redis one, what its messages say and when an asker has heard enough, so they
are tested without a server.

A command and its answers::

    asker ──PUBLISH commands {op, target, request, origin}──► every instance, the asker included
          ◄─PUBLISH answers:<origin> {request, instance, closed: [views]}── each of them, once

PUBLISH returns how many subscribers the command reached; the asker waits until that many have
answered (a revocation) or one answered with the session closed (a forced close), and never
longer than its bound. An instance that answers late may still have ended its sessions; they are
just not reported.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson

from rtgate.errors import GatewayError

#: ``close``: end the session with this id (``session_closed_by_operator``). ``revoke``: end
#: every session the client secret with this id opened (``client_secret_revoked``).
Op = Literal["close", "revoke"]


def new_instance_id() -> str:
    return "inst_" + secrets.token_hex(6)


class FleetUnavailable(GatewayError):
    """The other instances cannot be reached (their shared Redis is down or not subscribed):
    only this instance's sessions can be listed and ended right now."""

    error_type = "server_error"
    code = "fleet_unavailable"


class SessionHolder(Protocol):
    """This instance's live sessions as the fleet needs them (the admin API implements it).
    Views travel as JSON bytes: the fleet stores and forwards them without reading them."""

    def listing(self) -> dict[str, bytes]:
        """Session id -> its live view, for every session relayed here now."""
        ...

    async def close(self, session_id: str) -> list[bytes]:
        """End the session with this id if it is relayed here and open; the closed view, or
        nothing."""
        ...

    async def revoke(self, secret_id: str) -> list[bytes]:
        """End the open sessions here opened with this client secret; their closed views."""
        ...


@dataclass(frozen=True, slots=True)
class Answers:
    """What the other instances said to one command."""

    #: Closed views (JSON) of the sessions they ended.
    closed: tuple[bytes, ...] = ()
    #: Instances the command reached (the asker included), and how many of them answered.
    reached: int = 0
    answered: int = 0

    @property
    def silent(self) -> int:
        """Instances that did not answer within the bound."""
        return max(self.reached - self.answered, 0)


class Fleet(Protocol):
    """This instance and its peers."""

    instance: str

    async def start(self, here: SessionHolder) -> None:
        """Show this instance's sessions to the others and obey their commands, until ``close``."""
        ...

    async def close(self) -> None: ...

    async def sessions_elsewhere(self) -> list[bytes]:
        """The live views the other instances published (a second old at most); raises
        ``FleetUnavailable``."""
        ...

    async def ask(self, op: Op, target: str) -> Answers:
        """Have every instance end what ``op`` names; raises ``FleetUnavailable``."""
        ...


@dataclass
class LoneInstance:
    """The fleet of one process: no other instance, nothing elsewhere to list or end."""

    instance: str = field(default_factory=new_instance_id)

    async def start(self, here: SessionHolder) -> None:
        """Nothing to publish or listen to: the admin API reads ``here`` directly."""

    async def close(self) -> None:
        """Nothing was opened."""

    async def sessions_elsewhere(self) -> list[bytes]:
        return []

    async def ask(self, op: Op, target: str) -> Answers:
        return Answers()


# -- messages -------------------------------------------------------------------------------------


def _object(data: bytes) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


@dataclass(frozen=True, slots=True)
class Command:
    """``op`` applied to ``target`` (a session id or a client secret id), asked by ``origin``
    (answers go to its channel) under the ``request`` id its answers carry back."""

    op: Op
    target: str
    request: str
    origin: str

    def encode(self) -> bytes:
        return orjson.dumps(
            {"op": self.op, "target": self.target, "request": self.request, "origin": self.origin}
        )

    @classmethod
    def decode(cls, data: bytes) -> Command | None:
        """The command, or None for anything else (another version's message, noise)."""
        obj = _object(data)
        if obj is None or obj.get("op") not in ("close", "revoke"):
            return None
        target, request, origin = obj.get("target"), obj.get("request"), obj.get("origin")
        if not (isinstance(target, str) and isinstance(request, str) and isinstance(origin, str)):
            return None
        return cls(obj["op"], target, request, origin)


@dataclass(frozen=True, slots=True)
class Answer:
    """One instance's answer to a command: the views of the sessions it ended (often none)."""

    request: str
    instance: str
    closed: tuple[bytes, ...] = ()

    def encode(self) -> bytes:
        # Fragments embed the views as they are, without parsing them again.
        closed = [orjson.Fragment(view) for view in self.closed]
        return orjson.dumps({"request": self.request, "instance": self.instance, "closed": closed})

    @classmethod
    def decode(cls, data: bytes) -> Answer | None:
        obj = _object(data)
        if obj is None:
            return None
        request, instance, closed = obj.get("request"), obj.get("instance"), obj.get("closed")
        if not (isinstance(request, str) and isinstance(instance, str)):
            return None
        if not (isinstance(closed, list) and all(isinstance(v, dict) for v in closed)):
            return None
        return cls(request, instance, tuple(orjson.dumps(v) for v in closed))


@dataclass
class Tally:
    """The answers to one command as they arrive.

    Rules: one answer per instance counts (a duplicate is ignored); the command is settled when
    a ``close`` has been answered with a closed session (a session runs on one instance only),
    or when as many instances have answered as the command reached (``reached``, known once
    PUBLISH has returned; answers may arrive before that)."""

    op: Op
    reached: int | None = None
    answers: dict[str, Answer] = field(default_factory=dict)

    def add(self, answer: Answer) -> None:
        self.answers.setdefault(answer.instance, answer)

    @property
    def closed(self) -> tuple[bytes, ...]:
        return tuple(view for a in self.answers.values() for view in a.closed)

    @property
    def settled(self) -> bool:
        if self.op == "close" and self.closed:
            return True
        return self.reached is not None and len(self.answers) >= self.reached

    def outcome(self) -> Answers:
        return Answers(self.closed, self.reached or 0, len(self.answers))
