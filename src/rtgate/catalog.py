"""The model catalog: which upstream serves a model name, under which id, at which prices.

Dated snapshots (``gpt-realtime-2025-08-28``) resolve to their family (``gpt-realtime``) for both
routing and pricing unless the catalog names the snapshot itself; a transcription model's
(``gpt-live-transcribe-2026-10-01``) prices as its family's row, in that row's unit.

Prices follow the route's upstream. On a provider, the session's model prices by its row and a
transcription model (or a call's session model) by its own. Everything the embedded local engine
serves, whatever its kind (realtime tokens, transcription tokens or minutes, Live seconds),
prices by the route's one row: ``local`` (all zero unless the operator sets ``[prices.local]``),
or the row a catalog entry names with ``prices``, the operator's deliberate choice; in the units
that row prices, like any row (a row that sets no rate at all prices every unit at 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rtgate.config import (
    DEFAULT_PRICES,
    PriceSettings,
    Settings,
    UpstreamSettings,
    model_family,
)
from rtgate.errors import GatewayError, ModelNotFound, UnsupportedUpstream
from rtgate.protocol.session_fields import TRANSCRIPTION_MODELS

#: The model of a translation session or secret that names none (the route's one model).
DEFAULT_TRANSLATION_MODEL = "gpt-realtime-translate"

#: The price row of what the local engine serves, unless a catalog entry names another.
LOCAL_PRICES = "local"

#: The model families each protocol's SDK types name (``SessionConfig.model`` for GPT-Live,
#: ``RealtimeSessionCreateRequest.model`` for Realtime): the provider refuses a model of one
#: on the other's route (docs/protocol-live.md 1), and so does the local engine. A name in
#: neither (``local``, an operator's own) is served on both.
LIVE_MODELS = frozenset({"gpt-live-1", "gpt-live-1.1"})
REALTIME_MODELS = frozenset(
    {
        "gpt-realtime",
        "gpt-realtime-1.5",
        "gpt-realtime-2",
        "gpt-realtime-2.1",
        "gpt-realtime-2.1-mini",
        "gpt-realtime-mini",
        "gpt-4o-realtime-preview",
        "gpt-4o-mini-realtime-preview",
        "gpt-audio-1.5",
        "gpt-audio-mini",
    }
)


def wrong_route(model: str, path: str) -> str:
    """The refusal of a model on the other protocol's route (``LIVE_MODELS``)."""
    return f"The model `{model}` cannot be used on {path}."


class WrongProtocol(ModelNotFound):
    """A model the SDK types for another protocol than the route's (``check_served``)."""


#: The routes that open a session, by the protocol each speaks.
Protocol = Literal["realtime", "live", "translation"]
ROUTE_PATHS: dict[Protocol, str] = {
    "realtime": "/v1/realtime",
    "live": "/v1/live/sessions",
    "translation": "/v1/realtime/translations",
}


def check_served(route: Route, protocol: Protocol, param: str = "model") -> None:
    """Whether ``route`` serves a session of ``protocol``, decided here, before any dial.

    Refused with ``unsupported_upstream`` when its upstream cannot: the local engine does not
    translate, and Gemini Live speaks the Realtime protocol only (docs/gemini.md; its calls and
    transcription sessions are refused as it is dialled, ``relay/endpoint.py``). Refused with
    ``model_not_found`` when the SDK types the model for another protocol: a Live model on
    ``/v1/realtime``, a Realtime or translation model on ``/v1/live/sessions``, and so on, as
    the provider refuses them (docs/protocol-live.md 1). A name the SDK does not type
    (``local``, an alias to an Azure deployment) passes; an alias is judged by the model it
    runs, too."""
    kind = route.upstream.kind
    if kind == "local" and protocol == "translation":
        raise UnsupportedUpstream(
            f"The model `{route.model}` is served by the gateway's local engine, which"
            " does not translate; route it to a provider."
        )
    if kind == "gemini" and protocol != "realtime":
        raise UnsupportedUpstream(
            f"The model `{route.model}` is served by Gemini Live, which speaks the Realtime"
            f" protocol only: connect to /v1/realtime, not {ROUTE_PATHS[protocol]}."
        )
    typed = typed_for(route.model, route.upstream_model)
    if typed is not None and typed != protocol:
        raise WrongProtocol(wrong_route(route.model, ROUTE_PATHS[protocol]), param=param)


