"""The web layer of security keys: the login's key step, the keys on the security page, and
the options of a re-authentication with a key (its answer is posted to ``mfa.views._reauth``).

Every ceremony is two requests: a POST for the options (JSON, the challenge kept in the
session), then the form post of the browser's answer, filled in by mfa/webauthn.js. Without
JavaScript the key buttons stay hidden and the other factors work as before.
"""

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST

from .. import flows, throttle
from ..conf import settings
from ..decorators import reauth_refusal, verified_if_enrolled
from ..forms import CodeForm
from ..models import WebAuthnCredential
from ..pages import render
from ..recovery.views import show_recovery_codes
from ..views import (
    _acceptance,
    _code_rates,
    _password_rates,
    _reauth,
    _step_context,
    no_store,
    pending_required,
    safe_next,
    start_again,
    too_many,
)
from . import ceremonies, keys
from .forms import AssertionForm, KeyAddForm, KeyNameForm

__all__ = [
    "add_key_view",
    "login_options_view",
    "login_view",
    "reauth_options_view",
    "register_options_view",
    "remove_key_view",
    "rename_key_view",
]

Result = flows.Result


def _json(body: str, status: int = 200) -> HttpResponse:
    return no_store(HttpResponse(body, content_type="application/json", status=status))


def _too_many_json(limited: throttle.Limited | flows.Outcome) -> HttpResponse:
    """Answer an options request with 429 and Retry-After (webauthn.js says "try later")."""
    return JsonResponse(
        {"error": "too many"}, status=429, headers={"Retry-After": str(limited.retry_after)}
    )


# --- The login's second step ----------------------------------------------------------------


def _options_rates(request: HttpRequest, user: Any) -> tuple[throttle.Check, ...]:
    """The counters of a login's request for a key's challenge: per pending account, and per
    address.

    Counters of their own, not the code's (``_code_rates``): asking for a challenge is not a
    guess. The signed answer is one, and ``login_view`` counts it against the code budget; a
    user whose browser prompt was cancelled or timed out, and who asks again, must keep the
    guesses they may still need for a code. Not free either: each request makes a challenge
    and writes the session, so whoever holds a password cannot make the server write without
    end.
    """
    address = throttle.address_key(throttle.client_ip(request))
    return (
        ("mfa.key_options.ip", address, settings.WEBAUTHN_OPTIONS_IP_RATE),
        ("mfa.key_options.user", str(user.pk), settings.WEBAUTHN_OPTIONS_RATE),
    )


@never_cache
@require_POST
@pending_required
def login_options_view(request: HttpRequest, user: Any, next_url: str) -> HttpResponse:
    return _assertion_options(request, user, _options_rates(request, user), ceremonies.LOGIN)


def _assertion_options(
    request: HttpRequest, user: Any, rates: tuple[throttle.Check, ...], purpose: str
) -> HttpResponse:
    """The options of a key's answer (``purpose``: a login's or a re-authentication's), as JSON.

    429 over the rate limits (Retry-After: not before the account's back-off ends, if that
    lasts longer), and while backed off or locked: every answer would be refused unchecked
    until then, so no challenge is made for one. 404 for a user without keys.
    """
    if limited := throttle.check_rates(request, *rates):
        return _too_many_json(flows.refusal(user, limited))
    if blocked := flows.backed_off(user):
        return _too_many_json(blocked)
    credentials = list(WebAuthnCredential.objects.filter(user=user))
    if not credentials:
        return JsonResponse({"error": "no security key"}, status=404)
    bind = flows.webauthn_binding(request, purpose)
    return _json(ceremonies.begin_authentication(request, user, credentials, bind, purpose))


@sensitive_post_parameters("credential")
@never_cache
@require_POST
@pending_required
def login_view(request: HttpRequest, user: Any, next_url: str) -> HttpResponse:
    if limited := throttle.check_rates(request, *_code_rates(request, user)):
        return too_many(request, flows.refusal(user, limited))
    form = AssertionForm(request.POST)
    if not form.is_valid():
        # The whole form may be refused (a lone surrogate in any field) while the credential
        # itself parsed: then the form's own error is the one to show.
        errors = form.errors.get("credential") or form.non_field_errors()
        return _verify_page(request, user, next_url, errors[0])
    # The page's one "don't ask again" box is posted with this form too (webauthn.js), and is
    # honoured exactly as the code step honours it.
    accept, finish = _acceptance(request, user, flows.KEY)
    outcome = flows.verify_webauthn(request, user, form.cleaned_data["credential"], accept)
    if outcome.ok:
        return finish(HttpResponseRedirect(safe_next(request, next_url)))
    if outcome.result is Result.BLOCKED:
        return too_many(request, outcome)
    if outcome.result is Result.GONE:
        return start_again(request)
    if outcome.result is Result.STALE:
        error = _("That security key request expired or was already used. Try again.")
    else:
        error = _("That security key was not accepted. Use a key added to this account.")
    return _verify_page(request, user, next_url, error)


