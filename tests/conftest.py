"""Shared fixtures: a throw-away key ring, users with and without 2FA, and a frozen clock.

The clock: ``mfa.totp.now`` is the only time source of the TOTP checks, and Django's
``timezone.now`` feeds the back-off. ``clock`` freezes both with time-machine, so a test names
the instant it runs at and moves it forward explicitly, never sleeps.
"""

import logging
import os
import re
from importlib.util import find_spec

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.cache import cache
from django.test import Client

from mfa import crypto, flows, totp
from mfa import test as mfa_test
from mfa.models import TOTPDevice, TwoFactor

PASSWORD = "correct horse battery staple"
# Not a round number of steps, so "the code now" and "the code 30 s ago" differ.
T0 = 1_800_000_007.0


@pytest.fixture(autouse=True)
def key_ring(settings, tmp_path, monkeypatch):
    """Give every test its own key ring, in a fresh directory, mode 0600."""
    monkeypatch.delenv("MFA_FERNET_KEYS", raising=False)
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir(mode=0o700)
    settings.MFA_KEYS_DIR = str(keys_dir)
    crypto.write_ring([crypto.new_key()])
    yield keys_dir
    crypto.reload()


@pytest.fixture(autouse=True)
def _clear_cache():
    """Rate-limit counters live in the cache: start every test with none."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def clock():
    """Freeze time at T0; ``clock.shift(seconds)`` moves it."""
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


@pytest.fixture
def mfa_log(caplog):
    """Capture the "mfa" logger at DEBUG (it does not propagate to the root logger)."""
    logger = logging.getLogger("mfa")
    old_level = logger.level
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.DEBUG)
    caplog.handler.setLevel(logging.DEBUG)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(old_level)


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("alice", "alice@example.com", PASSWORD)


class Enrolled:
    """A user with a confirmed TOTP device, their secret and their recovery codes."""

    def __init__(self, user, secret: str, codes: list[str]):
        self.user = user
        self.secret = secret
        self.codes = codes

    def code(self, offset_steps: int = 0) -> str:
        return totp.code_at(self.secret, totp.step_of(totp.now()) + offset_steps)

    @property
    def device(self) -> TOTPDevice:
        return TOTPDevice.objects.get(user=self.user)

    @property
    def two_factor(self) -> TwoFactor:
        """The user's TwoFactor row: where the back-off of every factor is counted."""
        return TwoFactor.objects.get(user=self.user)


def enrol(user, secret: str | None = None) -> Enrolled:
    """Create the rows that a confirmed enrolment creates, without going through the views."""
    enrolment = mfa_test.enrol(user, secret)
    return Enrolled(user, enrolment.secret, enrolment.recovery_codes)


@pytest.fixture
def user_with_totp(user) -> Enrolled:
    return enrol(user)


def login_password(client, username="alice", password=PASSWORD, **extra):
    return client.post("/accounts/login/", {"username": username, "password": password, **extra})


def full_login(client, enrolled: Enrolled, offset_steps: int = 0):
    """Log in through both steps; return the response of the second."""
    response = login_password(client, enrolled.user.get_username())
    assert response.status_code == 302, response
    return client.post("/accounts/2fa/verify/", {"code": enrolled.code(offset_steps)})


def make_user(username: str, *, staff=False, superuser=False, perms=()) -> Enrolled:
    """An enrolled user, staff or superuser as asked, with the named permissions."""
    user = get_user_model().objects.create_user(username, f"{username}@example.com", PASSWORD)
    user.is_staff = staff or superuser
    user.is_superuser = superuser
    user.save()
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return enrol(user)


def logged_in_as(enrolled: Enrolled) -> Client:
    """A new client, logged in through both steps as ``enrolled``."""
    client = Client()
    assert full_login(client, enrolled).status_code == 302
    return client


def is_logged_in(client) -> bool:
    """True if the client's session is fully authenticated (the home page answers 200)."""
    return client.get("/").status_code == 200


def enrolling_secret(client) -> str:
    """The secret being enrolled in ``client``'s session (kept there encrypted)."""
    session = client.session
    return crypto.decrypt_secret(session[flows.ENROL_KEY], session["_auth_user_id"])


def secret_from_setup_page(html: str) -> str:
    match = re.search(r'id="secret">([A-Z2-7 ]+)<', html)
    assert match, "the setup page shows the secret as text"
    return match.group(1).replace(" ", "")


# The demo's Content-Security-Policy comes from Django's own middleware, new in Django 6.0: on
# 5.2 the demo's settings serve none (and check --deploy says so, mfa.W014).
needs_django_csp = pytest.mark.skipif(
    find_spec("django.utils.csp") is None,
    reason="Django 5.2 has no CSP middleware (django.utils.csp is new in 6.0): no policy to test",
)


def require_services():
    """Skip (or, under CI, fail) when the real PostgreSQL and Redis are not configured."""
    if os.environ.get("MFA_TEST_SERVICES"):
        return
    if os.environ.get("CI"):
        pytest.fail("CI must run the PostgreSQL/Redis tests: set MFA_TEST_SERVICES (./run test)")
    pytest.skip("PostgreSQL and Redis pass only (./run test runs it when both are reachable)")


__all__ = [
    "PASSWORD",
    "T0",
    "Enrolled",
    "enrol",
    "enrolling_secret",
    "full_login",
    "is_logged_in",
    "logged_in_as",
    "login_password",
    "make_user",
    "needs_django_csp",
    "require_services",
    "secret_from_setup_page",
]
