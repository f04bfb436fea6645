"""Every state change of the second factor, each with its audit event and notice.

Views call these and stay thin; nothing here renders a page. The functions that accept a code
return an ``Outcome``, so that each view maps the same small set of answers to responses.

The login, as a reviewer should check it:

1. ``begin_pending_login``: the password was right and the user has 2FA (a ``TwoFactor``
   row: an authenticator app, security keys, or both). The session key is cycled (a logged-in
   session is ended instead) and the session holds only a marker (user id, backend, time, the
   TwoFactor row's id, and an HMAC of the password hash). ``login()`` is NOT called: the user
   stays anonymous.
2. ``pending_user``: each second-step request re-reads the marker, and drops it if it has
   expired, the user is gone or inactive, or the password changed meanwhile. A TwoFactor row
   other than the one the marker names (reset and enrolled again meanwhile) is answered
   ``GONE``.
3. ``verify_totp`` / ``verify_recovery_code`` / ``verify_webauthn``: checks the back-off on the
   TwoFactor row (one budget for every factor), checks the answer (decrypting the TOTP secret,
   failing closed; one Argon2 verification; or the key's signature), and consumes it with
   conditional UPDATEs in the same transaction as step 4 (``on_accept``).
4. ``complete_login``: only now ``login()``, which cycles the session key again, and the
   session is registered so that it can be ended from elsewhere (``mfa.sessions``).

A remembered browser (``mfa.remember``) replaces steps 1 to 3, never the password: after a
correct password, ``login_remembered`` goes straight to step 4 while the second factor is
neither backed off nor locked. Turning 2FA off, a reset and "sign out other sessions" forget
every remembered browser of the user.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from importlib import import_module
from typing import Any

from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.contrib.auth import login as auth_login
from django.contrib.auth.models import AnonymousUser
from django.db import transaction
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac
from django.views.decorators.debug import sensitive_variables

from . import crypto, notify, recovery, remember, sessions, signals, throttle, totp
from .conf import settings
from .models import (
    RecoveryCode,
    RememberedBrowser,
    SecurityEvent,
    TOTPDevice,
    TwoFactor,
    WebAuthnCredential,
)
from .webauthn import ceremonies

__all__ = [
    "OnAccept",
    "NeedsStepUp",
    "Outcome",
    "Removal",
    "Result",
    "abandon_pending_login",
    "backed_off",
    "begin_enrolment",
    "begin_pending_login",
    "complete_login",
    "confirm_enrolment",
    "disable",
    "end_other_sessions",
    "forget_browsers",
    "has_2fa",
    "has_app",
    "has_factor",
    "has_imported_codes",
    "login_remembered",
    "mark_reauthenticated",
    "needs_step_up",
    "pending_user",
    "read_secret",
    "recently_authenticated",
    "reauthenticated_within",
    "record",
    "refusal",
    "regenerate_recovery_codes",
    "remember_browser",
    "remove_app",
    "remove_factor",
    "reset",
    "second_factor_verified",
    "two_factor_pk",
    "unlock",
    "unused_code_count",
    "verify_any_code",
    "verify_recovery_code",
    "verify_totp",
    "verify_webauthn",
    "webauthn_binding",
]

logger = logging.getLogger(__name__)
Kind = SecurityEvent.Kind

OnAccept = Callable[[], None]
# The method names of the second factors in the audit trail and the signals.
TOTP, RECOVERY, KEY = "totp", "recovery code", "security key"

PENDING_KEY = "_mfa_pending"
# Set by ``pending_user`` on the user it returns: the TwoFactor row the password step saw.
PENDING_ROW_ATTR = "_mfa_pending_two_factor"
# When the password was last proved in this session (login or re-authentication).
AUTH_AT_KEY = "_mfa_auth_at"
# When a second factor was last proved in this session (the login's second step, the
# confirmation of an enrolment, a re-authentication with a code). Never set by a password
# alone, so ``mfa.decorators`` can tell a session that used its second factor.
VERIFIED_AT_KEY = "_mfa_verified_at"
# When a remembered browser stood in for the second factor at this session's login: enough
# for ``mfa_required``, never a fresh proof for ``reauth_required`` (which asks for a code).
REMEMBERED_AT_KEY = "_mfa_remembered_at"
# The login method (audit detail, signal) of a login that a remembered browser let skip the code.
REMEMBERED = "remembered browser"
ENROL_KEY = "_mfa_enrol_secret"
# Set after a factor change, so the security page offers to sign out every other session.
OFFER_END_SESSIONS_KEY = "_mfa_offer_end_sessions"


class Result(Enum):
    OK = "ok"
    INVALID = "invalid"  # wrong code (counted as a failure)
    REPLAY = "replay"  # a correct code of a step already used (not a guess: not counted)
    BLOCKED = "blocked"  # backed off or locked: not even checked
    UNREADABLE = "unreadable"  # no key decrypts the secret: fail closed
    GONE = "gone"  # no second factor (any more): reset by an admin, or turned off elsewhere
    ABSENT = "absent"  # a code for an app the user does not have (keys only): not counted
    STALE = "stale"  # a security key's answer to no live challenge (expired, used): not counted


@dataclass(frozen=True)
class Outcome:
    result: Result
    retry_after: int = 0
    locked: bool = False

    @property
    def ok(self) -> bool:
        return self.result is Result.OK


def _now():
    # The clock of the back-off (Django's timezone.now reads the server's time.time, like
    # totp.now, which the code checks and the session timestamps use).
    return timezone.now()


# --- Audit ----------------------------------------------------------------------------------


def record(request: HttpRequest | None, user: Any, kind: str, detail: str = "") -> SecurityEvent:
    """Write an audit event, and log it without any secret."""
    ip = throttle.client_ip(request) if request is not None else None
    agent = request.META.get("HTTP_USER_AGENT", "") if request is not None else ""
    # Printable only: a NUL byte would make PostgreSQL refuse the row (and the login with it).
    agent = "".join(ch for ch in agent[:300] if ch.isprintable())
    event = SecurityEvent.objects.create(
        user=user if user is not None and user.pk else None,
        kind=kind,
        ip_address=ip,
        user_agent=agent,
        detail=detail[:200],
    )
    logger.info(
        "security event %s user=%s ip=%s%s",
        kind,
        getattr(user, "pk", None),
        ip,
        f" ({detail})" if detail else "",
    )
    return event


def has_2fa(user: Any) -> bool:
    """Whether ``user`` has two-factor authentication on (an app, security keys, or both)."""
    return two_factor_pk(user) is not None


def has_app(user: Any) -> bool:
    """Whether ``user`` has a confirmed authenticator app (TOTP)."""
    return user.pk is not None and TOTPDevice.objects.filter(user=user).exists()


def needs_step_up(request: HttpRequest) -> bool:
    """Whether this session's user has 2FA but the session never used it (it signed in with
    the password before the user enrolled elsewhere): it must prove a second factor first."""
    return has_2fa(request.user) and not second_factor_verified(request)


def two_factor_pk(user: Any) -> int | None:
    """The id of the user's TwoFactor row, or None without 2FA."""
    if user.pk is None:
        return None
    return TwoFactor.objects.filter(user=user).values_list("pk", flat=True).first()


