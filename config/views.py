"""The demo site's own page: a home page only a fully logged-in user sees."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache


# It shows who is logged in: kept out of every cache, so the back button after logging out
# (or the next user of a shared computer) cannot bring it back.
@never_cache
@login_required
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "home.html")
