"""Gateway keys as a service: create, list, revoke, authenticate. Shared by the CLI and the API."""

from __future__ import annotations

from rtgate.auth.keys import generate_key, hash_key, hashes_match, redact
from rtgate.clock import Clock
from rtgate.errors import AuthError
from rtgate.protocol.ids import new_id
from rtgate.store.port import KeyInfo, Store


class KeyRing:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def create(self, name: str) -> tuple[KeyInfo, str]:
        """A new key and its secret; the secret is not stored and cannot be shown again."""
        new = generate_key()
        info = await self._store.create_key(
            new_id("key", 16), name, new.display_prefix, new.key_hash, self._clock.now()
        )
        return info, new.secret

    async def list(self, include_revoked: bool = True) -> list[KeyInfo]:
        return await self._store.list_keys(include_revoked)

    async def revoke(self, key_id: str) -> KeyInfo | None:
        return await self._store.revoke_key(key_id, self._clock.now())

    async def authenticate(self, secret: str | None) -> KeyInfo:
        if not secret:
            raise AuthError(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        wanted = hash_key(secret)
        found = await self._store.key_by_hash(wanted)
        if found is None or not hashes_match(found[1], wanted) or not found[0].active:
            raise AuthError(f"Incorrect API key provided: {redact(secret)}.")
        return found[0]
