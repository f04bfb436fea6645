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

``enrol(user)`` gives a user a confirmed second factor as a finished enrolment would (an
encrypted secret, fresh recovery codes), and returns what the user's phone and paper would
hold, so a test can also drive the real login pages::

    from mfa.test import enrol, verified_login

    def test_payments(client, user):
        enrolment = enrol(user)
        verified_login(client, user)           # or post enrolment.code() to the login pages
        assert client.get("/payments/").status_code == 200

No code is checked: this is for tests only, and nothing in the app calls it.
"""

from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_backends
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest

from . import crypto, flows, totp
from .models import TOTPDevice, TwoFactor

__all__ = ["Enrolment", "averified_login", "enrol", "verified_login"]

# The second-factor methods a login records (as mfa.views and mfa.webauthn.views do).
METHODS = ("totp", "recovery code", flows.KEY)


@dataclass
class Enrolment:
    """What an enrolled user holds: the secret in their app, and their recovery codes."""

    user: Any
    secret: str
    recovery_codes: list[str] = field(repr=False)

    def code(self, offset_steps: int = 0) -> str:
        """Return the code the user's app shows now (or ``offset_steps`` steps away)."""
        return totp.code_at(self.secret, totp.step_of(totp.now()) + offset_steps)


def enrol(user: Any, secret: str | None = None) -> Enrolment:
    """Give ``user`` a confirmed TOTP second factor and fresh recovery codes (no views, no
    audit event, no email), as a finished enrolment leaves them."""
    secret = secret or totp.generate_secret()
    TwoFactor.objects.create(user=user)
    TOTPDevice.objects.create(user=user, encrypted_secret=crypto.encrypt_secret(secret, user.pk))
    return Enrolment(user, secret, flows._replace_recovery_codes(user))


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
