"""Enrolling an authenticator app: the QR code, and the code that proves the user has it.

The secret stays in the session (``flows.begin_enrolment``) until a working code confirms it
(``flows.confirm_enrolment``); only then is it saved. The login's code step is the shared
``mfa.views._code_step``.
"""

import base64
import io
import logging

import qrcode
import qrcode.image.pil
from django.contrib import messages
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables

from .. import conf, crypto, flows, totp
from ..conf import settings
from ..decorators import reauth_refusal, redirect_with_next
from ..forms import CodeForm
from ..models import WebAuthnCredential
from ..pages import render
from ..recovery.views import show_recovery_codes
from ..views import GET_POST, _confirm_password, _reauth, no_store, safe_next

__all__ = ["qr_data_uri", "remove_app_view", "setup_view"]

logger = logging.getLogger(__name__)


@sensitive_variables()
def qr_data_uri(uri: str) -> tuple[str, int]:
    """Return the QR code of ``uri`` as a data: URI of a PNG, and its width in pixels.

    Shown at its own size, every module is the same whole number of pixels: crisp to scan.
    """
    image = qrcode.make(uri, image_factory=qrcode.image.pil.PilImage, box_size=5, border=4)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return data, image.pixel_size


@sensitive_post_parameters("code", "password")
@never_cache
@login_required
@GET_POST
@sensitive_variables()
def setup_view(request: HttpRequest) -> HttpResponse:
    user = request.user
    if flows.has_app(user):
        messages.info(
            request,
            _(
                "You have an authenticator app already. Turn two-factor authentication off first "
                "to use a new one."
            ),
        )
        return redirect("mfa:security")
    # Where to go once enrolled (mfa_required sends users here with it): this site only.
    next_url = _next_on_site(request, request.GET.get(REDIRECT_FIELD_NAME))
    # Whether 2FA is on already, with security keys: then the app joins them.
    adding = flows.has_2fa(user)
    if adding:
        # Another way in: the password and a second factor again, as for adding a key.
        if refused := reauth_refusal(request):
            return refused
    elif not flows.recently_authenticated(request):
        # A stolen session must not enrol the thief's app: the password again.
        return _confirm_password(request, lambda: _to_setup(next_url), next_url=next_url)
    try:
        secret, restarted = flows.begin_enrolment(request, user)
    except crypto.KeyRingError:
        logger.error("two-factor setup unavailable: the key ring cannot be read")
        return render(request, "mfa/unreadable.html", {"setup": True}, status=503)
    form = CodeForm(request.POST if request.method == "POST" else None)
    status = 200
    if restarted:
        # The app holds the old secret, which no code of the new one can match: say why the
        # page changed rather than call the user's right code wrong.
        messages.warning(
            request,
            _(
                "Setup had to start over because the server's encryption keys changed. Remove "
                "the entry you just added from your app, then scan this new code."
            ),
        )
    if request.method == "POST" and not restarted:
        status = 400
        if form.is_valid():
            codes = flows.confirm_enrolment(request, user, form.cleaned_data["code"])
            if codes:
                return show_recovery_codes(request, codes, enrolled=True, next_url=next_url)
            if codes is not None:  # joined the user's keys; their recovery codes stay
                messages.success(request, _("Authenticator app added."))
                return redirect(next_url or "mfa:security")
            if not adding and flows.has_2fa(user) and (refused := reauth_refusal(request)):
                # 2FA turned on meanwhile (a key, in another session): the app may join it
                # only after the password and a second factor again.
                return refused
            form.add_error(
                "code", _("That code does not match. Check the app shows this account's code.")
            )
    issuer = conf.issuer(request)
    uri = totp.provisioning_uri(secret, user.get_username(), issuer)
    qr, qr_size = qr_data_uri(uri)
    context = {
        "form": form,
        "qr": qr,
        "qr_size": qr_size,
        # A phone cannot scan its own screen: it can open the app through the link instead.
        "otpauth_uri": uri,
        "secret_grouped": totp.group_secret(secret),
        "issuer": issuer,
        "account": user.get_username(),
        "code_count": settings.RECOVERY_CODE_COUNT,
        "adding": adding,
        "next": next_url,
    }
    return no_store(render(request, "mfa/setup.html", context, status=status))


def _next_on_site(request: HttpRequest, candidate: str | None) -> str:
    # Like safe_next, but "" rather than the default page: the setup's own links then stay.
    if candidate and safe_next(request, candidate) == candidate:
        return candidate
    return ""


def _to_setup(next_url: str) -> HttpResponse:
    return redirect_with_next("mfa:setup", next_url) if next_url else redirect("mfa:setup")


@sensitive_post_parameters("password", "code", "credential")
@never_cache
@login_required
@GET_POST
def remove_app_view(request: HttpRequest) -> HttpResponse:
    """Remove the authenticator app of a user who keeps security keys (password and a second
    factor again); the last factor goes only by turning 2FA off."""
    user = request.user
    if not flows.has_app(user):
        return redirect("mfa:security")
    if not WebAuthnCredential.objects.filter(user=user).exists():
        # Nothing to re-authenticate for: the page says how 2FA is turned off instead.
        return render(request, "mfa/app_remove.html", {"last": True})

    def done() -> HttpResponse:
        if flows.remove_app(request, user):
            messages.success(request, _("Authenticator app removed."))
        else:  # its keys went meanwhile (another tab): the app stays
            messages.error(
                request, _("Your authenticator app is your last second factor: it stays.")
            )
        return redirect("mfa:security")

    return _reauth(request, "mfa/app_remove.html", done)
