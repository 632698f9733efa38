"""The voice playground, ``/ui/playground``: a person talks to a model through this gateway,
from the browser, as a real browser client does.

The page (``templates/playground.html``, ``static/playground.js``) keeps the gateway key in the
tab only (``sessionStorage``), mints a client secret with it (``POST /v1/realtime/client_secrets``)
and opens ``/v1/realtime`` with the subprotocols ``realtime`` and
``openai-insecure-api-key.<secret>``.
The microphone is captured as PCM16 at 24 kHz by an AudioWorklet (``static/capture-worklet.js``).

``POST /ui/playground/cost`` prices one metered event for the page, with the same code the relay
meters it with (``RelaySession``), so the cost shown per turn is the one the key is charged. It
takes the gateway key (Bearer), like the minting route, and answers errors in OpenAI's shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import msgspec
import orjson
from aiohttp import web
from msgspec import Meta

from rtgate.api.openai_errors import openai_errors
from rtgate.api.operation import Call, Operation, Reply
from rtgate.api.views import Tokens
from rtgate.auth.policy import check_model
from rtgate.catalog import Catalog, check_served
from rtgate.errors import GatewayError
from rtgate.metering.cost import usd_str
from rtgate.metering.record import UsageRecord
from rtgate.protocol.relay_session import RelaySession
from rtgate.relay.endpoint import GATEWAY
from rtgate.web.render import SECURITY_HEADERS, page

STATIC = Path(__file__).parent / "static"
#: OpenAI's realtime voices; the local engine speaks with its own whatever is chosen.
VOICES = ("marin", "cedar", "alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse")
TRANSCRIPTION_MODEL = "gpt-4o-mini-transcribe"


class CostRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    model: Annotated[str, Meta(max_length=200)]
    #: The server event that carries the usage: ``response.done`` or
    #: ``conversation.item.input_audio_transcription.completed``, as the page received it.
    event: dict[str, Any]
    transcription_model: Annotated[str, Meta(max_length=200)] | None = None


def price(catalog: Catalog, key_id: str, body: CostRequest, now: float) -> UsageRecord | None:
    """The record the relay would meter for ``body.event`` in a session on ``body.model``."""
    session = RelaySession(
        session_id="rs_playground",
        key_id=key_id,
        route=catalog.resolve(body.model),
        catalog=catalog,
        opened_at=now,
        opened_mono=0.0,
        max_seconds=1.0,
    )
    if body.transcription_model:
        audio = {"input": {"transcription": {"model": body.transcription_model}}}
        update = {"type": "session.updated", "session": {"audio": audio}}
        session.on_upstream_text(orjson.dumps(update).decode(), now)
    found = session.on_upstream_text(orjson.dumps(body.event).decode(), now)
    return found if isinstance(found, UsageRecord) else None


async def cost(call: Call[None, CostRequest]) -> Reply:
    gw = call.gw
    key, policy = call.key
    # A model the key may not use is not its to price (the operator's rows and markup), as
    # /v1/models does not list it (a newcomer's find).
    check_model(policy, call.body.model)
    record = price(gw.catalog, key.id, call.body, gw.clock.now())
    out = {
        "cost_usd": usd_str(record.charged_nanos if record else 0),
        "price_row": record.price_key if record else None,
        "tokens": msgspec.to_builtins(Tokens.of(record.usage)) if record else None,
    }
    return web.Response(body=orjson.dumps(out), content_type="application/json")


COST = Operation(
    "POST",
    "/playground/cost",
    cost,
    "The charged cost of one metered server event, as the relay meters it",
    status=200,
    response=None,
    body=CostRequest,
    keyed=True,
)


def playground_models(catalog: Catalog) -> list[str]:
    """The catalog's models the playground can talk to on ``/v1/realtime`` (``check_served``:
    not GPT-Live's, nor the translation model, nor an alias to one of them)."""
    served = []
    for name in catalog.names(routed_only=True):
        try:
            check_served(catalog.resolve(name), "realtime")
        except GatewayError:
            continue
        served.append(name)
    return served


async def playground_page(request: web.Request) -> web.StreamResponse:
    gw = request.config_dict[GATEWAY]
    response = page(
        "playground.html",
        csrf=None,
        nav=(),
        section="playground",
        models=playground_models(gw.catalog),
        default_model=gw.settings.default_model,
        voices=VOICES,
        transcription_model=TRANSCRIPTION_MODEL,
        console=gw.settings.admin_token is not None,
    )
    response.headers.update(SECURITY_HEADERS)
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/playground", playground_page)
    app.router.add_route(COST.method, COST.path, openai_errors(COST.serve()))