# --- The pending login ----------------------------------------------------------------------


def _password_fingerprint(user: Any) -> str:
    # Changes whenever the password does, so a marker minted before a password change (reset
    # by the owner, or by an admin who suspects a leak) cannot be finished afterwards.
    return salted_hmac("mfa.pending-login", user.password, algorithm="sha256").hexdigest()


@transaction.atomic
def begin_pending_login(request: HttpRequest, user: Any, next_url: str, row: int) -> None:
    """Remember that ``user`` passed the password step, without logging them in.

    ``row`` is ``two_factor_pk(user)``, which the caller has just read to know that the user
    has 2FA.
    """
    if request.user.is_authenticated:
        # Logging in again from a logged-in session: that session ends here. Cycling its key
        # instead would keep it logged in under a key that "sign out other sessions" and the
        # user's other safeguards would not know.
        sessions.forget(request.session)
        request.session.flush()
        request.user = AnonymousUser()
    else:
        request.session.cycle_key()
    _notice_abandoned(request, user)
    request.session[PENDING_KEY] = {
        "uid": str(user.pk),
        "backend": user.backend,
        "at": int(totp.now()),
        "pw": _password_fingerprint(user),
        # The TwoFactor row, not just "has 2FA": an admin reset deletes the row and enrolment
        # makes a new one, so a marker from before a reset cannot be finished with a factor
        # enrolled after it (perhaps by whoever has the password).
        "2fa": row,
        "next": next_url,
    }
    record(request, user, Kind.PASSWORD_OK)
    _save_session(request)


def _notice_abandoned(request: HttpRequest, user: Any) -> None:
    """Tell the owner of an earlier password step that neither a login nor a notice followed.

    ASVS 6.3.5: someone who has the password but not the second factor may simply stop at the
    code. Found at the next password step of the user, which every login with 2FA takes: one
    look at the latest PASSWORD_OK, so the cost is bounded whatever the history.
    """
    last_ok = _latest_event(user, Kind.PASSWORD_OK, Kind.LOGIN, Kind.SUSPICIOUS)
    if last_ok is None or last_ok.kind != Kind.PASSWORD_OK:
        return  # none yet, or it was completed or already reported
    recent = last_ok.created_at > _now() - timedelta(seconds=settings.PENDING_TIMEOUT)
    if recent and last_ok.ip_address == throttle.client_ip(request):
        return  # still in its time, from the same address: the back button, a double submit
    _suspicious(request, user, "sign-in abandoned after the password")


def pending_user(request: HttpRequest) -> tuple[Any, str] | None:
    """Return the pending user and their ``next`` URL, or None (and drop a stale marker)."""
    marker = request.session.get(PENDING_KEY)
    if not isinstance(marker, dict):
        return None
    age = totp.now() - marker.get("at", 0)
    user = None
    if 0 <= age <= settings.PENDING_TIMEOUT:
        user = get_user_model()._default_manager.filter(pk=marker.get("uid")).first()
    if (
        user is None
        or not user.is_active
        or not constant_time_compare(marker.get("pw", ""), _password_fingerprint(user))
        or not isinstance(marker.get("2fa"), int)
    ):
        request.session.pop(PENDING_KEY, None)
        return None
    user.backend = marker["backend"]
    # The verify functions look for this row only (``_two_factor``): another one is GONE.
    setattr(user, PENDING_ROW_ATTR, marker["2fa"])
    return user, marker.get("next", "")


