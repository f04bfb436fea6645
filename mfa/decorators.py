"""Protect the site's own views: a second factor used in this session, or a fresh proof.

``@mfa_required`` (bare, or ``@mfa_required(login_url=..., redirect_field_name=...)``):

- an anonymous user goes to the login with ``?next=``, as with ``login_required``;
- a user with 2FA passes once this session has proved a second factor: the login's second
  step, the enrolment's confirming code or a re-authentication with a code. A session that
  has not (it logged in with the password alone before its user enrolled elsewhere, or it
  predates this check) is sent to ``mfa:reauth`` to step up with the password and a code;
- a user without 2FA passes while the enrolment grace lasts (``MFA_ENROLMENT_GRACE`` seconds
  after ``date_joined``, default 0: never), and is otherwise sent to ``mfa:setup?next=``,
  which returns to the page once the user has enrolled.

``@reauth_required`` (bare, or ``@reauth_required(max_age=300)``) is "sudo mode": the
password, and a second factor for a user who has one, must have been proved in this session
within ``max_age`` seconds (default ``MFA_REAUTH_AGE``); else the user goes to ``mfa:reauth``
and comes back. A full two-step login counts as such a proof; the password alone never does
for a user with 2FA. It does not make a user without 2FA enrol: stack ``mfa_required`` on top
for that. A refused POST is redirected, so its data is lost: protect the GET that shows the
form too.

Both work on sync and async function views; ``mfa.mixins`` has the class-based forms. Every
``next`` is checked again by the view it goes to, so no redirect leaves the site.
"""

from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.contrib import messages
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _

from . import flows
from .conf import settings

__all__ = [
    "mfa_refusal",
    "mfa_required",
    "reauth_refusal",
    "reauth_required",
    "redirect_with_next",
    "verified_if_enrolled",
]

Refusal = Callable[[HttpRequest], HttpResponse | None]


def mfa_refusal(
    request: HttpRequest,
    login_url: str | None = None,
    redirect_field_name: str = REDIRECT_FIELD_NAME,
) -> HttpResponse | None:
    """Return the redirect that ``mfa_required`` answers with, or None to let the view run."""
    user = request.user
    path = request.get_full_path()
    if not user.is_authenticated:
        return redirect_to_login(path, login_url, redirect_field_name)
    if flows.has_2fa(user):
        if flows.second_factor_verified(request):
            return None
        return redirect_with_next("mfa:reauth", path)  # flows.needs_step_up, one query less
    if _in_grace(user):
        return None
    messages.warning(
        request, _("This page needs two-factor authentication. Set it up to continue.")
    )
    return redirect_with_next("mfa:setup", path)


def reauth_refusal(
    request: HttpRequest,
    max_age: int | None = None,
    login_url: str | None = None,
    redirect_field_name: str = REDIRECT_FIELD_NAME,
) -> HttpResponse | None:
    """Return the redirect that ``reauth_required`` answers with, or None to let the view run."""
    path = request.get_full_path()
    if not request.user.is_authenticated:
        return redirect_to_login(path, login_url, redirect_field_name)
    if flows.reauthenticated_within(request, settings.REAUTH_AGE if max_age is None else max_age):
        return None
    return redirect_with_next("mfa:reauth", path)


def mfa_required(
    function: Callable | None = None,
    *,
    login_url: str | None = None,
    redirect_field_name: str = REDIRECT_FIELD_NAME,
) -> Callable:
    """Let the view run only for a session that used its second factor (see the module)."""

    def decorator(view: Callable) -> Callable:
        return _guard(view, lambda request: mfa_refusal(request, login_url, redirect_field_name))

    return decorator(function) if function is not None else decorator


def reauth_required(
    function: Callable | None = None,
    *,
    max_age: int | None = None,
    login_url: str | None = None,
    redirect_field_name: str = REDIRECT_FIELD_NAME,
) -> Callable:
    """Let the view run only after a fresh password (and code) proof (see the module)."""
    if max_age is not None and (isinstance(max_age, bool) or max_age < 0):
        raise ValueError("reauth_required: max_age must be a number of seconds, 0 or more")

    def decorator(view: Callable) -> Callable:
        return _guard(
            view, lambda request: reauth_refusal(request, max_age, login_url, redirect_field_name)
        )

    return decorator(function) if function is not None else decorator


def verified_if_enrolled(view: Callable) -> Callable:
    """Let a user with 2FA in only with a session that has used it; else step up first.

    For the app's own account pages (and the admin): unlike ``mfa_required`` it lets in a user
    without 2FA, who must reach the security page to enrol. A session that signed in with the
    password before the user enrolled elsewhere must not read the security events or sign the
    owner out everywhere else.
    """

    def refusal(request: HttpRequest) -> HttpResponse | None:
        if flows.needs_step_up(request):
            return redirect_with_next("mfa:reauth", request.get_full_path())
        return None

    return _guard(view, refusal)


def _guard(view: Callable, refusal: Refusal) -> Callable:
    if iscoroutinefunction(view):

        @wraps(view)
        async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            # The checks read the session and the database: not from the event loop.
            refused = await sync_to_async(refusal)(request)
            if refused is not None:
                return refused
            return await view(request, *args, **kwargs)

        return async_wrapper

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        refused = refusal(request)
        if refused is not None:
            return refused
        return view(request, *args, **kwargs)

    return wrapper


def _in_grace(user: Any) -> bool:
    grace = settings.ENROLMENT_GRACE
    joined = getattr(user, "date_joined", None)
    if grace <= 0 or joined is None:
        return False
    age = timezone.now() - joined
    # A date_joined in the future (a bad import, a clock gone wrong) gets no grace: it could
    # otherwise exempt the user for years.
    return timedelta(0) <= age < timedelta(seconds=grace)


def redirect_with_next(name: str, next_url: str) -> HttpResponseRedirect:
    """Redirect to the URL named ``name``, carrying ``next_url`` as its ``?next=``."""
    return HttpResponseRedirect(f"{reverse(name)}?{urlencode({REDIRECT_FIELD_NAME: next_url})}")
