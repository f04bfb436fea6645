"""The demo site's URLs: the home page, the accounts flow from ``mfa``, and the admin."""

from django.contrib import admin
from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("accounts/", include("mfa.urls")),
    # The admin's own login page is replaced by the two-step flow in mfa.admin_site.
    path("admin/", admin.site.urls),
]