def abandon_pending_login(request: HttpRequest) -> None:
    request.session.pop(PENDING_KEY, None)


@transaction.atomic(savepoint=False)  # nested in the code's acceptance: no savepoint needed
def complete_login(request: HttpRequest, user: Any, method: str) -> None:
    """Log the user in: the second factor (or no second factor) has been satisfied.

    One transaction: the new session, the last-login time, the session's registration and the
    audit event commit together (one commit for the whole step on the login's hot path).
    """
    request.session.pop(PENDING_KEY, None)
    request.session.pop(VERIFIED_AT_KEY, None)  # proved again below, or not in this login
    request.session.pop(REMEMBERED_AT_KEY, None)
    sessions.forget(request.session)  # logging in again from a logged-in session
    auth_login(request, user, backend=getattr(user, "backend", None))
    sessions.register(request, user)
    mark_reauthenticated(request, second_factor=method not in ("password", REMEMBERED))
    if method == REMEMBERED:
        request.session[REMEMBERED_AT_KEY] = int(totp.now())
    record(request, user, Kind.LOGIN, detail=method)
    if method != "password":
        signals.send(signals.login_verified, request, user, method=method)
    _save_session(request)


@transaction.atomic
def login_remembered(request: HttpRequest, user: Any, browser: RememberedBrowser) -> bool:
    """Log ``user`` in without a code: the password was right and ``browser`` recognised.

    Returns False, and changes nothing, while the second factor is backed off or locked (a
    remembered browser does not get round what the failures decided: the user goes to the
    code step, which says when to try again), or when the row was forgotten meanwhile.
    """
    row = _two_factor(user)
    if row is None or _blocked(row) is not None:
        return False
    now = _now()
    used = RememberedBrowser.objects.filter(pk=browser.pk, expires_at__gt=now).update(
        last_used_at=now
    )
    if not used:
        return False
    # The password step of a pending login reports an earlier abandoned one: so must this.
    _notice_abandoned(request, user)
    record(request, user, Kind.REMEMBERED_LOGIN, detail=f"browser {browser.pk}")
    complete_login(request, user, method=REMEMBERED)
    return True


def remember_browser(request: HttpRequest, user: Any) -> str:
    """Remember this browser for ``user`` after a second step; return the cookie's value.

    Called in the code's acceptance transaction, so the row exists only if the login happened.
    """
    value = remember.issue(request, user)
    record(request, user, Kind.BROWSER_REMEMBERED, detail=f"{settings.REMEMBER_DAYS} days")
    # The owner hears of it, as of a key added: a phisher who relayed one code would otherwise
    # keep signing in with the password alone, unnoticed. Only once the login has committed.
    transaction.on_commit(lambda: notify.send(user, Kind.BROWSER_REMEMBERED))
    return value


def forget_browsers(request: HttpRequest, user: Any, pk: int | None = None) -> int:
    """Forget one remembered browser of the user (``pk``), or all of them; return how many."""
    count = remember.forget_all(user) if pk is None else int(remember.forget(user, pk))
    if count:
        record(request, user, Kind.BROWSER_FORGOTTEN, detail="all" if pk is None else "one")
    return count


def _save_session(request: HttpRequest) -> None:
    # Written inside the step's transaction, so the new session commits together with the
    # rest of the step, or not at all. With mfa.session_store this is the session's only write
    # in the request: SessionMiddleware's save finds nothing changed since.
    request.session.save()


def mark_reauthenticated(request: HttpRequest, second_factor: bool = False) -> None:
    """Note that the user proved their password (and perhaps a second factor) just now.

    The password alone (``second_factor=False``, the setup's confirmation) never counts as
    the proof ``reauthenticated_within`` asks of a user who has a second factor.
    """
    now = int(totp.now())
    request.session[AUTH_AT_KEY] = now
    if second_factor:
        request.session[VERIFIED_AT_KEY] = now


def recently_authenticated(request: HttpRequest) -> bool:
    """Whether the password was proved within ``MFA_REAUTH_AGE`` seconds in this session.

    Adding a second factor needs it: a stolen, hours-old session must not be able to enrol
    the thief's authenticator and so lock the owner out of their own account.
    """
    return _proved_within(request, AUTH_AT_KEY, settings.REAUTH_AGE)


def second_factor_verified(request: HttpRequest) -> bool:
    """Whether a second factor was proved in this session, at any time (``mfa_required``).

    A login on a remembered browser counts: the browser proved the factor when remembered.
    """
    return isinstance(request.session.get(VERIFIED_AT_KEY), int) or isinstance(
        request.session.get(REMEMBERED_AT_KEY), int
    )


def reauthenticated_within(request: HttpRequest, max_age: int) -> bool:
    """Whether the logged-in user proved the password, and a second factor if they have one,
    within ``max_age`` seconds in this session (``reauth_required``).

    Each proof is dated on its own: the password of the login or of a re-authentication, the
    code of the login, of the enrolment or of a re-authentication.
    """
    if not _proved_within(request, AUTH_AT_KEY, max_age):
        return False
    return not has_2fa(request.user) or _proved_within(request, VERIFIED_AT_KEY, max_age)


