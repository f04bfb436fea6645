"""The web layer: parse the request, ask ``flows``, answer. No state change happens here."""

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings as django_settings
from django.contrib import messages
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.contrib.auth import logout as auth_logout
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST

from . import conf, flows, remember, sessions, throttle
from .conf import settings
from .decorators import redirect_with_next, verified_if_enrolled
from .forms import (
    NO_APP,
    CodeForm,
    LoginForm,
    PasswordForm,
    ReauthForm,
    username_key,
)
from .models import RememberedBrowser, SecurityEvent, TOTPDevice, TwoFactor, WebAuthnCredential
from .pages import render
from .webauthn import ceremonies

logger = logging.getLogger(__name__)
Kind = SecurityEvent.Kind
Result = flows.Result

# HEAD is answered as GET, without the body (uptime checks, link previews).
GET_POST = require_http_methods(["GET", "HEAD", "POST"])
# How a login's second step was made, as the audit trail records it.
TOTP, RECOVERY = flows.TOTP, flows.RECOVERY


# --- Helpers --------------------------------------------------------------------------------


def safe_next(request: HttpRequest, candidate: str | None) -> str:
    """Return ``candidate`` if it stays on this site, else the default landing page."""
    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return conf.landing_url()


def too_many(request: HttpRequest, limited: throttle.Limited | flows.Outcome) -> HttpResponse:
    """Answer 429 with a page that says when to try again, and a Retry-After header."""
    response = render(
        request,
        "mfa/limited.html",
        {"retry_after": limited.retry_after, "locked": limited.locked},
        status=429,
    )
    response["Retry-After"] = str(limited.retry_after)
    return response


