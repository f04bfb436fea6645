"""Sessions an engine keeps nothing of on the server: signed cookies, and keys too long to hold.

With ``signed_cookies`` the session key is the whole signed cookie (hundreds of characters,
new at every save) and the engine says that no session exists, ever. The registration holds
no key then: the login's INSERT fits its column (on PostgreSQL it failed: a server error at
every login), the security page does not forget the other sessions (and the middleware does
not log them out), and "sign out everywhere else" still ends them, by their sid.
"""

import pytest
from django.conf import settings as django_settings
from django.contrib.sessions.backends.cache import SessionStore as CacheSessionStore
from django.test import Client
from django.utils.crypto import get_random_string

from mfa import sessions, totp
from mfa.models import UserSession
from tests.conftest import full_login, is_logged_in, require_services

SIGNED_COOKIES = "django.contrib.sessions.backends.signed_cookies"
SECURITY = "/accounts/security/"
END_SESSIONS = "/accounts/security/end-sessions/"


class SessionStore(CacheSessionStore):
    """A server-side engine whose keys are longer than a registration's column."""

    def _get_new_session_key(self) -> str:
        return get_random_string(64)


@pytest.fixture
def signed_cookies(settings):
    # Set before the clients' first request, which builds their SessionMiddleware.
    settings.SESSION_ENGINE = SIGNED_COOKIES


def logged_in(enrolled, clock) -> Client:
    """A new client through both login steps, one time step after the last one."""
    clock.shift(totp.STEP)  # every login's code is a new one: the replay guard holds
    client = Client()
    assert full_login(client, enrolled).status_code == 302
    assert is_logged_in(client)
    return client


def other_sessions(client) -> int:
    response = client.get(SECURITY)
    assert response.status_code == 200
    return response.context["other_sessions"]


def cookie(client) -> str:
    return client.cookies[django_settings.SESSION_COOKIE_NAME].value


def registration(client) -> UserSession:
    return UserSession.objects.get(sid=client.session[sessions.SID_KEY])


def test_a_signed_cookie_session_is_registered_without_its_key(
    signed_cookies, clock, user_with_totp
):
    client = logged_in(user_with_totp, clock)
    assert len(cookie(client)) > 40  # what did not fit the column
    assert registration(client).session_key == ""
    client.get("/")  # the key changes at every save; nothing follows it
    assert registration(client).session_key == ""


def test_the_security_page_keeps_the_other_signed_cookie_sessions(
    signed_cookies, clock, user_with_totp
):
    phone = logged_in(user_with_totp, clock)
    laptop = logged_in(user_with_totp, clock)
    assert other_sessions(laptop) == 1
    assert other_sessions(laptop) == 1  # still there after counting once
    assert is_logged_in(phone)
    assert other_sessions(phone) == 1


def test_signing_out_elsewhere_ends_the_other_signed_cookie_sessions(
    signed_cookies, clock, user_with_totp
):
    phone = logged_in(user_with_totp, clock)
    laptop = logged_in(user_with_totp, clock)
    assert laptop.post(END_SESSIONS).status_code == 302
    assert not is_logged_in(phone)  # its cookie still verifies: its sid ended it
    assert is_logged_in(laptop)
    assert other_sessions(laptop) == 0


def test_a_keyless_registration_counts_until_a_cookie_age_after_its_login(
    signed_cookies, settings, clock, user_with_totp
):
    logged_in(user_with_totp, clock)
    clock.shift(settings.SESSION_COOKIE_AGE - 2 * totp.STEP)
    laptop = logged_in(user_with_totp, clock)
    assert other_sessions(laptop) == 1  # not yet that old
    clock.shift(2 * totp.STEP)
    assert other_sessions(laptop) == 0  # older than any cookie of its login: forgotten
    assert UserSession.objects.filter(user=user_with_totp.user).count() == 1


def test_a_key_too_long_for_the_column_is_not_registered(settings, clock, user_with_totp):
    settings.SESSION_ENGINE = __name__
    phone = logged_in(user_with_totp, clock)
    assert len(cookie(phone)) == 64
    assert registration(phone).session_key == ""
    laptop = logged_in(user_with_totp, clock)
    assert other_sessions(laptop) == 1
    assert laptop.post(END_SESSIONS).status_code == 302
    assert not is_logged_in(phone)
    assert is_logged_in(laptop)


@pytest.mark.services
def test_signed_cookie_sessions_on_postgresql(signed_cookies, clock, user_with_totp):
    # The column's length is enforced here (SQLite ignores it): the whole flow, for real.
    require_services()
    phone = logged_in(user_with_totp, clock)
    laptop = logged_in(user_with_totp, clock)
    assert other_sessions(laptop) == 1
    assert is_logged_in(phone)
    assert laptop.post(END_SESSIONS).status_code == 302
    assert not is_logged_in(phone)
    assert is_logged_in(laptop)