def _proved_within(request: HttpRequest, key: str, max_age: int) -> bool:
    at = request.session.get(key)
    # Not in the future either: a marker written under a clock that has since gone back.
    return isinstance(at, int) and 0 <= totp.now() - at <= max_age


# --- Verifying codes ------------------------------------------------------------------------


def _failed(request: HttpRequest, user: Any, row: TwoFactor, detail: str, method: str) -> Outcome:
    now = _now()
    failure = throttle.record_failure(row.pk, now)
    if failure is None:
        return Outcome(Result.GONE)
    row = failure.row
    record(request, user, Kind.MFA_FAILED, detail=detail)
    signals.send(signals.verification_failed, request, user, method=method, reason="invalid")
    if row.failure_count == settings.BACKOFF_AFTER:
        # ASVS 6.3.5: the password was right, the second factor repeatedly wrong (also in a
        # re-authentication, where a session thief may be trying codes).
        _suspicious(request, user, f"{row.failure_count} failures")
    elif _first_failure_of_pending_login(request, user):
        # The first wrong code after a right password: whoever has the password gets no free
        # guesses between the owner's logins (each login resets the count above).
        _suspicious(request, user, "wrong code after the password")
    if row.failure_count == settings.LOCKOUT_AFTER:
        record(request, user, Kind.LOCKED, detail=f"{row.failure_count} failures")
        signals.send(signals.locked, request, user)
        notify.send(user, Kind.LOCKED)
    elif row.blocked_until is not None and row.failure_count >= settings.BACKOFF_AFTER:
        record(request, user, Kind.BACKOFF, detail=f"{row.failure_count} failures")
    if failure.refused is not None:
        # A burst that got past the early check after the back-off began: answered like a
        # right code in the same burst would be (429), so the answer reveals nothing.
        return _blocked(row) or Outcome(Result.BLOCKED, retry_after=1)
    return Outcome(Result.INVALID)


def _first_failure_of_pending_login(request: HttpRequest | None, user: Any) -> bool:
    session = getattr(request, "session", None)  # None outside a request (a command)
    marker = session.get(PENDING_KEY) if session is not None else None
    if not isinstance(marker, dict) or marker.get("uid") != str(user.pk):
        return False  # a re-authentication: the session was already logged in
    # Once per pending login, not once per code: nothing reported since its password step.
    latest = _latest_event(user, Kind.PASSWORD_OK, Kind.SUSPICIOUS)
    return latest is None or latest.kind != Kind.SUSPICIOUS


def _latest_event(user: Any, *kinds: str) -> SecurityEvent | None:
    """The user's newest audit event of these kinds: one indexed look, whatever the history."""
    return (
        SecurityEvent.objects.filter(user=user, kind__in=kinds)
        .order_by("-pk")
        .only("kind", "created_at", "ip_address")
        .first()
    )


def _suspicious(request: HttpRequest | None, user: Any, detail: str) -> None:
    """Record a right password with a wrong or missing second factor; tell the owner, rarely.

    Every occurrence is audited; the email goes out at most once per
    MFA_SUSPICIOUS_NOTICE_INTERVAL, so that it cannot be used to flood the owner.
    """
    since = _now() - timedelta(seconds=settings.SUSPICIOUS_NOTICE_INTERVAL)
    told = SecurityEvent.objects.filter(
        user=user, kind=Kind.SUSPICIOUS, created_at__gt=since
    ).exists()
    record(request, user, Kind.SUSPICIOUS, detail=detail)
    if not told:
        notify.send(user, Kind.SUSPICIOUS)


def _blocked(row: TwoFactor) -> Outcome | None:
    limited = throttle.blocked_for(row, _now())
    if limited is None:
        return None
    return Outcome(Result.BLOCKED, retry_after=limited.retry_after, locked=limited.locked)


def refusal(user: Any, limited: throttle.Limited) -> throttle.Limited | Outcome:
    """A rate limit's refusal, or the database back-off's when that one lasts longer.

    The two layers count over different times: Retry-After must not send the user back while
    the account is still backed off (or locked). Read only when a rate limit refuses.
    """
    blocked = backed_off(user)
    if blocked is not None and (blocked.locked or blocked.retry_after > limited.retry_after):
        return blocked
    return limited


def backed_off(user: Any) -> Outcome | None:
    """The back-off's (or the lock's) refusal of the user's second factor, else None.

    For the requests that check nothing but would cost something, such as minting a security
    key's challenge: while every answer is refused unchecked, nothing is worth preparing.
    """
    row = _two_factor(user)
    return _blocked(row) if row is not None else None


@sensitive_variables()
def read_secret(request: HttpRequest | None, user: Any, device: TOTPDevice) -> str | None:
    """Decrypt the user's secret, or log loudly and return None: never let anyone in."""
    try:
        return crypto.decrypt_secret(device.encrypted_secret, user.pk)
    except crypto.UndecryptableSecret as exc:
        logger.error(
            "TOTP secret of user %s cannot be decrypted (%s); the login is refused. "
            "Check the key ring (python manage.py mfa_keys status).",
            user.pk,
            exc,
        )
        record(request, user, Kind.SECRET_UNREADABLE)
        return None


