"""Remembered browsers: "don't ask again on this browser for N days" (``MFA_REMEMBER_DAYS``).

After a second step with the box ticked, ``issue`` stores a ``RememberedBrowser`` row and the
browser gets a cookie. At a later login, and only after a correct password, ``recognise``
checks that cookie; ``flows.login_remembered`` then completes the login without a code. The
cookie never replaces the password: nothing reads it anywhere else.

The cookie, as a reviewer should check it:

- Its value is ``django.core.signing`` of ``{"u": user pk, "s": selector, "v": verifier}``
  (salt ``mfa.remember``), timestamped: a cookie older than ``MFA_REMEMBER_DAYS`` (as the
  setting is now, so shortening it shortens every cookie) is refused even if its row is not.
  The signature means the server accepts only cookies it issued, and the user pk means one
  user's cookie never counts for another.
- The row (found by ``selector`` and the user) keeps a SHA-256 of the 256-bit random
  verifier, compared in constant time. Not Argon2: a slow hash protects secrets that can be
  guessed (passwords, six-digit codes); nobody can search 2**256 verifiers at any speed, and
  this check runs on every login of the browser. A copy of the table therefore gives no
  usable cookie, and the row can be revoked: deleting it voids the cookie.
- The row keeps an HMAC of the password hash (``password_fingerprint``): a password change
  voids every remembered browser of the user, and the rows are deleted when next seen (at a
  login or on the security page). The fingerprint stays on the server: nothing derived from
  the password goes to the browser.
- ``HttpOnly``, ``SameSite=Lax``, ``Secure`` when ``SESSION_COOKIE_SECURE`` is on or the
  request came over HTTPS, host-only, path ``/``, ``max_age`` the remembered time.

One cookie per browser: it names the latest user who ticked the box there. Another user of the
same browser is asked for a code as usual (their own cookie, if they tick the box, replaces
the first one, whose row is then deleted: no browser holds its verifier any more). A cookie
that fails any check is deleted from the response, except a valid cookie of another user.
The cookie and its verifier are never logged or put in an audit event.
"""

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings as django_settings
from django.core import signing
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac

from . import throttle
from .conf import settings
from .models import RememberedBrowser

__all__ = [
    "Recognition",
    "current_selector",
    "delete_cookie",
    "enabled",
    "forget",
    "forget_all",
    "issue",
    "listed",
    "recognise",
    "set_cookie",
]

logger = logging.getLogger(__name__)

SALT = "mfa.remember"
# Far above any cookie this module issues (about 130 characters): a longer one is refused
# before its signature is computed.
MAX_COOKIE_LENGTH = 512
# Rows a user may have at once; the oldest go first. Each login with the box ticked adds one.
MAX_PER_USER = 20


def enabled() -> bool:
    """Whether browsers may be remembered at all (``MFA_REMEMBER_DAYS`` above 0)."""
    return settings.REMEMBER_DAYS > 0


def _lifetime() -> timedelta:
    return timedelta(days=settings.REMEMBER_DAYS)


def _now():
    return timezone.now()


def _hash(verifier: str) -> str:
    # SHA-256 is enough for a 256-bit random secret (see the module docstring).
    return hashlib.sha256(verifier.encode("ascii")).hexdigest()


def _fingerprint(user: Any) -> str:
    # Its own salt: not interchangeable with the pending login's fingerprint (mfa.flows).
    return salted_hmac("mfa.remember.password", user.password, algorithm="sha256").hexdigest()


def _label(agent: str) -> str:
    """Name the browser and system of a User-Agent roughly ("Firefox on Linux")."""
    browsers = (("Edg/", "Edge"), ("Firefox/", "Firefox"), ("Chrome/", "Chrome"))
    browsers += (("Safari/", "Safari"),)
    systems = (("Android", "Android"), ("iPhone", "iOS"), ("iPad", "iOS"))
    systems += (("Windows", "Windows"), ("Mac OS", "macOS"), ("Linux", "Linux"))
    browser = next((name for token, name in browsers if token in agent), "")
    system = next((name for token, name in systems if token in agent), "")
    if browser and system:
        return f"{browser} on {system}"
    return browser or system


def issue(request: HttpRequest, user: Any) -> str:
    """Remember this browser for ``user``: store a row, return the cookie's value."""
    now = _now()
    _forget_replaced(request)
    owned = RememberedBrowser.objects.filter(user=user)
    owned.filter(expires_at__lte=now).delete()
    selector, verifier = secrets.token_urlsafe(12), secrets.token_urlsafe(32)
    agent = request.META.get("HTTP_USER_AGENT", "")[:500]
    RememberedBrowser.objects.create(
        user=user,
        selector=selector,
        verifier_hash=_hash(verifier),
        password_fingerprint=_fingerprint(user),
        expires_at=now + _lifetime(),
        label=_label(agent),
        ip_address=throttle.client_ip(request),
    )
    keep = owned.values_list("pk", flat=True)[:MAX_PER_USER]
    owned.exclude(pk__in=list(keep)).delete()
    return signing.dumps({"u": str(user.pk), "s": selector, "v": verifier}, salt=SALT)


