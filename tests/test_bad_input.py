"""Malformed input on every form of the flow: refused with 400/403/405, never a 500, never in.

The Django test client re-raises a view's exception, so a 500 would fail these tests even
before the status assertion.
"""

import pytest
from django.test import Client

from mfa import crypto, flows, totp
from mfa.models import TOTPDevice, TwoFactor
from tests.conftest import (
    PASSWORD,
    Enrolled,
    enrolling_secret,
    full_login,
    is_logged_in,
    login_password,
)

pytestmark = pytest.mark.django_db

VERIFY = "/accounts/2fa/verify/"
SETUP = "/accounts/2fa/setup/"
DISABLE = "/accounts/2fa/disable/"
LOGIN = "/accounts/login/"
LOGOUT = "/accounts/logout/"
REFUSED = {400, 403, 405}

BAD_CODES = {
    "empty": "",
    "blank": "   ",
    "one megabyte": "1" * 1_000_000,
    "just over the limit": "1" * 65,
    "letters": "abcdef",
    "arabic-indic digits": "١٢٣٤٥٦",
    "fullwidth digits": "１２３４５６",
    "superscript digits": "¹²³⁴⁵⁶",
    "five digits": "12345",
    "seven digits": "1234567",
    "null byte": "123\x00456",
    "sql": "' OR 1=1 --",
    "html": "<script>alert(1)</script>",
    "plus sign": "+12345",
    "dot": "12345.",
}


def grouped(code: str) -> dict[str, str]:
    return {
        "space": f"{code[:3]} {code[3:]}",
        "dash": f"{code[:3]}-{code[3:]}",
        "outer whitespace": f"  {code}\t",
        "pairs": f"{code[:2]} {code[2:4]} {code[4:]}",
    }


@pytest.fixture(autouse=True)
def generous_rates(settings):
    # The rate limits are not under test here; many malformed posts must not turn into 429s.
    for name in ("CODE", "CODE_IP", "LOGIN_USER", "LOGIN_IP", "CHANGE"):
        setattr(settings, f"MFA_{name}_RATE", "10000/m")


@pytest.fixture
def user_with_totp(user):
    """Like conftest's, without the ten Argon2-hashed recovery codes (not used here)."""
    secret = totp.generate_secret()
    TwoFactor.objects.create(user=user)
    TOTPDevice.objects.create(user=user, encrypted_secret=crypto.encrypt_secret(secret, user.pk))
    return Enrolled(user, secret, [])


@pytest.fixture
def pending(client, clock, user_with_totp):
    assert login_password(client).status_code == 302
    return user_with_totp


@pytest.fixture
def setting_up(client, clock, user):
    assert login_password(client).status_code == 302
    assert client.get(SETUP).status_code == 200
    return user


@pytest.fixture
def enrolled_in(client, clock, user_with_totp):
    assert full_login(client, user_with_totp).status_code == 302
    clock.shift(totp.STEP)  # the login spent the current step
    return user_with_totp


# --- /accounts/2fa/verify/ ------------------------------------------------------------------


@pytest.mark.parametrize("raw", BAD_CODES.values(), ids=BAD_CODES.keys())
def test_verify_bad_code(client, pending, raw):
    response = client.post(VERIFY, {"code": raw})
    assert response.status_code == 400
    assert not is_logged_in(client)
    # Malformed input is not a guess: it does not count towards the back-off.
    assert pending.two_factor.failure_count == 0


def test_verify_missing_field(client, pending):
    assert client.post(VERIFY, {}).status_code == 400
    assert client.post(VERIFY, {"cod": pending.code()}).status_code == 400
    assert not is_logged_in(client)


@pytest.mark.parametrize("style", ["space", "dash", "outer whitespace", "pairs"])
def test_verify_grouped_correct_code_is_accepted(client, pending, style):
    response = client.post(VERIFY, {"code": grouped(pending.code())[style]})
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert is_logged_in(client)


def test_verify_repeated_field_is_not_a_bypass(client, pending):
    # Two values: the form reads one of them; with a wrong one in the mix nothing breaks.
    response = client.post(VERIFY, {"code": ["abc", "١٢٣٤٥٦"]})
    assert response.status_code == 400
    assert not is_logged_in(client)


# --- /accounts/2fa/setup/ -------------------------------------------------------------------


@pytest.mark.parametrize("raw", BAD_CODES.values(), ids=BAD_CODES.keys())
def test_setup_bad_code(client, setting_up, raw):
    response = client.post(SETUP, {"code": raw})
    assert response.status_code == 400
    assert not TOTPDevice.objects.exists()


def test_setup_missing_field(client, setting_up):
    assert client.post(SETUP, {}).status_code == 400
    assert not TOTPDevice.objects.exists()


