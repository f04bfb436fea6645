"""The demo site's URLs plus a few views protected the way an integrator would protect them."""

from django.http import HttpRequest, HttpResponse
from django.urls import include, path
from django.views import View

from mfa.decorators import mfa_required, reauth_required
from mfa.mixins import MFARequiredMixin, ReauthRequiredMixin


@mfa_required
def protected(request: HttpRequest) -> HttpResponse:
    return HttpResponse("protected page")


@mfa_required(login_url="/accounts/login/", redirect_field_name="goto")
def protected_with_args(request: HttpRequest) -> HttpResponse:
    return HttpResponse("protected page")


@mfa_required
async def protected_async(request: HttpRequest) -> HttpResponse:
    return HttpResponse("protected async page")


@reauth_required
def sudo(request: HttpRequest) -> HttpResponse:
    return HttpResponse("sudo page")


@reauth_required(max_age=60)
def sudo_short(request: HttpRequest) -> HttpResponse:
    return HttpResponse("sudo page")


class ProtectedView(MFARequiredMixin, View):
    def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse("protected class page")


class SudoView(ReauthRequiredMixin, View):
    reauth_max_age = 60

    def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse("sudo class page")


urlpatterns = [
    path("protected/", protected),
    path("protected-args/", protected_with_args),
    path("protected-async/", protected_async),
    path("sudo/", sudo),
    path("sudo-short/", sudo_short),
    path("protected-class/", ProtectedView.as_view()),
    path("sudo-class/", SudoView.as_view()),
    path("", include("config.urls")),
]
