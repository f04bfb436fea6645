"""Which sessions a user has, so that they can be ended: "sign out everywhere else", a reset.

Django can end a session only by its key, and the key changes under it (``cycle_key`` when the
password changes, or when someone logs in again). So each session made by the two-step login
carries a random ``sid`` in its own data, registered in ``UserSession``. Ending a session
deletes its row (and the session itself, by its last known key); the middleware logs out any
logged-in session whose ``sid`` has no row any more, whatever its key has become. The same
lookup keeps the row's ``session_key`` current and tells the middleware how the session was
made.

An engine that keeps nothing on the server (``signed_cookies``: the key is the whole signed
cookie, hundreds of characters, and a new one at every save) gets its sessions registered
with the empty key. Such a session cannot be deleted or looked up on the server anyway; its
registration alone is what ends it, through the middleware.
"""

import secrets
from datetime import timedelta
from typing import Any

from django.conf import settings as django_settings
from django.contrib.auth import SESSION_KEY
from django.contrib.sessions.backends import signed_cookies
from django.contrib.sessions.backends.base import SessionBase
from django.http import HttpRequest
from django.utils import timezone

from .models import UserSession

__all__ = [
    "SID_KEY",
    "count_others",
    "end_all",
    "end_others",
    "follow_key",
    "forget",
    "is_live",
    "register",
]

# The session's own id, written by register(); its presence marks a session made by the
# two-step login (see middleware.SecondFactorMiddleware).
SID_KEY = "_mfa_sid"

# The longest key a registration holds (the column's length).
_KEY_LENGTH = UserSession._meta.get_field("session_key").max_length


def _stored_key(session: SessionBase) -> str:
    """Return the key to register for ``session``: "" when the server keeps nothing under it."""
    key = session.session_key or ""
    if isinstance(session, signed_cookies.SessionStore) or len(key) > _KEY_LENGTH:
        # Nothing to delete or ask about by that key, and it would not fit the column (on
        # PostgreSQL the login's INSERT would fail: a server error at every login).
        return ""
    return key


def register(request: HttpRequest, user: Any) -> None:
    """Track the session that ``login()`` just made for ``user``."""
    if request.session.session_key is None:
        # login() flushed another user's session (signing in as someone else): give the new
        # one its key now, or its registration would have none (NOT NULL, a server error).
        request.session.cycle_key()
    sid = secrets.token_urlsafe(24)
    request.session[SID_KEY] = sid
    UserSession.objects.create(user=user, sid=sid, session_key=_stored_key(request.session))


def is_live(request: HttpRequest) -> bool:
    """Return whether this session has not been ended elsewhere; keep its key up to date."""
    sid = request.session.get(SID_KEY)
    # The user too: a registration never vouches for another user's session.
    row = (
        UserSession.objects.filter(sid=sid, user_id=request.session.get(SESSION_KEY))
        .only("pk", "session_key")
        .first()
    )
    if row is None:
        return False
    key = _stored_key(request.session)
    if key and row.session_key != key:
        UserSession.objects.filter(pk=row.pk).update(session_key=key)
    return True


def follow_key(session: SessionBase) -> None:
    """Record the session's new key in its registration."""
    if key := _stored_key(session):  # a signed cookie's new key is nothing to record
        UserSession.objects.filter(sid=session.get(SID_KEY)).update(session_key=key)


def forget(session: SessionBase) -> None:
    """Stop tracking a session that is logging out."""
    if sid := session.get(SID_KEY):
        UserSession.objects.filter(sid=sid).delete()


def _end(engine: type[SessionBase], rows) -> int:
    ended = 0
    for row in rows:
        # Delete the stored session too, so it is gone at once and not only at its next
        # request; if its key changed since (or it has none), the middleware still ends it
        # by its sid.
        if row.session_key:
            engine(session_key=row.session_key).delete()
        ended += 1
    rows.delete()
    return ended


def end_others(request: HttpRequest, user: Any) -> int:
    """End every session of ``user`` except this one; return how many were ended."""
    others = UserSession.objects.filter(user=user).exclude(sid=request.session.get(SID_KEY))
    return _end(request.session.__class__, others)


def end_all(user: Any, engine: type[SessionBase]) -> int:
    """End every session of ``user`` (an administrator's reset)."""
    return _end(engine, UserSession.objects.filter(user=user))


def count_others(request: HttpRequest) -> int:
    """Count the user's other sessions that still exist, forgetting those that expired."""
    engine = request.session.__class__
    # A registration without a key cannot be asked about (a signed cookie's engine says no
    # cookie exists, ever: asking would forget every other session, and the middleware would
    # then log them out). It counts until it is SESSION_COOKIE_AGE old, the age of a cookie
    # that was never saved again after its login, and is forgotten then. A signed-cookie
    # session re-saved since (its cookie renewed) is ended at that point too, when another of
    # the user's sessions opens this page: its login is that old.
    oldest = timezone.now() - timedelta(seconds=django_settings.SESSION_COOKIE_AGE)
    live = 0
    for row in UserSession.objects.filter(user=request.user).exclude(
        sid=request.session.get(SID_KEY)
    ):
        exists = engine().exists(row.session_key) if row.session_key else row.created_at > oldest
        if exists:
            live += 1
        else:
            row.delete()
    return live
