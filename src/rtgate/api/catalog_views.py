"""The admin API's catalog: each model with the upstream that serves it and its prices per
million tokens, and each upstream with how it answered this process's dials
(``rtgate.upstream_health``). Views and handlers; routes in ``rtgate.api.admin``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rtgate.api.views import Timestamp, View, timestamp
from rtgate.config import PriceSettings
from rtgate.metering.cost import cached_rate
from rtgate.welcome import served_models, unserved

if TYPE_CHECKING:
    from rtgate.api.operation import Call, Reply


class PriceView(View, frozen=True, kw_only=True):
    """The row's token rates in USD per 1M tokens and, on a ``second`` or ``minute`` row, its
    ``rate`` in USD per that unit of audio, as the provider charges; ``markup_percent`` is added
    for the price charged to keys. Cached rates are the ones applied: a row that leaves one out
    is charged a tenth of the input rate."""

    #: ``token``, ``second`` or ``minute``: what ``rate`` prices (token rates apply either way).
    unit: str
    rate: str
    #: On a ``second`` or ``minute`` row, USD per that unit of a GPT-Live session's standby time
    #: (``paused_seconds``); null: standby is billed at ``rate``.
    standby_rate: str | None
    text_in: str
    text_cached: str
    text_out: str
    audio_in: str
    audio_cached: str
    audio_out: str
    image_in: str
    image_cached: str
    markup_percent: str
    #: Whether the row prices tokens: a ``token`` row, or a duration row that sets a token rate
    #: (``PriceSettings.sets_token_rates``); a duration row that sets none records tokens at 0.
    prices_tokens: bool


class ModelView(View, frozen=True, kw_only=True):
    model: str
    upstream: str
    #: ``openai``, ``azure`` or ``local`` (the embedded engine).
    upstream_kind: str
    #: The id sent upstream (an Azure deployment's name).
    upstream_model: str
    #: The price row the model's sessions are metered by.
    price_row: str
    #: Null: no row matches, so its usage is kept but costs 0.
    prices: PriceView | None
    #: False: its upstream refuses it (the translation model routed to the local engine, which
    #: does not translate): not in ``/v1/models``; route it to a provider to serve it.
    served: bool


class UpstreamHealthView(View, frozen=True, kw_only=True):
    """How this upstream answered the dials of the process that answered (nothing is probed):
    ``ok`` when its latest dial connected, ``failing`` when it failed, ``unknown`` before any."""

    state: str
    dials: int
    failures: int
    last_ok_at: Timestamp | None
    last_failure_at: Timestamp | None
    #: An HTTP status or an error class, never the provider's words.
    last_error: str | None
    connect_ms_avg: float | None


class UpstreamView(View, frozen=True, kw_only=True):
    name: str
    kind: str
    #: Where it is dialled; ``(this process)`` for the embedded engine.
    base_url: str
    models: list[str]
    health: UpstreamHealthView


def price_view(p: PriceSettings) -> PriceView:
    return PriceView(
        unit=p.unit,
        rate=str(p.rate),
        standby_rate=str(p.standby_rate) if p.standby_rate is not None else None,
        text_in=str(p.text_in),
        text_cached=str(cached_rate(p.text_in, p.text_cached)),
        text_out=str(p.text_out),
        audio_in=str(p.audio_in),
        audio_cached=str(cached_rate(p.audio_in, p.audio_cached)),
        audio_out=str(p.audio_out),
        image_in=str(p.image_in),
        image_cached=str(cached_rate(p.image_in, p.image_cached)),
        markup_percent=str(p.markup_percent),
        prices_tokens=p.unit == "token" or p.sets_token_rates,
    )


async def list_models(call: Call[None, None]) -> Reply:
    gw = call.gw
    refused = unserved(gw.settings)
    out = []
    for name in sorted(gw.settings.models):
        route = gw.catalog.resolve(name)
        out.append(
            ModelView(
                model=name,
                upstream=route.upstream_name,
                upstream_kind=route.upstream.kind,
                upstream_model=route.upstream_model,
                price_row=route.price_key,
                prices=price_view(route.prices) if route.prices is not None else None,
                served=name not in refused,
            )
        )
    return out


async def list_upstreams(call: Call[None, None]) -> Reply:
    gw = call.gw
    serving = {s.upstream: s for s in served_models(gw.settings)}
    out = []
    for name, up in sorted(gw.settings.upstreams.items()):
        d = gw.upstream_health.of(name)
        served = serving.get(name)
        out.append(
            UpstreamView(
                name=name,
                kind=up.kind,
                base_url=served.base_url if served else up.base_url,
                models=list(served.models) if served else [],
                health=UpstreamHealthView(
                    state=d.state,
                    dials=d.dials,
                    failures=d.failures,
                    last_ok_at=timestamp(d.last_ok_at),
                    last_failure_at=timestamp(d.last_failure_at),
                    last_error=d.last_error,
                    connect_ms_avg=d.connect_ms_avg,
                ),
            )
        )
    return out
