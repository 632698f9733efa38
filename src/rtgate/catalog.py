"""The model catalog: which upstream serves a model name, under which id, at which prices.

Dated snapshots (``gpt-realtime-2025-08-28``) resolve to their family (``gpt-realtime``) for both
routing and pricing unless the catalog names the snapshot itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rtgate.config import PriceSettings, Settings, UpstreamSettings
from rtgate.errors import ModelNotFound

_DATE_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")


def model_family(name: str) -> str:
    """``gpt-realtime-mini-2025-10-06`` -> ``gpt-realtime-mini``."""
    return _DATE_SUFFIX.sub("", name)


@dataclass(frozen=True, slots=True)
class Route:
    """Where one client-facing model name goes."""

    model: str
    upstream_name: str
    upstream: UpstreamSettings
    upstream_model: str
    prices: PriceSettings | None
    price_key: str


class Catalog:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def price_row(self, name: str) -> tuple[str, PriceSettings | None]:
        """Prices for a model or transcription-model name (family fallback); None if unpriced."""
        prices = self._settings.prices
        for key in (name, model_family(name)):
            if key in prices:
                return key, prices[key]
        return model_family(name), None

    def resolve(self, model: str | None) -> Route:
        """Route for ``model``; ``None`` (transcription intent) goes to the default upstream."""
        s = self._settings
        if model is None:
            name = s.default_upstream or "local"
            up = s.upstreams[name]
            return Route("", name, up, "", None, "")
        entry = s.models.get(model)
        asked = model
        if entry is None:
            entry = s.models.get(model_family(model))
        if entry is None:
            raise ModelNotFound(
                f"The model `{model}` does not exist or you do not have access to it.",
                param="model",
            )
        up = s.upstreams[entry.upstream]
        upstream_model = entry.upstream_model or asked
        price_key, row = self.price_row(entry.prices or asked)
        if row is None and entry.prices is None:
            # An alias (``my-voice`` -> ``gpt-realtime``) prices as the model it runs.
            price_key, row = self.price_row(upstream_model)
        return Route(asked, entry.upstream, up, upstream_model, row, price_key)
