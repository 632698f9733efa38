"""The console's pages under ``/ui/``: overview, keys, usage, sessions, models and upstreams.

Every page is a client of the admin API: it calls the very handlers the ``/admin/v1`` routes
serve (``rtgate.api.admin``, ``reports``, ``catalog_views``) with a ``Call`` it builds from the
form or query, and renders the views they return. Changes (create, edit, revoke, force-close)
are POST forms behind a confirmation page, so they work from the keyboard and without script;
``static/console.js`` only refreshes the live sessions and copies a new key's secret.
"""

from __future__ import annotations

import logging
import secrets
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import msgspec
import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from rtgate.api import admin, catalog_views, reports
from rtgate.api.bodies import InvalidRequest
from rtgate.api.operation import Call
from rtgate.api.queries import SessionsQuery, UsageQuery
from rtgate.api.views import KeyView, LiveSession, UsageRow, View, dump
from rtgate.auth.policy import CLEARABLE, PolicyUpdate
from rtgate.errors import AuthError, GatewayError
from rtgate.relay.endpoint import GATEWAY
from rtgate.validation import Unreadable, read_as
from rtgate.web import playground
from rtgate.web.render import SECURITY_HEADERS, bar_chart, page, since, usd
from rtgate.web.signin import (
    WrongToken,
    csrf_token,
    remember_signin_form,
    same,
    sign_in,
    sign_out,
    signed_in,
    signin_form_valid,
    signin_form_value,
)

log = logging.getLogger("rtgate.console")

PREFIX = "/ui"
#: The browser's session value, once the guard has checked it (and its CSRF token on a POST).
VIEWER: web.RequestKey[str] = web.RequestKey("viewer", str)
NAV = (
    ("/ui/", "Overview", "overview"),
    ("/ui/keys", "Keys", "keys"),
    ("/ui/usage", "Usage", "usage"),
    ("/ui/sessions", "Sessions", "sessions"),
    ("/ui/models", "Models", "models"),
    ("/ui/playground", "Playground", "playground"),
)
#: What a close code means, for the overview's table (RFC 6455 section 7.4 and OpenAI's own).
CLOSE_CODES = {
    1000: "normal",
    1001: "going away: the session's time cap, or the gateway stopping",
    1005: "no code given",
    1006: "dropped without a close",
    1008: "policy: an operator's close, a revoked key or secret, an unusable first message",
    1009: "message too big",
    1011: "server error: upstream or store unavailable",
    3000: "refused by the key's policy: its key, a budget, a limit, a model or event",
    4000: "bad request",
    4004: "not found: model or call",
}
PAGE_SIZE = 50


def _call(request: web.Request, query: Any = None, body: Any = None) -> Call[Any, Any]:
    return Call(request, request.config_dict[GATEWAY], query, body)


def _render(
    request: web.Request, name: str, section: str, status: int = 200, **ctx: Any
) -> web.Response:
    value = request.get(VIEWER)
    return page(
        name,
        status,
        csrf=csrf_token(value) if value else None,
        nav=NAV,
        section=section,
        **ctx,
    )


