"""The demo site's URLs: the home page, the accounts flow from ``mfa``, and the admin."""

from django.contrib import admin
from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("accounts/", include("mfa.urls")),
    # The admin's own login page redirects into the two-step flow (mfa.sites).
    path("admin/", admin.site.urls),
]
