"""The operator console in headless Chromium and over plain HTTP: signing in and out, keys
created, listed, edited and revoked through the pages, CSRF refusals, and accessibility basics
(labels, keyboard use, contrast)."""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from playwright.async_api import Page, expect

from rtgate.auth.policy import KeyPolicy, PolicyUpdate, apply_update
from rtgate.config import Settings
from rtgate.relay.endpoint import GATEWAY
from rtgate.web.render import rate, through
from rtgate.web.signin import SESSION_COOKIE, SIGNIN_FLOOR_S
from tests.browser import chromium
from tests.conftest import TOKEN, RunningGateway

PAGES = (
    "/ui/",
    "/ui/keys",
    "/ui/keys/new",
    "/ui/usage",
    "/ui/sessions",
    "/ui/models",
    "/ui/playground",
)

#: The checks of ``page_checks.js``: each a function of no arguments that returns offenders.
_CHECKS = (Path(__file__).parent / "page_checks.js").read_text()
UNLABELLED = f"() => {{ {_CHECKS}; return unlabelled(); }}"
LOW_CONTRAST = f"() => {{ {_CHECKS}; return lowContrast(); }}"


async def sign_in(page: Page, gw: RunningGateway, token: str = TOKEN) -> None:
    await page.goto(f"{gw.http}/ui/")
    await page.get_by_label("Admin token").fill(token)
    await page.get_by_role("button", name="Sign in").click()


async def test_saving_a_key_unchanged_keeps_its_expiry_and_its_transcription_models(
    admin: RunningGateway,
) -> None:
    # A newcomer's finds: the date field showed the day after the last valid one, so each save
    # pushed the expiry a day later; and the models offered were the routed ones only, so a
    # key granted a transcription model could not be given one here, and lost it on a save.
    ring = admin.app[GATEWAY].keyring
    by_day = apply_update(
        KeyPolicy(),
        PolicyUpdate(expires="2099-12-31", models=["gpt-realtime", "gpt-4o-mini-transcribe"]),
    )
    by_moment = apply_update(KeyPolicy(), PolicyUpdate(expires="2099-06-30T18:00:00Z"))
    day_key, _ = await ring.create("by-day", by_day)
    moment_key, _ = await ring.create("by-moment", by_moment)
    async with chromium() as browser:
        page = await browser.new_page()
        await sign_in(page, admin)
        # The list says the day typed, not the instant after it.
        await page.goto(f"{admin.http}/ui/keys")
        await expect(page.get_by_role("row", name=re.compile("by-day"))).to_contain_text(
            "valid through 2099-12-31 UTC"
        )
        await expect(page.get_by_role("row", name=re.compile("by-moment"))).to_contain_text(
            "valid until 2099-06-30 18:00 UTC"
        )
        for key, shown in ((day_key, "2099-12-31"), (moment_key, "2099-06-30")):
            await page.goto(f"{admin.http}/ui/keys/{key.id}/edit")
            await expect(page.get_by_label("Expires after")).to_have_value(shown)
            await page.get_by_role("button", name="Save the policy").click()
            await expect(page.get_by_role("status")).to_contain_text("updated")
            saved = KeyPolicy.from_json((await admin.store.get_key(key.id)).policy_json)
            assert saved.expires_at == KeyPolicy.from_json(key.policy_json).expires_at
        assert saved.expires_at == by_moment.expires_at
        saved = KeyPolicy.from_json((await admin.store.get_key(day_key.id)).policy_json)
        assert sorted(saved.models) == ["gpt-4o-mini-transcribe", "gpt-realtime"]
        # A transcription model can be granted here.
        await page.goto(f"{admin.http}/ui/keys/{moment_key.id}/edit")
        await page.get_by_label("whisper-1", exact=True).check()
        await page.get_by_label("Expires after").fill("2099-07-01")
        await page.get_by_role("button", name="Save the policy").click()
        await expect(page.get_by_role("status")).to_contain_text("updated")
        saved = KeyPolicy.from_json((await admin.store.get_key(moment_key.id)).policy_json)
        assert saved.models == ("whisper-1",)
        assert (
            saved.expires_at
            == apply_update(KeyPolicy(), PolicyUpdate(expires="2099-07-01")).expires_at
        )