def _two_factor(user: Any) -> TwoFactor | None:
    rows = TwoFactor.objects.filter(user=user)
    # In a pending login, only the row its password step saw (see begin_pending_login).
    if (pk := getattr(user, PENDING_ROW_ATTR, None)) is not None:
        rows = rows.filter(pk=pk)
    return rows.first()


def _usable(row_pk: int, now) -> "QuerySet[TwoFactor]":
    """The TwoFactor row, only while it is neither locked nor backed off at ``now``."""
    return TwoFactor.objects.filter(pk=row_pk, locked_at__isnull=True).filter(
        Q(blocked_until__isnull=True) | Q(blocked_until__lte=now)
    )


class _Refused(Exception):
    """Rolls back a half-done acceptance."""

    def __init__(self, outcome: "Outcome | None" = None):
        self.outcome = outcome


def _accept(row: TwoFactor, user: Any, now) -> None:
    """Start the failure budget over, in the acceptance's transaction; or raise ``_Refused``
    when the row was backed off, locked or deleted since the first check."""
    if not _usable(row.pk, now).update(failure_count=0, blocked_until=None):
        current = _two_factor(user)
        raise _Refused(_blocked(current) if current else Outcome(Result.GONE))


@sensitive_variables()
def verify_totp(
    request: HttpRequest, user: Any, code: str, on_accept: OnAccept | None = None
) -> Outcome:
    """Check a normalised 6-digit code and, if right and new, consume its time step.

    ``on_accept`` runs in the transaction that consumes the code (``complete_login`` for the
    login), so the code is spent if and only if what it was for happened.
    """
    row = _two_factor(user)
    if row is None:
        return Outcome(Result.GONE)
    if blocked := _blocked(row):
        return blocked
    device = TOTPDevice.objects.filter(user=user).first()
    if device is None:
        return Outcome(Result.ABSENT)  # keys only: no code can be right, none is a guess
    secret = read_secret(request, user, device)
    if secret is None:
        return Outcome(Result.UNREADABLE)
    step = totp.matching_step(secret, code, totp.now(), settings.VALID_WINDOW)
    if step is None:
        return _failed(request, user, row, "wrong code", TOTP)
    try:
        with transaction.atomic():
            # The back-off (first: every acceptance locks the TwoFactor row before its
            # factor's row), then the replay guard: of any number of requests racing with this
            # code, on any number of processes, exactly one finds a step to move forward.
            _accept(row, user, _now())
            if not TOTPDevice.objects.filter(pk=device.pk, last_used_step__lt=step).update(
                last_used_step=step
            ):
                raise _Refused()
            if on_accept is not None:
                on_accept()
    except _Refused as refused:
        if refused.outcome is not None:
            return refused.outcome
        # A correct code of a step already used: refused, recorded, not counted as a guess.
        record(request, user, Kind.MFA_FAILED, detail="code already used")
        signals.send(signals.verification_failed, request, user, method="totp", reason="replay")
        return Outcome(Result.REPLAY)
    return Outcome(Result.OK)


@sensitive_variables()
def verify_recovery_code(
    request: HttpRequest,
    user: Any,
    parsed: recovery.ParsedCode,
    on_accept: OnAccept | None = None,
) -> Outcome:
    """Check a parsed recovery code with one Argon2 verification and, if right, use it up."""
    row = _two_factor(user)
    if row is None:
        return Outcome(Result.GONE)
    if blocked := _blocked(row):
        return blocked
    # Used codes are kept (until the next regeneration), so a code used a moment ago is found,
    # verified like any other, and answered as a replay rather than counted as a guess.
    stored = (
        RecoveryCode.objects.filter(user=user, selector__in=parsed.selectors)
        .only("pk", "code_hash", "used_at")
        .first()
    )
    if not recovery.verify(stored.code_hash if stored else None, parsed):
        return _failed(request, user, row, "wrong recovery code", RECOVERY)
    now = _now()
    try:
        with transaction.atomic():
            if stored.used_at is not None:
                raise _Refused()
            # A success, like a TOTP code: the failure budget starts over; but not while the
            # account is backed off or locked, which may have happened since the check above.
            _accept(row, user, now)
            # One-time: of any number of requests racing with this code, one updates the row.
            if not RecoveryCode.objects.filter(pk=stored.pk, used_at__isnull=True).update(
                used_at=now
            ):
                raise _Refused()
            # In the same transaction as the code's use and the login: all of it or none.
            remaining = unused_code_count(user)
            record(request, user, Kind.RECOVERY_USED, detail=f"{remaining} left")
            signals.send(signals.recovery_code_used, request, user, remaining=remaining)
            if on_accept is not None:
                on_accept()
    except _Refused as refused:
        if refused.outcome is not None:
            return refused.outcome
        record(request, user, Kind.MFA_FAILED, detail="recovery code already used")
        signals.send(
            signals.verification_failed, request, user, method="recovery code", reason="replay"
        )
        return Outcome(Result.REPLAY)
    notify.send(user, Kind.RECOVERY_USED)
    return Outcome(Result.OK)


