"""Remembering a browser, in a real browser: tick the box, sign out, sign in with the password.

On the live server and the real clock (see conftest.py), like the other browser tests.
"""

import pytest

from mfa.models import RememberedBrowser, TOTPDevice
from tests.conftest import PASSWORD, enrol

from .conftest import path_of, shot, sign_in, usable_code

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

HOME = "/"
VERIFY = "/accounts/2fa/verify/"
SECURITY = "/accounts/security/"
BOX = "Don't ask again on this browser for 30 days"


def last_step(user) -> int | None:
    return TOTPDevice.objects.get(user=user).last_used_step


def test_a_remembered_browser_asks_only_for_the_password(site, user, pages):
    enrolled = enrol(user)
    page = pages.new()
    sign_in(page, site, "alice", PASSWORD)
    assert path_of(page) == VERIFY
    shot(page, "verify-remember")
    page.get_by_label(BOX).check()
    code, _ = usable_code(enrolled.secret, last_step(user))
    page.locator("#id_code").click()
    with page.expect_navigation():
        page.keyboard.type(code, delay=30)  # six digits: the form submits itself
    assert path_of(page) == HOME
    assert RememberedBrowser.objects.filter(user=user).count() == 1

    # HttpOnly: the page's scripts cannot read it.
    cookie = next(c for c in page.context.cookies() if c["name"] == "mfa_remember")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax"
    assert "mfa_remember" not in page.evaluate("document.cookie")

    page.get_by_role("button", name="Sign out").click()
    sign_in(page, site, "alice", PASSWORD)
    assert path_of(page) == HOME, "the remembered browser was asked for a code"

    page.goto(site + SECURITY)
    browsers = page.locator("section[aria-labelledby=browsers]")
    assert browsers.get_by_text("this browser").is_visible()
    shot(page, "security-remembered")

    # Another browser is still asked for the code.
    other = pages.new()
    sign_in(other, site, "alice", PASSWORD)
    assert path_of(other) == VERIFY

    # Forgotten: this browser is asked for the code again.
    browsers.get_by_role("button", name="Forget all remembered browsers").click()
    assert not RememberedBrowser.objects.exists()
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, site, "alice", PASSWORD)
    assert path_of(page) == VERIFY
