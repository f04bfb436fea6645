"""Recovery codes on the web: the login's recovery step, and a fresh set shown once."""

import base64
import functools
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables

from .. import flows
from ..forms import RecoveryCodeForm
from ..pages import render
from ..views import GET_POST, RECOVERY, _code_step, _reauth, no_store, pending_required

__all__ = ["recovery_view", "regenerate_view", "show_recovery_codes"]


@sensitive_post_parameters("code")
@never_cache
@GET_POST
@pending_required
def recovery_view(request: HttpRequest, user: Any, next_url: str) -> HttpResponse:
    return _code_step(
        request,
        user,
        next_url,
        # Only a POST parses a code: a GET shows the form and asks nothing.
        functools.partial(
            RecoveryCodeForm,
            imported=request.method == "POST" and flows.has_imported_codes(user),
        ),
        flows.verify_recovery_code,
        "mfa/recovery_login.html",
        RECOVERY,
    )


@sensitive_variables("codes", "text", "download", "context")
def show_recovery_codes(
    request: HttpRequest, codes: list[str], enrolled: bool, next_url: str = ""
) -> HttpResponse:
    """Render fresh codes, once, in the response to the POST that made them."""
    text = "\n".join(codes) + "\n"
    download = "data:text/plain;charset=utf-8;base64," + base64.b64encode(text.encode()).decode()
    # next_url: the page the user was going to when sent to enrol (the "continue" link).
    context = {"codes": codes, "download": download, "enrolled": enrolled, "next": next_url}
    return no_store(render(request, "mfa/recovery_codes.html", context))


@sensitive_post_parameters("password", "code", "credential")
@never_cache
@login_required
@GET_POST
def regenerate_view(request: HttpRequest) -> HttpResponse:
    @sensitive_variables("codes")
    def done() -> HttpResponse:
        codes = flows.regenerate_recovery_codes(request, request.user)
        return show_recovery_codes(request, codes, enrolled=False)

    return _reauth(request, "mfa/regenerate.html", done)