def pending_required(view: Callable) -> Callable:
    """Run ``view(request, user, next_url)`` for a pending login, else go back to the login."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        pending = flows.pending_user(request)
        if pending is None:
            if request.method == "POST":
                messages.error(request, _("Your sign-in expired. Please start again."))
            if next_url := request.GET.get(REDIRECT_FIELD_NAME):
                # Starting again still leads where the user was going.
                return redirect_with_next("mfa:login", safe_next(request, next_url))
            return redirect("mfa:login")
        user, next_url = pending
        return view(request, user, next_url, *args, **kwargs)

    return wrapper


def start_again(request: HttpRequest) -> HttpResponse:
    """Answer a second step whose factor went since the password step (``Result.GONE``: reset
    by an administrator, or turned off elsewhere): the login starts over."""
    flows.abandon_pending_login(request)
    messages.info(request, _("Your sign-in changed meanwhile. Please start again."))
    return redirect("mfa:login")


def no_store(response: HttpResponse) -> HttpResponse:
    # Pages with secrets or fresh codes must not linger in any cache or in the back button.
    response["Cache-Control"] = "no-store"
    return response


# --- Login ----------------------------------------------------------------------------------


@sensitive_post_parameters("password")
@never_cache
@GET_POST
def login_view(request: HttpRequest) -> HttpResponse:
    next_url = safe_next(request, request.POST.get("next") or request.GET.get("next"))
    form = LoginForm(request, data=request.POST if request.method == "POST" else None)
    if request.method == "POST":
        # The key is derived from exactly the name the form will authenticate, so " alice" or
        # a full-width "ａｌｉｃｅ" count as alice (forms.normalize_username).
        name_key = form.rate_key()
        if name_key is None:
            # Missing or too long: refused before anything is counted or written, and
            # authenticate() does not run (the form has no username to give it).
            form.is_valid()
            # The page shows the form's general error only: a name that cannot exist is simply
            # not a correct one.
            form.add_error(None, form.get_invalid_login_error())
            return render(request, "mfa/login.html", {"form": form, "next": next_url}, status=400)
        if limited := throttle.check_rates(
            request,
            (
                "mfa.login.ip",
                throttle.address_key(throttle.client_ip(request)),
                settings.LOGIN_IP_RATE,
            ),
            ("mfa.login.user", name_key, settings.LOGIN_USER_RATE),
        ):
            return too_many(request, limited)
        if form.is_valid():
            user = form.get_user()
            if (row := flows.two_factor_pk(user)) is not None:
                return _after_password(request, user, next_url, row)
            flows.complete_login(request, user, method="password")
            return HttpResponseRedirect(next_url)
        flows.record(request, None, Kind.PASSWORD_FAILED)
    return render(
        request,
        "mfa/login.html",
        {"form": form, "next": next_url},
        status=400 if form.is_bound else 200,
    )


def _after_password(request: HttpRequest, user: Any, next_url: str, row: int) -> HttpResponse:
    """Send a user with 2FA to the code step, unless this browser is remembered for them.

    Only ever after the password was found right: a remembered browser skips the code, never
    the password, the rate limits or the failed-password audit above.
    """
    known = remember.recognise(request, user)
    if known.browser is not None and flows.login_remembered(request, user, known.browser):
        response = HttpResponseRedirect(next_url)
    else:
        flows.begin_pending_login(request, user, next_url, row)
        response = redirect_with_next("mfa:verify", next_url)
    if known.drop_cookie:
        remember.delete_cookie(response)
    return response


def _code_step(
    request: HttpRequest,
    user: Any,
    next_url: str,
    form_class: Callable[..., Any],
    check: Callable[[HttpRequest, Any, Any, flows.OnAccept], flows.Outcome],
    template: str,
    method: str,
) -> HttpResponse:
    """The second step of the login, for either kind of code."""
    form = form_class(request.POST if request.method == "POST" else None)
    status = 200
    if request.method == "POST":
        if limited := throttle.check_rates(request, *_code_rates(request, user)):
            return too_many(request, flows.refusal(user, limited))
        status = 400
        if form.is_valid():
            accept, finish = _acceptance(request, user, method)
            outcome = check(request, user, form.cleaned_data["code"], accept)
            if outcome.ok:
                return finish(HttpResponseRedirect(safe_next(request, next_url)))
            if outcome.result is Result.BLOCKED:
                return too_many(request, outcome)
            if outcome.result is Result.UNREADABLE:
                flows.abandon_pending_login(request)
                return render(request, "mfa/unreadable.html", status=403)
            if outcome.result is Result.GONE:
                return start_again(request)
            form.add_error("code", _code_error(outcome, method))
    context = _step_context(request, user, next_url, form, keys=method == TOTP)
    return render(request, template, context, status=status)


def _acceptance(
    request: HttpRequest, user: Any, method: str
) -> tuple[flows.OnAccept, Callable[[HttpResponse], HttpResponse]]:
    """What accepting a login's second step does (a code's, a key's), and then its response.

    ``accept`` runs in the transaction that accepts the code or the key: the login, and, when
    the box was ticked, the remembered browser's row, which so exists only if the login
    happened. ``finish`` then sets that browser's cookie on the response.
    """
    cookie: list[str] = []

    def accept() -> None:
        flows.complete_login(request, user, method=method)
        if _remember_ticked(request):
            cookie.append(flows.remember_browser(request, user))

    def finish(response: HttpResponse) -> HttpResponse:
        if cookie:
            remember.set_cookie(request, response, cookie[0])
        return response

    return accept, finish


def _code_rates(request: HttpRequest, user: Any) -> tuple[throttle.Check, ...]:
    """The counters of a second-step attempt of any kind (code, recovery code, key): one budget
    per pending account, and one per address."""
    return (
        ("mfa.code.ip", throttle.address_key(throttle.client_ip(request)), settings.CODE_IP_RATE),
        ("mfa.code.user", str(user.pk), settings.CODE_RATE),
    )


def _step_context(
    request: HttpRequest, user: Any, next_url: str, form: Any, *, keys: bool
) -> dict[str, Any]:
    """What the second step's pages show; ``keys``: offer the key step too (verify.html)."""
    context = {
        "form": form,
        "next": next_url,
        "pending_user": user,
        "remember_days": settings.REMEMBER_DAYS if remember.enabled() else 0,
        "remember_ticked": _remember_ticked(request),
    }
    if keys:
        # Offered only to a user who has a key (mfa.webauthn.views); the code field only to
        # one who has an app (a user with keys only has a key and recovery codes).
        context["has_keys"] = WebAuthnCredential.objects.filter(user=user).exists()
        context["has_app"] = flows.has_app(user)
    return context


def _remember_ticked(request: HttpRequest) -> bool:
    # Opt-in: only a ticked box (a POST), and only while the feature is on.
    return remember.enabled() and request.method == "POST" and request.POST.get("remember") == "on"


def _code_error(outcome: flows.Outcome, method: str) -> str:
    if outcome.result is Result.ABSENT:
        return NO_APP
    if method == RECOVERY:
        if outcome.result is Result.REPLAY:
            return _("That recovery code has already been used. Each one works once.")
        return _(
            "That recovery code is not right. Check it against your latest list: "
            "codes from a list you replaced no longer work."
        )
    if outcome.result is Result.REPLAY:
        return _("That code has already been used. Wait for the next one and try again.")
    return _("That code is not right. Check your app's clock and try again.")


