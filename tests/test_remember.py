"""Remembered browsers: the box, the cookie's flags, every check on it, and every revocation.

Each test remembers a browser through the real second step (``remember``), then logs in again
on the same client: a recognised browser lands on the page, any refusal lands on the code
step. The cookie is forged only with the test settings' SECRET_KEY, to reach the checks that
come after the signature.
"""

from datetime import timedelta
from urllib.parse import urlparse

import pytest
from django.contrib.auth import get_user_model
from django.core import signing
from django.core.cache import cache
from django.test import Client
from django.utils import timezone

from mfa import flows, remember, totp
from mfa.models import RememberedBrowser, SecurityEvent, TwoFactor
from tests.conftest import PASSWORD, enrol, is_logged_in, login_password

pytestmark = pytest.mark.django_db
Kind = SecurityEvent.Kind
COOKIE = "mfa_remember"
VERIFY = "/accounts/2fa/verify/"
RECOVERY = "/accounts/2fa/recovery/"
SECURITY = "/accounts/security/"
DAY = 24 * 60 * 60


def remember_browser(client, enrolled, offset_steps: int = 0):
    """Sign in through both steps with the box ticked; return the second step's response."""
    assert login_password(client, enrolled.user.get_username()).status_code == 302
    response = client.post(VERIFY, {"code": enrolled.code(offset_steps), "remember": "on"})
    assert response.status_code == 302, response
    return response


def log_out(client) -> None:
    client.post("/accounts/logout/")
    assert not is_logged_in(client)


def assert_code_asked(response) -> None:
    assert response.status_code == 302
    assert urlparse(response["Location"]).path == VERIFY


def assert_code_skipped(response, client) -> None:
    assert response.status_code == 302
    assert urlparse(response["Location"]).path != VERIFY
    assert is_logged_in(client)


def cookie_dropped(response) -> bool:
    morsel = response.cookies.get(COOKIE)
    return morsel is not None and morsel.value == "" and morsel["max-age"] == 0


def payload(client) -> dict:
    return signing.loads(client.cookies[COOKIE].value, salt=remember.SALT)


def forge(client, **changes) -> None:
    """Replace the client's cookie with a validly signed one, some fields changed."""
    data = {**payload(client), **changes}
    client.cookies[COOKIE] = signing.dumps(data, salt=remember.SALT)


@pytest.fixture
def remembered(client, clock, user_with_totp):
    """A client whose browser is remembered for alice, logged out again; the step is spent."""
    remember_browser(client, user_with_totp)
    log_out(client)
    clock.shift(totp.STEP)
    return user_with_totp


# --- The happy path -------------------------------------------------------------------------


def test_the_ticked_box_lets_the_next_login_skip_the_code(client, remembered):
    response = login_password(client)
    assert_code_skipped(response, client)
    assert response["Location"] == "/"
    row = RememberedBrowser.objects.get(user=remembered.user)
    assert row.last_used_at is not None
    kinds = list(SecurityEvent.objects.filter(user=remembered.user).values_list("kind", flat=True))
    assert Kind.BROWSER_REMEMBERED in kinds
    assert Kind.REMEMBERED_LOGIN in kinds
    login = SecurityEvent.objects.filter(user=remembered.user, kind=Kind.LOGIN).first()
    assert login.detail == flows.REMEMBERED


def test_the_box_is_offered_on_both_second_steps(client, clock, user_with_totp):
    login_password(client)
    for url in (VERIFY, RECOVERY):
        html = client.get(url).content.decode()
        assert 'name="remember"' in html
        assert "for 30 days" in html


def test_a_recovery_code_can_remember_the_browser_too(client, clock, user_with_totp):
    login_password(client)
    response = client.post(RECOVERY, {"code": user_with_totp.codes[0], "remember": "on"})
    assert response.status_code == 302
    assert response.cookies[COOKIE].value
    log_out(client)
    assert_code_skipped(login_password(client), client)


def test_without_the_box_no_browser_is_remembered(client, clock, user_with_totp):
    login_password(client)
    response = client.post(VERIFY, {"code": user_with_totp.code()})
    assert response.status_code == 302
    assert COOKIE not in response.cookies
    assert not RememberedBrowser.objects.exists()
    log_out(client)
    assert_code_asked(login_password(client))


