"""Findings of the outside review (h11): each test reproduces one way around a guard."""

from urllib.parse import parse_qs, urlparse

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from mfa import forms
from tests.conftest import PASSWORD, enrol, full_login, is_logged_in, login_password

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_superuser("root", "root@example.com", PASSWORD)


# --- The admin opened to a session that never used the second factor ------------------------


def test_admin_refuses_a_session_that_logged_in_before_enrolling(client, clock, staff):
    # Logged in with the password alone while the account had no second factor (an attacker
    # with a phished password, or a forgotten session); the owner enrols elsewhere afterwards.
    assert login_password(client, "root")["Location"] == "/"
    enrol(staff)
    response = client.get("/admin/auth/user/")
    assert response.status_code == 302
    # Django's admin sends it to its login page, which sends it to step up, not to the login.
    response = client.get(response["Location"])
    location = urlparse(response["Location"])
    assert location.path == "/accounts/reauth/"
    assert parse_qs(location.query)["next"] == ["/admin/auth/user/"]


def test_admin_opens_after_the_step_up(client, clock, staff):
    login_password(client, "root")
    enrolled = enrol(staff)
    response = client.post(
        "/accounts/reauth/?next=/admin/", {"password": PASSWORD, "code": enrolled.code()}
    )
    assert response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


# --- One password budget per account, whatever the case of the name --------------------------


@pytest.mark.parametrize("spelling", ["alıce", "ALıCE", "ALICE", "Alice"])
def test_every_case_insensitive_spelling_shares_the_budget(spelling):
    # A backend that matches usernames without regard to case (``username__iexact``: UPPER()
    # on PostgreSQL) signs each of these in as alice; each must spend alice's one budget, or
    # every dotless ı doubles the guesses an attacker gets.
    assert spelling.upper() == "ALICE"
    assert forms.username_key(spelling) == forms.username_key("alice")


# --- The security pages of a session that never used the second factor ----------------------


def test_a_session_from_before_enrolment_steps_up_before_the_security_page(client, clock, user):
    login_password(client, "alice")  # no 2FA yet: the password alone logs in
    enrolled = enrol(user)  # the owner enrols in another session
    response = client.get("/accounts/security/")
    assert response.status_code == 302
    location = urlparse(response["Location"])
    assert location.path == "/accounts/reauth/"
    assert parse_qs(location.query)["next"] == ["/accounts/security/"]
    client.post("/accounts/reauth/", {"password": PASSWORD, "code": enrolled.code()})
    assert client.get("/accounts/security/").status_code == 200


def test_a_session_from_before_enrolment_cannot_sign_the_owner_out_elsewhere(client, clock, user):
    login_password(client, "alice")
    enrolled = enrol(user)
    owner = Client()
    full_login(owner, enrolled)
    assert is_logged_in(owner)
    response = client.post("/accounts/security/end-sessions/")
    assert urlparse(response["Location"]).path == "/accounts/reauth/"
    assert is_logged_in(owner)
