"""``GET /``: the console, or a short page that says what this gateway is and how to use it."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from aiohttp import web

from rtgate import __version__
from rtgate.relay.endpoint import GATEWAY
from rtgate.welcome import served_models

if TYPE_CHECKING:
    import jinja2


@cache
def templates() -> jinja2.Environment:
    # Imported at the first page: a relay that serves no page keeps Jinja2 out of memory.
    import jinja2

    """The package's templates, escaped by default (the page shows configured names)."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("rtgate", "api/templates"),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
    )


#: The console's headers (``web/render.py``), with a policy of this page's own: no script at
#: all, its one inline style (a security audit found the page sent none of them).
HOME_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


async def home(request: web.Request) -> web.Response:
    """With an admin token set, a person is led to the console (``/ui/``); without one, this
    page says how to connect a client and how to turn the console on."""
    settings = request.app[GATEWAY].settings
    if settings.admin_token is not None:
        return web.Response(status=303, headers={"Location": "/ui/"})
    # The address the visitor used, so the examples work as pasted.
    http_base = f"{request.scheme}://{request.host}"
    page = (
        templates()
        .get_template("home.html")
        .render(
            version=__version__,
            http_base=http_base,
            ws_base=http_base.replace("http", "ws", 1),
            default_model=settings.default_model,
            served_models=served_models(settings),
            admin_enabled=settings.admin_token is not None,
            metrics_token=settings.metrics_token is not None,
        )
    )
    return web.Response(text=page, content_type="text/html", headers=HOME_HEADERS)
