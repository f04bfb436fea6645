"""Regression tests of the outside review (issue 15) outside the admin.

Error reports hide every secret held by a helper's frame; the home page is never cached; a
pending login is bound to the device its password step saw. Each test fails with its fix undone.
"""

import logging
import sys
from urllib.parse import quote

import django
import pyotp
import pytest
from django.test import Client
from django.utils.cache import get_max_age
from django.utils.log import AdminEmailHandler
from django.views.debug import ExceptionReporter

from mfa import crypto, flows, recovery, totp
from mfa.models import RecoveryCode, SecurityEvent
from mfa.totp import views as totp_views
from tests.conftest import enrol, full_login, is_logged_in, login_password

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"
VERIFY = "/accounts/2fa/verify/"
RECOVERY = "/accounts/2fa/recovery/"


# --- the home page is never cached -----------------------------------------------------------


def test_home_page_is_not_stored(clock, user_with_totp):
    client = Client()
    assert full_login(client, user_with_totp).status_code == 302
    response = client.get("/")
    assert response.status_code == 200
    assert user_with_totp.user.get_username() in response.text
    directives = {d.strip() for d in response["Cache-Control"].split(",")}
    assert {"no-store", "private"} <= directives
    assert get_max_age(response) == 0


# --- a pending login is bound to the device its password step saw ----------------------------


@pytest.mark.parametrize("second_step", ["totp", "recovery"])
def test_pending_login_does_not_survive_a_reset_and_a_new_enrolment(
    clock, user_with_totp, second_step
):
    client = Client()
    assert login_password(client).status_code == 302
    user = user_with_totp.user
    assert flows.reset(user, "admin root")
    enrolled_again = enrol(user)  # by the user, or by whoever has the password
    clock.shift(totp.STEP)
    if second_step == "totp":
        response = client.post(VERIFY, {"code": enrolled_again.code()})
    else:
        response = client.post(RECOVERY, {"code": enrolled_again.codes[0]})
    assert response.status_code == 302
    assert response["Location"].startswith(LOGIN)
    assert not is_logged_in(client)
    assert flows.PENDING_KEY not in client.session
    assert not SecurityEvent.objects.filter(user=user, kind=SecurityEvent.Kind.LOGIN).exists()
    # The code was not spent either: a fresh login with it still works.
    assert RecoveryCode.objects.filter(user=user, used_at__isnull=False).count() == 0
    assert full_login(Client(), enrolled_again).status_code == 302


def test_pending_login_with_the_same_device_still_works(clock, user_with_totp):
    client = Client()
    assert login_password(client).status_code == 302
    assert client.post(VERIFY, {"code": user_with_totp.code()}).status_code == 302
    assert is_logged_in(client)


def test_a_marker_naming_no_two_factor_row_is_dropped(clock, user_with_totp):
    # A marker written before markers named their TwoFactor row: start again, not guess.
    client = Client()
    assert login_password(client).status_code == 302
    session = client.session
    del session[flows.PENDING_KEY]["2fa"]
    session.save()
    response = client.post(VERIFY, {"code": user_with_totp.code()})
    assert response.status_code == 302 and response["Location"].startswith(LOGIN)
    assert not is_logged_in(client)


# --- error reports hide every frame that holds a secret or a fresh code ----------------------

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"  # 160 bits, base32
URI = totp.provisioning_uri(SECRET, "alice", "Example")
VERIFIER = "ABCDEFGHJKMNP"  # 13 characters of the recovery alphabet
CODE = recovery.format_code("XYZ", VERIFIER)


class Boom(Exception):
    """The forced failure; its message names nothing secret."""


def boom(*args, **kwargs):
    raise Boom("forced")


def _unbound_for_another_user():
    crypto._unbind(crypto._bind(SECRET, 1), 2)


def _reencrypt_with_a_failing_unbind(monkeypatch):
    ring = crypto.current()
    token = ring.encrypt(SECRET, 1)
    monkeypatch.setattr(crypto, "_unbind", boom)
    ring.reencrypt(token, 1)


class _Unprintable:
    def __str__(self):
        raise Boom("forced")


class FailingHasher:
    hash = verify = staticmethod(boom)


def _generate_failing_on_the_second_code(monkeypatch):
    calls = iter([VERIFIER[:3], VERIFIER])
    monkeypatch.setattr(recovery, "_random", lambda length: next(calls, None) or boom())
    recovery.generate(2)