async def test_sign_in_create_a_key_see_it_listed_edit_and_revoke_it(admin: RunningGateway) -> None:
    async with chromium() as browser:
        page = await browser.new_page()
        # GET / leads to the console, which asks for the token first.
        await page.goto(f"{admin.http}/")
        await expect(page).to_have_url(re.compile(r"/ui/signin\?next="))
        await sign_in(page, admin, "not-the-token")
        await expect(page.get_by_role("alert")).to_have_text("That is not the admin token.")
        await page.get_by_label("Admin token").fill(TOKEN)
        await page.get_by_label("Admin token").press("Enter")
        await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        cookie = next(c for c in await page.context.cookies() if c["name"] == SESSION_COOKIE)
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
        assert TOKEN not in cookie["value"]

        await page.get_by_role("link", name="Keys", exact=True).click()
        await page.get_by_role("link", name="Create a key").click()
        await page.get_by_label("Name").fill("alice")
        await page.get_by_label("gpt-realtime", exact=True).check()
        await page.get_by_label("Sessions at once").fill("3")
        await page.get_by_label("Per UTC day").fill("2.5")
        await page.get_by_label("Keep transcripts").check()
        await page.get_by_label("Default instructions").fill("Be brief.")
        await page.get_by_label("Default voice").fill("marin")
        await page.get_by_role("button", name="Create the key").click()
        await expect(page.get_by_role("heading", name="Key alice created")).to_be_visible()
        secret = await page.get_by_label("Secret of alice").input_value()
        assert secret.startswith("rtg_")
        (key,) = await admin.store.list_keys()
        assert key.name == "alice" and secret.startswith(key.display_prefix)

        # Listed with its policy; the secret was shown once and is nowhere else.
        await page.get_by_role("link", name="Back to the keys").click()
        row = page.locator(f"#keys tr[data-key-id='{key.id}']")
        await expect(row).to_contain_text("alice")
        await expect(row).to_contain_text("gpt-realtime")
        await expect(row).to_contain_text("3 at once")
        await expect(row).to_contain_text("of $2.50")
        assert secret not in await page.content()

        # An invalid edit says why and changes nothing; a valid one clears and sets.
        await page.goto(f"{admin.http}/ui/keys")
        await row.get_by_role("link", name="Edit").click()
        await page.get_by_label("Longest session").fill("forever")
        await page.get_by_role("button", name="Save the policy").click()
        await expect(page.get_by_role("alert")).to_contain_text("not a duration")
        await page.get_by_label("Longest session").fill("30m")
        await page.get_by_label("Sessions at once").fill("")
        await page.get_by_label("Default voice").fill("")  # that default alone goes
        await page.get_by_role("button", name="Save the policy").click()
        await expect(page.get_by_role("status")).to_contain_text("updated")
        await expect(row).to_contain_text("30 min 00 s max")
        await expect(row).not_to_contain_text("at once")
        edited = await admin.store.get_key(key.id)
        assert orjson.loads(edited.policy_json)["session_defaults"] == {"instructions": "Be brief."}

        # Revoking asks first; Cancel leaves it be.
        await row.get_by_role("link", name="Revoke").click()
        await expect(page.get_by_role("heading", name="Revoke the key alice?")).to_be_visible()
        await page.get_by_role("link", name="Cancel").click()
        assert (await admin.store.get_key(key.id)).active
        await row.get_by_role("link", name="Revoke").click()
        await page.get_by_role("button", name="Revoke the key").click()
        await expect(page.get_by_role("status")).to_contain_text("revoked")
        await expect(row).to_contain_text("revoked")
        assert not (await admin.store.get_key(key.id)).active

        # Signing out ends the session on the server, not only in this browser.
        await page.get_by_role("button", name="Sign out").click()
        await expect(page.get_by_role("status").or_(page.locator(".notice"))).to_contain_text(
            "signed out"
        )
        await page.goto(f"{admin.http}/ui/keys")
        await expect(page).to_have_url(re.compile(r"/ui/signin"))
    jar = aiohttp.CookieJar(unsafe=True)
    async with (
        aiohttp.ClientSession(cookie_jar=jar, cookies={SESSION_COOKIE: cookie["value"]}) as http,
        http.get(f"{admin.http}/ui/keys", allow_redirects=False) as r,
    ):
        assert r.status == 303 and r.headers["Location"].startswith("/ui/signin")


async def test_every_page_is_labelled_keyboard_usable_and_readable(admin: RunningGateway) -> None:
    async with chromium() as browser:
        page = await browser.new_page()
        await sign_in(page, admin)
        await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        for path in PAGES:
            response = await page.goto(admin.http + path)
            assert response is not None and response.status == 200, path
            assert await page.evaluate(UNLABELLED) == [], path
            assert await page.evaluate(LOW_CONTRAST) == [], path
            assert await page.locator("h1").count() == 1, path
        # The keyboard alone: skip link first, then the navigation, then a key is created.
        await page.goto(f"{admin.http}/ui/keys")
        await page.keyboard.press("Tab")
        await expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
        await page.get_by_role("link", name="Create a key").focus()
        await page.keyboard.press("Enter")
        await expect(page.get_by_label("Name")).to_be_focused()  # autofocus
        await page.keyboard.type("bob")
        await page.keyboard.press("Enter")
        await expect(page.get_by_role("heading", name="Key bob created")).to_be_visible()