@pytest.mark.parametrize("style", ["space", "dash"])
def test_setup_grouped_correct_code_is_accepted(client, setting_up, style):
    secret = enrolling_secret(client)
    code = totp.code_at(secret, totp.step_of(totp.now()))
    response = client.post(SETUP, {"code": grouped(code)[style]})
    # Success answers with the page of fresh recovery codes.
    assert response.status_code == 200
    assert TOTPDevice.objects.filter(user=setting_up).exists()


# --- /accounts/2fa/disable/ -----------------------------------------------------------------


@pytest.mark.parametrize("raw", BAD_CODES.values(), ids=BAD_CODES.keys())
def test_disable_bad_code(client, enrolled_in, raw):
    response = client.post(DISABLE, {"password": PASSWORD, "code": raw})
    assert response.status_code == 400
    assert TOTPDevice.objects.filter(user=enrolled_in.user).exists()


@pytest.mark.parametrize(
    "data",
    [{}, {"password": PASSWORD}, {"code": "000000"}, {"password": "", "code": ""}],
    ids=["nothing", "no code", "no password", "both empty"],
)
def test_disable_missing_fields(client, enrolled_in, data):
    assert client.post(DISABLE, data).status_code == 400
    assert TOTPDevice.objects.filter(user=enrolled_in.user).exists()


def test_disable_huge_password(client, enrolled_in):
    response = client.post(DISABLE, {"password": "x" * 1_000_000, "code": enrolled_in.code()})
    assert response.status_code == 400
    assert TOTPDevice.objects.filter(user=enrolled_in.user).exists()


@pytest.mark.parametrize("style", ["space", "dash"])
def test_disable_grouped_correct_code_is_accepted(client, enrolled_in, style):
    code = grouped(enrolled_in.code())[style]
    response = client.post(DISABLE, {"password": PASSWORD, "code": code})
    assert response.status_code == 302
    assert not TOTPDevice.objects.filter(user=enrolled_in.user).exists()


# --- /accounts/login/ -----------------------------------------------------------------------

BAD_LOGINS = {
    "nothing": {},
    "no password": {"username": "alice"},
    "no username": {"password": PASSWORD},
    "empty": {"username": "", "password": ""},
    "wrong password": {"username": "alice", "password": "nope"},
    "huge password": {"username": "alice", "password": "x" * 1_000_000},
    "huge username": {"username": "a" * 1_000_000, "password": PASSWORD},
    "non-ascii username": {"username": "алиса", "password": PASSWORD},
    "null byte": {"username": "ali\x00ce", "password": PASSWORD},
    "password with null": {"username": "alice", "password": PASSWORD + "\x00"},
}


@pytest.mark.parametrize("data", BAD_LOGINS.values(), ids=BAD_LOGINS.keys())
@pytest.mark.parametrize("with_2fa", [False, True], ids=["plain", "2fa"])
def test_login_bad_input(client, clock, user, data, with_2fa):
    if with_2fa:
        TwoFactor.objects.create(user=user)
        TOTPDevice.objects.create(
            user=user, encrypted_secret=crypto.encrypt_secret(totp.generate_secret(), user.pk)
        )
    response = client.post(LOGIN, data)
    assert response.status_code == 400
    assert not is_logged_in(client)
    assert flows.PENDING_KEY not in client.session


# --- Text in another charset: a multipart body declared UTF-7 -------------------------------
#
# Django refuses a urlencoded body in any charset but UTF-8, not a multipart one. In UTF-7,
# "+2AA-" decodes to a lone surrogate (U+D800), which neither the database nor the password
# hasher can encode: it must be a form error, and still counted by the rate limits.

BOUNDARY = "mfa-test-boundary"
LONE_SURROGATE_UTF7 = "+2AA-"


def post_utf7(client, url: str, fields: dict[str, str]):
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    ]
    body = ("".join(parts) + f"--{BOUNDARY}--\r\n").encode("ascii")
    content_type = f"multipart/form-data; boundary={BOUNDARY}; charset=utf-7"
    return client.generic("POST", url, body, content_type=content_type)


@pytest.mark.parametrize("field", ["username", "password"])
def test_login_with_a_lone_surrogate_is_refused_and_counted(client, clock, user, settings, field):
    settings.MFA_LOGIN_IP_RATE = "3/m"
    fields = {"username": "alice", "password": PASSWORD}
    fields[field] += LONE_SURROGATE_UTF7
    statuses = [post_utf7(client, LOGIN, fields).status_code for _ in range(5)]
    assert statuses == [400, 400, 400, 429, 429]
    assert not is_logged_in(client)


@pytest.mark.parametrize("field", ["password", "code"])
def test_reauthentication_with_a_lone_surrogate_is_refused(client, enrolled_in, field):
    fields = {"password": PASSWORD, "code": enrolled_in.code()}
    fields[field] += LONE_SURROGATE_UTF7
    assert post_utf7(client, DISABLE, fields).status_code == 400
    assert TOTPDevice.objects.filter(user=enrolled_in.user).exists()


