"""The login's security-key step: the options request's own rate limit and its refusal while
the account is backed off, and the "don't ask again" box honoured on the key step.

Real ceremonies from the software authenticator (tests/soft_authenticator.py), as in
tests/test_webauthn.py; the back-off is reached through wrong codes, never by writing rows.
"""

from urllib.parse import urlparse

import pytest
from django.test import Client

from mfa import checks
from mfa.conf import settings as mfa_settings
from mfa.models import RememberedBrowser, SecurityEvent
from mfa.webauthn import ceremonies

from .conftest import is_logged_in, login_password, make_user
from .soft_authenticator import SoftAuthenticator
from .test_webauthn import give_key

Kind = SecurityEvent.Kind
VERIFY = "/accounts/2fa/verify/"
KEY_LOGIN = "/accounts/2fa/key/"
KEY_OPTIONS = "/accounts/2fa/key/options/"
COOKIE = "mfa_remember"


@pytest.fixture(autouse=True)
def relying_party(settings):
    settings.MFA_WEBAUTHN_RP_ID = "example.com"
    settings.MFA_WEBAUTHN_ORIGINS = ["https://example.com"]


@pytest.fixture
def keyed(user_with_totp):
    return user_with_totp, give_key(user_with_totp.user)


def pending(client, username="alice"):
    response = login_password(client, username)
    assert response.status_code == 302
    assert urlparse(response["Location"]).path == VERIFY


def challenge(client):
    """The challenge this session holds (None: none was made)."""
    return client.session.get(ceremonies.CHALLENGE_KEY)


def options(client) -> dict:
    response = client.post(KEY_OPTIONS)
    assert response.status_code == 200, response
    return response.json()


def assert_refused(response, retry_after: int | None = None):
    assert response.status_code == 429
    assert response.json() == {"error": "too many"}
    assert int(response["Retry-After"]) >= 1
    if retry_after is not None:
        assert int(response["Retry-After"]) == retry_after


def back_off(client, enrolled, count: int):
    """Count ``count`` wrong codes on the pending login (the way an attacker would)."""
    for _ in range(count):
        client.post(VERIFY, {"code": enrolled.code(offset_steps=10)})


# --- The options request's rate limit --------------------------------------------------------


def test_options_are_refused_after_their_budget_and_make_no_challenge(
    client, clock, keyed, settings
):
    settings.MFA_WEBAUTHN_OPTIONS_RATE = "3/m"
    _enrolled, key = keyed
    pending(client)
    for _ in range(3):
        last = options(client)
    held = challenge(client)
    response = client.post(KEY_OPTIONS)
    assert_refused(response)
    assert int(response["Retry-After"]) <= 60
    assert challenge(client) == held, "a refused request made a new challenge"
    # The challenge made before the refusal still answers.
    assert client.post(KEY_LOGIN, {"credential": key.get(last)}).status_code == 302
    assert is_logged_in(client)


def test_the_options_budget_is_per_pending_account_whatever_the_session(clock, keyed, settings):
    settings.MFA_WEBAUTHN_OPTIONS_RATE = "2/m"
    first, second = Client(), Client(REMOTE_ADDR="192.0.2.9")
    pending(first)
    pending(second)  # another browser, another address: the same account
    options(first)
    options(second)
    assert_refused(first.post(KEY_OPTIONS))
    assert_refused(second.post(KEY_OPTIONS))


def test_the_options_budget_per_address_spans_accounts(clock, keyed, settings):
    settings.MFA_WEBAUTHN_OPTIONS_IP_RATE = "2/m"
    give_key(make_user("bob").user)
    alice, bob = Client(), Client()  # the same address (127.0.0.1)
    pending(alice)
    pending(bob, "bob")
    options(alice)
    options(bob)
    assert_refused(bob.post(KEY_OPTIONS))
    other = Client(REMOTE_ADDR="192.0.2.9")  # alice again, from elsewhere: still served
    pending(other)
    options(other)


def test_options_do_not_spend_the_code_budget(client, clock, keyed, settings):
    """Asking for a challenge is not a guess: the user who cancels the prompt keeps a code."""
    settings.MFA_CODE_RATE = "2/m"
    enrolled, _key = keyed
    pending(client)
    for _ in range(5):
        options(client)
    response = client.post(VERIFY, {"code": enrolled.code()})
    assert response.status_code == 302
    assert is_logged_in(client)


@pytest.mark.parametrize("name", ["WEBAUTHN_OPTIONS_RATE", "WEBAUTHN_OPTIONS_IP_RATE"])
def test_a_malformed_options_rate_is_a_system_check_error(settings, name):
    setattr(settings, f"MFA_{name}", "ten/m")
    assert [error.id for error in checks.check_rates()] == ["mfa.E006"]


# --- Backed off or locked: no challenge ------------------------------------------------------


def test_a_backed_off_account_gets_no_challenge(client, clock, keyed, settings):
    settings.MFA_BACKOFF_AFTER = 3
    settings.MFA_BACKOFF_BASE = 120  # shorter than the pending login (MFA_PENDING_TIMEOUT)
    enrolled, _key = keyed
    pending(client)
    back_off(client, enrolled, 3)
    response = client.post(KEY_OPTIONS)
    assert_refused(response, retry_after=120)
    assert challenge(client) is None
    clock.shift(121)  # the back-off is over: a challenge again
    options(client)
    assert challenge(client) is not None