async def console_cookies(gw: RunningGateway) -> tuple[aiohttp.ClientSession, str]:
    """An HTTP client signed in to the console, and its CSRF token (from a page's form)."""
    # unsafe: the jar keeps cookies of an IP address (the loopback gateway's).
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with http.get(f"{gw.http}/ui/signin") as r:
        form_token = re.search(r'name="form_token" value="([^"]+)"', await r.text())[1]  # type: ignore[index]
    async with http.post(
        f"{gw.http}/ui/signin", data={"token": TOKEN, "form_token": form_token, "next": "/ui/keys"}
    ) as r:
        assert r.status == 200 and str(r.url).endswith("/ui/keys")
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', await r.text())[1]  # type: ignore[index]
    return http, csrf


async def test_the_catalog_says_which_model_its_upstream_refuses(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Any]
) -> None:
    """On the local engine alone the translation model is listed as refused, the others not."""
    local = await start_gateway(make_settings(OPENAI_API_KEY="", RTGATE_ADMIN_TOKEN=TOKEN))
    http, _ = await console_cookies(local)
    async with http, http.get(f"{local.http}/ui/models") as r:
        assert r.status == 200
        page = await r.text()
    rows = {m[1]: m[2] for m in re.finditer(r"<tr><td>([\w.-]+)(.*?)</tr>", page, re.S)}
    assert "refuses it: route it to a provider" in rows["gpt-realtime-translate"]
    assert "refuses it" not in rows["gpt-realtime"]


async def test_the_catalog_lines_its_rates_up(admin: RunningGateway) -> None:
    """Rates to cents at least, exact below them; a minute row without token rates says its
    rate alone (the page showed ``0 / 0.0 / 0`` for its tokens, and ``4 / 0.40 / 16`` above)."""
    http, _ = await console_cookies(admin)
    async with http, http.get(f"{admin.http}/ui/models") as r:
        page = await r.text()
    rows = {m[1]: m[2] for m in re.finditer(r"<tr><td>([\w.-]+)(.*?)</tr>", page, re.S)}
    cells = {m: re.findall(r'<td class="num">(.*?)</td>', row) for m, row in rows.items()}
    assert cells["gpt-realtime"] == ["4.00 / 0.40 / 16.00", "32.00 / 0.40 / 64.00", "0.00 %"]
    assert cells["gpt-realtime-2.1-mini"][0] == "0.60 / 0.06 / 2.40"
    assert cells["gpt-realtime-translate"] == ["—", "0.034 per minute", "0.00 %"]
    assert cells["gpt-live-1.1"] == ["—", "0.05 per minute (standby 0.02)", "0.00 %"]
    assert cells["gpt-live-1"] == ["—", "0.05 per minute", "0.00 %"]


def test_an_expiry_reads_as_the_day_it_was_set_to() -> None:
    assert through("2027-01-01T00:00:00Z") == "through 2026-12-31 UTC"
    assert through("2099-06-30T18:00:00Z") == "until 2099-06-30 18:00 UTC"
    assert through(None) == "—"


def test_rates_line_up_to_cents_and_stay_exact() -> None:
    shown = [rate(v) for v in ("4", "0.250", "0.0045", "0.0", "1E+1", "1500", "-5", "0.125")]
    assert shown == ["4.00", "0.25", "0.0045", "0.00", "10.00", "1,500.00", "-5.00", "0.125"]


async def test_a_create_form_sent_again_makes_no_second_key(admin: RunningGateway) -> None:
    """A newcomer's find: reloading the answer that shows a new key's secret posted the form
    again, and made a second key."""
    http, csrf = await console_cookies(admin)
    async with http:
        async with http.get(f"{admin.http}/ui/keys/new") as r:
            form_id = re.search(r'name="form_id" value="([^"]+)"', await r.text())[1]  # type: ignore[index]
        data = {"name": "once", "csrf": csrf, "form_id": form_id}
        async with http.post(f"{admin.http}/ui/keys", data=data) as r:
            first = await r.text()
        async with http.post(f"{admin.http}/ui/keys", data=data) as r:
            again = await r.text()
            assert r.status == 200
        # A form that failed made nothing: sent again, corrected, it makes its key.
        bad = {"name": "twice", "csrf": csrf, "form_id": "f2", "max_sessions": "0"}
        async with http.post(f"{admin.http}/ui/keys", data=bad) as r:
            assert r.status == 422
        async with http.post(f"{admin.http}/ui/keys", data={**bad, "max_sessions": "2"}) as r:
            assert "Key twice created" in await r.text()
    assert "Key once created" in first and 'id="secret"' in first
    assert "Key once was created already" in again and 'id="secret"' not in again
    names = [k.name for k in await admin.app[GATEWAY].keyring.list()]
    assert sorted(names) == ["once", "twice"]


