"""Class-based forms of ``mfa.decorators``: put the mixin leftmost among the view's bases.

They check in ``dispatch``, before any handler, with the same rules as the decorators, and
honour ``AccessMixin``'s ``login_url`` and ``redirect_field_name`` for the anonymous case.
For synchronous views only (the checks query the database): decorate an async view's
function with ``mfa_required`` / ``reauth_required`` instead.
"""

from typing import Any

from django.contrib.auth.mixins import AccessMixin
from django.http import HttpRequest, HttpResponse

from .decorators import mfa_refusal, reauth_refusal

__all__ = ["MFARequiredMixin", "ReauthRequiredMixin"]


class MFARequiredMixin(AccessMixin):
    """Open the view only to a session that used its second factor (``mfa_required``)."""

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        refused = mfa_refusal(request, self.login_url, self.get_redirect_field_name())
        if refused is not None:
            return refused
        return super().dispatch(request, *args, **kwargs)


class ReauthRequiredMixin(AccessMixin):
    """Open the view only after a fresh proof (``reauth_required``)."""

    # Seconds; None means MFA_REAUTH_AGE, read at each request.
    reauth_max_age: int | None = None

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        refused = reauth_refusal(
            request, self.reauth_max_age, self.login_url, self.get_redirect_field_name()
        )
        if refused is not None:
            return refused
        return super().dispatch(request, *args, **kwargs)
