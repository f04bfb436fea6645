"""Regression tests of the outside review (issue 15) outside the admin.

Error reports hide every secret held by a helper's frame; the home page is never cached; a
pending login is bound to the device its password step saw. Each test fails with its fix undone.
"""

import pytest
from django.test import Client
from django.utils.cache import get_max_age

from tests.conftest import full_login

pytestmark = pytest.mark.django_db


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
