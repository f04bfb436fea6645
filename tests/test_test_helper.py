"""mfa.test.verified_login: a session the middleware keeps, where force_login's is ended."""

from importlib import import_module

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings as django_settings

from mfa import sessions
from mfa.models import SecurityEvent, UserSession
from mfa.test import averified_login, verified_login
from tests.conftest import PASSWORD, login_password

pytestmark = pytest.mark.urls("tests.urls_protected")
Kind = SecurityEvent.Kind

ENGINES = [
    "mfa.session_store",
    "django.contrib.sessions.backends.db",
    "django.contrib.sessions.backends.cached_db",
    "django.contrib.sessions.backends.signed_cookies",
]


@pytest.fixture(params=ENGINES)
def engine(request, settings):
    # Set before the client's first request, which builds its SessionMiddleware.
    settings.SESSION_ENGINE = request.param
    return request.param


def test_force_login_of_a_2fa_user_is_ended_by_the_middleware(client, engine, user_with_totp):
    client.force_login(user_with_totp.user)
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/"
    assert client.get("/").status_code == 302  # and it stays logged out


def test_verified_login_is_kept(client, engine, clock, user_with_totp):
    verified_login(client, user_with_totp.user)
    assert client.get("/").status_code == 200
    assert client.get("/").status_code == 200
    # Exactly a completed two-step login: the second factor and a fresh proof are marked.
    assert client.get("/protected/").status_code == 200
    assert client.get("/sudo/").status_code == 200
    assert UserSession.objects.filter(user=user_with_totp.user).count() == 1
    event = SecurityEvent.objects.get(kind=Kind.LOGIN)
    assert (event.user, event.detail) == (user_with_totp.user, "totp")


def test_a_verified_login_can_be_ended_from_elsewhere(client, engine, clock, user_with_totp):
    verified_login(client, user_with_totp.user)
    assert client.get("/").status_code == 200
    store = import_module(django_settings.SESSION_ENGINE).SessionStore
    assert sessions.end_all(user_with_totp.user, store) == 1
    assert client.get("/").status_code == 302


def test_the_method_is_recorded(client, clock, user_with_totp):
    verified_login(client, user_with_totp.user, method="recovery code")
    assert client.get("/protected/").status_code == 200
    assert SecurityEvent.objects.get(kind=Kind.LOGIN).detail == "recovery code"


def test_an_unknown_method_is_refused(client, user_with_totp):
    with pytest.raises(ValueError):
        verified_login(client, user_with_totp.user, method="password")


def test_a_user_without_2fa_gets_a_plain_login(client, engine, clock, user):
    verified_login(client, user)
    assert client.get("/").status_code == 200
    # Not a second factor it does not have: mfa_required still sends it to enrol.
    assert client.get("/protected/")["Location"].startswith("/accounts/2fa/setup/")
    assert SecurityEvent.objects.get(kind=Kind.LOGIN).detail == "password"


def test_it_replaces_the_clients_earlier_login(
    client, clock, user, user_with_totp, django_user_model
):
    bob = django_user_model.objects.create_user("bob", "bob@example.com", "x")
    verified_login(client, bob)
    verified_login(client, user_with_totp.user)
    assert client.get("/").wsgi_request.user == user_with_totp.user
    assert UserSession.objects.filter(user=bob).count() == 0


def test_the_async_client(async_client, clock, user_with_totp):
    async_to_sync(averified_login)(async_client, user_with_totp.user)
    response = async_to_sync(async_client.get)("/protected-async/")
    assert response.status_code == 200


def test_signing_in_as_someone_else_from_a_logged_in_session(client, engine, clock, user):
    # The real flow, which verified_login shares: login() flushes the other user's session,
    # and the new one was registered without a key (a server error).
    other = type(user).objects.create_user("bob", "bob@example.com", PASSWORD)
    assert login_password(client, "bob").status_code == 302
    assert login_password(client, "alice").status_code == 302
    assert client.get("/").wsgi_request.user == user
    assert not UserSession.objects.filter(user=other).exists()
