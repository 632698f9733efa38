"""When to ping a relayed leg, and when to give it up (RFC 6455 5.5.2-5.5.3). No I/O.

aiohttp's own heartbeat re-arms its timer on every chunk a socket reads: one scheduled callback
per frame on each leg, about a tenth of the relay's CPU at 111 frames/s per session. The bridge
counts the frames it relays anyway, so it asks this object once per watchdog tick instead:

* a leg that sent nothing for ``interval`` seconds gets a ping;
* a leg still silent ``interval / 2`` after that ping is dead (aiohttp's rule: its pong timeout
  is half the heartbeat), and the bridge drops it as if its socket had gone;
* anything received is a sign of life: a data frame, a ping, a pong.

Being ticked, it decides up to one tick late, which a 30 s heartbeat does not notice.
"""

from __future__ import annotations

import enum


class Beat(enum.Enum):
    """What the bridge does for a leg on this tick."""

    NOTHING = "nothing"
    PING = "ping"
    DEAD = "dead"


class Keepalive:
    """Liveness of one leg: ``HEARD`` (last heard at ``heard_at``) or ``PINGED`` (at ``ping_at``).

    | state  | heard on this tick | silent on this tick                                 |
    | ------ | ------------------ | --------------------------------------------------- |
    | HEARD  | HEARD (now)        | ``interval`` since heard_at: PING, go PINGED (now)  |
    | PINGED | HEARD (now)        | ``interval / 2`` since ping_at: DEAD                |
    """

    def __init__(self, interval: float, now: float) -> None:
        self.interval = interval
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
            if now - self.heard_at >= self.interval:
                self.ping_at = now
                return Beat.PING
            return Beat.NOTHING
        if now - self.ping_at >= self.interval / 2:
            return Beat.DEAD
        return Beat.NOTHING
