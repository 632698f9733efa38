"""When to ping a relayed leg, and when to give it up (RFC 6455 5.5.2-5.5.3). No I/O.

aiohttp's own heartbeat re-arms its timer on every chunk a socket reads: one scheduled callback
per frame on each leg, about a tenth of the relay's CPU at 111 frames/s per session. The relay
core (``protocol/relay.py``) notes a frame's arrival anyway, so it asks this object once per
tick of its pump instead, for a relayed socket and a call's sideband alike:

* a leg that sent nothing for ``ping_after`` seconds gets a ping: a leg that talks is never
  pinged, a quiet one about once per ``ping_after``;
* a leg still silent ``pong_within`` after that ping is dead, and is dropped as if its socket had
  gone;
* anything received is a sign of life: a data frame, a ping, a pong.

Being ticked, it decides up to one tick late. The client leg keeps aiohttp's rule (pong within
half the interval, 30 s by default). The upstream leg is watched more closely (``upstream_cadence``
in ``relay/live.py``: a ping after 4 s of silence, 3 s to answer): a provider that stops
answering (a hung host keeps its TCP connection up) leaves a caller in dead air until noticed,
which by default is within 4 + 3 s and one 1 s tick (8 s) of its last frame.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Cadence:
    """How long a leg may be silent before it is pinged, and then before it is dead."""

    ping_after: float
    pong_within: float

    @classmethod
    def after(cls, seconds: float) -> Cadence:
        """aiohttp's heartbeat rule: a ping after ``seconds``, half as long to answer."""
        return cls(seconds, seconds / 2)


class Beat(enum.Enum):
    """What the relay does for a leg on this tick."""

    NOTHING = "nothing"
    PING = "ping"
    DEAD = "dead"


class Keepalive:
    """Liveness of one leg: ``HEARD`` (last heard at ``heard_at``) or ``PINGED`` (at ``ping_at``).

    | state  | heard on this tick | silent on this tick                                   |
    | ------ | ------------------ | ----------------------------------------------------- |
    | HEARD  | HEARD (now)        | ``ping_after`` since heard_at: PING, go PINGED (now)  |
    | PINGED | HEARD (now)        | ``pong_within`` since ping_at: DEAD                   |
    """

    def __init__(self, cadence: Cadence, now: float) -> None:
        self.cadence = cadence
        self.heard_at = now
        #: When the unanswered ping went out; None while the leg is heard.
        self.ping_at: float | None = None

    @property
    def awaiting_pong(self) -> bool:
        return self.ping_at is not None

    def tick(self, heard: bool, now: float) -> Beat:
        """``heard``: whether anything arrived from the leg since the previous tick."""
        if heard:
            self.heard_at, self.ping_at = now, None
            return Beat.NOTHING
        if self.ping_at is None:
            if now - self.heard_at >= self.cadence.ping_after:
                self.ping_at = now
                return Beat.PING
            return Beat.NOTHING
        if now - self.ping_at >= self.cadence.pong_within:
            return Beat.DEAD
        return Beat.NOTHING
