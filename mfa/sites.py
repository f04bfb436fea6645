"""An admin site that has no password-only login of its own.

Django's admin ships a login page that calls ``login()`` after the password alone. This site
replaces it with a redirect to the two-step login, and lets in only staff whose session went
through it; with ``MFA_REQUIRE_FOR_STAFF`` staff must also have enrolled. Staff with 2FA whose
session never used it (it logged in with the password before they enrolled) step up at
``mfa:reauth`` first, as ``mfa_required`` views make them.
"""

from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.translation import gettext as _

from . import flows
from .conf import settings
from .views import safe_next

__all__ = ["AdminSite"]


class AdminSite(admin.AdminSite):
    def needs_enrolment(self, request: HttpRequest) -> bool:
        user = request.user
        return (
            settings.REQUIRE_FOR_STAFF
            and user.is_active
            and user.is_staff
            and not flows.has_2fa(user)
        )

    def needs_second_factor(self, request: HttpRequest) -> bool:
        # A session that logged in with the password alone before its user enrolled: the
        # admin must not be the one page that a password-only session still opens.
        return flows.needs_step_up(request)

    def has_permission(self, request: HttpRequest) -> bool:
        return (
            super().has_permission(request)
            and not self.needs_enrolment(request)
            and not self.needs_second_factor(request)
        )

    def login(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        next_url = request.GET.get(REDIRECT_FIELD_NAME) or reverse(
            "admin:index", current_app=self.name
        )
        if request.user.is_authenticated and self.needs_enrolment(request):
            messages.warning(
                request, _("Set up two-factor authentication before using the admin site.")
            )
            return HttpResponseRedirect(reverse("mfa:setup"))
        query = urlencode({REDIRECT_FIELD_NAME: safe_next(request, next_url)})
        if request.user.is_authenticated and self.needs_second_factor(request):
            return HttpResponseRedirect(f"{reverse('mfa:reauth')}?{query}")
        return HttpResponseRedirect(f"{reverse('mfa:login')}?{query}")