def typed_for(*models: str) -> Protocol | None:
    """The protocol the SDK types these names for (a route's model and the model it runs, or
    the one a client named), or None for names it does not type: the one reading of
    ``LIVE_MODELS`` and ``REALTIME_MODELS``, for the gateway and its engine alike."""
    families = {model_family(m) for m in models if m}
    typed: tuple[tuple[Protocol, frozenset[str]], ...] = (
        ("live", LIVE_MODELS),
        ("translation", frozenset({DEFAULT_TRANSLATION_MODEL})),
        ("realtime", REALTIME_MODELS),
    )
    for protocol, names in typed:
        if families & names:
            return protocol
    return None


def served_somewhere(route: Route) -> bool:
    """Whether the route serves its model on the one route the model is for (``check_served``
    on it; a name the SDK does not type, on ``/v1/realtime``): False for the translation model
    on the local engine, which ``/v1/models`` then leaves out."""
    try:
        check_served(route, typed_for(route.model, route.upstream_model) or "realtime")
    except GatewayError:
        return False
    return True


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
        # OpenAI's transcription models, then the operator's (the default rows no model
        # routes, Gemini's, are not transcription models): read once, the settings are frozen.
        own = (n for n in settings.prices if n not in DEFAULT_PRICES and n not in settings.models)
        self._transcription = tuple(dict.fromkeys([*TRANSCRIPTION_MODELS, *own]))

    def knows(self, name: str) -> bool:
        """Whether ``name`` is what a key's allowed models may name: a model this gateway
        routes (or one of its dated snapshots), or a transcription model (``transcribes``)."""
        models = self._settings.models
        return name in models or model_family(name) in models or self.transcribes(name)

    def names(self, *, routed_only: bool = False) -> list[str]:
        """Every name ``knows`` (for suggestions, the console's choice of models), or the
        models it routes only."""
        models = self._settings.models
        return sorted(models if routed_only else {*models, *self.transcription_names()})

    def transcribes(self, name: str) -> bool:
        """Whether a session may transcribe with ``name``: one of OpenAI's transcription
        models, or one the operator priced (a row of its own that no model routes), by its
        exact name, as the engine takes them. Any other name is refused before anything is
        minted or relayed: a typo the provider would refuse anyway, or a new model that would
        be billed as unpriced (a newcomer's find: the engine transcribed a typo and its usage
        was booked under it)."""
        return name in self._transcription

    def transcription_names(self) -> tuple[str, ...]:
        """The names ``transcribes`` takes, for a refusal's list: OpenAI's, then the
        operator's."""
        return self._transcription

    @property
    def session_cap_s(self) -> float:
        """The longest session this gateway relays (``max_session_seconds``): a key's own
        ``max_duration`` can only shorten it."""
        return self._settings.max_session_seconds

    def takes_any_voice(self) -> bool:
        """Whether some model is served by Gemini Live, which takes a voice name OpenAI does
        not have as its own prebuilt voice (``protocol/gemini_setup.py``): then a key's
        default voice may be any name."""
        s = self._settings
        return any(s.upstreams[m.upstream].kind == "gemini" for m in s.models.values())

    def price_row(self, name: str) -> tuple[str, PriceSettings | None]:
        """Prices for a model or transcription-model name (family fallback); None if unpriced."""
        prices = self._settings.prices
        for key in (name, model_family(name)):
            if key in prices:
                return key, prices[key]
        return model_family(name), None

    def usage_price(
        self, route: Route, model: str | None = None
    ) -> tuple[str, PriceSettings | None]:
        """The price row of usage in a session on ``route``: of the route's own model when
        ``model`` is None, else of ``model`` (a transcription model, a call's session model),
        unless the local engine served it: then the route's row, whatever the usage."""
        if model is None or route.upstream.kind == "local":
            return route.price_key, route.prices
        return self.price_row(model) if model else ("", None)

    def resolve(self, model: str | None) -> Route:
        """Route for ``model``; ``None`` (transcription intent) goes to the default upstream."""
        s = self._settings
        if model is None:
            name = s.default_upstream or "local"
            up = s.upstreams[name]
            price_key, row = self.price_row(LOCAL_PRICES) if up.kind == "local" else ("", None)
            return Route("", name, up, "", row, price_key)
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
        if entry.prices is not None:
            price_key, row = self.price_row(entry.prices)
        elif up.kind == "local":
            price_key, row = self.price_row(LOCAL_PRICES)
        else:
            price_key, row = self.price_row(asked)
            if row is None:
                # An alias (``my-voice`` -> ``gpt-realtime``) prices as the model it runs.
                price_key, row = self.price_row(upstream_model)
        return Route(asked, entry.upstream, up, upstream_model, row, price_key)
