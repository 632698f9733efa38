"""The running gateway's parts, built once by the composition root and passed to handlers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from rtgate.auth.authenticator import Authenticator
from rtgate.auth.keyring import KeyRing
from rtgate.auth.limits import SessionLimiter
from rtgate.catalog import Catalog
from rtgate.clock import Clock
from rtgate.config import Settings
from rtgate.errors import GatewayError
from rtgate.fleet import Fleet, LoneInstance
from rtgate.metering.ledger import Ledger
from rtgate.metrics import Metrics
from rtgate.protocol.relay_session import RelaySession
from rtgate.store.port import Store


class LiveSession(Protocol):
    """A metered session running now: a relayed WebSocket (``Bridge``) or a call's sideband.
    The admin API lists them and closes them, shutdown ends them, all through this."""

    session: RelaySession

    async def close(self, code: int, reason: str, by: str) -> None:
        """End it from outside (shutdown) with ``code``; one already ending is left alone."""

    async def terminate(self, err: GatewayError, by: str = "operator") -> None:
        """End it from outside with ``err`` (an operator's forced close, a revoked secret)."""


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
    http: aiohttp.ClientSession
    limiter: SessionLimiter
    metrics: Metrics
    #: Where the embedded local engine listens, and the token that guards it (set at start-up).
    local_base_url: str = ""
    local_token: str = ""
    expiry_check_interval: float = 1.0
    #: Set when shutdown begins: new sessions are refused, late ones closed with 1001.
    closing: bool = False
    live: dict[str, LiveSession] = field(default_factory=dict)
    #: This instance and the others sharing its Redis (``redis_fleet.RedisFleet``), or alone.
    fleet: Fleet = field(default_factory=LoneInstance)