def test_a_wrong_code_with_the_box_remembers_nothing(client, clock, user_with_totp):
    login_password(client)
    response = client.post(VERIFY, {"code": "000000", "remember": "on"})
    assert response.status_code == 400
    assert COOKIE not in response.cookies
    assert not RememberedBrowser.objects.exists()
    assert 'name="remember" id="id_remember" value="on" checked' in response.content.decode()


# --- The cookie -----------------------------------------------------------------------------


def test_the_cookie_flags(client, clock, settings, user_with_totp):
    settings.SESSION_COOKIE_SECURE = False
    morsel = remember_browser(client, user_with_totp).cookies[COOKIE]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Lax"
    assert morsel["path"] == "/"
    assert morsel["max-age"] == 30 * DAY
    assert not morsel["secure"]  # plain HTTP, SESSION_COOKIE_SECURE off
    assert not morsel["domain"]  # host-only


def test_the_cookie_is_secure_under_session_cookie_secure(client, clock, settings, user_with_totp):
    settings.SESSION_COOKIE_SECURE = True
    assert remember_browser(client, user_with_totp).cookies[COOKIE]["secure"] is True


def test_the_cookie_is_secure_over_https(clock, settings, user_with_totp):
    settings.SESSION_COOKIE_SECURE = False
    client = Client(enforce_csrf_checks=False)
    assert login_password(client, secure=True).status_code == 302
    response = client.post(VERIFY, {"code": user_with_totp.code(), "remember": "on"}, secure=True)
    assert response.cookies[COOKIE]["secure"] is True


def test_the_setting_sets_the_lifetime(client, clock, settings, user_with_totp):
    settings.MFA_REMEMBER_DAYS = 7
    morsel = remember_browser(client, user_with_totp).cookies[COOKIE]
    assert morsel["max-age"] == 7 * DAY
    row = RememberedBrowser.objects.get()
    assert row.expires_at == timezone.now() + timedelta(days=7)


def test_the_database_keeps_only_a_hash_of_the_verifier(client, clock, user_with_totp):
    remember_browser(client, user_with_totp)
    data = payload(client)
    row = RememberedBrowser.objects.get()
    assert data["u"] == str(user_with_totp.user.pk)
    assert row.selector == data["s"]
    assert data["v"] not in row.verifier_hash
    assert len(data["v"]) >= 43  # 256 bits, base64url
    assert "pw" not in data and row.password_fingerprint not in client.cookies[COOKIE].value


def test_neither_the_cookie_nor_the_verifier_is_logged(client, clock, user_with_totp, mfa_log):
    remember_browser(client, user_with_totp)
    value, verifier = client.cookies[COOKIE].value, payload(client)["v"]
    log_out(client)
    login_password(client)
    forge(client, v="x" * 43)
    log_out(client)
    login_password(client)
    for secret in (value, verifier, "x" * 43):
        assert secret not in mfa_log.text
        assert not SecurityEvent.objects.filter(detail__contains=secret).exists()


# --- Every check on the cookie --------------------------------------------------------------


def test_another_users_cookie_does_not_skip_their_code(client, remembered):
    bob = get_user_model().objects.create_user("bob", "bob@example.com", PASSWORD)
    enrol(bob)
    response = login_password(client, "bob")
    assert_code_asked(response)
    # Still alice's, and still good for her: another user of the browser leaves it alone.
    assert not cookie_dropped(response)
    assert_code_skipped(login_password(client), client)


def test_a_cookie_naming_another_users_record_is_refused(client, remembered):
    bob = get_user_model().objects.create_user("bob", "bob@example.com", PASSWORD)
    enrol(bob)
    # Signed for bob, naming alice's record and verifier: the record must be bob's.
    forge(client, u=str(bob.pk))
    response = login_password(client, "bob")
    assert_code_asked(response)
    assert cookie_dropped(response)