@sensitive_post_parameters("code")
@never_cache
@GET_POST
@pending_required
def verify_view(request: HttpRequest, user: Any, next_url: str) -> HttpResponse:
    return _code_step(request, user, next_url, CodeForm, flows.verify_totp, "mfa/verify.html", TOTP)


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        flows.record(request, request.user, Kind.LOGOUT)
    flows.abandon_pending_login(request)
    auth_logout(request)
    return redirect(django_settings.LOGOUT_REDIRECT_URL or django_settings.LOGIN_URL)


# --- The password again --------------------------------------------------------------------


def _password_rates(user: Any) -> tuple[throttle.Check, ...]:
    """The counters of a password check in a logged-in session: its own, and the login's.

    The login's per-username budget is the account's budget of password guesses, whatever the
    form: a thief holding a session gets no guesses on top of those at the login.
    """
    return (
        ("mfa.change.user", str(user.pk), settings.CHANGE_RATE),
        ("mfa.login.user", username_key(user.get_username()), settings.LOGIN_USER_RATE),
    )


def _confirm_password(
    request: HttpRequest,
    on_success: Callable[[], HttpResponse],
    template: str = "mfa/confirm_password.html",
    next_url: str = "",
) -> HttpResponse:
    """Ask for the password again (a stale setup; ``reauth_view`` for a user without 2FA)."""
    posted = request.method == "POST" and "password" in request.POST
    form = PasswordForm(request.POST if posted else None)
    if posted:
        if limited := throttle.check_rates(request, *_password_rates(request.user)):
            return too_many(request, limited)
        if form.is_valid() and request.user.check_password(form.cleaned_data["password"]):
            flows.mark_reauthenticated(request)
            return on_success()
        flows.record(request, request.user, Kind.PASSWORD_FAILED, detail="re-authentication")
        form.add_error("password", _("That password is not right."))
    return render(
        request,
        template,
        {"form": form, "next": next_url},
        status=400 if request.method == "POST" else 200,
    )


# --- Re-authenticated changes ---------------------------------------------------------------


def _reauth(
    request: HttpRequest,
    template: str,
    on_success: Callable[[], HttpResponse],
    extra: dict | None = None,
) -> HttpResponse:
    """Ask for the password and a second factor again, even in a logged-in session.

    The second factor is a code (TOTP or recovery), or a security key's answer to a REAUTH
    challenge (``webauthn_reauth_options``) posted in the same form. The password is checked
    first either way, under the same rate limits and audit.
    """
    user = request.user
    if not flows.has_2fa(user):
        messages.info(request, _("Two-factor authentication is off."))
        return redirect("mfa:security")
    posted = request.method == "POST"
    form = ReauthForm(
        request.POST if posted else None,
        imported=posted and flows.has_imported_codes(user),
        has_app=not posted or flows.has_app(user),
    )
    status = 200
    if request.method == "POST":
        if limited := throttle.check_rates(request, *_password_rates(user)):
            return too_many(request, flows.refusal(user, limited))
        status = 400
        if form.is_valid():
            credential = form.cleaned_data["credential"]
            if not user.check_password(form.cleaned_data["password"]):
                flows.record(request, user, Kind.PASSWORD_FAILED, detail="re-authentication")
                if credential is not None:
                    # Spent all the same: a key's answer does not outlive a wrong password,
                    # to be tried again with the next guess.
                    ceremonies.drop_challenge(request)
                form.add_error(None, _reauth_error(None, credential is not None))
            else:
                if credential is not None:
                    outcome = flows.verify_webauthn(
                        request, user, credential, purpose=ceremonies.REAUTH
                    )
                else:
                    outcome = flows.verify_any_code(
                        request, user, form.cleaned_data["code"], imported=form.imported
                    )
                if outcome is not None and outcome.ok:
                    return on_success()
                if outcome is not None and outcome.result is Result.BLOCKED:
                    return too_many(request, outcome)
                if outcome is not None and outcome.result is Result.UNREADABLE:
                    return render(request, "mfa/unreadable.html", status=403)
                if outcome is not None and outcome.result is Result.GONE:
                    messages.info(request, _("Two-factor authentication is off."))
                    return redirect("mfa:security")
                form.add_error(None, _reauth_error(outcome, credential is not None))
    context = {
        "form": form,
        # The key's way is offered to a user who has one (mfa/webauthn.js fills it in).
        "has_keys": WebAuthnCredential.objects.filter(user=user).exists(),
        **(extra or {}),
    }
    return render(request, template, context, status=status)


