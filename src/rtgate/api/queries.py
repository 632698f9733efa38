"""What the admin API's listings take as their query, and the CLI's commands of the same name
(``rtgate usage --since``, ``rtgate sessions --limit``): one check for both, so a day that does
not exist or a limit out of range is refused with the same words on either."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from rtgate.api.views import Day
from rtgate.validation import DAY_PATTERN


class UsageQuery(msgspec.Struct, frozen=True, kw_only=True):
    key_id: Annotated[str | None, Meta(description="Only this key's usage.")] = None
    since: Annotated[
        Annotated[Day, Meta(pattern=DAY_PATTERN)] | None,
        Meta(description="From this UTC day on (YYYY-MM-DD)."),
    ] = None
    format: Annotated[Literal["json", "csv"], Meta(description="JSON rows or CSV.")] = "json"

    def __post_init__(self) -> None:
        if self.since is not None:
            try:
                date.fromisoformat(self.since)
            except ValueError as exc:
                raise ValueError(f"since: {exc}") from exc


class SecretsQuery(msgspec.Struct, frozen=True, kw_only=True):
    key_id: Annotated[str | None, Meta(description="Only the secrets this key minted.")] = None


class SessionsQuery(msgspec.Struct, frozen=True, kw_only=True):
    limit: Annotated[int, Meta(ge=1, le=1000, description="How many, newest first.")] = 20
    key_id: Annotated[str | None, Meta(description="Only this key's sessions.")] = None
    before: Annotated[
        str | None,
        Meta(
            description="A session id (the last of the previous page): the sessions after it, "
            "in the same order. An unknown id gives an empty page."
        ),
    ] = None