def _verify_page(request: HttpRequest, user: Any, next_url: str, error: str) -> HttpResponse:
    context = _step_context(request, user, next_url, CodeForm(), keys=False)
    context.update(has_keys=True, has_app=flows.has_app(user), key_error=error)
    return render(request, "mfa/verify.html", context, status=400)


# --- Re-authentication ----------------------------------------------------------------------


@never_cache
@login_required
@require_POST
def reauth_options_view(request: HttpRequest) -> HttpResponse:
    """The options of a key's answer to a re-authentication (mfa/_reauth.html's key button).

    The answer comes back with the password in the page's own form, to ``_reauth``: the
    challenge (purpose REAUTH) is bound to this user and this session's last sign-in, never to
    a pending login, and answers one re-authentication at most.
    """
    user = request.user
    # Counted like the key's registration: an answer needs a challenge, so a flood of options
    # is a flood of attempts. Not on the login's per-username budget: no password is checked
    # here (the form post that follows counts on both).
    return _assertion_options(request, user, _password_rates(user)[:1], ceremonies.REAUTH)


# --- The security page ----------------------------------------------------------------------


def _may_add(request: HttpRequest) -> HttpResponse | None:
    """Refuse a session without a fresh password, and a second factor if the user has one.

    A stolen session must not add the thief's key: with 2FA on, that would be a second way in
    for the thief; with 2FA off, it would turn 2FA on with a factor the owner does not have,
    locking them out. Enrolling an authenticator app asks the same (``mfa.totp.views``).
    """
    return reauth_refusal(request)


@never_cache
@login_required
@require_POST
def register_options_view(request: HttpRequest) -> HttpResponse:
    if _may_add(request) is not None:
        return JsonResponse({"error": "reload the page"}, status=403)
    if limited := throttle.check_rates(request, _password_rates(request.user)[0]):
        return _too_many_json(limited)
    return _json(keys.begin(request, request.user))


@sensitive_post_parameters("credential")
@never_cache
@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def add_key_view(request: HttpRequest) -> HttpResponse:
    if refused := _may_add(request):
        return refused
    form = KeyAddForm(request.POST if request.method == "POST" else None)
    status = 200
    if request.method == "POST":
        if limited := throttle.check_rates(request, _password_rates(request.user)[0]):
            return too_many(request, limited)
        status = 400
        if form.is_valid():
            added = keys.add(
                request, request.user, form.cleaned_data["name"], form.cleaned_data["credential"]
            )
            if added.result == keys.AddResult.OK and added.recovery_codes is not None:
                # The first factor: 2FA is on now, and these codes are the way back in
                # without the key. Shown once, in the response to the POST that made them.
                return show_recovery_codes(request, added.recovery_codes, enrolled=True)
            if added.result == keys.AddResult.STEP_UP:
                # 2FA turned on meanwhile: now the check asks for a second factor too.
                return _may_add(request) or redirect("mfa:webauthn_add")
            if added.result == keys.AddResult.OK:
                messages.success(request, _("Security key added."))
                return redirect("mfa:security")
            form.add_error(None, _add_error(added.result))
    context = {"form": form, "has_2fa": flows.has_2fa(request.user)}
    return no_store(render(request, "mfa/key_add.html", context, status=status))


def _add_error(result: str) -> str:
    if result == keys.AddResult.STALE:
        return _("That request expired or was already used. Try again.")
    if result == keys.AddResult.DUPLICATE:
        return _("That security key is already registered.")
    return _("The security key's answer was not accepted. Try again, on this site's address.")


@never_cache
@login_required
@require_POST
# The keys are listed on the security page, which a session that never used the second factor
# (signed in before the user enrolled) cannot open: nor may it rename them.
@verified_if_enrolled
def rename_key_view(request: HttpRequest, pk: int) -> HttpResponse:
    form = KeyNameForm(request.POST)
    if not form.is_valid():
        messages.error(request, _("Give the key a name of at most 64 characters."))
    elif keys.rename(request.user, pk, form.cleaned_data["name"]):
        messages.success(request, _("Security key renamed."))
    else:
        raise Http404
    return redirect("mfa:security")


@sensitive_post_parameters("password", "code", "credential")
@never_cache
@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def remove_key_view(request: HttpRequest, pk: int) -> HttpResponse:
    # Another user's key is not found: a 404, exactly as a key that does not exist.
    key = get_object_or_404(WebAuthnCredential, user=request.user, pk=pk)

    if keys.is_last_factor(request.user, key.pk):
        # Nothing to re-authenticate for: this page only says how 2FA is turned off instead.
        return render(request, "mfa/key_remove.html", {"key": key, "last": True})

    def done() -> HttpResponse:
        if keys.remove(request, request.user, key.pk) == keys.RemoveResult.LAST:
            # The other factor went meanwhile (another tab): nothing was removed.
            messages.error(request, _("That key is your last second factor: it stays."))
        else:
            messages.success(request, _("Security key removed."))
        return redirect("mfa:security")

    return _reauth(request, "mfa/key_remove.html", done, {"key": key})
