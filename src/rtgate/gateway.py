"""The running gateway's parts, built once by the composition root and passed to handlers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp

from rtgate.auth.keyring import KeyRing
from rtgate.auth.limits import SessionLimiter
from rtgate.catalog import Catalog
from rtgate.clock import Clock
from rtgate.config import Settings
from rtgate.metering.ledger import Ledger
from rtgate.metrics import Metrics
from rtgate.store.port import Store

if TYPE_CHECKING:
    from rtgate.relay.bridge import Bridge


@dataclass
class Gateway:
    settings: Settings
    store: Store
    clock: Clock
    keyring: KeyRing
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
    live: dict[str, Bridge] = field(default_factory=dict)
