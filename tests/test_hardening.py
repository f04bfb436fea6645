"""Regression tests for the fixes of the bypass review, one section per finding.

Each test was written from the reviewer's reproduction (which passed while the hole was open)
and fails when its fix is undone. This file runs in both passes, SQLite and PostgreSQL: a few
of the holes (a NUL byte in a stored text, a scoped IPv6 address) broke only PostgreSQL.
"""

import base64
import datetime
import json
import re
import sys
import zlib
import zoneinfo

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.core import mail
from django.core.signals import got_request_exception
from django.test import Client
from django.utils import timezone as django_timezone
from django.views.debug import ExceptionReporter

from mfa import flows, sessions, throttle, totp
from mfa.models import RecoveryCode, SecurityEvent, TOTPDevice, TwoFactor, UserSession
from mfa.recovery import views as recovery_views
from tests.conftest import (
    PASSWORD,
    T0,
    full_login,
    is_logged_in,
    logged_in_as,
    login_password,
    make_user,
    secret_from_setup_page,
)

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"
VERIFY = "/accounts/2fa/verify/"
SETUP = "/accounts/2fa/setup/"
END_SESSIONS = "/accounts/security/end-sessions/"
REGENERATE = "/accounts/2fa/recovery-codes/"
USERS = "/admin/auth/user/"
DEVICES = "/admin/mfa/twofactor/"
NEW_PASSWORD = "an-entirely-new passphrase 42"


def offered_actions(client, url: str) -> set[str]:
    response = client.get(url)
    assert response.status_code == 200
    form = response.context["action_form"]  # None when no action at all is offered
    return {name for name, _label in form.fields["action"].choices} if form else set()


def run_action(client, url: str, action: str, pks):
    return client.post(url, {"action": action, "_selected_action": list(pks)}, follow=True)


def page_messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


# --- 1. Admin actions need the change permission; only superusers reset superusers ----------


@pytest.fixture
def root(db):
    """A superuser with 2FA, locked out (so that "unlock" has something to do)."""
    enrolled = make_user("root", superuser=True)
    TwoFactor.objects.filter(user=enrolled.user).update(
        failure_count=100, locked_at=datetime.datetime.fromtimestamp(T0, datetime.UTC)
    )
    return enrolled


@pytest.mark.parametrize(
    ("url", "perm", "target"),
    [(USERS, "view_user", "user"), (DEVICES, "view_twofactor", "device")],
)
def test_view_only_staff_cannot_reset_or_unlock(clock, root, url, perm, target):
    viewer = make_user("viewer", staff=True, perms=[perm])
    client = logged_in_as(viewer)
    actions = offered_actions(client, url)
    assert "reset_two_factor" not in actions
    assert "unlock_two_factor" not in actions
    pk = root.user.pk if target == "user" else root.two_factor.pk
    for action in ("reset_two_factor", "unlock_two_factor"):
        assert run_action(client, url, action, [pk]).status_code == 200
    device = TwoFactor.objects.get(user=root.user)  # survives the reset
    assert device.locked_at is not None and device.failure_count == 100  # and stays locked
    assert not SecurityEvent.objects.filter(
        user=root.user, kind__in=[SecurityEvent.Kind.ADMIN_RESET, SecurityEvent.Kind.UNLOCKED]
    ).exists()


@pytest.mark.parametrize("url", [USERS, DEVICES])
def test_staff_with_change_permission_cannot_reset_a_superuser(clock, root, url):
    staff = make_user("carol", staff=True, perms=["change_user", "change_twofactor"])
    bob = make_user("bob")
    client = logged_in_as(staff)
    assert "reset_two_factor" in offered_actions(client, url)

    def pks(*enrolled):
        return [e.user.pk if url == USERS else e.two_factor.pk for e in enrolled]

    # A superuser, alone or hidden among others: nobody is reset.
    for selection in (pks(root), pks(bob, root)):
        response = run_action(client, url, "reset_two_factor", selection)
        assert response.status_code == 200
        assert any("Only a superuser" in m for m in page_messages(response))
        assert TOTPDevice.objects.filter(user=root.user).exists()
        assert TOTPDevice.objects.filter(user=bob.user).exists()
    # A normal user: reset.
    response = run_action(client, url, "reset_two_factor", pks(bob))
    assert response.status_code == 200
    assert not TOTPDevice.objects.filter(user=bob.user).exists()
    assert TOTPDevice.objects.filter(user=root.user).exists()


