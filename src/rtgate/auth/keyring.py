"""Gateway keys as a service: create, list, update policy, revoke, authenticate, and mint
ephemeral client secrets on a key's behalf.

Shared by the CLI, the admin API and the relay, so the three cannot disagree.

When the store does not answer a key lookup (``StoreError``: down, or past its deadline), a
gateway key that authenticated here within ``cache_seconds`` is admitted as it was then: a
database hiccup must not turn away the calls of a key in use. Only the fallback reads the
cache, so a revocation or policy change applies as soon as the store answers. Client secrets
(``ek_``) are not cached: each is short-lived and usually opens one session.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any

import orjson

from rtgate.auth.client_secrets import (
    ClientSecret,
    expiry,
    id_hash_prefix,
    looks_minted,
    new_secret,
    secret_id,
    well_formed,
)
from rtgate.auth.keys import generate_key, hash_key, hashes_match, redact
from rtgate.auth.policy import KeyPolicy, check_expiry, expired
from rtgate.clock import Clock
from rtgate.errors import AuthError, GatewayError, MissingKey
from rtgate.protocol.ids import new_id
from rtgate.store.port import KeyInfo, Store, StoredClientSecret, StoreError

#: How long a key that authenticated is admitted from memory while the store does not answer.
KEY_CACHE_S = 300.0
#: Once the store failed a key lookup, how long a key seen lately is admitted from memory
#: without asking it again: each new session of an outage waited out the store's deadline
#: before ``session.created`` (a newcomer's find: 3 s, every session). Then it is asked again.
STORE_QUIET_S = 5.0


class NoSuchKey(GatewayError):
    http_status = 404
    error_type = "invalid_request_error"
    code = "not_found"


def no_such_key(key_id: str) -> NoSuchKey:
    """The one answer for a key id no key has (its first 64 characters quoted)."""
    return NoSuchKey(f"No key with id {key_id[:64]!r}.", param="key_id")


def incorrect_key(secret: str) -> AuthError:
    """OpenAI's refusal of a key it does not know, quoting as much of it as a log may show
    (``redact``): nothing of one too short to show any."""
    shown = redact(secret)
    if shown == "…":
        return AuthError("Incorrect API key provided.")
    # OpenAI's sentence ends after the key; a key cut short ends with its ellipsis alone.
    return AuthError(f"Incorrect API key provided: {shown}" + ("" if shown.endswith("…") else "."))


class KeyRing:
    def __init__(self, store: Store, clock: Clock, *, cache_seconds: float = KEY_CACHE_S) -> None:
        self._store = store
        self._clock = clock
        self._cache_seconds = cache_seconds
        #: Key hash -> the key as the store last returned it, and when (monotonic).
        self._known: dict[str, tuple[tuple[KeyInfo, str], float]] = {}
        #: Until when (monotonic) a key in ``_known`` is answered without asking the store,
        #: which failed a lookup (``STORE_QUIET_S``).
        self._quiet_until = 0.0

    async def create(self, name: str, policy: KeyPolicy | None = None) -> tuple[KeyInfo, str]:
        """A new key and its secret; the secret is not stored and cannot be shown again."""
        new = generate_key()
        info = await self._store.create_key(
            new_id("key", 16),
            name,
            new.display_prefix,
            new.key_hash,
            self._clock.now(),
            policy.to_json() if policy else None,
        )
        return info, new.secret

    async def list(self, include_revoked: bool = True) -> list[KeyInfo]:
        return await self._store.list_keys(include_revoked)

    async def get(self, key_id: str) -> KeyInfo | None:
        return await self._store.get_key(key_id)

    async def require(self, key_id: str | None) -> None:
        """A filter's ``key_id`` names a key (None: no filter), else ``NoSuchKey``: a listing
        filtered by a name or a typo must not read as a key with nothing to list."""
        if key_id is not None and await self._store.get_key(key_id) is None:
            raise no_such_key(key_id)

    async def set_policy(self, key_id: str, policy: KeyPolicy) -> KeyInfo | None:
        self._forget(key_id)
        return await self._store.set_key_policy(key_id, policy.to_json())

    async def revoke(self, key_id: str) -> KeyInfo | None:
        self._forget(key_id)
        return await self._store.revoke_key(key_id, self._clock.now())

    def _forget(self, key_id: str) -> None:
        """Drop what is remembered of a key about to change: admitted from memory in an outage
        (or the quiet after a failed lookup), it would be admitted as it was (a review's find:
        a key revoked here was admitted for 5 s after one failed lookup)."""
        for key_hash, ((info, _), _) in list(self._known.items()):
            if info.id == key_id:
                del self._known[key_hash]

    async def authenticate(self, secret: str | None) -> tuple[KeyInfo, KeyPolicy]:
        if not secret:
            raise MissingKey(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        if looks_minted(secret):
            # Valid or not, it is not for this route (a newcomer's find: a valid secret was
            # told it was an incorrect key). Said of its shape only: nothing is looked up.
            raise AuthError(
                "Client secrets (ek_...) open Realtime sessions only; this request needs a "
                "gateway key (Authorization: Bearer rtg_...)."
            )
        wanted = hash_key(secret)
        found = await self._key_by_hash(wanted)
        if found is None or not hashes_match(found[1], wanted) or not found[0].active:
            raise incorrect_key(secret)
        key = found[0]
        policy = KeyPolicy.from_json(key.policy_json)
        check_expiry(policy, self._clock.now())
        return key, policy

    async def _key_by_hash(self, key_hash: str) -> tuple[KeyInfo, str] | None:
        """The store's answer; if it has none to give, the key as it was within the cache's
        window (else the ``StoreError``)."""
        now = self._clock.monotonic()
        known = self._known.get(key_hash)
        if known is not None and now - known[1] > self._cache_seconds:
            known = None
        if known is not None and now < self._quiet_until:
            return known[0]  # the store failed just now: not waited for again
        try:
            found = await self._store.key_by_hash(key_hash)
        except StoreError:
            self._quiet_until = self._clock.monotonic() + STORE_QUIET_S
            if known is None:
                raise
            return known[0]
        self._quiet_until = 0.0
        if found is not None and found[0].active:
            self._known[key_hash] = (found, now)
        else:
            self._known.pop(key_hash, None)
        return found

    async def mint(
        self,
        key: KeyInfo,
        policy: KeyPolicy,
        model: str | None,
        session: Mapping[str, Any],
        seconds: int,
    ) -> tuple[str, ClientSecret]:
        """A new client secret of ``key`` and what it grants; only its hash is stored."""
        now = self._clock.now()
        secret = new_secret()
        secret_hash = hash_key(secret)
        minted = ClientSecret(
            key.id,
            model,
            dict(session),
            now,
            expiry(now, seconds, policy.expires_at),
            secret_id(secret_hash),
        )
        await self._store.add_client_secret(
            StoredClientSecret(
                secret_hash,
                key.id,
                model,
                orjson.dumps(minted.session).decode(),
                now,
                minted.expires_at,
            )
        )
        return secret, minted

    async def authenticate_session(
        self, secret: str | None
    ) -> tuple[KeyInfo, KeyPolicy, ClientSecret | None]:
        """Who opens a realtime session: a gateway key, or a client secret minted by one (then
        the minting key, its policy as of now, and the secret's grant)."""
        if not secret or not looks_minted(secret):
            key, policy = await self.authenticate(secret)
            return key, policy, None
        refused = incorrect_key(secret)
        if not well_formed(secret):
            raise refused
        wanted = hash_key(secret)
        found = await self._store.client_secret_by_hash(wanted)
        if found is None or not hashes_match(found[0].secret_hash, wanted):
            raise refused
        stored, key = found
        if not key.active or stored.revoked_at is not None:
            raise refused
        now = self._clock.now()
        if now >= stored.expires_at:
            raise AuthError("This client secret has expired.")
        policy = KeyPolicy.from_json(key.policy_json)
        check_expiry(policy, now)
        grant = ClientSecret(
            key.id,
            stored.model,
            orjson.loads(stored.session_json),
            stored.created_at,
            stored.expires_at,
            secret_id(stored.secret_hash),
        )
        return key, policy, grant

    async def list_secrets(
        self, key_id: str | None = None
    ) -> builtins.list[tuple[StoredClientSecret, bool]]:
        """Client secrets that have not expired yet, revoked ones included, newest first, each
        with whether its key still opens sessions (neither revoked nor expired): a secret
        opens nothing once its key does not, and a listing that said "active" misled an
        operator answering a leak (a newcomer's find)."""
        now = self._clock.now()
        found = await self._store.list_client_secrets(key_id, now)
        keys: list[KeyInfo] = []
        if found and key_id is not None:
            keys = [k for k in [await self._store.get_key(key_id)] if k is not None]
        elif found:
            keys = await self._store.list_keys(True)
        # Each key's policy read once, however many secrets it minted.
        opens = {
            k.id: k.active and not expired(KeyPolicy.from_json(k.policy_json), now) for k in keys
        }
        return [(c, opens.get(c.key_id, False)) for c in found]

    async def revoke_secret(self, sid: str) -> StoredClientSecret | None:
        """Revoke one client secret by its id; None if there is no such secret."""
        prefix = id_hash_prefix(sid)
        if prefix is None:
            return None
        return await self._store.revoke_client_secret(prefix, self._clock.now())

    async def secret_revoked(self, sid: str) -> bool:
        """Whether the client secret with id ``sid`` has been revoked. One that expired and was
        pruned was not: the sessions it opened may outlive it."""
        prefix = id_hash_prefix(sid)
        found = await self._store.client_secret_by_id(prefix) if prefix is not None else None
        return found is not None and found.revoked_at is not None
