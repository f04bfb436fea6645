"""Regression tests of the outside review (issue 15) outside the admin.

Error reports hide every secret held by a helper's frame; the home page is never cached; a
pending login is bound to the device its password step saw. Each test fails with its fix undone.
"""

import pytest
from django.test import Client
from django.utils.cache import get_max_age

from mfa import flows, totp
from mfa.models import RecoveryCode, SecurityEvent
from tests.conftest import enrol, full_login, is_logged_in, login_password

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"
VERIFY = "/accounts/2fa/verify/"
RECOVERY = "/accounts/2fa/recovery/"


# --- the home page is never cached -----------------------------------------------------------


def test_home_page_is_not_stored(clock, user_with_totp):
    client = Client()
    assert full_login(client, user_with_totp).status_code == 302
    response = client.get("/")
    assert response.status_code == 200
    assert user_with_totp.user.get_username() in response.text
    directives = {d.strip() for d in response["Cache-Control"].split(",")}
    assert {"no-store", "private"} <= directives
    assert get_max_age(response) == 0


# --- a pending login is bound to the device its password step saw ----------------------------


@pytest.mark.parametrize("second_step", ["totp", "recovery"])
def test_pending_login_does_not_survive_a_reset_and_a_new_enrolment(
    clock, user_with_totp, second_step
):
    client = Client()
    assert login_password(client).status_code == 302
    user = user_with_totp.user
    assert flows.reset(user, "admin root")
    enrolled_again = enrol(user)  # by the user, or by whoever has the password
    clock.shift(totp.STEP)
    if second_step == "totp":
        response = client.post(VERIFY, {"code": enrolled_again.code()})
    else:
        response = client.post(RECOVERY, {"code": enrolled_again.codes[0]})
    assert response.status_code == 302
    assert response["Location"].startswith(LOGIN)
    assert not is_logged_in(client)
    assert flows.PENDING_KEY not in client.session
    assert not SecurityEvent.objects.filter(user=user, kind=SecurityEvent.Kind.LOGIN).exists()
    # The code was not spent either: a fresh login with it still works.
    assert RecoveryCode.objects.filter(user=user, used_at__isnull=False).count() == 0
    assert full_login(Client(), enrolled_again).status_code == 302


def test_pending_login_with_the_same_device_still_works(clock, user_with_totp):
    client = Client()
    assert login_password(client).status_code == 302
    assert client.post(VERIFY, {"code": user_with_totp.code()}).status_code == 302
    assert is_logged_in(client)


def test_a_marker_naming_no_device_is_dropped(clock, user_with_totp):
    # A marker written before markers named their device: start again, rather than guess.
    client = Client()
    assert login_password(client).status_code == 302
    session = client.session
    del session[flows.PENDING_KEY]["device"]
    session.save()
    response = client.post(VERIFY, {"code": user_with_totp.code()})
    assert response.status_code == 302 and response["Location"].startswith(LOGIN)
    assert not is_logged_in(client)