def test_superuser_can_reset_a_superuser(clock, root):
    other = make_user("admin2", superuser=True)
    client = logged_in_as(other)
    run_action(client, USERS, "reset_two_factor", [root.user.pk])
    assert not TOTPDevice.objects.filter(user=root.user).exists()


# --- 2. Sessions are ended by an id that survives their key changing -------------------------


def test_logging_in_again_ends_the_logged_in_session(clock, user_with_totp):
    client = logged_in_as(user_with_totp)
    old_key = client.session.session_key
    old_sid = client.session[sessions.SID_KEY]
    response = login_password(client)
    assert response.status_code == 302 and response["Location"].startswith(VERIFY)
    # The password alone does not keep (or make) a logged-in session.
    assert not is_logged_in(client)
    assert "_auth_user_id" not in client.session
    assert client.session.session_key != old_key
    assert not Session.objects.filter(session_key=old_key).exists()
    assert not UserSession.objects.filter(sid=old_sid).exists()
    # The pending login itself still works.
    clock.shift(totp.STEP)
    assert client.post(VERIFY, {"code": user_with_totp.code()}).status_code == 302
    assert is_logged_in(client)


def assert_sent_to_login(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith(LOGIN)
    assert not is_logged_in(client)


def test_end_sessions_reaches_a_session_whose_key_changed(clock, user_with_totp):
    other = logged_in_as(user_with_totp)
    old_key = other.session.session_key
    # The key changes under the session (what cycle_key does on a password change).
    store = SessionStore(session_key=old_key)
    store.cycle_key()
    store.save()
    other.cookies[django_settings.SESSION_COOKIE_NAME] = store.session_key
    assert store.session_key != old_key
    assert is_logged_in(other)  # the session lives on under its new key

    clock.shift(totp.STEP)
    me = logged_in_as(user_with_totp)
    assert me.post(END_SESSIONS).status_code == 302
    assert_sent_to_login(other)
    assert is_logged_in(me)


def test_end_sessions_reaches_a_session_after_admin_password_change(clock, user_with_totp):
    user = user_with_totp.user
    user.is_staff = True
    user.save()
    other = logged_in_as(user_with_totp)
    old_key = other.session.session_key
    response = other.post(
        "/admin/password_change/",
        {"old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert response.status_code == 302
    assert other.session.session_key != old_key  # update_session_auth_hash cycled it
    assert is_logged_in(other)

    clock.shift(totp.STEP)
    me = Client()
    assert login_password(me, password=NEW_PASSWORD).status_code == 302
    assert me.post(VERIFY, {"code": user_with_totp.code()}).status_code == 302
    assert me.post(END_SESSIONS).status_code == 302
    assert_sent_to_login(other)
    assert is_logged_in(me)


@pytest.mark.urls("tests.urls_rekey")
def test_a_request_that_fails_after_a_key_change_leaves_the_registration_on_the_stored_key(
    clock, user_with_totp
):
    # SessionMiddleware does not save a 500: the session lives on under its old key, and its
    # registration must keep pointing there, or "sign out other sessions" would miss the row.
    other = logged_in_as(user_with_totp)
    other.raise_request_exception = False
    old_key = other.session.session_key
    assert other.get("/test/rekey-then-fail/").status_code == 500
    assert other.session.session_key == old_key
    assert UserSession.objects.get(sid=other.session[sessions.SID_KEY]).session_key == old_key
    assert is_logged_in(other)

    clock.shift(totp.STEP)
    me = logged_in_as(user_with_totp)
    assert me.post(END_SESSIONS).status_code == 302
    assert not Session.objects.filter(session_key=old_key).exists()  # gone at once
    assert_sent_to_login(other)


# --- 3. An admin reset ends the sessions; adding 2FA needs a fresh password ------------------


@pytest.mark.parametrize("with_request", [False, True])
def test_admin_reset_ends_every_session_of_the_user(rf, clock, user_with_totp, with_request):
    first = logged_in_as(user_with_totp)
    clock.shift(totp.STEP)
    second = logged_in_as(user_with_totp)
    request = rf.post("/admin/auth/user/") if with_request else None
    flows.reset(user_with_totp.user, "admin bob", request)
    assert not TOTPDevice.objects.filter(user=user_with_totp.user).exists()
    assert_sent_to_login(first)
    assert_sent_to_login(second)
    assert not UserSession.objects.filter(user=user_with_totp.user).exists()


def shows_qr(response) -> bool:
    return 'id="secret"' in response.content.decode() and "data:image/png" in (
        response.content.decode()
    )


def asks_password(response) -> bool:
    html = response.content.decode()
    return 'name="password"' in html and 'id="secret"' not in html


def test_fresh_session_gets_the_qr_directly(client, clock, user):
    assert login_password(client).status_code == 302
    clock.shift(15 * 60)  # exactly MFA_REAUTH_AGE: still fresh
    response = client.get(SETUP)
    assert response.status_code == 200 and shows_qr(response)
    assert flows.ENROL_KEY in client.session


def test_stale_session_must_confirm_the_password_before_setup(client, clock, user):
    assert login_password(client).status_code == 302
    clock.shift(15 * 60 + 1)
    response = client.get(SETUP)
    assert response.status_code == 200 and asks_password(response)
    assert flows.ENROL_KEY not in client.session

    response = client.post(SETUP, {"password": "not the password"})
    assert response.status_code == 400 and asks_password(response)
    assert flows.ENROL_KEY not in client.session
    assert SecurityEvent.objects.filter(user=user, kind=SecurityEvent.Kind.PASSWORD_FAILED).exists()

    response = client.post(SETUP, {"password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == SETUP
    response = client.get(SETUP)
    assert response.status_code == 200 and shows_qr(response)


def test_stale_session_cannot_confirm_an_enrolment_begun_while_fresh(client, clock, user):
    assert login_password(client).status_code == 302
    secret = secret_from_setup_page(client.get(SETUP).content.decode())
    clock.shift(16 * 60)
    code = totp.code_at(secret, totp.step_of(totp.now()))
    response = client.post(SETUP, {"code": code})
    assert response.status_code == 400 and asks_password(response)
    assert not TOTPDevice.objects.filter(user=user).exists()


def test_reauth_age_setting_is_honoured(client, clock, user, settings):
    settings.MFA_REAUTH_AGE = 60
    assert login_password(client).status_code == 302
    clock.shift(61)
    assert asks_password(client.get(SETUP))


# --- 4. Per-username limit on the normalised name; IPv6 limits per /64 -----------------------


def test_username_variants_share_the_per_user_limit(clock, user):
    attacker = Client()
    for attempt in range(10):
        assert login_password(attacker, "alice", f"wrong {attempt}").status_code == 400
    assert login_password(attacker, "alice", PASSWORD).status_code == 429
    for variant in [" alice", "alice ", "\talice", "ａｌｉｃｅ", "alice\u3000", "ALICE"]:
        client = Client()
        response = login_password(client, variant, PASSWORD)
        assert response.status_code == 429, repr(variant)
        assert "Retry-After" in response
        assert flows.PENDING_KEY not in client.session
        assert not is_logged_in(client)


def test_username_variants_authenticate_as_alice(clock, user):
    # The premise of the test above: each variant logs in as alice while under the limit.
    for variant in [" alice", "\talice", "ａｌｉｃｅ"]:
        client = Client()
        assert login_password(client, variant, PASSWORD).status_code == 302, repr(variant)
        assert is_logged_in(client)


def test_address_key_groups_ipv6_by_64():
    assert throttle.address_key("2001:db8:1:2::1") == throttle.address_key("2001:db8:1:2:ffff::9")
    assert throttle.address_key("2001:db8:1:2::1") != throttle.address_key("2001:db8:1:3::1")
    assert throttle.address_key("203.0.113.7") == "203.0.113.7"
    assert throttle.address_key("203.0.113.7") != throttle.address_key("203.0.113.8")


def test_ipv6_addresses_of_one_64_share_the_login_limit(clock, user):
    def attempt(address: str, n: int) -> int:
        data = {"username": f"nobody{n}", "password": "wrong"}
        return Client().post(LOGIN, data, REMOTE_ADDR=address).status_code

    # LOGIN_IP_RATE is 30/m: 30 addresses of one /64, one attempt each, exhaust it.
    for n in range(30):
        assert attempt(f"2001:db8:1:2::{n + 1:x}", n) == 400
    assert attempt("2001:db8:1:2:ffff:ffff:ffff:ffff", 100) == 429
    # Another /64 is another client.
    assert attempt("2001:db8:1:3::1", 101) == 400


# --- 5. The enrolment secret is encrypted in the session -------------------------------------


def raw_payload(session_data: str) -> str:
    """Decode a signed session row by hand, as anyone who reads the table can."""
    payload = session_data.split(":")[0]
    data = base64.urlsafe_b64decode(payload.lstrip(".") + "==")
    if payload.startswith("."):
        data = zlib.decompress(data)
    return data.decode()


def test_enrolment_secret_is_not_in_plaintext_in_the_session(client, clock, user):
    assert login_password(client).status_code == 302
    html = client.get(SETUP).content.decode()
    secret = secret_from_setup_page(html)
    row = Session.objects.get(session_key=client.session.session_key)
    decoded = row.get_decoded()
    assert flows.ENROL_KEY in decoded
    for text in (row.session_data, raw_payload(row.session_data), json.dumps(decoded)):
        assert secret not in text
        assert totp.group_secret(secret) not in text
    # And it still works: the session's secret enrols.
    code = totp.code_at(secret, totp.step_of(totp.now()))
    assert client.post(SETUP, {"code": code}).status_code == 200
    assert TOTPDevice.objects.filter(user=user).exists()


def test_enrolment_secret_of_another_user_is_not_used(rf, clock, user):
    # The ciphertext is bound to the user: a session token copied to another user is ignored.
    bob = get_user_model().objects.create_user("bob", "bob@example.com", PASSWORD)
    request = rf.get(SETUP)
    request.session = SessionStore()
    alices = flows.begin_enrolment(request, user)[0]
    bobs, replaced = flows.begin_enrolment(request, bob)
    assert bobs != alices and replaced


# --- 6. Error reports hide the secret and the code -------------------------------------------


def report(request, info) -> tuple[str, str]:
    """The production (DEBUG off) error email of the exception ``info`` caught.

    The traceback starts below the test function, whose own locals hold the secret and the
    code: in production it starts at the view, which holds neither.
    """
    reporter = ExceptionReporter(request, info.type, info.value, info.tb.tb_next, is_email=True)
    return reporter.get_traceback_html(), reporter.get_traceback_text()


def verify_request(rf, user):
    request = rf.post(VERIFY)
    request.session = SessionStore()
    request.user = user
    return request


def assert_hidden(texts, *values):
    for text in texts:
        assert "RuntimeError" in text  # the report is real...
        for value in values:
            assert value not in text  # ...and names neither the secret nor the code


def test_error_under_code_check_hides_secret_and_code(rf, clock, user_with_totp, monkeypatch):
    """An exception raised while the code is being compared, below verify_totp."""

    def boom(self, for_time, counter_offset=0):
        raise RuntimeError("hmac failure")

    code = user_with_totp.code()
    # pyotp's maths, under totp.matching_step: the secret is a local of every frame above.
    monkeypatch.setattr(totp.pyotp.TOTP, "at", boom)
    request = verify_request(rf, user_with_totp.user)
    with pytest.raises(RuntimeError) as info:
        flows.verify_totp(request, user_with_totp.user, code)
    assert_hidden(report(request, info), user_with_totp.secret, code)


def test_error_in_patched_matching_step_hides_secret_and_code(
    rf, clock, user_with_totp, monkeypatch
):
    def matching_step(secret, code, at, window=1):  # the real signature
        raise RuntimeError("matching failed")

    monkeypatch.setattr(totp, "matching_step", matching_step)
    request = verify_request(rf, user_with_totp.user)
    code = user_with_totp.code()
    with pytest.raises(RuntimeError) as info:
        flows.verify_totp(request, user_with_totp.user, code)
    assert_hidden(report(request, info), user_with_totp.secret, code)


def test_error_after_a_right_code_hides_secret_and_code(rf, clock, user_with_totp):
    def on_accept():
        raise RuntimeError("login failed")

    request = verify_request(rf, user_with_totp.user)
    code = user_with_totp.code()
    with pytest.raises(RuntimeError) as info:
        flows.verify_totp(request, user_with_totp.user, code, on_accept)
    assert_hidden(report(request, info), user_with_totp.secret, code)


def test_error_after_a_wrong_code_hides_secret_and_code(rf, clock, user_with_totp, monkeypatch):
    def record_failure(device_pk, now):
        raise RuntimeError("database hiccup")

    monkeypatch.setattr(flows.throttle, "record_failure", record_failure)
    request = verify_request(rf, user_with_totp.user)
    code = "000000" if user_with_totp.code() != "000000" else "111111"
    with pytest.raises(RuntimeError) as info:
        flows.verify_totp(request, user_with_totp.user, code)
    assert_hidden(report(request, info), user_with_totp.secret, code)


def test_error_during_enrolment_hides_the_new_secret(rf, clock, user, monkeypatch):
    request = rf.post(SETUP)
    request.session = SessionStore()
    request.user = user
    secret = flows.begin_enrolment(request, user)[0]
    code = totp.code_at(secret, totp.step_of(totp.now()))

    def replace(user):
        raise RuntimeError("database hiccup")

    monkeypatch.setattr(flows, "_replace_recovery_codes", replace)
    with pytest.raises(RuntimeError) as info:
        flows.confirm_enrolment(request, user, code)
    assert_hidden(report(request, info), secret, code)


# --- 7. Deleting a TOTP device in the admin is an audited reset, and users can be deleted ---


@pytest.mark.parametrize("how", ["delete_view", "delete_selected"])
def test_deleting_a_totp_device_in_the_admin_is_an_audited_reset(
    clock, user_with_totp, mailoutbox, how
):
    admin_user = make_user("root", superuser=True)
    client = logged_in_as(admin_user)
    device = user_with_totp.two_factor
    if how == "delete_view":
        response = client.post(f"{DEVICES}{device.pk}/delete/", {"post": "yes"})
    else:
        data = {"action": "delete_selected", "_selected_action": [device.pk], "post": "yes"}
        response = client.post(DEVICES, data)
    assert response.status_code == 302
    user = user_with_totp.user
    assert not TOTPDevice.objects.filter(user=user).exists()
    assert not RecoveryCode.objects.filter(user=user).exists()
    event = SecurityEvent.objects.get(user=user, kind=SecurityEvent.Kind.ADMIN_RESET)
    assert event.detail == "by admin root"
    assert [m.to for m in mailoutbox] == [[user.email]]


def test_deleting_a_user_keeps_their_audit_trail(clock, user_with_totp):
    admin_user = make_user("root", superuser=True)
    client = logged_in_as(admin_user)
    user = user_with_totp.user
    events = SecurityEvent.objects.filter(user=user).count()
    SecurityEvent.objects.create(user=user, kind=SecurityEvent.Kind.LOGIN)
    response = client.post(f"/admin/auth/user/{user.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not get_user_model().objects.filter(pk=user.pk).exists()
    assert SecurityEvent.objects.filter(user=None).count() >= events + 1


# --- 8. Control characters in headers do not break the login ---------------------------------


def test_control_characters_in_user_agent_do_not_break_the_login(clock, user_with_totp):
    client = Client(HTTP_USER_AGENT="x\x00y\x07")
    assert login_password(client, password="wrong").status_code == 400
    assert full_login(client, user_with_totp).status_code == 302
    assert is_logged_in(client)
    agents = list(SecurityEvent.objects.values_list("user_agent", flat=True))
    assert len(agents) >= 2  # the failure and the login
    assert all(agent == "xy" for agent in agents), agents


SCOPED = "fe80::1%" + "a" * 60


@pytest.mark.parametrize("forwarded", [SCOPED, "fe80::1%eth0", "203.0.113.1, " + SCOPED])
def test_client_ip_ignores_a_scoped_address(rf, settings, forwarded):
    settings.MFA_TRUSTED_PROXY_HEADER = "X-Forwarded-For"
    request = rf.get("/", HTTP_X_FORWARDED_FOR=forwarded, REMOTE_ADDR="198.51.100.4")
    assert throttle.client_ip(request) == "198.51.100.4"


def test_client_ip_still_reads_a_good_forwarded_address(rf, settings):
    settings.MFA_TRUSTED_PROXY_HEADER = "X-Forwarded-For"
    request = rf.get("/", HTTP_X_FORWARDED_FOR="2001:db8::7", REMOTE_ADDR="198.51.100.4")
    assert throttle.client_ip(request) == "2001:db8::7"


def test_login_with_a_scoped_forwarded_address(clock, settings, user_with_totp):
    settings.MFA_TRUSTED_PROXY_HEADER = "X-Forwarded-For"
    client = Client(HTTP_X_FORWARDED_FOR=SCOPED, REMOTE_ADDR="198.51.100.4")
    assert login_password(client, password="wrong").status_code == 400
    assert full_login(client, user_with_totp).status_code == 302
    assert is_logged_in(client)
    addresses = set(SecurityEvent.objects.values_list("ip_address", flat=True))
    assert addresses == {"198.51.100.4"}


# --- 9. Email notices state UTC times ---------------------------------------------------------


def test_notice_time_is_utc_whatever_the_request_zone(clock, user_with_totp):
    zone = "Pacific/Kiritimati"  # UTC+14: the date differs too
    client = Client()
    client.cookies["mfa_tz"] = zone
    assert login_password(client).status_code == 302
    mail.outbox.clear()
    response = client.post("/accounts/2fa/recovery/", {"code": user_with_totp.codes[0]})
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    body = mail.outbox[0].body
    now = datetime.datetime.fromtimestamp(T0, datetime.UTC)
    assert f"({now:%Y-%m-%d %H:%M} UTC)" in body
    local = now.astimezone(zoneinfo.ZoneInfo(zone))
    assert f"{local:%Y-%m-%d %H:%M}" not in body


# --- Error reports from the views, and a session re-keyed by a password change -------------


def report_of_failed_request(client, method: str, url: str, data=None):
    """Make the request, which must fail with a 500, and return its error email's texts."""
    caught = {}

    def grab(sender, request, **kwargs):
        caught["request"] = request
        caught["exc_info"] = sys.exc_info()

    got_request_exception.connect(grab)
    client.raise_request_exception = False
    try:
        response = getattr(client, method)(url, data or {})
    finally:
        got_request_exception.disconnect(grab)
        client.raise_request_exception = True
    assert response.status_code == 500
    reporter = ExceptionReporter(caught["request"], *caught["exc_info"], is_email=True)
    return reporter.get_traceback_html(), reporter.get_traceback_text()


def test_error_in_setup_view_hides_the_new_secret(client, clock, user, monkeypatch):
    assert login_password(client).status_code == 302
    secret = secret_from_setup_page(client.get(SETUP).content.decode())
    code = totp.code_at(secret, totp.step_of(totp.now()))

    def replace(user):
        raise RuntimeError("database hiccup")

    monkeypatch.setattr(flows, "_replace_recovery_codes", replace)
    texts = report_of_failed_request(client, "post", SETUP, {"code": code})
    assert_hidden(texts, secret, code)


RECOVERY_CODE = re.compile(r"\b[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}\b")


def test_error_showing_new_recovery_codes_hides_them(clock, user_with_totp, monkeypatch):
    client = logged_in_as(user_with_totp)
    clock.shift(totp.STEP)

    def no_store(response):
        raise RuntimeError("template failure")

    monkeypatch.setattr(recovery_views, "no_store", no_store)
    data = {"password": PASSWORD, "code": user_with_totp.code()}
    texts = report_of_failed_request(client, "post", REGENERATE, data)
    assert RecoveryCode.objects.filter(user=user_with_totp.user, used_at=None).count() == 10
    for text in texts:
        assert "RuntimeError" in text
        assert not RECOVERY_CODE.search(text)


def test_security_page_does_not_end_a_session_that_just_changed_its_password(clock, user_with_totp):
    user = user_with_totp.user
    user.is_staff = True
    user.save()
    mine = logged_in_as(user_with_totp)
    response = mine.post(
        "/admin/password_change/",
        {"old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert response.status_code == 302  # the redirect is not followed yet
    clock.shift(totp.STEP)
    phone = Client()
    assert login_password(phone, password=NEW_PASSWORD).status_code == 302
    assert phone.post(VERIFY, {"code": user_with_totp.code()}).status_code == 302
    assert phone.get("/accounts/security/").status_code == 200  # counts the other sessions
    assert is_logged_in(mine)


# --- Second review: races, a lost key, settings ----------------------------------------------


def test_a_burst_past_the_early_check_is_answered_429_for_wrong_codes_too(
    clock, user_with_totp, monkeypatch
):
    # Simulate a request that read the device before a concurrent one started the back-off:
    # the early check lets it through, and its wrong code is then counted under the row lock.
    TwoFactor.objects.filter(user=user_with_totp.user).update(
        failure_count=5, blocked_until=django_timezone.now() + datetime.timedelta(minutes=1)
    )
    monkeypatch.setattr(flows, "_blocked", lambda device: None)
    client = Client()
    assert login_password(client).status_code == 302
    wrong = "000000" if user_with_totp.code() != "000000" else "111111"
    response = client.post(VERIFY, {"code": wrong})
    assert response.status_code == 429  # like a right code in the same burst: no oracle
    assert user_with_totp.two_factor.failure_count == 6  # and it still counts


@pytest.mark.parametrize("right", [True, False])
def test_a_device_removed_during_verification_sends_back_to_login(
    clock, user_with_totp, monkeypatch, right
):
    client = Client()
    assert login_password(client).status_code == 302
    real_matching_step = flows.totp.matching_step

    def matching_step(secret, code, at, window):
        flows._remove(user_with_totp.user)  # reset meanwhile
        return real_matching_step(secret, code, at, window)

    monkeypatch.setattr(flows.totp, "matching_step", matching_step)
    code = user_with_totp.code() if right else "000000"
    response = client.post(VERIFY, {"code": code})
    assert response.status_code == 302
    assert response["Location"] == LOGIN
    assert not is_logged_in(client)


def test_a_recovery_code_still_works_when_the_key_is_lost(clock, user_with_totp):
    from mfa import crypto

    crypto.write_ring([crypto.new_key()])  # the key that encrypted the secret is gone
    client = Client()
    assert login_password(client).status_code == 302
    assert client.post(VERIFY, {"code": user_with_totp.code()}).status_code == 403
    assert not is_logged_in(client)
    assert login_password(client).status_code == 302
    response = client.post("/accounts/2fa/recovery/", {"code": user_with_totp.codes[0]})
    assert response.status_code == 302
    assert is_logged_in(client)


@pytest.mark.parametrize("rate", ["five/m", "5", "0/m", "5/0m", "5/99999d", "5/x", 5])
def test_a_malformed_rate_setting_is_a_system_check_error(settings, rate):
    from mfa import checks

    settings.MFA_CODE_RATE = rate
    assert [error.id for error in checks.check_rates()] == ["mfa.E006"]


def test_the_default_rates_pass_the_check():
    from mfa import checks

    assert checks.check_rates() == []


def test_login_redirect_default_of_django_works(client, user, settings):
    # A project that sets neither LOGIN_REDIRECT_URL nor LOGOUT_REDIRECT_URL.
    settings.LOGIN_REDIRECT_URL = "/accounts/profile/"
    settings.LOGOUT_REDIRECT_URL = None
    response = login_password(client)
    assert response.status_code == 302
    # /accounts/profile/ resolves to nothing here: the security page instead of a 404.
    assert response["Location"] == "/accounts/security/"
    response = client.post("/accounts/logout/")
    assert response.status_code == 302
    assert response["Location"] == LOGIN


def test_signing_out_other_sessions_is_notified(clock, user_with_totp, mailoutbox):
    here = logged_in_as(user_with_totp)
    clock.shift(totp.STEP)
    there = logged_in_as(user_with_totp)
    response = here.post("/accounts/security/end-sessions/")
    assert response.status_code == 302
    assert not is_logged_in(there)
    assert [m.to for m in mailoutbox] == [[user_with_totp.user.email]]
