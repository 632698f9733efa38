"""Signing in to the console with the admin token, and what guards every console request.

A sign-in stores an HMAC of a new random session value, keyed by the admin token, in the database
(``console_sessions``; so a new admin token, after a leak, ends every console session opened with
the old one) and gives the browser the value in a cookie: HttpOnly (no script reads it),
SameSite=Strict (no other site's request carries it), Path=/ui, Secure when served over TLS, 12
hours. The token itself is never stored or sent back. Every process shares the table, so a
sign-in holds on any worker and a sign-out ends it everywhere.

Every POST carries a CSRF token: for a signed-in browser, an HMAC of its session value (sent as
the form field ``csrf`` or the header ``X-CSRF-Token``); for the sign-in form, a random value
that must match a short-lived cookie (double submit). Both are compared in constant time.

A sign-in answers no sooner than ``SIGNIN_FLOOR_S`` after it arrived, right token or wrong, so
its timing tells nothing; failures count against the address like a bad gateway key
(``Authenticator.checked``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets

from aiohttp import web

from rtgate.auth.operator_token import OperatorToken
from rtgate.errors import AuthError
from rtgate.gateway import Gateway

SESSION_COOKIE = "rtgate_console"
SIGNIN_COOKIE = "rtgate_signin"
COOKIE_PATH = "/ui"
SESSION_SECONDS = 12 * 3600
SIGNIN_FORM_SECONDS = 3600
#: Every sign-in answer, right or wrong, waits until this long after the request arrived.
SIGNIN_FLOOR_S = 0.25


def _session_key(gw: Gateway, value: str) -> str | None:
    """What the store keeps of a console session value: its HMAC under the admin token, so only
    the token it was opened with finds it again (None: no admin token, no console)."""
    token = gw.settings.admin_token
    if token is None:
        return None
    key = token.get_secret_value().encode("utf-8", "surrogateescape")
    return hmac.new(key, value.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


def csrf_token(session_value: str) -> str:
    """The CSRF token of a signed-in browser: its forms carry it, another site cannot know it."""
    return hmac.new(session_value.encode(), b"rtgate console csrf", hashlib.sha256).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(
        hashlib.sha256(a.encode("utf-8", "surrogateescape")).digest(),
        hashlib.sha256(b.encode("utf-8", "surrogateescape")).digest(),
    )


def _set_cookie(
    response: web.StreamResponse, request: web.Request, name: str, value: str, max_age: int
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )


def clear_cookie(response: web.StreamResponse, name: str) -> None:
    response.del_cookie(name, path=COOKIE_PATH)


async def signed_in(gw: Gateway, request: web.Request) -> str | None:
    """The browser's session value, if it is signed in."""
    value = request.cookies.get(SESSION_COOKIE)
    if not value or len(value) > 200:
        return None
    stored = _session_key(gw, value)
    if stored is None or not await gw.store.console_session(stored, gw.clock.now()):
        return None
    return value


def signin_form_value(request: web.Request) -> str:
    """The sign-in form's CSRF value: the browser's, or a new one."""
    value = request.cookies.get(SIGNIN_COOKIE)
    if not value or len(value) > 100:
        value = secrets.token_urlsafe(24)
    return value


def remember_signin_form(request: web.Request, response: web.StreamResponse, value: str) -> None:
    """Keep the form's value in the cookie the sign-in must match."""
    _set_cookie(response, request, SIGNIN_COOKIE, value, SIGNIN_FORM_SECONDS)


def signin_form_valid(request: web.Request, sent: str) -> bool:
    expected = request.cookies.get(SIGNIN_COOKIE, "")
    return bool(expected) and same(expected, sent)


class WrongToken(AuthError):
    pass


async def sign_in(
    gw: Gateway, request: web.Request, given: str, response: web.StreamResponse
) -> None:
    """Check ``given`` against the admin token and, if it is right, sign the browser in on
    ``response``; raises ``AuthError`` (a wrong token, or ``AuthThrottled``). Answers no sooner
    than ``SIGNIN_FLOOR_S`` after it began, whatever the outcome."""
    loop = asyncio.get_running_loop()
    until = loop.time() + SIGNIN_FLOOR_S
    token = gw.settings.admin_token
    expected = OperatorToken(token.get_secret_value() if token else secrets.token_hex(32))

    async def check() -> None:
        if token is None or not expected.matches(given):
            raise WrongToken("That is not the admin token.")

    try:
        await gw.authenticator.checked(request.headers, request.remote, check)
        value = secrets.token_urlsafe(32)
        stored = _session_key(gw, value)
        assert stored is not None  # the token matched: there is one
        now = gw.clock.now()
        await gw.store.add_console_session(stored, now, now + SESSION_SECONDS)
        _set_cookie(response, request, SESSION_COOKIE, value, SESSION_SECONDS)
        clear_cookie(response, SIGNIN_COOKIE)
    finally:
        await asyncio.sleep(max(0.0, until - loop.time()))


async def sign_out(gw: Gateway, value: str, response: web.StreamResponse) -> None:
    stored = _session_key(gw, value)
    if stored is not None:
        await gw.store.end_console_session(stored)
    clear_cookie(response, SESSION_COOKIE)
