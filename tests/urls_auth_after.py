"""The demo's URLs with django.contrib.auth.urls mounted after mfa.urls, as the README says."""

from django.urls import include, path

from config.urls import urlpatterns as site

urlpatterns = [*site, path("accounts/", include("django.contrib.auth.urls"))]