# Each case calls one helper directly (so no decorated caller hides it) and makes it fail
# while a secret or a code is among its locals.
HELPERS = {
    "totp.code_at": lambda mp: (mp.setattr(pyotp.TOTP, "at", boom), totp.code_at(SECRET, 1)),
    "totp.matching_step": lambda mp: (
        mp.setattr(pyotp.TOTP, "at", boom),
        totp.matching_step(SECRET, "123456", 1e9),
    ),
    "totp.provisioning_uri": lambda mp: (
        mp.setattr(totp, "urlencode", boom),
        totp.provisioning_uri(SECRET, "alice", "Example"),
    ),
    "totp.group_secret": lambda mp: totp.group_secret(SECRET, size=0),
    "totp.views.qr_data_uri": lambda mp: (
        mp.setattr(totp_views.qrcode, "make", boom),
        totp_views.qr_data_uri(URI),
    ),
    "crypto._bind": lambda mp: crypto._bind(SECRET, _Unprintable()),
    "crypto._unbind": lambda mp: _unbound_for_another_user(),
    "crypto.KeyRing.encrypt": lambda mp: (
        mp.setattr(crypto, "_bind", boom),
        crypto.current().encrypt(SECRET, 1),
    ),
    "crypto.KeyRing.decrypt": lambda mp: (
        token := crypto.encrypt_secret(SECRET, 1),
        mp.setattr(crypto, "_unbind", boom),
        crypto.current().decrypt(token, 1),
    ),
    "crypto.KeyRing.reencrypt": _reencrypt_with_a_failing_unbind,
    "crypto.encrypt_secret": lambda mp: (
        mp.setattr(crypto.KeyRing, "encrypt", boom),
        crypto.encrypt_secret(SECRET, 1),
    ),
    "recovery.format_code": lambda mp: (
        mp.setattr(recovery, "CODE_LENGTH", None),
        recovery.format_code("XYZ", VERIFIER),
    ),
    "recovery.generate": _generate_failing_on_the_second_code,
    "recovery.parse": lambda mp: (mp.setattr(recovery, "ParsedCode", boom), recovery.parse(CODE)),
    "recovery.hash_verifier": lambda mp: (
        mp.setattr(recovery, "HASHER", FailingHasher()),
        recovery.hash_verifier("XYZ", VERIFIER),
    ),
    "recovery.verify": lambda mp: (
        mp.setattr(recovery, "HASHER", FailingHasher()),
        recovery.verify(None, recovery.ParsedCode("XYZ", VERIFIER)),
    ),
}
NEEDLES = [SECRET, totp.group_secret(SECRET), URI, quote(SECRET), VERIFIER, CODE]


def reports(request, exc_info) -> list[str]:
    """The error page and the error email, as text and HTML, of ``exc_info``."""
    texts = []
    for is_email in (False, True):
        reporter = ExceptionReporter(request, *exc_info, is_email=is_email)
        texts += [reporter.get_traceback_text(), reporter.get_traceback_html()]
    return texts


def assert_reveals_nothing(texts, exc_type):
    for text in texts:
        assert exc_type.__name__ in text  # the report is real...
        for needle in NEEDLES:  # ...and names no secret
            assert needle not in text


@pytest.mark.parametrize("helper", sorted(HELPERS))
def test_error_reports_hide_the_locals_of_every_helper_with_a_secret(settings, monkeypatch, helper):
    settings.DEBUG = False  # the filter hides nothing while DEBUG is on (Django's choice)
    try:
        HELPERS[helper](monkeypatch)
    except Exception:
        exc_type, exc_value, tb = sys.exc_info()
    else:
        pytest.fail(f"{helper} did not fail")
    # From the helper down: this test's own frame holds the secret as a constant.
    texts = reports(None, (exc_type, exc_value, tb.tb_next))
    function = helper.rsplit(".", 1)[-1]
    assert all(f"in {function}" in text for text in texts[::2])  # its frame is reported
    assert_reveals_nothing(texts, exc_type)


def test_the_check_sees_a_secret_in_an_unprotected_frame(settings):
    # The assertion above can fail: the same report of an unprotected frame shows the secret.
    settings.DEBUG = False

    def unprotected(secret):
        raise Boom("forced")

    try:
        unprotected(SECRET)
    except Boom:
        exc_type, exc_value, tb = sys.exc_info()
    with pytest.raises(AssertionError):
        assert_reveals_nothing(reports(None, (exc_type, exc_value, tb.tb_next)), exc_type)


def test_error_email_of_the_setup_page_hides_secret_and_uri(
    settings, monkeypatch, clock, user, mailoutbox
):
    """A failing QR code on the setup page: the admins' email names neither secret nor URI."""
    settings.DEBUG = False
    # Django 6.0 takes addresses (and deprecates the pairs that 5.2 requires).
    settings.ADMINS = (
        ["ops@example.com"] if django.VERSION >= (6, 0) else [("Ops", "ops@example.com")]
    )
    monkeypatch.setattr(flows.totp, "generate_secret", lambda: SECRET)
    monkeypatch.setattr(totp_views.qrcode, "make", boom)
    handler = AdminEmailHandler(include_html=True)
    logger = logging.getLogger("django.request")
    logger.addHandler(handler)
    client = Client(raise_request_exception=False)
    try:
        assert login_password(client).status_code == 302
        assert client.get("/accounts/2fa/setup/").status_code == 500
    finally:
        logger.removeHandler(handler)
    # Django's own mail_admins handler (DEFAULT_LOGGING) sends one too, as text only.
    emails = [m for m in mailoutbox if m.to == ["ops@example.com"]]
    bodies = [m.body for m in emails] + [c for m in emails for c, _mime in m.alternatives]
    assert len(emails) == 2 and len(bodies) == 3
    assert all("Boom" in body for body in bodies)
    for body in bodies:
        for needle in NEEDLES:
            assert needle not in body