def _reauth_error(outcome: flows.Outcome | None, key: bool) -> str:
    """The form-wide error of a refused re-authentication (``outcome`` None: the password)."""
    if key:
        if outcome is not None and outcome.result is Result.STALE:
            return _("That security key request expired or was already used. Try again.")
        return _("The password or the security key was not accepted.")
    if outcome is not None and outcome.result is Result.ABSENT:
        return NO_APP
    if outcome is not None and outcome.result is Result.REPLAY:
        # The password was right (checked first) and so was the code, once: say so, or the
        # user hunts for a typo (a code just used to sign in).
        return _(
            "That code has already been used. Wait for your app's next code, "
            "or use an unused recovery code."
        )
    return _("The password or the code is not right.")


@sensitive_post_parameters("password", "code", "credential")
@never_cache
@login_required
@GET_POST
def reauth_view(request: HttpRequest) -> HttpResponse:
    """Prove the password again, and a code when enrolled, then go back (``reauth_required``).

    The same checks, rate limits and audit events as turning 2FA off: ``_reauth`` for a user
    with a second factor, ``_confirm_password`` for one without.
    """
    next_url = safe_next(request, request.GET.get(REDIRECT_FIELD_NAME))

    def done() -> HttpResponse:
        flows.mark_reauthenticated(request, second_factor=True)
        return HttpResponseRedirect(next_url)

    if flows.has_2fa(request.user):
        return _reauth(request, "mfa/reauth.html", done)
    return _confirm_password(
        request, lambda: HttpResponseRedirect(next_url), "mfa/reauth.html", next_url
    )


@sensitive_post_parameters("password", "code", "credential")
@never_cache
@login_required
@GET_POST
def disable_view(request: HttpRequest) -> HttpResponse:
    def done() -> HttpResponse:
        flows.disable(request, request.user)
        messages.success(request, _("Two-factor authentication is now off."))
        return redirect("mfa:security")

    return _reauth(request, "mfa/disable.html", done)


# --- The security page ----------------------------------------------------------------------


@never_cache
@login_required
@require_http_methods(["GET"])
@verified_if_enrolled
def security_view(request: HttpRequest) -> HttpResponse:
    user = request.user
    two_factor = TwoFactor.objects.filter(user=user).first()
    codes_left = flows.unused_code_count(user) if two_factor else 0
    context = {
        "two_factor": two_factor,
        "device": TOTPDevice.objects.filter(user=user).first() if two_factor else None,
        "codes_left": codes_left,
        "codes_low": two_factor is not None and codes_left <= settings.RECOVERY_CODES_LOW,
        "keys": WebAuthnCredential.objects.filter(user=user) if two_factor else [],
        "events": SecurityEvent.objects.filter(user=user)[: settings.EVENTS_SHOWN],
        "other_sessions": sessions.count_others(request),
        "offer_end_sessions": request.session.get(flows.OFFER_END_SESSIONS_KEY, False),
        "browsers": remember.listed(user),
        "this_browser": remember.current_selector(request),
    }
    return render(request, "mfa/security.html", context)


@login_required
@require_POST
@verified_if_enrolled
def forget_browser_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Forget one remembered browser of the user: it is asked for a code again."""
    here = RememberedBrowser.objects.filter(
        pk=pk, user=request.user, selector=remember.current_selector(request) or ""
    ).exists()
    if flows.forget_browsers(request, request.user, pk):
        messages.success(request, _("That browser will be asked for a code again."))
    response = redirect("mfa:security")
    if here:
        remember.delete_cookie(response)  # it was this browser's own record
    return response


@login_required
@require_POST
@verified_if_enrolled
def forget_browsers_view(request: HttpRequest) -> HttpResponse:
    """Forget every remembered browser of the user, this one included."""
    flows.forget_browsers(request, request.user)
    messages.success(request, _("Every browser will be asked for a code again."))
    response = redirect("mfa:security")
    remember.delete_cookie(response)
    return response


@login_required
@require_POST
@verified_if_enrolled
def end_sessions_view(request: HttpRequest) -> HttpResponse:
    ended = flows.end_other_sessions(request, request.user)
    request.session.pop(flows.OFFER_END_SESSIONS_KEY, None)
    messages.success(
        request,
        ngettext(
            "Signed out %(count)d other session.", "Signed out %(count)d other sessions.", ended
        )
        % {"count": ended},
    )
    response = redirect("mfa:security")
    remember.delete_cookie(response)  # end_other_sessions forgot every remembered browser
    return response