async def test_an_expired_key_is_marked_expired(admin: RunningGateway) -> None:
    await admin.app[GATEWAY].keyring.create("old", KeyPolicy(expires_at=1.0))
    http, _ = await console_cookies(admin)
    async with http, http.get(f"{admin.http}/ui/keys") as r:
        page = await r.text()
    assert re.search(r"old <span class=\"badge\">expired</span>", page), page


async def test_usage_billed_by_the_second_shows_its_seconds(admin: RunningGateway) -> None:
    """A newcomer's find: a GPT-Live row showed "0 (0)" tokens and nothing else."""
    from rtgate.metering.record import UsageRecord
    from rtgate.protocol.usage import Usage
    from rtgate.store.port import SessionOpen

    info, _ = await admin.app[GATEWAY].keyring.create("voice", KeyPolicy())
    now = admin.app[GATEWAY].clock.now()
    await admin.store.write(
        [
            SessionOpen("rs_live", info.id, "gpt-live-1", "openai", "live", now),
            UsageRecord(
                "rs_live",
                info.id,
                "gpt-live-1",
                "gpt-live-1",
                Usage(kind="live", audio_ms=8_000),
                0,
                0,
                now,
                "live_1",
                unit="second",
            ),
        ]
    )
    http, _ = await console_cookies(admin)
    async with http, http.get(f"{admin.http}/ui/usage") as r:
        page = await r.text()
    row = re.search(r"<tr><td>[^<]*</td><td>voice</td>.*?</tr>", page, re.S)
    assert row is not None and ">8.000<" in row[0], page


async def test_a_post_without_the_right_csrf_token_changes_nothing(admin: RunningGateway) -> None:
    http, csrf = await console_cookies(admin)
    async with http:
        for data, headers in (
            ({"name": "eve"}, {}),
            ({"name": "eve", "csrf": "0" * 64}, {}),
            ({"name": "eve", "csrf": csrf}, {"Origin": "http://evil.example"}),
        ):
            async with http.post(f"{admin.http}/ui/keys", data=data, headers=headers) as r:
                assert r.status == 403, data
                assert "nothing was changed" in await r.text()
        assert await admin.store.list_keys() == []
        async with http.post(f"{admin.http}/ui/keys", data={"name": "ok", "csrf": csrf}) as r:
            assert r.status == 200 and "Key ok created" in await r.text()
        # The sign-in form has its own: a forged sign-in is refused before the token is read.
        async with (
            aiohttp.ClientSession() as stranger,
            stranger.post(f"{admin.http}/ui/signin", data={"token": TOKEN, "form_token": "x"}) as r,
        ):
            assert r.status == 403 and SESSION_COOKIE not in r.cookies


