"""The pages people use, in a real browser: enrol by scanning the QR code, sign in, recover.

Each test drives Debian's chromium against the live server, on the real clock (see
conftest.py), and keeps screenshots of the pages it passes through in
test-artifacts/screenshots/.
"""

import re
from zoneinfo import ZoneInfo

import pytest

from mfa.models import SecurityEvent, TOTPDevice
from tests.conftest import PASSWORD, enrol

from .conftest import (
    SCREENSHOTS,
    code_input_problems,
    decode_qr,
    described_by_text,
    focused_id,
    oathtool_code,
    parse_otpauth,
    path_of,
    shot,
    sign_in,
    usable_code,
    wrong_code,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

HOME = "/"
LOGIN = "/accounts/login/"
VERIFY = "/accounts/2fa/verify/"
RECOVERY = "/accounts/2fa/recovery/"
SECURITY = "/accounts/security/"


def last_step(user) -> int | None:
    return TOTPDevice.objects.get(user=user).last_used_step


def type_code(page, code: str) -> None:
    """Type like a person, key by key, into the focused field."""
    page.keyboard.type(code, delay=30)


def codes_left(page) -> int:
    return int(page.locator("[data-codes-left]").get_attribute("data-codes-left"))


@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_enrol_by_scanning_the_qr_code_then_sign_in_with_the_app(site, user, pages, viewport):
    page = pages.new(viewport)
    sign_in(page, site, "alice", PASSWORD)
    assert path_of(page) == HOME, "a user without 2FA signs in with the password alone"

    page.goto(site + SECURITY)
    assert page.locator("[data-state]").get_attribute("data-state") == "off"
    page.get_by_role("link", name="Set up an authenticator app").click()
    shot(page, "setup")

    # The QR code as the browser paints it, decoded by zxing-cpp: what a phone camera reads.
    uri = parse_otpauth(decode_qr(page.locator("img.qr"), SCREENSHOTS / f"qr-{viewport}.png"))
    assert uri.issuer_label == uri.params["issuer"] == "MFA Demo"
    assert uri.account == "alice"
    assert (uri.params["algorithm"], uri.params["digits"], uri.params["period"]) == (
        "SHA1",
        "6",
        "30",
    )
    shown = page.locator("code#secret").inner_text()
    assert re.fullmatch(r"([A-Z2-7]{4} )*[A-Z2-7]{1,4}", shown), "the key is shown in fours"
    if shown.replace(" ", "") != uri.secret:
        pytest.fail("the key typed by hand differs from the key in the QR code")

    # The code field is ready for the code, and the QR code stays in view.
    assert code_input_problems(page) == []
    assert focused_id(page) == "id_code"
    assert page.evaluate("window.scrollY") == 0, "focusing the field scrolled the QR code away"
    assert page.get_by_text("Aegis").is_visible(), "the page names authenticator apps"
    assert page.get_by_text("you will get 10 recovery codes").is_visible(), "and what comes next"

    code, step = usable_code(uri.secret, None)
    assert code == oathtool_code(uri.secret, step), "mfa.totp and oathtool disagree"
    page.locator("#id_code").fill(code)
    page.get_by_role("button", name="Turn on two-factor authentication").click()

    assert page.locator(".recovery-code").count() == 10
    assert page.get_by_text("they will not be shown again").is_visible()
    shot(page, "recovery-codes")
    page.get_by_role("link", name="I have saved my codes: continue").click()
    assert path_of(page) == SECURITY
    assert page.locator("[data-state]").get_attribute("data-state") == "on"
    assert codes_left(page) == 10
    shot(page, "security")

    page.get_by_role("button", name="Sign out").click()
    assert path_of(page) == LOGIN
    shot(page, "login")
    sign_in(page, site, "alice", PASSWORD)
    assert path_of(page) == VERIFY, "the password alone no longer signs in"
    assert code_input_problems(page) == []
    assert focused_id(page) == "id_code", "the code field has the focus on load"
    shot(page, "verify")

    # Six digits typed, no click: the form submits itself and the user is in.
    code, _ = usable_code(uri.secret, last_step(user))
    with page.expect_navigation():
        type_code(page, code)
    assert path_of(page) == HOME
    assert page.locator(".username").inner_text() == "alice"


def test_a_recovery_code_signs_in_without_javascript_and_the_count_drops(site, user, pages):
    enrolled = enrol(user)
    app = pages.new()  # JavaScript on: signs in with the app
    sign_in(app, site, "alice", PASSWORD)
    code, _ = usable_code(enrolled.secret, last_step(user))
    with app.expect_navigation():
        app.locator("#id_code").fill(code)  # six digits: the form submits itself
    app.goto(site + SECURITY)
    assert codes_left(app) == 10

    for viewport in ("desktop", "phone"):
        lost_phone = pages.new(viewport, javascript=False)
        sign_in(lost_phone, site, "alice", PASSWORD)
        assert path_of(lost_phone) == VERIFY, "the pages work with JavaScript off"
        lost_phone.get_by_role("link", name="Use a recovery code").click()
        assert path_of(lost_phone) == RECOVERY
        # Recovery codes have letters: no numeric keyboard, still a one-time code field.
        assert code_input_problems(lost_phone, numeric=False) == []
        assert lost_phone.locator("#id_code").get_attribute("inputmode") != "numeric"
        assert focused_id(lost_phone) == "id_code", "autofocus works without JavaScript"
        shot(lost_phone, "recovery-login")
        used = enrolled.codes[0 if viewport == "desktop" else 1]
        # Case and dashes do not matter, as the page says.
        lost_phone.locator("#id_code").fill(used.lower().replace("-", " "))
        lost_phone.get_by_role("button", name="Sign in").click()
        assert path_of(lost_phone) == HOME

    app.reload()
    assert codes_left(app) == 8, "the security page counts the codes that are left"

    # A used code is refused, and the refusal is read out with the field.
    again = pages.new(javascript=False)
    sign_in(again, site, "alice", PASSWORD)
    again.goto(site + RECOVERY)
    again.locator("#id_code").fill(enrolled.codes[0])
    again.get_by_role("button", name="Sign in").click()
    assert path_of(again) == RECOVERY
    assert again.locator("#id_code").get_attribute("aria-invalid") == "true"
    assert "already been used" in described_by_text(again)
    shot(again, "recovery-login-error")


def test_the_home_page_is_out_of_reach_between_password_and_code(site, user, pages):
    enrol(user)
    page = pages.new()
    sign_in(page, site, "alice", PASSWORD)
    assert path_of(page) == VERIFY
    for target in (HOME, SECURITY, "/accounts/2fa/setup/", "/admin/"):
        page.goto(site + target)
        assert path_of(page) in (LOGIN, "/admin/login/"), f"{target} let a half-signed-in user in"
        assert page.get_by_label("Username").is_visible(), f"{target} did not ask to sign in"
        assert page.get_by_role("button", name="Sign out").count() == 0
    # The session that holds the pending login is not signed in either.
    assert not SecurityEvent.objects.filter(user=user, kind=SecurityEvent.Kind.LOGIN).exists()


def test_a_wrong_code_is_reported_on_the_field_and_not_resubmitted(site, user, pages):
    enrolled = enrol(user)
    page = pages.new()
    sign_in(page, site, "alice", PASSWORD)
    with page.expect_navigation():
        type_code(page, wrong_code(enrolled.secret))  # auto-submitted
    assert path_of(page) == VERIFY
    field = page.locator("#id_code")
    assert field.get_attribute("aria-invalid") == "true"
    assert "not right" in described_by_text(page), "the error is tied to the field"
    assert focused_id(page) == "id_code"
    shot(page, "verify-error")

    # With an error on show, six typed digits wait for a click (no resubmission loop).
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    code, _ = usable_code(enrolled.secret, last_step(user))
    type_code(page, code)
    assert requests == [] and field.input_value() == code
    with page.expect_navigation():
        page.get_by_role("button", name="Verify").click()
    assert path_of(page) == HOME


def test_turning_2fa_off_needs_password_and_code_then_offers_to_end_other_sessions(
    site, user, pages
):
    enrolled = enrol(user)
    other = pages.new(javascript=False)
    sign_in(other, site, "alice", PASSWORD)
    other.goto(site + RECOVERY)
    other.locator("#id_code").fill(enrolled.codes[0])
    other.get_by_role("button", name="Sign in").click()
    assert path_of(other) == HOME

    page = pages.new()
    sign_in(page, site, "alice", PASSWORD)
    code, _ = usable_code(enrolled.secret, last_step(user))
    with page.expect_navigation():
        type_code(page, code)
    page.goto(site + SECURITY)
    page.get_by_role("link", name="Turn off two-factor authentication").click()
    shot(page, "disable")

    # The session alone is not enough: a wrong password with a right code changes nothing.
    page.get_by_label("Your password").fill("not the password")
    code, _ = usable_code(enrolled.secret, last_step(user))
    page.locator("#id_code").fill(code)
    page.get_by_role("button", name="Turn off two-factor authentication").click()
    assert "not right" in described_by_text(page)
    assert "not right" in described_by_text(page, "#id_password")
    assert TOTPDevice.objects.filter(user=user).exists()

    page.get_by_label("Your password").fill(PASSWORD)
    page.locator("#id_code").fill(code)
    page.get_by_role("button", name="Turn off two-factor authentication").click()
    assert path_of(page) == SECURITY
    assert page.locator("[data-state]").get_attribute("data-state") == "off"
    assert not TOTPDevice.objects.filter(user=user).exists()

    offer = page.locator("section.highlight")
    assert offer.get_by_text("sign out everywhere else").is_visible()
    shot(page, "security-offer")
    offer.get_by_role("button", name="Sign out all other sessions").click()
    assert page.get_by_text("Signed out 1 other session").is_visible()

    other.goto(site + HOME)
    assert path_of(other) == LOGIN, "the other session was ended"


def test_security_events_show_in_the_browsers_time_zone(site, user, pages):
    page = pages.new(timezone_id="Asia/Tokyo")
    sign_in(page, site, "alice", PASSWORD)
    page.goto(site + SECURITY)
    header = page.locator("table.events th").first.inner_text()
    assert "Asia/Tokyo" in header, f"times are not in the browser's zone: {header!r}"
    login = SecurityEvent.objects.filter(user=user, kind=SecurityEvent.Kind.LOGIN).latest("pk")
    expected = login.created_at.astimezone(ZoneInfo("Asia/Tokyo")).strftime("%Y-%m-%d %H:%M")
    assert expected in page.locator("table.events tbody").inner_text()


def test_copy_buttons_and_the_download_give_the_key_and_the_codes(site, user, pages):
    page = pages.new(permissions=["clipboard-read", "clipboard-write"])
    sign_in(page, site, "alice", PASSWORD)
    page.goto(site + "/accounts/2fa/setup/")
    copy = page.locator("button.copy")
    assert copy.inner_text() == "Copy key"
    copy.click()
    secret = page.locator("code#secret").inner_text().replace(" ", "")
    if page.evaluate("navigator.clipboard.readText()") != secret:
        pytest.fail("the copy button did not copy the key without spaces")
    assert copy.inner_text() == "Copied"

    code, _ = usable_code(secret, None)
    page.locator("#id_code").fill(code)
    page.get_by_role("button", name="Turn on two-factor authentication").click()
    codes = page.locator(".recovery-code").all_inner_texts()
    assert len(codes) == 10
    assert page.get_by_role("button", name="Print").is_visible()
    page.get_by_role("button", name="Copy").click()
    assert page.evaluate("navigator.clipboard.readText()").split() == codes

    with page.expect_download() as download:
        page.locator("a[download]").click()
    assert download.value.suggested_filename == "recovery-codes.txt"
    with open(download.value.path(), encoding="utf-8") as saved:
        assert saved.read().split() == codes


def test_without_javascript_the_codes_page_offers_only_what_works(site, user, pages):
    page = pages.new(javascript=False)
    sign_in(page, site, "alice", PASSWORD)
    page.goto(site + "/accounts/2fa/setup/")
    secret = page.locator("code#secret").inner_text().replace(" ", "")
    assert not page.get_by_role("button", name="Copy key").is_visible()
    code, _ = usable_code(secret, None)
    page.locator("#id_code").fill(code)
    page.get_by_role("button", name="Turn on two-factor authentication").click()
    assert page.locator(".recovery-code").count() == 10
    assert page.locator("a[download]").is_visible(), "the download works without JavaScript"
    assert not page.get_by_role("button", name="Print").is_visible()
    assert not page.get_by_role("button", name="Copy").is_visible()
    shot(page, "recovery-codes")