def test_a_locked_account_gets_no_challenge(client, clock, keyed, settings):
    settings.MFA_BACKOFF_AFTER = 5
    settings.MFA_LOCKOUT_AFTER = 3
    enrolled, _key = keyed
    pending(client)
    back_off(client, enrolled, 3)
    assert_refused(client.post(KEY_OPTIONS), retry_after=mfa_settings.BACKOFF_MAX)
    assert challenge(client) is None


def test_an_answer_to_a_challenge_made_before_the_back_off_is_refused(
    client, clock, keyed, settings
):
    settings.MFA_BACKOFF_AFTER = 2
    enrolled, key = keyed
    pending(client)
    wrong = key.get(options(client), rp_id="evil.test")
    assert client.post(KEY_LOGIN, {"credential": wrong}).status_code == 400  # the first failure
    answer = key.get(options(client))  # made while the account could still be tried
    back_off(client, enrolled, 1)  # the second failure: backed off
    assert client.post(KEY_LOGIN, {"credential": answer}).status_code == 429
    assert not is_logged_in(client)


def test_the_rate_limits_refusal_waits_for_the_back_off(client, clock, keyed, settings):
    """Retry-After must not send the user back while the account is still backed off."""
    settings.MFA_BACKOFF_AFTER = 3
    settings.MFA_BACKOFF_BASE = 600
    settings.MFA_WEBAUTHN_OPTIONS_RATE = "1/m"
    enrolled, _key = keyed
    pending(client)
    back_off(client, enrolled, 3)
    assert_refused(client.post(KEY_OPTIONS), retry_after=600)  # the back-off refuses
    clock.shift(10)
    assert_refused(client.post(KEY_OPTIONS), retry_after=590)  # the rate limit does
    assert challenge(client) is None


# --- "Don't ask again on this browser" on the key step ---------------------------------------


def sign_in_with_key(client, key: SoftAuthenticator, **extra):
    pending(client)
    return client.post(KEY_LOGIN, {"credential": key.get(options(client)), **extra})


def assert_asked_for_a_code(client):
    client.post("/accounts/logout/")
    assert not is_logged_in(client)
    pending(client)
    assert not is_logged_in(client)


def test_the_box_ticked_on_the_key_step_remembers_the_browser(
    client, clock, keyed, mailoutbox, django_capture_on_commit_callbacks
):
    enrolled, key = keyed
    with django_capture_on_commit_callbacks(execute=True):
        response = sign_in_with_key(client, key, remember="on")
    assert response.status_code == 302
    assert is_logged_in(client)
    assert response.cookies[COOKIE].value
    row = RememberedBrowser.objects.get()
    assert row.user == enrolled.user
    assert SecurityEvent.objects.filter(kind=Kind.BROWSER_REMEMBERED).count() == 1
    assert SecurityEvent.objects.filter(kind=Kind.LOGIN, detail="security key").count() == 1
    subjects = [message.subject for message in mailoutbox]
    assert "A browser will sign in to your account without a code" in subjects

    client.post("/accounts/logout/")
    assert not is_logged_in(client)
    response = login_password(client)
    assert response.status_code == 302
    assert urlparse(response["Location"]).path != VERIFY
    assert is_logged_in(client), "the remembered browser was asked for a second factor"
    assert SecurityEvent.objects.filter(kind=Kind.REMEMBERED_LOGIN).count() == 1


def test_the_box_not_ticked_remembers_nothing(client, clock, keyed):
    _enrolled, key = keyed
    response = sign_in_with_key(client, key, remember="")
    assert response.status_code == 302
    assert is_logged_in(client)
    assert COOKIE not in response.cookies
    assert not RememberedBrowser.objects.exists()
    assert_asked_for_a_code(client)


def test_a_refused_key_remembers_nothing_even_ticked(client, clock, keyed):
    _enrolled, key = keyed
    pending(client)
    answer = key.get(options(client), origin="https://example.com.evil.test")
    response = client.post(KEY_LOGIN, {"credential": answer, "remember": "on"})
    assert response.status_code == 400
    assert COOKIE not in response.cookies
    assert not RememberedBrowser.objects.exists()
    assert not SecurityEvent.objects.filter(kind=Kind.BROWSER_REMEMBERED).exists()
    # The page comes back with the box still ticked, for the next try.
    assert b'id="id_remember" value="on" checked' in response.content


def test_remember_days_zero_remembers_nothing_even_posted(client, clock, keyed, settings):
    settings.MFA_REMEMBER_DAYS = 0
    _enrolled, key = keyed
    pending(client)
    page = client.get(VERIFY).content
    assert b'name="remember"' not in page and b"data-remember" not in page
    response = client.post(KEY_LOGIN, {"credential": key.get(options(client)), "remember": "on"})
    assert response.status_code == 302
    assert is_logged_in(client)
    assert COOKIE not in response.cookies
    assert not RememberedBrowser.objects.exists()
    assert_asked_for_a_code(client)


def test_the_key_form_carries_the_pages_one_box(client, clock, keyed):
    pending(client)
    page = client.get(VERIFY).content.decode()
    assert page.count('type="checkbox" name="remember"') == 1
    key_form = page[page.index('data-webauthn="get"') :]
    key_form = key_form[: key_form.index("</form>")]
    assert 'data-remember="#id_remember"' in key_form
    assert '<input type="hidden" name="remember" value="">' in key_form


def test_a_user_without_a_key_still_remembers_with_a_code(client, clock, user_with_totp):
    """The code step is unchanged by the shared acceptance (views._acceptance)."""
    pending(client)
    response = client.post(VERIFY, {"code": user_with_totp.code(), "remember": "on"})
    assert response.status_code == 302
    assert response.cookies[COOKIE].value
    assert RememberedBrowser.objects.filter(user=user_with_totp.user).count() == 1