def _see(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


# -- the guard ------------------------------------------------------------------------------------


def _public(rel: str) -> bool:
    return rel.startswith(("/static/", "/playground"))


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    gw = request.config_dict[GATEWAY]
    rel = request.path[len(PREFIX) :] or "/"
    if _public(rel):
        return await handler(request)
    if gw.settings.admin_token is None:
        # Nothing but how to turn the console on.
        return page("setup.html", 200, csrf=None, nav=NAV, section="")
    if request.method not in ("GET", "HEAD"):
        origin = request.headers.get("Origin")
        if origin is not None and origin.split("://", 1)[-1] != request.host:
            return _forbidden(request)
    if rel == "/signin":
        return await handler(request)
    value = await signed_in(gw, request)
    if value is None:
        if request.method in ("GET", "HEAD"):
            return _see("/ui/signin?" + urlencode({"next": request.path_qs}))
        return _signin_page(request, 401, "Your console session has ended: sign in again.")
    if request.method not in ("GET", "HEAD"):
        form = await request.post()
        sent = str(form.get("csrf") or request.headers.get("X-CSRF-Token") or "")
        if not same(sent, csrf_token(value)):
            return _forbidden(request)
    request[VIEWER] = value
    return await handler(request)


def _forbidden(request: web.Request) -> web.Response:
    return page(
        "error.html",
        403,
        csrf=None,
        nav=NAV,
        section="",
        title="Form refused",
        message="This form is out of date or was sent from another site, so nothing was "
        "changed. Reload the page and try again.",
    )


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await _guarded(request, handler)
    except web.HTTPException as exc:
        # aiohttp's own answers (404, 405, a redirect) carry the pages' headers too.
        exc.headers.update(SECURITY_HEADERS)
        exc.headers["Cache-Control"] = "no-store"
        raise
    except GatewayError as err:
        response = _render(
            request, "error.html", "", err.http_status, title="Not done", message=err.message
        )
    except Exception:
        log.exception("console request failed: %s %s", request.method, request.path)
        response = _render(
            request,
            "error.html",
            "",
            500,
            title="Something went wrong",
            message="The gateway had an error while answering; the log says more.",
        )
    response.headers.update(SECURITY_HEADERS)
    if not request.path.startswith(PREFIX + "/static/"):
        # Keys' secrets, spend, who is connected: nothing here may sit in a cache.
        response.headers["Cache-Control"] = "no-store"
    return response


# -- signing in and out ---------------------------------------------------------------------------


def _next(target: str | None) -> str:
    """Only a console path: a sign-in never sends the browser elsewhere."""
    if target and target.startswith("/ui/") and not target.startswith("//"):
        return target
    return "/ui/"


def _signin_page(
    request: web.Request, status: int, message: str | None, target: str = "/ui/"
) -> web.Response:
    token = signin_form_value(request)
    response = page(
        "signin.html",
        status,
        csrf=None,
        nav=NAV,
        section="",
        message=message,
        form_token=token,
        next=target,
    )
    remember_signin_form(request, response, token)
    return response


async def signin_page(request: web.Request) -> web.StreamResponse:
    gw = request.config_dict[GATEWAY]
    if await signed_in(gw, request):
        return _see("/ui/")
    message = "You are signed out." if "signed_out" in request.query else None
    return _signin_page(request, 200, message, _next(request.query.get("next")))


async def signin(request: web.Request) -> web.StreamResponse:
    gw = request.config_dict[GATEWAY]
    form = await request.post()
    target = _next(str(form.get("next", "")))
    if not signin_form_valid(request, str(form.get("form_token", ""))):
        return _forbidden(request)
    response = _see(target)
    try:
        await sign_in(gw, request, str(form.get("token", "")), response)
    except AuthError as err:
        wrong = isinstance(err, WrongToken)
        return _signin_page(
            request, 401, "That is not the admin token." if wrong else err.message, target
        )
    return response


async def signout(request: web.Request) -> web.StreamResponse:
    response = _see("/ui/signin?signed_out=1")
    await sign_out(request.config_dict[GATEWAY], request[VIEWER], response)
    return response


# -- overview -------------------------------------------------------------------------------------


async def overview_page(request: web.Request) -> web.StreamResponse:
    ov = await reports.overview(_call(request))
    assert isinstance(ov, reports.OverviewView)
    days = [d.day[5:] for d in ov.days]
    spend = bar_chart("Spend per day (charged)", days, [Decimal(d.cost_usd) for d in ov.days], usd)
    count = bar_chart("Sessions per day", days, [d.sessions for d in ov.days])
    return _render(
        request,
        "overview.html",
        "overview",
        ov=ov,
        charts=(spend, count),
        close_codes=CLOSE_CODES,
    )


# -- keys -----------------------------------------------------------------------------------------

_POLICY_FIELDS = (
    "max_sessions",
    "sessions_per_minute",
    "secrets_per_minute",
    "budget_usd_day",
    "budget_usd_month",
    "budget_usd_total",
    "max_duration",
    "expires",
)


def expires_day(key: KeyView) -> str:
    """The last UTC day a key is valid on, as the form's date field shows it: a key set to
    expire after ``2026-12-31`` stores the moment that day ends (2027-01-01T00:00:00Z), and
    the field showed that moment's day, so every save pushed the expiry a day later (a
    newcomer's find). A timestamp within a day shows that day."""
    if key.policy.expires_at is None:
        return ""
    moment = datetime.fromisoformat(key.policy.expires_at)
    return (moment - timedelta(microseconds=1)).date().isoformat()


def _form_policy(form: Any, current: KeyView | None) -> dict[str, Any]:
    """The admin API's body (``CreateKey`` / ``PolicyUpdate``) from the key form: a blank field
    sets nothing on a new key and clears the limit of an existing one."""
    body: dict[str, Any] = {}
    clear: list[str] = []
    now = current.policy if current else None
    models = [str(m) for m in form.getall("models", [])]
    if models:
        body["models"] = models
    elif now and now.models:
        clear.append("models")
    for name in _POLICY_FIELDS:
        value = str(form.get(name, "")).strip()
        if name == "expires" and current is not None and value == expires_day(current):
            continue  # as the form showed it: left as it is (a timestamp stays one)
        if value:
            body[name] = value
        elif current is not None and name in CLEARABLE:
            clear.append(name)
    for name in ("instructions", "voice"):
        value = str(form.get(name, "")).strip()
        if value:
            body[name] = value
        elif current is not None:
            clear.append(name)  # emptied: that default alone goes (the form shows each)
    blocked = [b.strip() for b in str(form.get("blocked_events", "")).split(",") if b.strip()]
    body["blocked_events"] = blocked
    body["keep_transcripts"] = form.get("keep_transcripts") == "on"
    if clear:
        body["clear"] = clear
    return body


M = TypeVar("M", bound=msgspec.Struct)


def _valid(model: type[M], body: dict[str, Any]) -> M:
    """A form's fields as ``model`` (its strings converted), or the refusal naming the field."""
    try:
        return read_as(body, model, "form")
    except Unreadable as exc:
        raise InvalidRequest(str(exc)) from exc


def _key_form(
    request: web.Request, key: KeyView | None, status: int = 200, **ctx: Any
) -> web.Response:
    gw = request.config_dict[GATEWAY]
    return _render(
        request,
        "key_form.html",
        "keys",
        status,
        key=key,
        # Every model a key may be granted (transcription models too), and any the key holds
        # that the catalog no longer has, so that saving the form does not drop it.
        catalog=sorted({*gw.catalog.names(), *(key.policy.models if key else ())}),
        expires_day=expires_day(key) if key else "",
        form=ctx.pop("form", None),
        error=ctx.pop("error", None),
        **ctx,
    )


async def keys_page(request: web.Request) -> web.StreamResponse:
    keys = await admin.list_keys(_call(request))
    activity = {a.key_id: a for a in await reports.key_activity(_call(request))}  # type: ignore[union-attr]
    return _render(
        request,
        "keys.html",
        "keys",
        keys=keys,
        activity=activity,
        done=request.query.get("done"),
        done_key=request.query.get("key"),
    )


class CreatedForms:
    """Which key each "create a key" form made, by the form's one-time id (``form_id``): the
    answer shows the secret, so reloading it posts the form again, which must show that key
    again, without its secret, not make a second (a newcomer's find). Kept by the process that
    answered, the last ``KEEP`` forms: with ``--workers N``, a reload that reaches another
    worker (its connection closed meanwhile) makes a second key, which the list shows."""

    KEEP = 256

    def __init__(self) -> None:
        #: A form's key (id, name); None while it is being made (a double click's second post).
        self._made: OrderedDict[str, tuple[str, str] | None] = OrderedDict()

    def seen(self, form_id: str) -> bool:
        return form_id in self._made

    def key(self, form_id: str) -> tuple[str, str] | None:
        return self._made.get(form_id)

    def making(self, form_id: str) -> None:
        self._made[form_id] = None
        while len(self._made) > self.KEEP:
            self._made.popitem(last=False)

    def made(self, form_id: str, key: tuple[str, str] | None) -> None:
        """``key`` made by the form, or None: none was (the form may be posted again)."""
        if key is None:
            self._made.pop(form_id, None)
        elif form_id in self._made:
            self._made[form_id] = key


CREATED_FORMS: web.AppKey[CreatedForms] = web.AppKey("created_forms", CreatedForms)


async def key_new_page(request: web.Request) -> web.StreamResponse:
    return _key_form(request, None, form_id=secrets.token_urlsafe(16))


async def key_create(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    forms = request.app[CREATED_FORMS]
    form_id = str(form.get("form_id", ""))[:64]
    if form_id and forms.seen(form_id):
        return _render(request, "key_created.html", "keys", key=None, again=forms.key(form_id))
    body = {"name": str(form.get("name", "")).strip(), **_form_policy(form, None)}
    if form_id:
        forms.making(form_id)
    created = None
    try:
        created = await admin.create_key(_call(request, body=_valid(admin.CreateKey, body)))
    except InvalidRequest as err:
        return _key_form(request, None, 422, error=err.message, form=form, form_id=form_id)
    finally:
        if form_id:
            made = (created.id, created.name) if isinstance(created, KeyView) else None
            forms.made(form_id, made)
    return _render(request, "key_created.html", "keys", key=created, again=None)


async def _key(request: web.Request) -> KeyView:
    key = await admin.get_key(_call(request))
    assert isinstance(key, KeyView)
    return key


async def key_edit_page(request: web.Request) -> web.StreamResponse:
    return _key_form(request, await _key(request))


async def key_update(request: web.Request) -> web.StreamResponse:
    key = await _key(request)
    form = await request.post()
    try:
        body = _valid(PolicyUpdate, _form_policy(form, key))
        await admin.update_key(_call(request, body=body))
    except InvalidRequest as err:
        return _key_form(request, key, 422, error=err.message, form=form)
    return _see("/ui/keys?" + urlencode({"done": "updated", "key": key.id}))


async def key_revoke_page(request: web.Request) -> web.StreamResponse:
    key = await _key(request)
    return _render(
        request,
        "confirm.html",
        "keys",
        title=f"Revoke the key {key.name}?",
        detail=f"{key.prefix}… stops working at once: new sessions and client secrets are "
        "refused, and the secrets it minted no longer open sessions. This cannot be undone.",
        action=f"/ui/keys/{key.id}/revoke",
        verb="Revoke the key",
        back="/ui/keys",
    )


async def key_revoke(request: web.Request) -> web.StreamResponse:
    revoked = await admin.revoke_key(_call(request))
    assert isinstance(revoked, KeyView)
    return _see("/ui/keys?" + urlencode({"done": "revoked", "key": revoked.id}))


# -- usage ----------------------------------------------------------------------------------------


def _usage_query(request: web.Request) -> UsageQuery:
    default = (datetime.now(UTC) - timedelta(days=29)).date().isoformat()
    fields = {
        "since": request.query.get("since") or default,
        "key_id": request.query.get("key_id") or None,
        "format": request.query.get("format", "json"),
    }
    return _valid(UsageQuery, fields)


async def usage_page(request: web.Request) -> web.StreamResponse:
    q = _usage_query(request)
    rows = await admin.usage(_call(request, query=q))
    assert isinstance(rows, list)
    by_day: dict[str, list[Decimal]] = {}
    for r in rows:
        assert isinstance(r, UsageRow)
        day = by_day.setdefault(r.day, [Decimal(0), Decimal(0)])
        day[0] += Decimal(r.cost_usd)
        day[1] += Decimal(r.provider_cost_usd)
    days = sorted(by_day)
    charts = (
        bar_chart("Charged per day", [d[5:] for d in days], [by_day[d][0] for d in days], usd),
        bar_chart(
            "Margin per day",
            [d[5:] for d in days],
            [by_day[d][0] - by_day[d][1] for d in days],
            usd,
        ),
    )
    keys = await admin.list_keys(_call(request))
    total = [sum(by_day[d][i] for d in days) for i in (0, 1)]
    export = {"since": q.since or "", **({"key_id": q.key_id} if q.key_id else {})}
    return _render(
        request,
        "usage.html",
        "usage",
        lines=[
            (r, str(Decimal(r.cost_usd) - Decimal(r.provider_cost_usd))) for r in reversed(rows)
        ],
        rows=rows,
        charts=charts if days else (),
        query=q,
        keys=keys,
        total=[str(t) for t in total],
        margin=str(total[0] - total[1]),
        export=urlencode(export),
    )


async def usage_export(request: web.Request) -> web.StreamResponse:
    """The admin API's own export: CSV as ``/admin/v1/usage?format=csv`` writes it, or JSON."""
    q = _usage_query(request)
    reply = await admin.usage(_call(request, query=q))
    name = f"rtgate-usage-since-{q.since}.{q.format}"
    if isinstance(reply, web.Response):
        response = reply
    else:
        response = web.Response(body=orjson.dumps(dump(reply)), content_type="application/json")
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


# -- sessions -------------------------------------------------------------------------------------


async def _key_names(request: web.Request) -> dict[str, str]:
    return {k.id: k.name for k in await admin.list_keys(_call(request))}  # type: ignore[union-attr]


def _live_rows(live: list[LiveSession], names: dict[str, str], now: float) -> list[dict[str, Any]]:
    return [
        {
            **dump(v),
            "key_name": names.get(v.key_id, v.key_id),
            "running_s": since(v.started_at, now),
        }
        for v in live
    ]


async def sessions_page(request: web.Request) -> web.StreamResponse:
    gw = request.config_dict[GATEWAY]
    key_id = request.query.get("key_id") or None
    before = request.query.get("before") or None
    query = _valid(SessionsQuery, {"limit": PAGE_SIZE, "key_id": key_id, "before": before})
    recent = await admin.recent_sessions(_call(request, query=query))
    live = await admin.live_sessions(_call(request))
    names = await _key_names(request)
    more = None
    if isinstance(recent, list) and len(recent) == PAGE_SIZE:
        last = recent[-1]
        assert isinstance(last, View)
        more = urlencode(
            {"before": getattr(last, "id", ""), **({"key_id": key_id} if key_id else {})}
        )
    return _render(
        request,
        "sessions.html",
        "sessions",
        live=_live_rows(live, names, gw.clock.now()),  # type: ignore[arg-type]
        recent=recent,
        names=names,
        key_id=key_id,
        first_page=before is None,
        more=more,
        done=request.query.get("done"),
        done_session=request.query.get("session"),
    )


async def live_json(request: web.Request) -> web.StreamResponse:
    gw = request.config_dict[GATEWAY]
    live = await admin.live_sessions(_call(request))
    rows = _live_rows(live, await _key_names(request), gw.clock.now())  # type: ignore[arg-type]
    return web.Response(body=orjson.dumps(rows), content_type="application/json")


async def session_page(request: web.Request) -> web.StreamResponse:
    detail = await reports.session_detail(_call(request))
    names = await _key_names(request)
    return _render(request, "session.html", "sessions", s=detail, names=names)


async def session_close_page(request: web.Request) -> web.StreamResponse:
    sid = request.match_info["session_id"]
    return _render(
        request,
        "confirm.html",
        "sessions",
        title="Close this live session?",
        detail=f"Session {sid} ends now: its client gets an error event "
        "(session_closed_by_operator) and close 1008. Its usage so far stays recorded.",
        # One path segment whatever the link said: a crafted id (``..%2Fkeys%2F<id>%2Frevoke%3F``)
        # made this button post to another form's route, with a valid token (an audit's find).
        action=f"/ui/sessions/{quote(sid, safe='')}/close",
        verb="Close the session",
        back="/ui/sessions",
    )


async def session_close(request: web.Request) -> web.StreamResponse:
    closed = await admin.close_session(_call(request))
    assert isinstance(closed, View)
    return _see(
        "/ui/sessions?" + urlencode({"done": "closed", "session": request.match_info["session_id"]})
    )


# -- models ---------------------------------------------------------------------------------------


async def models_page(request: web.Request) -> web.StreamResponse:
    models = await catalog_views.list_models(_call(request))
    upstreams = await catalog_views.list_upstreams(_call(request))
    return _render(request, "models.html", "models", models=models, upstreams=upstreams)


async def to_console(_: web.Request) -> web.StreamResponse:
    return _see("/ui/")


def create_console_app() -> web.Application:
    """The console and the playground, to be mounted at ``PREFIX``."""
    app = web.Application(middlewares=[guard])
    app[CREATED_FORMS] = CreatedForms()
    r = app.router
    r.add_get("", to_console)
    r.add_get("/", overview_page)
    r.add_get("/signin", signin_page)
    r.add_post("/signin", signin)
    r.add_post("/signout", signout)
    r.add_get("/keys", keys_page)
    r.add_get("/keys/new", key_new_page)
    r.add_post("/keys", key_create)
    r.add_get("/keys/{key_id}/edit", key_edit_page)
    r.add_post("/keys/{key_id}/edit", key_update)
    r.add_get("/keys/{key_id}/revoke", key_revoke_page)
    r.add_post("/keys/{key_id}/revoke", key_revoke)
    r.add_get("/usage", usage_page)
    r.add_get("/usage/export", usage_export)
    r.add_get("/sessions", sessions_page)
    r.add_get("/sessions/live.json", live_json)
    r.add_get("/sessions/{session_id}", session_page)
    r.add_get("/sessions/{session_id}/close", session_close_page)
    r.add_post("/sessions/{session_id}/close", session_close)
    r.add_get("/models", models_page)
    playground.add_routes(app)
    r.add_static("/static", playground.STATIC, name="static")
    return app