def test_a_password_change_voids_every_remembered_browser(client, remembered):
    other = Client()
    remember_browser(other, remembered, offset_steps=0)
    log_out(other)
    assert RememberedBrowser.objects.count() == 2
    user = remembered.user
    user.set_password("a new password for alice")
    user.save()
    response = login_password(client, password="a new password for alice")
    assert_code_asked(response)
    assert cookie_dropped(response)
    # Lazily, but all of them: the other browser's record went too.
    assert not RememberedBrowser.objects.exists()


def test_the_list_drops_records_voided_by_a_password_change(remembered):
    user = remembered.user
    assert len(remember.listed(user)) == 1
    user.set_password("a new password for alice")
    user.save()
    assert remember.listed(user) == []
    assert not RememberedBrowser.objects.exists()


def test_an_expired_record_is_refused_and_deleted(client, remembered):
    RememberedBrowser.objects.update(expires_at=timezone.now())
    response = login_password(client)
    assert_code_asked(response)
    assert cookie_dropped(response)
    assert not RememberedBrowser.objects.exists()


def test_after_the_remembered_time_the_code_is_asked_again(client, clock, remembered):
    clock.shift(30 * DAY - totp.STEP - 1)
    assert_code_skipped(login_password(client), client)
    log_out(client)
    clock.shift(2)
    response = login_password(client)
    assert_code_asked(response)
    assert cookie_dropped(response)


def test_shortening_the_setting_shortens_every_cookie(client, clock, settings, remembered):
    # The record says 30 days; the signature's age is checked against the setting as it is now.
    settings.MFA_REMEMBER_DAYS = 1
    clock.shift(DAY + 1)
    response = login_password(client)
    assert_code_asked(response)
    assert cookie_dropped(response)


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda value: value[:-1] + ("A" if value[-1] != "A" else "B"), id="signature"),
        pytest.param(lambda value: "x" + value, id="payload"),
        pytest.param(lambda value: value.split(":")[0], id="truncated"),
        pytest.param(lambda value: "garbage", id="garbage"),
        pytest.param(lambda value: value + "x" * 600, id="too-long"),
    ],
)
def test_a_tampered_cookie_is_refused_and_dropped(client, remembered, tamper):
    client.cookies[COOKIE] = tamper(client.cookies[COOKIE].value)
    response = login_password(client)
    assert_code_asked(response)
    assert cookie_dropped(response)
    assert RememberedBrowser.objects.exists()  # a bad signature names no record to delete


def test_a_wrong_verifier_is_refused_and_its_record_deleted(client, remembered):
    forge(client, v="A" * 43)
    response = login_password(client)
    assert_code_asked(response)
    assert cookie_dropped(response)
    assert not RememberedBrowser.objects.exists()


def test_a_cookie_signed_with_another_salt_is_refused(client, remembered):
    client.cookies[COOKIE] = signing.dumps(payload(client), salt="mfa.something-else")
    assert_code_asked(login_password(client))


@pytest.mark.parametrize(
    "data",
    [["a", "list"], {"u": 1, "s": "x", "v": "y"}, {"u": "1", "s": "x"}, "a string"],
    ids=["list", "int-pk", "missing-field", "string"],
)
def test_a_signed_but_malformed_cookie_is_refused(client, remembered, data):
    client.cookies[COOKIE] = signing.dumps(data, salt=remember.SALT)
    response = login_password(client)
    assert_code_asked(response)
    assert cookie_dropped(response)


def test_a_cookie_naming_a_deleted_record_is_refused(client, remembered):
    RememberedBrowser.objects.all().delete()
    response = login_password(client)
    assert_code_asked(response)
    assert cookie_dropped(response)


def test_with_the_feature_off_cookies_are_ignored_and_no_box_is_shown(client, settings, remembered):
    settings.MFA_REMEMBER_DAYS = 0
    response = login_password(client)
    assert_code_asked(response)
    assert cookie_dropped(response)
    assert 'name="remember"' not in client.get(VERIFY).content.decode()
    response = client.post(VERIFY, {"code": remembered.code(), "remember": "on"})
    assert response.status_code == 302
    assert COOKIE not in response.cookies
    assert RememberedBrowser.objects.count() == 1  # only the one from before