def webauthn_binding(request: HttpRequest, purpose: str = ceremonies.LOGIN) -> Any:
    """What ties a challenge to the ceremony it was issued for.

    A login's: this pending login (its marker's time and TwoFactor row). A re-authentication's: the
    session's last proof of the password (``AUTH_AT_KEY``), so that a challenge fetched before
    the session signed in or re-authenticated again answers nothing after it. There is no
    pending marker then, and the challenge lives in this session only anyway.
    """
    if purpose == ceremonies.REAUTH:
        return request.session.get(AUTH_AT_KEY)
    marker = request.session.get(PENDING_KEY)
    return [marker.get("at"), marker.get("2fa")] if isinstance(marker, dict) else None


def verify_webauthn(
    request: HttpRequest,
    user: Any,
    credential: ceremonies.AuthenticationCredential,
    on_accept: OnAccept | None = None,
    *,
    purpose: str = ceremonies.LOGIN,
) -> Outcome:
    """Check a security key's assertion, and accept it once.

    ``purpose``: LOGIN for the pending login's step, REAUTH for a logged-in user proving a
    second factor again (``views._reauth``); a challenge of one answers nothing for the other.
    The same rules as a code: the TwoFactor row's back-off before any check, every failure
    counted on it, and ``on_accept`` in the transaction that accepts the assertion.
    """
    if purpose not in (ceremonies.LOGIN, ceremonies.REAUTH):
        raise ValueError(f"verify_webauthn: not an assertion's purpose: {purpose!r}")
    row = _two_factor(user)
    if row is None:
        return Outcome(Result.GONE)
    if blocked := _blocked(row):
        return blocked
    # Taken out first, whatever follows: a challenge answers one request at most.
    challenge = ceremonies.take_challenge(
        request, purpose, user, webauthn_binding(request, purpose)
    )
    if challenge is None:
        record(request, user, Kind.MFA_FAILED, detail="security key: no live challenge")
        signals.send(signals.verification_failed, request, user, method=KEY, reason="replay")
        return Outcome(Result.STALE)
    # This user's keys only: another user's credential id is simply not found.
    key = WebAuthnCredential.objects.filter(
        user=user, credential_id=ceremonies.credential_key(credential.raw_id)
    ).first()
    if key is None:
        return _failed(request, user, row, "unknown security key", KEY)
    try:
        verified = ceremonies.verify_assertion(credential, challenge, bytes(key.public_key))
    except ceremonies.Rejected as exc:
        return _failed(request, user, row, f"security key rejected ({exc})", KEY)
    count = verified.new_sign_count
    if (count or key.sign_count) and count <= key.sign_count:
        # WebAuthn 7.2 step 22: a counter that does not grow in a signed assertion means two
        # copies of the key exist. Refused, and reported apart from a mere wrong answer.
        record(request, user, Kind.KEY_CLONED, detail=f"counter {count} after {key.sign_count}")
        notify.send(user, Kind.KEY_CLONED)
        return _failed(request, user, row, "security key counter went back", KEY)
    digest = ceremonies.challenge_digest(challenge)
    now = _now()
    try:
        with transaction.atomic():
            _accept(row, user, now)
            # One acceptance per assertion, even for requests racing in one session: the row
            # still holds the count this check read, and not this challenge.
            used = (
                WebAuthnCredential.objects.filter(pk=key.pk, sign_count=key.sign_count)
                .exclude(last_challenge=digest)
                .update(sign_count=count, last_used_at=now, last_challenge=digest)
            )
            if not used:
                raise _Refused(Outcome(Result.STALE))
            # The key's pk, not its name: the trail's details are never user input.
            detail = f"key {key.pk}"
            if purpose == ceremonies.REAUTH:
                detail += ", re-authentication"
            record(request, user, Kind.KEY_USED, detail=detail)
            if on_accept is not None:
                on_accept()
    except _Refused as refused:
        return refused.outcome
    notify.send(user, Kind.KEY_USED)
    return Outcome(Result.OK)


@sensitive_variables()
def verify_any_code(
    request: HttpRequest, user: Any, raw: str, imported: bool | None = None
) -> Outcome | None:
    """Accept either a TOTP code or a recovery code (re-authentication forms).

    Returns None when ``raw`` is neither shape, so the form can say so without counting it.
    """
    if code := totp.normalize_code(raw):
        return verify_totp(request, user, code)
    if imported is None:  # the caller's form may know already (ReauthForm.imported)
        imported = has_imported_codes(user)
    if parsed := recovery.parse(raw, imported=imported):
        return verify_recovery_code(request, user, parsed)
    return None


def has_imported_codes(user: Any) -> bool:
    """Whether the user holds recovery codes imported from django-otp (used ones included, so
    that a used one is still answered as a replay)."""
    return RecoveryCode.objects.filter(
        user=user, selector__startswith=recovery.IMPORTED_PREFIX
    ).exists()


def unused_code_count(user: Any) -> int:
    return RecoveryCode.objects.filter(user=user, used_at__isnull=True).count()


# --- Enrolment ------------------------------------------------------------------------------


