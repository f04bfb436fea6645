"""Middleware: the second factor cannot be side-stepped, and times show in the user's zone."""

import zoneinfo
from urllib.parse import unquote

from django.contrib.auth import SESSION_KEY, logout
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.utils import timezone

from . import flows, sessions

__all__ = ["SecondFactorMiddleware", "UserTimezoneMiddleware"]


class SecondFactorMiddleware:
    """End sessions that did not come through the two-step login, or were ended elsewhere.

    ``flows.complete_login`` registers the sessions it creates (``mfa.sessions``). A session
    authenticated some other way (Django's stock LoginView mounted by mistake, a
    password-reset view that logs in, a third-party app) is not registered; if its user has
    2FA it is ended here, before any view runs. A registered session whose registration was
    removed ("sign out other sessions", an administrator's reset) is ended too, whatever its
    key has become since.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        session = request.session
        if session.get(SESSION_KEY) is not None:
            if sessions.SID_KEY in session:
                ended = not sessions.is_live(request)
            else:
                ended = request.user.is_authenticated and flows.has_2fa(request.user)
            if ended:
                logout(request)
                return redirect("mfa:login")
        key, sid = session.session_key, session.get(sessions.SID_KEY)
        response = self.get_response(request)
        if (
            sid is not None
            and session.session_key != key
            and session.get(sessions.SID_KEY) == sid
            and response.status_code < 500
        ):
            # The key changed during this request (a password change re-keys the session):
            # the registration follows at once, not only at the session's next request. (A
            # login registers a new sid with the new key itself.) Not after a server error:
            # SessionMiddleware does not save then, so the session stays under its old key.
            sessions.follow_key(session)
        return response


class UserTimezoneMiddleware:
    """Show times in the zone the browser reported (a cookie set by mfa.js), else UTC."""

    COOKIE = "mfa_tz"

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        name = unquote(request.COOKIES.get(self.COOKIE, ""))[:64]
        try:
            timezone.activate(zoneinfo.ZoneInfo(name)) if name else timezone.deactivate()
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            timezone.deactivate()
        return self.get_response(request)
