"""The demo's URLs with django.contrib.auth.urls mounted BEFORE mfa.urls (check mfa.E009)."""

from django.urls import include, path

from config.urls import urlpatterns as site

urlpatterns = [path("accounts/", include("django.contrib.auth.urls")), *site]