@sensitive_variables()
def begin_enrolment(request: HttpRequest, user: Any) -> tuple[str, bool]:
    """Return the secret being enrolled, creating it on first use, and whether it is a new one
    that replaced an earlier secret of this session which could no longer be read.

    It lives only in the session until a code proves the user has it, and even there it is
    encrypted and bound to the user (the session table is signed, not encrypted).
    """
    token = request.session.get(ENROL_KEY)
    if token:
        try:
            return crypto.decrypt_secret(token, user.pk), False
        except crypto.UndecryptableSecret:
            pass  # the key was retired meanwhile, or the session was another user's
    secret = totp.generate_secret()
    request.session[ENROL_KEY] = crypto.encrypt_secret(secret, user.pk)
    return secret, bool(token)


@sensitive_variables()
def confirm_enrolment(request: HttpRequest, user: Any, code: str) -> list[str] | None:
    """Save the session's secret if ``code`` proves the user has it; return recovery codes.

    Returns None if the code is wrong (nothing is written). For a user whose 2FA this turns
    on, returns their first recovery codes; for one who has it already with security keys,
    an empty list (their recovery codes stay). A user who has an app cannot replace it here:
    ``disable`` first, with the password and a current code. None too (nothing written) when
    2FA was turned on meanwhile and this session must prove a factor first (``NeedsStepUp``).
    """
    token = request.session.get(ENROL_KEY)
    if not token:
        return None
    try:
        secret = crypto.decrypt_secret(token, user.pk)
    except crypto.UndecryptableSecret:
        return None
    step = totp.matching_step(secret, code, totp.now(), settings.VALID_WINDOW)
    if step is None:
        return None
    try:
        with transaction.atomic():
            turned_on = _turn_on(request, user)
            _device, created = TOTPDevice.objects.get_or_create(
                user=user,
                defaults={
                    # Encrypted afresh: the primary key may have changed since enrolment began.
                    "encrypted_secret": crypto.encrypt_secret(secret, user.pk),
                    # The confirming code is spent: it cannot also finish a login.
                    "last_used_step": step,
                },
            )
            if not created:
                return None  # an app confirmed meanwhile, in another tab
            codes = _replace_recovery_codes(user) if turned_on else []
    except NeedsStepUp:
        return None
    del request.session[ENROL_KEY]
    factor_added(request, user, TOTP, turned_on)
    return codes


class NeedsStepUp(Exception):
    """2FA is on (turned on by another session since the view let this one in with a fresh
    password alone): a new factor joins it only after a second factor proved lately."""


def _turn_on(request: HttpRequest, user: Any) -> bool:
    """Make sure ``user`` has a TwoFactor row (inside the new factor's transaction); return
    whether this created it, i.e. whether 2FA is turning on now.

    Asked here, where the factor is saved, and not only by the view: otherwise a session that
    never proved a factor adds a way in beside a first factor saved meanwhile (``NeedsStepUp``
    rolls the factor's transaction back). The row found is locked until the factor commits:
    turning 2FA off meanwhile (``_remove`` deletes this row first) then waits, and deletes the
    new factor too, instead of leaving it saved under no TwoFactor row.
    """
    _row, created = TwoFactor.objects.select_for_update().get_or_create(user=user)
    if not created and not reauthenticated_within(request, settings.REAUTH_AGE):
        raise NeedsStepUp
    return created


def turn_on_with_key(request: HttpRequest, user: Any) -> list[str] | None:
    """Called in the transaction that saves a user's security key: turn 2FA on if it was off.

    Returns the first recovery codes when this turned it on, None when it was on already;
    raises ``NeedsStepUp`` as ``_turn_on`` does.
    """
    return _replace_recovery_codes(user) if _turn_on(request, user) else None


def factor_added(request: HttpRequest, user: Any, method: str, turned_on: bool) -> None:
    """What follows a new factor's commit: the session has used it, the audit, the notice.

    ``turned_on``: this factor turned 2FA on (ENABLED), else it joined the others.
    """
    # The factor was just proved: this session has used it (``mfa_required``).
    request.session[VERIFIED_AT_KEY] = int(totp.now())
    _offer_end_sessions(request)
    if turned_on:
        record(request, user, Kind.ENABLED, detail=method)
        signals.send(signals.two_factor_enabled, request, user)
        notify.send(user, Kind.ENABLED)
    signals.send(signals.factor_added, request, user, method=method)
    if method == TOTP and not turned_on:
        record(request, user, Kind.APP_ADDED)
        notify.send(user, Kind.APP_ADDED)


@sensitive_variables()
def _replace_recovery_codes(user: Any) -> list[str]:
    RecoveryCode.objects.filter(user=user).delete()
    pairs = recovery.generate(settings.RECOVERY_CODE_COUNT)
    RecoveryCode.objects.bulk_create(
        RecoveryCode(user=user, selector=s, code_hash=recovery.hash_verifier(s, v))
        for s, v in pairs
    )
    return [recovery.format_code(s, v) for s, v in pairs]


