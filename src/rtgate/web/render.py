"""Rendering a console page: the package's templates (escaped by default), the headers every
page carries, and the numbers pages show (money, durations, bar charts as inline SVG)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import TYPE_CHECKING, Any

from aiohttp import web

from rtgate import __version__

if TYPE_CHECKING:
    import jinja2

#: Pages and their scripts come from this origin only; the playground's socket may go to any
#: ws(s) origin (the gateway's own, named by the page). No inline script or style anywhere.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; media-src 'self' blob:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    # The microphone for the playground, nothing else.
    "Permissions-Policy": "microphone=(self), camera=(), geolocation=()",
}


def usd(value: str | None, places: int = 4) -> str:
    """``"0.001234500"`` -> ``$0.0012``; amounts under a cent keep their first digits."""
    if value is None:
        return "—"
    d = Decimal(value)
    if d and abs(d) < Decimal("0.0001"):
        return f"${d.normalize():f}"
    return f"${d:,.{places}f}"


def rate(value: str) -> str:
    """A price row's rate, exact and with at least cents: ``"4"`` -> ``4.00``, ``"0.250"`` ->
    ``0.25``, ``"0.0045"`` -> ``0.0045``. The catalog keeps the decimals as configured (``0``,
    ``0.40``, ``12.00``); a page lines them up."""
    d = Decimal(value).normalize()
    places = max(2, -int(d.as_tuple().exponent))
    return f"{d:,.{places}f}"


def when(value: str | None) -> str:
    """An RFC 3339 UTC time as ``2026-01-31 12:00 UTC``."""
    if not value:
        return "—"
    return value.replace("T", " ")[:16] + " UTC"


def through(value: str | None) -> str:
    """A key's expiry as it was set: ``--expires 2026-12-31`` is valid through that UTC day,
    so the instant it ends, ``2027-01-01T00:00:00Z``, reads ``through 2026-12-31 UTC`` (a
    newcomer saw a date they never typed); any other instant as ``when`` says it."""
    if not value:
        return "—"
    at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if (at.hour, at.minute, at.second, at.microsecond) != (0, 0, 0, 0):
        return "until " + when(value)
    return f"through {(at - timedelta(days=1)).date().isoformat()} UTC"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def since(value: str | None, now: float) -> float | None:
    if not value:
        return None
    started = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return max(0.0, now - started)


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    """A bar chart drawn as SVG by the template: one bar per value, scaled to the largest."""

    title: str
    bars: tuple[Bar, ...]
    top_label: str
    width: int
    height: int


def bar_chart(
    title: str, labels: Sequence[str], values: Sequence[Decimal | int], fmt: Any = str
) -> Chart:
    width, height, gap = 600, 120, 2
    top = max([*values, 0]) or 1
    step = width / max(len(values), 1)
    bars = []
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        h = float(v) / float(top) * (height - 4) if v else 0.0
        bars.append(Bar(i * step, height - h, max(step - gap, 1), h, f"{label}: {fmt(v)}"))
    return Chart(title, tuple(bars), fmt(top) if values and max(values) else fmt(0), width, height)


@cache
def templates() -> jinja2.Environment:
    # Imported at the first page: a relay that serves no page keeps Jinja2 out of memory.
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("rtgate", "web/templates"),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(usd=usd, rate=rate, when=when, through=through, duration=duration)
    env.globals["version"] = __version__
    return env


def page(name: str, status: int = 200, **context: Any) -> web.Response:
    html = templates().get_template(name).render(**context)
    return web.Response(text=html, status=status, content_type="text/html")
