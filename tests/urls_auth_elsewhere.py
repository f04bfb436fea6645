"""The demo's URLs with django.contrib.auth.urls under another prefix: its "login" is stock."""

from django.urls import include, path

from config.urls import urlpatterns as site

urlpatterns = [*site, path("auth/", include("django.contrib.auth.urls"))]
