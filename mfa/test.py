"""Helpers for the site's own tests: log a test client in as the two-step login would.

Django's ``client.force_login(user)`` makes a session that did not come through the two-step
login. For a user with 2FA, ``mfa.middleware.SecondFactorMiddleware`` ends such a session at
its first request, as it would a real one made by some other login view. Use instead::

    from mfa.test import verified_login

    def test_dashboard(client, user_with_2fa):
        verified_login(client, user_with_2fa)
        assert client.get("/dashboard/").status_code == 200

``verified_login`` runs the app's own last step of a login (``flows.complete_login``) on the
client's session, so the session is exactly what a completed two-step login makes: the user
logged in, the session registered with ``mfa.sessions``, the password and the second factor
marked as proved just now (``mfa_required`` and ``reauth_required`` views open). As in a real
login, Django's ``user_logged_in`` and ``mfa.signals.login_verified`` are sent and a ``login``
audit event is written. A user without 2FA gets a plain login (``method`` is then ignored).
It works with every session engine, ``signed_cookies`` and ``cached_db`` included, and with
``Client`` and ``AsyncClient`` (``averified_login`` from async tests).

No code is checked: this is for tests only, and nothing in the app calls it.
"""

from importlib import import_module
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_backends
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest

from . import flows

__all__ = ["averified_login", "verified_login"]

# The second-factor methods a login records ("totp" or "recovery code", as mfa.views does).
METHODS = ("totp", "recovery code")


def verified_login(
    client: Any, user: Any, method: str = "totp", backend: str | None = None
) -> None:
    """Log ``client`` in as ``user`` through the app's last login step (see the module)."""
    if method not in METHODS:
        raise ValueError(f"verified_login: method must be one of {METHODS}")
    engine = import_module(settings.SESSION_ENGINE)
    cookie = client.cookies.get(settings.SESSION_COOKIE_NAME)
    request = HttpRequest()
    request.META.update({"REMOTE_ADDR": "127.0.0.1", "HTTP_USER_AGENT": "mfa.test"})
    # The client's own session if it has one, as a browser's login would continue it.
    request.session = engine.SessionStore(cookie.value if cookie else None)
    request.user = AnonymousUser()
    user.backend = backend or _backend_path()
    flows.complete_login(request, user, method=method if flows.has_2fa(user) else "password")
    request.session.save()
    _set_session_cookie(client, request.session.session_key)


async def averified_login(
    client: Any, user: Any, method: str = "totp", backend: str | None = None
) -> None:
    """``verified_login`` for async tests (an ``AsyncClient``)."""
    await sync_to_async(verified_login)(client, user, method, backend)


def _backend_path() -> str:
    # As Client.force_login: the first configured backend.
    backend = get_backends()[0]
    return f"{backend.__module__}.{backend.__class__.__name__}"


def _set_session_cookie(client: Any, session_key: str) -> None:
    # What SessionMiddleware would set (as Django's Client does in force_login).
    name = settings.SESSION_COOKIE_NAME
    client.cookies[name] = session_key
    client.cookies[name].update(
        {
            "max-age": None,
            "path": "/",
            "domain": settings.SESSION_COOKIE_DOMAIN,
            "secure": settings.SESSION_COOKIE_SECURE or None,
            "expires": None,
        }
    )