@sensitive_variables()
def regenerate_recovery_codes(request: HttpRequest, user: Any) -> list[str]:
    """Invalidate every recovery code of the user and return a fresh set (shown once)."""
    with transaction.atomic():
        codes = _replace_recovery_codes(user)
    _offer_end_sessions(request)
    record(request, user, Kind.CODES_REGENERATED)
    signals.send(signals.recovery_codes_regenerated, request, user)
    notify.send(user, Kind.CODES_REGENERATED)
    return codes


# --- Turning it off -------------------------------------------------------------------------


def _remove(user: Any) -> None:
    with transaction.atomic():
        TwoFactor.objects.filter(user=user).delete()
        TOTPDevice.objects.filter(user=user).delete()
        RecoveryCode.objects.filter(user=user).delete()
        # Turned off or reset: no browser may skip a second factor enrolled later.
        remember.forget_all(user)
        WebAuthnCredential.objects.filter(user=user).delete()


class Removal:
    OK = "ok"
    GONE = "gone"  # not the user's, or removed meanwhile
    LAST = "last"  # the user's only factor: turning 2FA off is the way


def has_factor(user: Any, but_key: int | None = None) -> bool:
    """Whether ``user`` has an authenticator app or a security key (other than ``but_key``)."""
    keys = WebAuthnCredential.objects.filter(user=user).exclude(pk=but_key)
    return TOTPDevice.objects.filter(user=user).exists() or keys.exists()


def remove_factor(
    request: HttpRequest | None, user: Any, factor: QuerySet, kind: str, method: str, detail=""
) -> str:
    """Delete ``factor`` (the user's app, or one of their keys), audited as ``kind`` and
    notified, unless no factor would be left: 2FA never goes off by removing a factor."""
    with transaction.atomic():
        # The TwoFactor row's lock serialises removals of one user's factors: two requests
        # removing the last two at once cannot both find the other one still there.
        list(TwoFactor.objects.select_for_update().filter(user=user).values_list("pk"))
        if not factor.delete()[0]:
            return Removal.GONE
        if not has_factor(user):
            transaction.set_rollback(True)
            return Removal.LAST
        record(request, user, kind, detail=detail)
    signals.send(signals.factor_removed, request, user, method=method)
    notify.send(user, kind)
    return Removal.OK


def remove_app(request: HttpRequest, user: Any) -> bool:
    """Remove the user's authenticator app, their security keys staying (after
    re-authentication by the view). False, and nothing changed, when the app is their last
    factor (no key: turning 2FA off is the way) or gone."""
    app = TOTPDevice.objects.filter(user=user)
    if remove_factor(request, user, app, Kind.APP_REMOVED, TOTP) != Removal.OK:
        return False
    _offer_end_sessions(request)
    return True


def disable(request: HttpRequest, user: Any) -> None:
    """Turn 2FA off: remove every factor and recovery code (after re-authentication by the
    view). The only way a user's last factor goes."""
    _remove(user)
    _offer_end_sessions(request)
    record(request, user, Kind.DISABLED)
    signals.send(signals.two_factor_disabled, request, user, actor=None)
    notify.send(user, Kind.DISABLED)


def reset(user: Any, actor: str, request: HttpRequest | None = None) -> bool:
    """Administrator's reset: the user must enrol again. Audited and notified.

    Every session of the user ends too: whoever holds one must log in again (with the password
    alone now), rather than enrol their own authenticator in a session they may have stolen.
    Returns False, and does nothing, for a user with no second factor to reset.
    """
    if not has_2fa(user) and not RecoveryCode.objects.filter(user=user).exists():
        return False
    _remove(user)
    sessions.end_all(user, import_module(django_settings.SESSION_ENGINE).SessionStore)
    record(request, user, Kind.ADMIN_RESET, detail=f"by {actor}")
    signals.send(signals.two_factor_disabled, request, user, actor=actor)
    notify.send(user, Kind.ADMIN_RESET)
    return True


def unlock(user: Any, actor: str, request: HttpRequest | None = None) -> bool:
    """Clear the failures, back-off and lock of the user's second factor. Audited and notified.

    Returns False, and does nothing, when there is nothing to clear (no second factor, or no
    failure counted since the last success).
    """
    changed = (
        TwoFactor.objects.filter(user=user)
        .filter(
            Q(failure_count__gt=0) | Q(blocked_until__isnull=False) | Q(locked_at__isnull=False)
        )
        .update(failure_count=0, blocked_until=None, locked_at=None)
    )
    if changed:
        record(request, user, Kind.UNLOCKED, detail=f"by {actor}")
        notify.send(user, Kind.UNLOCKED)
    return bool(changed)


# --- Sessions -------------------------------------------------------------------------------


def end_other_sessions(request: HttpRequest, user: Any) -> int:
    """Sign the user out everywhere but here (ASVS 7.4.3); return how many sessions ended.

    Every remembered browser is forgotten too, this one included: a thief's browser may be
    one of them, and would otherwise sign in again with the password alone.
    """
    ended = sessions.end_others(request, user)
    remember.forget_all(user)
    record(request, user, Kind.SESSIONS_ENDED, detail=f"{ended} sessions")
    notify.send(user, Kind.SESSIONS_ENDED)
    return ended


def _offer_end_sessions(request: HttpRequest) -> None:
    request.session[OFFER_END_SESSIONS_KEY] = True