# --- Never instead of the password ----------------------------------------------------------


def test_a_wrong_password_with_a_good_cookie_is_refused_and_counted(client, settings, remembered):
    settings.MFA_LOGIN_USER_RATE = "1/m"
    # The fixture's own login counted too, under the same key on Redis (1/m and 10/m share a
    # window there): start this minute's count from zero.
    cache.clear()
    response = login_password(client, password="not the password")
    assert response.status_code == 400
    assert not is_logged_in(client)
    assert SecurityEvent.objects.filter(kind=Kind.PASSWORD_FAILED).exists()
    # The failure was counted: the right password is now over the per-username rate.
    assert login_password(client).status_code == 429
    assert not is_logged_in(client)


def test_the_cookie_alone_logs_nobody_in(client, remembered):
    assert not is_logged_in(client)
    assert client.get(VERIFY).status_code == 302  # no pending login either


@pytest.mark.parametrize("state", ["locked", "backed-off"])
def test_a_locked_or_backed_off_account_does_not_skip_the_code(client, remembered, state):
    now = timezone.now()
    change = (
        {"locked_at": now} if state == "locked" else {"blocked_until": now + timedelta(seconds=60)}
    )
    TwoFactor.objects.filter(user=remembered.user).update(failure_count=5, **change)
    response = login_password(client)
    assert_code_asked(response)
    assert not is_logged_in(client)
    # Still a good cookie: once unlocked, the browser is recognised again.
    assert not cookie_dropped(response)
    assert client.post(VERIFY, {"code": remembered.code()}).status_code == 429


def test_a_remembered_login_satisfies_mfa_required_but_is_no_fresh_proof(client, remembered):
    assert_code_skipped(login_password(client), client)
    session = client.session
    assert session.get(flows.REMEMBERED_AT_KEY) is not None
    assert flows.VERIFIED_AT_KEY not in session  # reauth_required asks for a code


def test_an_abandoned_password_step_is_still_reported(client, clock, remembered):
    intruder = Client(REMOTE_ADDR="203.0.113.9")
    login_password(intruder)  # the password, then nothing
    clock.shift(600)
    assert_code_skipped(login_password(client), client)
    assert SecurityEvent.objects.filter(kind=Kind.SUSPICIOUS).exists()


# --- Revocation -----------------------------------------------------------------------------


def signed_in_elsewhere(clock, enrolled) -> Client:
    """Another client, logged in through both steps with a fresh code."""
    other = Client()
    clock.shift(totp.STEP)
    assert login_password(other).status_code == 302
    assert other.post(VERIFY, {"code": enrolled.code()}).status_code == 302
    return other


def test_forgetting_one_browser_on_the_security_page(client, clock, remembered):
    other = signed_in_elsewhere(clock, remembered)
    row = RememberedBrowser.objects.get()
    page = other.get(SECURITY).content.decode()
    assert "Remembered browsers" in page and f'data-browser="{row.pk}"' in page
    response = other.post(f"/accounts/security/browsers/{row.pk}/forget/")
    assert response.status_code == 302
    assert not cookie_dropped(response)  # not that browser's own record
    assert not RememberedBrowser.objects.exists()
    assert SecurityEvent.objects.filter(kind=Kind.BROWSER_FORGOTTEN, detail="one").exists()
    assert_code_asked(login_password(client))


def test_forgetting_this_browser_drops_its_cookie(client, remembered):
    assert_code_skipped(login_password(client), client)
    row = RememberedBrowser.objects.get()
    assert "this browser" in client.get(SECURITY).content.decode()
    assert cookie_dropped(client.post(f"/accounts/security/browsers/{row.pk}/forget/"))


def test_nobody_forgets_another_users_browser(client, clock, remembered):
    bob = get_user_model().objects.create_user("bob", "bob@example.com", PASSWORD)
    other = Client()
    assert login_password(other, "bob").status_code == 302  # bob has no 2FA
    row = RememberedBrowser.objects.get()
    assert other.post(f"/accounts/security/browsers/{row.pk}/forget/").status_code == 302
    assert RememberedBrowser.objects.filter(pk=row.pk).exists()
    assert not SecurityEvent.objects.filter(user=bob, kind=Kind.BROWSER_FORGOTTEN).exists()


