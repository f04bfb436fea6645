"""The site's URLs plus a view that re-keys the session and then fails (tests only)."""

from django.urls import include, path


def rekey_then_fail(request):
    request.session.cycle_key()
    raise RuntimeError("the view fails after re-keying the session")


urlpatterns = [
    path("test/rekey-then-fail/", rekey_then_fail),
    path("", include("config.urls")),
]
