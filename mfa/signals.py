"""The app's public signals, sent by ``mfa.flows`` after each change has been committed.

Every signal is sent with ``sender`` = the user's class and these keyword arguments:

- ``two_factor_enabled(request, user)``: 2FA was turned on, by the user's first factor (an
  authenticator app or a security key).
- ``factor_added(request, user, method)``: a factor was added (also the first, after
  ``two_factor_enabled``); ``method`` is ``"totp"`` or ``"security key"``.
- ``factor_removed(request, user, method)``: one factor was removed while 2FA stays on: a
  security key (``"security key"``), by its owner or an administrator (``request`` is then the
  administrator's), or the authenticator app (``"totp"``), by its owner. Turning 2FA
  off removes every factor and sends ``two_factor_disabled`` only.
- ``two_factor_disabled(request, user, actor)``: it was removed; ``actor`` is None when the
  user turned it off, or the administrator's description (``flows.reset``). For a reset,
  ``request`` is the administrator's (its ``user`` is not ``user``), or None outside a
  request (a management command).
- ``login_verified(request, user, method)``: a login's second step succeeded; ``method`` is
  ``"totp"``, ``"recovery code"`` or ``"security key"``, or ``"remembered browser"`` when a
  remembered browser (``mfa.remember``) stood in for the code after the password. A login
  without 2FA sends only Django's ``user_logged_in``.
- ``verification_failed(request, user, method, reason)``: a code was refused, at a login or
  a re-authentication; ``method`` as above, ``reason`` is ``"invalid"`` (a wrong code,
  counted towards the back-off) or ``"replay"`` (a right code already used, not counted).
  Attempts refused unchecked (rate-limited, backed off, locked) send nothing.
- ``recovery_code_used(request, user, remaining)``: a recovery code was spent; ``remaining``
  unused codes are left.
- ``recovery_codes_regenerated(request, user)``: every recovery code was replaced.
- ``locked(request, user)``: the failures reached ``MFA_LOCKOUT_AFTER``; only an
  administrator can unlock.

When they are sent, and why: on ``transaction.on_commit``, so a receiver hears only of what
really happened (a login whose transaction rolls back sends nothing), and with
``send_robust``: a receiver's exception is logged, never raised. A receiver therefore cannot
turn an accepted login into a refused one (or a spent code into an unspent one), nor a refused
login into an accepted one; the decision is made and committed before any receiver runs.
Receivers run in the request's thread: keep them quick, or hand the work to a queue.
"""

import logging
from typing import Any

from django.db import transaction
from django.dispatch import Signal

__all__ = [
    "factor_added",
    "factor_removed",
    "locked",
    "login_verified",
    "recovery_code_used",
    "recovery_codes_regenerated",
    "send",
    "two_factor_disabled",
    "two_factor_enabled",
    "verification_failed",
]

logger = logging.getLogger(__name__)

two_factor_enabled = Signal()
two_factor_disabled = Signal()
factor_added = Signal()
factor_removed = Signal()
login_verified = Signal()
verification_failed = Signal()
recovery_code_used = Signal()
recovery_codes_regenerated = Signal()
locked = Signal()


def send(signal: Signal, request: Any, user: Any, **kwargs: Any) -> None:
    """Send ``signal`` once the current transaction commits (at once outside of one)."""
    transaction.on_commit(lambda: _send_robust(signal, request, user, kwargs))


def _send_robust(signal: Signal, request: Any, user: Any, kwargs: dict[str, Any]) -> None:
    for receiver, result in signal.send_robust(
        sender=user.__class__, request=request, user=user, **kwargs
    ):
        if isinstance(result, Exception):
            # The receiver's own exception, with its traceback; the app's decision stands.
            logger.error(
                "mfa signal receiver %r failed; ignored",
                receiver,
                exc_info=(type(result), result, result.__traceback__),
            )