def test_forget_is_post_only(client, remembered):
    assert_code_skipped(login_password(client), client)
    row = RememberedBrowser.objects.get()
    assert client.get(f"/accounts/security/browsers/{row.pk}/forget/").status_code == 405
    assert client.get("/accounts/security/browsers/forget/").status_code == 405
    assert RememberedBrowser.objects.exists()


def test_forget_needs_the_csrf_token(remembered):
    bob = get_user_model().objects.create_user("bob", "bob@example.com", PASSWORD)
    client = Client(enforce_csrf_checks=True)
    client.force_login(bob)  # no 2FA: the middleware lets a forced login be
    assert client.post("/accounts/security/browsers/forget/").status_code == 403


def test_forgetting_all_browsers(client, clock, remembered):
    other = signed_in_elsewhere(clock, remembered)
    response = other.post("/accounts/security/browsers/forget/")
    assert cookie_dropped(response)
    assert not RememberedBrowser.objects.exists()
    assert SecurityEvent.objects.filter(kind=Kind.BROWSER_FORGOTTEN, detail="all").exists()
    assert_code_asked(login_password(client))


def test_signing_out_other_sessions_forgets_every_browser(client, clock, remembered):
    other = signed_in_elsewhere(clock, remembered)
    response = other.post("/accounts/security/end-sessions/")
    assert cookie_dropped(response)
    assert not RememberedBrowser.objects.exists()
    assert_code_asked(login_password(client))


def test_turning_2fa_off_forgets_every_browser(client, clock, remembered):
    other = signed_in_elsewhere(clock, remembered)
    clock.shift(totp.STEP)
    response = other.post(
        "/accounts/2fa/disable/", {"password": PASSWORD, "code": remembered.code()}
    )
    assert response.status_code == 302
    assert not RememberedBrowser.objects.exists()
    enrol(remembered.user)  # on again: the old browser is asked for the new code
    assert_code_asked(login_password(client))


def test_an_admin_reset_forgets_every_browser(client, remembered):
    assert flows.reset(remembered.user, "admin root")
    assert not RememberedBrowser.objects.exists()
    enrol(remembered.user)
    assert_code_asked(login_password(client))


# --- Rows -----------------------------------------------------------------------------------


def test_a_new_cookie_replaces_the_browsers_old_record(client, clock, remembered):
    bob = get_user_model().objects.create_user("bob", "bob@example.com", PASSWORD)
    bobs = enrol(bob)
    alices = RememberedBrowser.objects.get()
    # Bob on alice's remembered browser: asked for his code; he ticks the box too.
    response = remember_browser(client, bobs)
    assert payload(client)["u"] == str(bob.pk)
    # Alice's record could never be used again (no browser holds its verifier): gone.
    assert not RememberedBrowser.objects.filter(pk=alices.pk).exists()
    assert RememberedBrowser.objects.get().user == bob
    assert response.cookies[COOKIE].value


def test_each_user_keeps_a_bounded_number_of_records(clock, monkeypatch, user_with_totp):
    monkeypatch.setattr(remember, "MAX_PER_USER", 3)
    for _ in range(5):
        remember_browser(Client(), user_with_totp)
        clock.shift(totp.STEP)
    assert RememberedBrowser.objects.count() == 3


def test_the_label_names_the_browser(clock, user_with_totp):
    agent = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
    client = Client(HTTP_USER_AGENT=agent)
    remember_browser(client, user_with_totp)
    assert RememberedBrowser.objects.get().label == "Firefox on Linux"
    assert remember._label("") == ""


def test_turned_off_even_the_same_instant_ignores_cookies(client, clock, settings, user_with_totp):
    # The clock stands still: the cookie's signature is 0 seconds old, which a max_age of 0
    # days still accepts; the feature's own switch must refuse it.
    remember_browser(client, user_with_totp)
    log_out(client)
    settings.MFA_REMEMBER_DAYS = 0
    response = login_password(client)
    assert_code_asked(response)
    assert cookie_dropped(response)
