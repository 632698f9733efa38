"""The running gateway's parts, built once by the composition root and passed to handlers, and
its lifecycle: whether it takes new sessions, and the sessions live in it now."""

from __future__ import annotations

import asyncio
import enum
import ssl
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from rtgate.auth.authenticator import Authenticator
from rtgate.auth.keyring import KeyRing
from rtgate.auth.limits import SessionLimiter
from rtgate.catalog import Catalog
from rtgate.clock import Clock
from rtgate.config import Settings
from rtgate.errors import GatewayError, ShuttingDown
from rtgate.fleet import Fleet, LoneInstance
from rtgate.metering.ledger import Ledger
from rtgate.metering.spend import SpendBook
from rtgate.metrics import Metrics
from rtgate.protocol.relay_session import RelaySession
from rtgate.relay.ticker import Ticker
from rtgate.store.port import Store
from rtgate.upstream_health import UpstreamHealth


class LiveSession(Protocol):
    """A metered session running now: a relayed WebSocket (its ``Pump``) or a call's sideband.
    The admin API lists them and closes them, shutdown ends them, all through this."""

    session: RelaySession

    async def terminate(self, err: GatewayError, by: str = "operator") -> None:
        """End it from outside with ``err`` (an operator's forced close, a revoked secret,
        shutdown); one already ending is left alone."""


class Lifecycle(enum.Enum):
    """SERVING -> DRAINING -> CLOSING, never back; CLOSING may also follow SERVING directly.

    SERVING   new sessions are admitted; ``/readyz`` answers 200.
    DRAINING  new sessions (sockets, client secrets, calls) are refused with ``ShuttingDown``
              and ``/readyz`` answers 503; live sessions run on (``rtgate.drain``).
    CLOSING   live sessions are being ended with 1001; one that was admitted earlier and goes
              live only now is ended at once (it missed the sweep).
    """

    SERVING = "serving"
    DRAINING = "draining"
    CLOSING = "closing"


def refused_while_draining() -> ShuttingDown:
    return ShuttingDown(
        "This gateway is shutting down and takes no new sessions; reconnect to reach one "
        "that is running."
    )


def shutting_down() -> ShuttingDown:
    """What a live session the gateway stops with gets: a drain's deadline, an immediate stop."""
    return ShuttingDown(
        "The gateway is shutting down and this session could not finish before it did; "
        "reconnect to continue."
    )


class LiveSessions:
    """The live sessions by id, and a wait for the moment none is left (a drain's end)."""

    def __init__(self) -> None:
        self._by_id: dict[str, LiveSession] = {}
        self._none = asyncio.Event()
        self._none.set()

    def add(self, session_id: str, live: LiveSession) -> None:
        self._by_id[session_id] = live
        self._none.clear()

    def discard(self, session_id: str) -> None:
        self._by_id.pop(session_id, None)
        if not self._by_id:
            self._none.set()

    def get(self, session_id: str) -> LiveSession | None:
        return self._by_id.get(session_id)

    def values(self) -> list[LiveSession]:
        """A snapshot: ending a session while iterating it is safe."""
        return list(self._by_id.values())

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._by_id

    def __len__(self) -> int:
        return len(self._by_id)

    async def none_left(self) -> None:
        """Return once no session is live (at once if none is)."""
        await self._none.wait()


@dataclass
class Gateway:
    settings: Settings
    store: Store
    clock: Clock
    keyring: KeyRing
    #: How every route that authenticates a caller does it (the failure throttle included).
    authenticator: Authenticator
    catalog: Catalog
    ledger: Ledger
    #: Keys' spend for their budgets (the store's sums, or an estimate while it is away).
    spend: SpendBook
    http: aiohttp.ClientSession
    limiter: SessionLimiter
    metrics: Metrics
    #: Where the embedded local engine listens, and the token that guards it (set at start-up).
    local_base_url: str = ""
    local_token: str = ""
    expiry_check_interval: float = 1.0
    lifecycle: Lifecycle = Lifecycle.SERVING
    live: LiveSessions = field(default_factory=LiveSessions)
    #: This instance and the others sharing its Redis (``redis_fleet.RedisFleet``), or alone.
    fleet: Fleet = field(default_factory=LoneInstance)
    #: The one client TLS context of every ``wss://`` upstream dial (``tls.upstream_context``),
    #: None when no upstream is dialled over TLS.
    upstream_tls: ssl.SSLContext | None = None
    #: How the upstreams answered this process's dials (the console's upstream health).
    upstream_health: UpstreamHealth = field(default_factory=UpstreamHealth)
    #: The one timer of every live session's keepalive and frame counts (``relay/ticker.py``).
    ticker: Ticker = field(init=False)

    #: When this gateway started (Unix seconds): ``/v1/models``' ``created``.
    started_at: float = field(init=False)

    def __post_init__(self) -> None:
        self.ticker = Ticker(self.expiry_check_interval, self.metrics)
        self.started_at = self.clock.now()

    @property
    def accepting(self) -> bool:
        return self.lifecycle is Lifecycle.SERVING

    @property
    def closing(self) -> bool:
        return self.lifecycle is Lifecycle.CLOSING

    def check_accepting(self) -> None:
        """Raise ``ShuttingDown`` unless new sessions are taken: every route that opens one (a
        socket, a client secret, a call) asks first."""
        if not self.accepting:
            raise refused_while_draining()

    def stop_accepting(self) -> bool:
        """SERVING -> DRAINING; False if new sessions were refused already."""
        if not self.accepting:
            return False
        self.lifecycle = Lifecycle.DRAINING
        return True

    async def end_live_sessions(self, err: GatewayError) -> None:
        """-> CLOSING: end every live session now with ``err`` (its error event, then its close
        code), relayed sockets and call sidebands alike."""
        self.lifecycle = Lifecycle.CLOSING
        ending = [s.terminate(err, by="gateway") for s in self.live.values()]
        await asyncio.gather(*ending, return_exceptions=True)
