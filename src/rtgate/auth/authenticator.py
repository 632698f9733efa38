"""The one door of every route that authenticates a caller: ``GET /v1/realtime``, the three
minting routes and ``/v1/realtime/calls``. It reads the request's credential
(``credentials.py``), has the ``KeyRing`` check it, and keeps failures per source address
(``throttle.py``).

An address that failed too often is refused before anything is looked up: ``rate_limit_exceeded``
(429 on HTTP; on the socket an ``error`` event and close 3000, as OpenAI rate-limits), whatever
its key, until its allowance refills. Such refusals are counted (``rtgate_auth_throttled_total``)
and logged once, when the address becomes throttled, so a flood costs a dictionary lookup per
attempt. The address is the socket's peer; ``X-Forwarded-For`` is believed only from
``trusted_proxies``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from rtgate.auth.client_secrets import ClientSecret
from rtgate.auth.credentials import client_credential
from rtgate.auth.keyring import KeyRing
from rtgate.auth.policy import KeyPolicy
from rtgate.auth.throttle import (
    FailureThrottle,
    IPNetwork,
    client_address,
    forwarded_for,
    source_of,
)
from rtgate.clock import Clock
from rtgate.errors import AuthError, MissingKey, RateLimited
from rtgate.metrics import Metrics
from rtgate.store.port import KeyInfo

log = logging.getLogger("rtgate.auth")

T = TypeVar("T")


class AuthThrottled(RateLimited):
    """The caller's address failed to authenticate too often; nothing was checked."""


class Authenticator:
    def __init__(
        self,
        keyring: KeyRing,
        clock: Clock,
        metrics: Metrics,
        throttle: FailureThrottle | None,
        trusted_proxies: Sequence[IPNetwork] = (),
    ) -> None:
        self._keyring = keyring
        self._clock = clock
        self._metrics = metrics
        self._throttle = throttle
        self._trusted = tuple(trusted_proxies)

    async def key(self, headers: Mapping[str, str], peer: str | None) -> tuple[KeyInfo, KeyPolicy]:
        """A gateway key: a client secret cannot mint another, nor act on calls."""
        secret = client_credential(headers).secret
        return await self.checked(
            headers, peer, lambda: self._keyring.authenticate(secret), offered=bool(secret)
        )

    async def key_or_secret(
        self, headers: Mapping[str, str], peer: str | None
    ) -> tuple[KeyInfo, KeyPolicy, ClientSecret | None]:
        """A gateway key, or a client secret minted by one (``KeyRing.authenticate_session``)."""
        secret = client_credential(headers).secret
        return await self.checked(
            headers, peer, lambda: self._keyring.authenticate_session(secret), offered=bool(secret)
        )

    async def checked(
        self,
        headers: Mapping[str, str],
        peer: str | None,
        check: Callable[[], Awaitable[T]],
        *,
        offered: bool = True,
    ) -> T:
        """``check()`` unless the caller's address is throttled; an ``AuthError`` it raises
        counts as a failure of that address (the console's sign-in is checked this way too).
        A request that ``offered`` no credential at all is checked, and refused as missing
        (401), whatever its address: it costs no lookup, so a throttle would spare nothing,
        and it must tell a client with no key what is wrong, not to wait."""
        throttle = self._throttle
        if throttle is None or not offered:
            return await check()
        address = client_address(peer, forwarded_for(headers), self._trusted)
        source = source_of(address)
        wait = throttle.wait(source, self._clock.monotonic())
        if wait:
            self._metrics.auth_throttled.inc()
            raise AuthThrottled(
                "Too many failed authentications from your address; "
                f"try again in {math.ceil(wait)} s.",
                retry_after=wait,
            )
        try:
            return await check()
        except MissingKey:
            raise
        except AuthError:
            if throttle.failed(source, self._clock.monotonic()):
                log.warning(
                    "authentication throttled for %s after %d failures", source, throttle.burst
                )
            raise