def _forget_replaced(request: HttpRequest) -> None:
    # The browser's earlier cookie is about to be overwritten: its row could never be used
    # again, whoever's it is. Only a validly signed cookie names a row to delete.
    if (payload := _payload(request)) is not None:
        RememberedBrowser.objects.filter(selector=payload["s"], user_id=payload["u"]).delete()


def set_cookie(request: HttpRequest, response: HttpResponse, value: str) -> None:
    """Put the remembered browser's cookie on ``response``."""
    response.set_cookie(
        settings.REMEMBER_COOKIE_NAME,
        value,
        max_age=int(_lifetime().total_seconds()),
        path="/",
        secure=django_settings.SESSION_COOKIE_SECURE or request.is_secure(),
        httponly=True,
        samesite="Lax",
    )


def delete_cookie(response: HttpResponse) -> None:
    """Tell the browser to drop its remembered-browser cookie."""
    response.delete_cookie(settings.REMEMBER_COOKIE_NAME, path="/", samesite="Lax")


def _payload(request: HttpRequest) -> dict[str, str] | None:
    """The cookie's signed content, or None if it is absent, expired, tampered or malformed."""
    value = request.COOKIES.get(settings.REMEMBER_COOKIE_NAME, "")
    if not value or len(value) > MAX_COOKIE_LENGTH or not enabled():
        return None
    try:
        payload = signing.loads(value, salt=SALT, max_age=_lifetime())
    except signing.BadSignature:  # SignatureExpired too
        return None
    if not isinstance(payload, dict) or not all(
        isinstance(payload.get(key), str) for key in ("u", "s", "v")
    ):
        return None
    return payload


def current_selector(request: HttpRequest) -> str | None:
    """The selector this browser's valid cookie names, if any (to mark "this browser")."""
    payload = _payload(request)
    return payload["s"] if payload is not None else None


@dataclass(frozen=True)
class Recognition:
    """What the cookie said at a password step: a usable row, and whether to drop the cookie."""

    browser: RememberedBrowser | None = None
    drop_cookie: bool = False


def recognise(request: HttpRequest, user: Any) -> Recognition:
    """Check this browser's cookie for ``user``, who has just given the right password.

    Every check must pass: a valid signature younger than the remembered time, this user's pk,
    a row of this user's that has not expired, the same password as when it was remembered,
    and the verifier's hash. Void rows met on the way are deleted.
    """
    if settings.REMEMBER_COOKIE_NAME not in request.COOKIES:
        return Recognition()
    payload = _payload(request)
    if payload is None:
        logger.info("remembered-browser cookie refused for user %s: unreadable", user.pk)
        return Recognition(drop_cookie=True)
    if payload["u"] != str(user.pk):
        # Another user's, still valid for them: kept. This user is asked for a code.
        return Recognition()
    row = RememberedBrowser.objects.filter(user=user, selector=payload["s"]).first()
    reason = _refusal(user, row, payload["v"])
    if reason is not None:
        if row is not None:
            row.delete()
        logger.info("remembered-browser cookie refused for user %s: %s", user.pk, reason)
        return Recognition(drop_cookie=True)
    return Recognition(browser=row)


def _refusal(user: Any, row: RememberedBrowser | None, verifier: str) -> str | None:
    """Why ``row`` does not let ``user`` skip the code (a fixed reason), or None."""
    if row is None:
        return "no such record (forgotten or revoked)"
    if row.expires_at <= _now():
        return "expired"
    fingerprint = _fingerprint(user)
    if not constant_time_compare(row.password_fingerprint, fingerprint):
        # The password changed: every row from before the change is void, not only this one.
        RememberedBrowser.objects.filter(user=user).exclude(
            password_fingerprint=fingerprint
        ).delete()
        return "password changed"
    if not constant_time_compare(row.verifier_hash, _hash(verifier)):
        return "wrong verifier"
    return None


def listed(user: Any) -> list[RememberedBrowser]:
    """The user's remembered browsers that still count, deleting expired or voided ones."""
    owned = RememberedBrowser.objects.filter(user=user)
    owned.filter(expires_at__lte=_now()).delete()
    owned.exclude(password_fingerprint=_fingerprint(user)).delete()
    return list(owned)


def forget(user: Any, pk: int) -> bool:
    """Forget one of the user's remembered browsers; False if it is not theirs or gone."""
    deleted, _by_model = RememberedBrowser.objects.filter(user=user, pk=pk).delete()
    return bool(deleted)


def forget_all(user: Any) -> int:
    """Forget every remembered browser of the user; return how many there were."""
    deleted, _by_model = RememberedBrowser.objects.filter(user=user).delete()
    return deleted