@pytest.mark.parametrize("url", [VERIFY, "/accounts/2fa/recovery/"])
def test_second_step_with_a_lone_surrogate_is_refused(client, pending, url):
    assert post_utf7(client, url, {"code": "123" + LONE_SURROGATE_UTF7}).status_code == 400
    assert not is_logged_in(client)


# --- Wrong methods --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["put", "delete", "patch"])
@pytest.mark.parametrize("url", [LOGIN, VERIFY, SETUP, DISABLE])
def test_wrong_method(client, clock, user, method, url):
    # Logged in (no 2FA) so that login_required does not answer first.
    assert login_password(client).status_code == 302
    response = getattr(client, method)(url)
    assert response.status_code == 405


def test_head_is_answered_like_get_without_a_body(client, pending):
    for url in (VERIFY, LOGIN):
        response = client.head(url)
        assert response.status_code == 200 and response.content == b""
    assert not is_logged_in(client)


@pytest.mark.parametrize("method", ["put", "delete"])
def test_wrong_method_on_verify_while_pending(client, pending, method):
    response = getattr(client, method)(VERIFY, "code=" + pending.code())
    assert response.status_code == 405
    assert not is_logged_in(client)


def test_wrong_method_on_disable_while_enrolled(client, enrolled_in):
    assert client.delete(DISABLE).status_code == 405
    assert TOTPDevice.objects.filter(user=enrolled_in.user).exists()


def test_logout_by_get_is_refused(client, clock, user):
    login_password(client)
    assert client.get(LOGOUT).status_code == 405
    assert is_logged_in(client)


# --- Missing CSRF token ---------------------------------------------------------------------


def csrf_client() -> tuple[Client, str]:
    """A client that enforces CSRF, with the token the login page handed out."""
    client = Client(enforce_csrf_checks=True)
    assert client.get(LOGIN).status_code == 200
    return client, client.cookies["csrftoken"].value


def test_login_without_csrf(clock, user):
    client, _ = csrf_client()
    response = client.post(LOGIN, {"username": "alice", "password": PASSWORD})
    assert response.status_code == 403
    assert not is_logged_in(client)


def test_a_stale_form_gets_the_sites_own_page_within_its_csp(clock, user):
    # Signed in, then out, in another tab: the login form of this tab holds an old token.
    client, token = csrf_client()
    client.cookies["csrftoken"] = "x" * 32  # the cookie changed under the page
    data = {"username": "alice", "password": PASSWORD, "csrfmiddlewaretoken": token}
    response = client.post(LOGIN, data)
    assert response.status_code == 403
    html = response.content.decode()
    assert "This form has expired" in html and 'href="/accounts/login/"' in html
    assert "<style" not in html and " style=" not in html  # Django's own page breaks the CSP
    assert not is_logged_in(client)


def test_login_with_csrf_works(clock, user):
    # The other side: the same request with its token goes through.
    client, token = csrf_client()
    data = {"username": "alice", "password": PASSWORD, "csrfmiddlewaretoken": token}
    assert client.post(LOGIN, data).status_code == 302
    assert is_logged_in(client)


def test_verify_without_csrf(clock, user_with_totp):
    client, token = csrf_client()
    data = {"username": "alice", "password": PASSWORD, "csrfmiddlewaretoken": token}
    assert client.post(LOGIN, data).status_code == 302
    response = client.post(VERIFY, {"code": user_with_totp.code()})
    assert response.status_code == 403
    assert not is_logged_in(client)


def test_setup_without_csrf(clock, user):
    client, token = csrf_client()
    data = {"username": "alice", "password": PASSWORD, "csrfmiddlewaretoken": token}
    assert client.post(LOGIN, data).status_code == 302
    assert client.get(SETUP).status_code == 200
    secret = enrolling_secret(client)
    response = client.post(SETUP, {"code": totp.code_at(secret, totp.step_of(totp.now()))})
    assert response.status_code == 403
    assert not TOTPDevice.objects.exists()


def test_disable_without_csrf(clock, user_with_totp):
    client, token = csrf_client()
    data = {"username": "alice", "password": PASSWORD, "csrfmiddlewaretoken": token}
    assert client.post(LOGIN, data).status_code == 302
    token = client.cookies["csrftoken"].value
    verify = {"code": user_with_totp.code(), "csrfmiddlewaretoken": token}
    assert client.post(VERIFY, verify).status_code == 302
    clock.shift(totp.STEP)
    response = client.post(DISABLE, {"password": PASSWORD, "code": user_with_totp.code()})
    assert response.status_code == 403
    assert TOTPDevice.objects.filter(user=user_with_totp.user).exists()


def test_logout_without_csrf(clock, user):
    client, token = csrf_client()
    data = {"username": "alice", "password": PASSWORD, "csrfmiddlewaretoken": token}
    assert client.post(LOGIN, data).status_code == 302
    assert client.post(LOGOUT).status_code == 403
    assert is_logged_in(client)
