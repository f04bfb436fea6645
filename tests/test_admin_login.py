"""The Django admin has no password-only door: its login page sends to the two-step login."""

from urllib.parse import parse_qs, urlparse

import pytest
from django.contrib.auth import SESSION_KEY, get_user_model

from mfa import totp
from tests.conftest import PASSWORD, enrol, full_login, is_logged_in, login_password

pytestmark = pytest.mark.django_db
ADMIN_LOGIN = "/admin/login/"


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_superuser("root", "root@example.com", PASSWORD)


@pytest.fixture
def staff_with_totp(staff):
    return enrol(staff)


def login_target(response) -> tuple[str, str]:
    assert response.status_code == 302
    location = urlparse(response["Location"])
    return location.path, parse_qs(location.query).get("next", [""])[0]


def test_admin_login_get_redirects_to_two_step_login(client):
    path, next_url = login_target(client.get(ADMIN_LOGIN, {"next": "/admin/auth/user/"}))
    assert path == "/accounts/login/"
    assert next_url == "/admin/auth/user/"


def test_admin_login_without_next_goes_back_to_admin(client):
    path, next_url = login_target(client.get(ADMIN_LOGIN))
    assert path == "/accounts/login/"
    assert next_url == "/admin/"


@pytest.mark.parametrize("evil", ["https://evil.example/", "//evil.example", "/\\evil.example"])
def test_admin_login_next_is_validated(client, evil):
    path, next_url = login_target(client.get(ADMIN_LOGIN, {"next": evil}))
    assert path == "/accounts/login/"
    assert "evil" not in next_url


def test_admin_index_anonymous_ends_at_two_step_login(client):
    response = client.get("/admin/auth/user/", follow=True)
    assert response.request["PATH_INFO"] == "/accounts/login/"
    assert all(status == 302 for _, status in response.redirect_chain)


def test_admin_login_post_never_logs_in_2fa_staff(client, clock, staff_with_totp):
    response = client.post(
        ADMIN_LOGIN, {"username": "root", "password": PASSWORD, "next": "/admin/"}
    )
    assert response.status_code == 302
    assert urlparse(response["Location"]).path == "/accounts/login/"
    assert SESSION_KEY not in client.session
    assert client.get("/admin/").status_code == 302
    assert not is_logged_in(client)


def test_admin_login_post_never_logs_in_staff_without_2fa(client, clock, staff):
    client.post(ADMIN_LOGIN, {"username": "root", "password": PASSWORD})
    assert SESSION_KEY not in client.session
    assert client.get("/admin/").status_code == 302


def test_2fa_staff_reaches_admin_through_both_steps(client, clock, staff_with_totp):
    # The other side of the refusals above: the real flow does open the admin.
    response = login_password(client, "root", next="/admin/")
    assert response.status_code == 302
    assert client.get("/admin/").status_code == 302  # still pending
    response = client.post("/accounts/2fa/verify/", {"code": staff_with_totp.code()})
    assert response.status_code == 302
    assert response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200
    assert client.get("/admin/auth/user/").status_code == 200


def test_staff_without_2fa_is_sent_to_setup(client, clock, staff, settings):
    settings.MFA_REQUIRE_FOR_STAFF = True
    assert login_password(client, "root").status_code == 302
    assert is_logged_in(client)
    response = client.get("/admin/", follow=True)
    assert response.request["PATH_INFO"] == "/accounts/2fa/setup/"
    assert client.get("/admin/auth/user/").status_code == 302


def test_staff_without_2fa_allowed_when_policy_off(client, clock, staff, settings):
    settings.MFA_REQUIRE_FOR_STAFF = False
    assert login_password(client, "root").status_code == 302
    assert client.get("/admin/").status_code == 200


def test_session_made_outside_the_flow_cannot_use_admin(client, clock, staff_with_totp):
    client.force_login(staff_with_totp.user)
    response = client.get("/admin/")
    assert response.status_code == 302
    assert urlparse(response["Location"]).path == "/accounts/login/"
    assert SESSION_KEY not in client.session


def test_admin_session_after_full_login_survives_next_step(client, clock, staff_with_totp):
    assert full_login(client, staff_with_totp).status_code == 302
    clock.shift(totp.STEP * 3)
    assert client.get("/admin/").status_code == 200