async def test_a_form_posted_from_another_site_carries_no_console_session(
    admin: RunningGateway,
) -> None:
    """SameSite=Strict: a signed-in browser that visits another site's page, which posts a
    form to the console, sends no session with it."""
    forged = (
        f'<form id="f" method="post" action="{admin.http}/ui/keys">'
        '<input name="name" value="planted"><input name="csrf" value="guess"></form>'
        '<script>document.getElementById("f").submit()</script>'
    )

    async def evil(_: web.Request) -> web.Response:
        return web.Response(text=forged, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", evil)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "localhost", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with chromium() as browser:
            page = await browser.new_page()
            await sign_in(page, admin)
            await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
            await page.goto(f"http://localhost:{port}/")
            await page.wait_for_url(re.compile(r"/ui/keys"))
            await expect(page.locator("h1")).to_have_text(re.compile("Sign in|Form refused"))
    finally:
        await runner.cleanup()
    assert await admin.store.list_keys() == []


async def test_a_wrong_token_takes_as_long_as_the_right_one(admin: RunningGateway) -> None:
    async def attempt(token: str) -> tuple[float, int]:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(f"{admin.http}/ui/signin") as r:
                form_token = re.search(r'name="form_token" value="([^"]+)"', await r.text())[1]  # type: ignore[index]
            started = time.perf_counter()
            async with http.post(
                f"{admin.http}/ui/signin",
                data={"token": token, "form_token": form_token},
                allow_redirects=False,
            ) as r:
                return time.perf_counter() - started, r.status

    right, wrong = [], []
    for _ in range(4):
        took, status = await attempt(TOKEN)
        assert status == 303
        right.append(took)
        took, status = await attempt(TOKEN[:-1] + "x")
        assert status == 401
        wrong.append(took)
    assert min(right + wrong) >= SIGNIN_FLOOR_S
    assert abs(statistics.median(right) - statistics.median(wrong)) < 0.1, (right, wrong)


@pytest.mark.parametrize("path", ["/ui/", "/ui/keys", "/ui/signin", "/ui/sessions/rs_x"])
async def test_without_an_admin_token_the_console_only_says_how_to_set_one(
    gateway: RunningGateway, path: str
) -> None:
    async with aiohttp.ClientSession() as http, http.get(gateway.http + path) as r:
        assert r.status == 200
        page = await r.text()
    assert "RTGATE_ADMIN_TOKEN" in page and "Turn the console on" in page
    assert 'href="/ui/keys"' not in page and "Sign in" not in page


async def test_console_pages_carry_no_store_and_a_strict_content_policy(
    admin: RunningGateway,
) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{admin.http}/ui/signin") as r:
        assert r.headers["Cache-Control"] == "no-store"
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp


async def test_the_page_checks_find_what_they_look_for() -> None:
    async with chromium() as browser:
        page = await browser.new_page()
        await page.set_content(
            '<p style="color:#bbbbbb">faint</p><input id="x"><label>ok <input></label>'
        )
        assert [u for u in await page.evaluate(UNLABELLED)] == ['<input id="x">']
        (faint,) = await page.evaluate(LOW_CONTRAST)
        assert faint.startswith("P 1.9")


async def test_a_crafted_session_id_posts_only_to_the_session_close(admin: RunningGateway) -> None:
    """An audit's find: the close page put the id from the link into its form's action as it
    was decoded, so ``..%2Fkeys%2F<id>%2Frevoke%3F`` made its button revoke that key (or, with
    ``edit``, wipe its policy), with a valid CSRF token."""
    from yarl import URL

    info, _ = await admin.app[GATEWAY].keyring.create("target", KeyPolicy(max_sessions=2))
    http, csrf = await console_cookies(admin)
    async with http:
        for form in ("revoke", "edit"):
            crafted = f"..%2Fkeys%2F{info.id}%2F{form}%3F"
            url = URL(f"{admin.http}/ui/sessions/{crafted}/close", encoded=True)
            async with http.get(url) as r:
                actions = re.findall(r'action="([^"]*)"', await r.text())
            (action,) = [a for a in actions if a != "/ui/signout"]
            assert "/keys/" not in action and action.startswith("/ui/sessions/"), action
            target = URL(f"{admin.http}{action.replace('&amp;', '&')}", encoded=True)
            async with http.post(target, data={"csrf": csrf}) as r:
                assert r.status in (200, 404), r.status
    kept = await admin.store.get_key(info.id)
    assert kept is not None and kept.revoked_at is None
    assert KeyPolicy.from_json(kept.policy_json).max_sessions == 2


async def test_a_new_admin_token_ends_the_console_sessions_of_the_old(
    make_settings: Callable[..., Settings], start_gateway: Callable[..., Any]
) -> None:
    """A security audit's find: rotated after a leak, the admin token let whoever signed in with
    the old one keep the console for up to 12 hours (a session was its cookie's hash alone)."""
    old = await start_gateway(make_settings(RTGATE_ADMIN_TOKEN=TOKEN))
    http, _ = await console_cookies(old)
    rotated = await start_gateway(make_settings(RTGATE_ADMIN_TOKEN="a-new-token-after-a-leak"))
    async with http:
        async with http.get(f"{old.http}/ui/keys", allow_redirects=False) as r:
            assert r.status == 200
        async with http.get(f"{rotated.http}/ui/keys", allow_redirects=False) as r:
            assert r.status in (302, 303) and "/ui/signin" in r.headers["Location"], r.status


async def test_the_consoles_own_errors_carry_the_pages_headers(admin: RunningGateway) -> None:
    """A security audit's find: aiohttp's answers under /ui (a 404, a 405) went out without the
    pages' security headers or no-store."""
    http, _ = await console_cookies(admin)  # signed in: a page not there is not a sign-in
    async with http:
        for method, path in (("GET", "/ui/playground/cost"), ("GET", "/ui/no-such-page")):
            async with http.request(method, admin.http + path, allow_redirects=False) as r:
                assert r.status in (404, 405), (path, r.status)
                assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"], path
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                assert r.headers["Cache-Control"] == "no-store"
