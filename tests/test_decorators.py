"""mfa_required, reauth_required, their mixins and the re-authentication page they send to."""

import datetime
from types import SimpleNamespace
from urllib.parse import parse_qs, urlparse

import pytest
from django.utils import timezone

from mfa import decorators, flows, totp
from mfa.models import SecurityEvent
from tests.conftest import (
    PASSWORD,
    enrol,
    enrolling_secret,
    full_login,
    login_password,
)

pytestmark = pytest.mark.urls("tests.urls_protected")
Kind = SecurityEvent.Kind
REAUTH = "/accounts/reauth/"
SETUP = "/accounts/2fa/setup/"
REAUTH_AGE = 15 * 60  # MFA_REAUTH_AGE's default


def where(response) -> tuple[str, dict[str, list[str]]]:
    """The path and the query of a redirect."""
    assert response.status_code == 302, response
    url = urlparse(response["Location"])
    return url.path, parse_qs(url.query)


def messages_on(client, url: str) -> list[str]:
    return [str(m) for m in client.get(url).context["messages"]]


@pytest.fixture
def verified(client, clock, user_with_totp):
    """A client logged in through both steps at T0; the next code is a fresh one."""
    assert full_login(client, user_with_totp).status_code == 302
    clock.shift(totp.STEP)
    return user_with_totp


@pytest.fixture
def password_only(client, clock, user):
    """A client logged in at T0 as a user without 2FA."""
    assert login_password(client).status_code == 302
    return user


# --- Anonymous ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["/protected/", "/protected-async/", "/sudo/", "/sudo-short/", "/protected-class/", REAUTH],
)
def test_anonymous_goes_to_the_login_with_next(client, db, url):
    path, query = where(client.get(url))
    assert path == "/accounts/login/"
    assert query == {"next": [url]}


def test_mfa_required_with_arguments(client, db, clock, user_with_totp):
    path, query = where(client.get("/protected-args/?a=1"))
    assert (path, query) == ("/accounts/login/", {"goto": ["/protected-args/?a=1"]})
    assert full_login(client, user_with_totp).status_code == 302
    assert client.get("/protected-args/").status_code == 200


# --- mfa_required: users with 2FA -----------------------------------------------------------


@pytest.mark.parametrize("url", ["/protected/", "/protected-async/", "/protected-class/"])
def test_a_verified_session_opens(client, verified, url):
    response = client.get(url)
    assert response.status_code == 200
    assert b"protected" in response.content


@pytest.mark.parametrize("url", ["/protected/", "/protected-async/", "/protected-class/"])
def test_a_session_that_never_used_the_second_factor_must_step_up(client, clock, user, url):
    # Logged in with the password alone, then enrolled in another session: this session has
    # not used the second factor, so the page asks for it (the middleware keeps the session).
    assert login_password(client).status_code == 302
    enrolled = enrol(user)
    assert where(client.get(url)) == (REAUTH, {"next": [url]})
    response = client.post(f"{REAUTH}?next={url}", {"password": PASSWORD, "code": enrolled.code()})
    assert response["Location"] == url
    assert client.get(url).status_code == 200


def test_a_password_proof_is_not_a_second_factor(client, clock, user):
    assert login_password(client).status_code == 302
    enrol(user)
    session = client.session
    session[flows.AUTH_AT_KEY] = int(totp.now())  # what the setup's password confirmation sets
    session.save()
    assert where(client.get("/protected/"))[0] == REAUTH


# --- mfa_required: users without 2FA --------------------------------------------------------


@pytest.mark.parametrize("url", ["/protected/", "/protected-async/", "/protected-class/"])
def test_without_2fa_the_user_is_sent_to_enrol(client, password_only, url):
    response = client.get(url)
    assert where(response) == (SETUP, {"next": [url]})
    assert messages_on(client, response["Location"]) == [
        "This page needs two-factor authentication. Set it up to continue."
    ]


def test_the_grace_period_counts_from_date_joined(client, settings, clock, user):
    settings.MFA_ENROLMENT_GRACE = 3600
    user.date_joined = timezone.now()
    user.save()
    assert login_password(client).status_code == 302
    clock.shift(3599)
    assert client.get("/protected/").status_code == 200
    clock.shift(1)
    assert where(client.get("/protected/"))[0] == SETUP


def test_no_grace_by_default(client, clock, user):
    user.date_joined = timezone.now()
    user.save()
    assert login_password(client).status_code == 302
    assert where(client.get("/protected/"))[0] == SETUP


def test_a_date_joined_in_the_future_gets_no_grace(client, settings, clock, user):
    settings.MFA_ENROLMENT_GRACE = 3600
    user.date_joined = timezone.now() + datetime.timedelta(days=365)
    user.save()
    assert login_password(client).status_code == 302
    assert where(client.get("/protected/"))[0] == SETUP


def test_a_user_model_without_date_joined_gets_no_grace(settings):
    settings.MFA_ENROLMENT_GRACE = 3600
    assert not decorators._in_grace(SimpleNamespace())
    assert decorators._in_grace(SimpleNamespace(date_joined=timezone.now()))


def test_enrolling_leads_back_to_the_page(client, password_only):
    setup_url = client.get("/protected/")["Location"]
    response = client.get(setup_url)
    assert response.status_code == 200
    assert response.context["next"] == "/protected/"
    assert 'action="/accounts/2fa/setup/?next=/protected/"' in response.text
    code = totp.code_at(enrolling_secret(client), totp.step_of(totp.now()))
    response = client.post(setup_url, {"code": code})
    assert response.status_code == 200
    assert response.context["codes"]
    assert '<a href="/protected/">' in response.text  # the "continue" link
    # The enrolment's code proved the new factor in this session.
    assert client.get("/protected/").status_code == 200


def test_a_stale_setup_asks_the_password_and_keeps_next(client, clock, password_only):
    clock.shift(REAUTH_AGE + 1)
    response = client.get(f"{SETUP}?next=/protected/")
    assert response.templates[0].name == "mfa/confirm_password.html"
    assert 'action="/accounts/2fa/setup/?next=/protected/"' in response.text
    response = client.post(f"{SETUP}?next=/protected/", {"password": PASSWORD})
    assert where(response) == (SETUP, {"next": ["/protected/"]})


@pytest.mark.parametrize(
    "evil", ["https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:alert(1)"]
)
def test_the_setup_refuses_a_next_off_the_site(client, password_only, evil):
    response = client.get(SETUP, {"next": evil})
    assert response.context["next"] == ""
    code = totp.code_at(enrolling_secret(client), totp.step_of(totp.now()))
    response = client.post(f"{SETUP}?next={evil}", {"code": code})
    assert response.context["next"] == ""
    assert '<a href="/accounts/security/">' in response.text
    assert "evil" not in response.text


# --- reauth_required ------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/sudo/", "/sudo-short/", "/sudo-class/"])
def test_a_fresh_login_is_a_proof(client, verified, url):
    assert client.get(url).status_code == 200


def test_the_proof_expires_after_max_age(client, clock, verified):
    clock.shift(REAUTH_AGE - totp.STEP)  # exactly MFA_REAUTH_AGE after the login
    assert client.get("/sudo/").status_code == 200
    clock.shift(1)
    assert where(client.get("/sudo/")) == (REAUTH, {"next": ["/sudo/"]})


@pytest.mark.parametrize("url", ["/sudo-short/", "/sudo-class/"])
def test_max_age_is_per_view(client, clock, verified, url):
    clock.shift(60 - totp.STEP + 1)
    assert where(client.get(url)) == (REAUTH, {"next": [url]})
    assert client.get("/sudo/").status_code == 200


def test_max_age_follows_the_setting(client, settings, clock, verified):
    settings.MFA_REAUTH_AGE = 60
    clock.shift(60 - totp.STEP + 1)
    assert where(client.get("/sudo/"))[0] == REAUTH


def test_max_age_must_be_seconds():
    with pytest.raises(ValueError):
        decorators.reauth_required(max_age=-1)


@pytest.mark.parametrize("proof", ["totp", "recovery"])
def test_reauthenticating_opens_the_page_again(client, clock, verified, proof):
    clock.shift(REAUTH_AGE)
    assert where(client.get("/sudo/"))[0] == REAUTH
    response = client.get(REAUTH, {"next": "/sudo/"})
    assert response.status_code == 200
    assert set(response.context["form"].fields) == {"password", "code", "credential"}
    assert response.templates[0].name == "mfa/reauth.html"
    assert "no-store" in response["Cache-Control"]
    code = verified.code() if proof == "totp" else verified.codes[0]
    response = client.post(f"{REAUTH}?next=/sudo/", {"password": PASSWORD, "code": code})
    assert response["Location"] == "/sudo/"
    assert client.get("/sudo/").status_code == 200


def test_an_enrolled_user_needs_a_code(client, clock, verified):
    clock.shift(REAUTH_AGE)
    response = client.post(f"{REAUTH}?next=/sudo/", {"password": PASSWORD})
    assert response.status_code == 400
    assert where(client.get("/sudo/"))[0] == REAUTH


def test_the_password_alone_is_not_a_full_proof_for_an_enrolled_user(client, clock, verified):
    clock.shift(REAUTH_AGE + 1)
    session = client.session
    flows.mark_reauthenticated(SimpleNamespace(session=session))  # the setup's confirmation
    session.save()
    assert where(client.get("/sudo/"))[0] == REAUTH
    flows.mark_reauthenticated(SimpleNamespace(session=session), second_factor=True)
    session.save()
    assert client.get("/sudo/").status_code == 200  # the control: both proofs open it


def test_a_wrong_code_or_password_is_refused_counted_and_rate_limited(client, clock, verified):
    clock.shift(REAUTH_AGE + 1)
    wrong = f"{(int(verified.code()) + 1) % 1_000_000:06d}"
    response = client.post(f"{REAUTH}?next=/sudo/", {"password": PASSWORD, "code": wrong})
    assert response.status_code == 400
    assert SecurityEvent.objects.filter(kind=Kind.MFA_FAILED).count() == 1
    response = client.post(f"{REAUTH}?next=/sudo/", {"password": "not it", "code": verified.code()})
    assert response.status_code == 400
    assert SecurityEvent.objects.filter(
        kind=Kind.PASSWORD_FAILED, detail="re-authentication"
    ).exists()
    for _ in range(3):
        client.post(REAUTH, {"password": "not it", "code": verified.code()})
    # MFA_CHANGE_RATE (5/m) is shared with turning 2FA off and regenerating codes.
    response = client.post(REAUTH, {"password": PASSWORD, "code": verified.code()})
    assert response.status_code == 429
    assert where(client.get("/sudo/"))[0] == REAUTH


def test_without_2fa_the_password_is_the_proof(client, clock, password_only):
    assert client.get("/sudo/").status_code == 200
    clock.shift(REAUTH_AGE + 1)
    assert where(client.get("/sudo/"))[0] == REAUTH
    response = client.get(REAUTH, {"next": "/sudo/"})
    assert set(response.context["form"].fields) == {"password"}
    assert response.templates[0].name == "mfa/reauth.html"
    response = client.post(f"{REAUTH}?next=/sudo/", {"password": "not it"})
    assert response.status_code == 400
    assert SecurityEvent.objects.filter(
        kind=Kind.PASSWORD_FAILED, detail="re-authentication"
    ).exists()
    response = client.post(f"{REAUTH}?next=/sudo/", {"password": PASSWORD})
    assert response["Location"] == "/sudo/"
    assert client.get("/sudo/").status_code == 200


@pytest.mark.parametrize(
    "evil", ["https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:alert(1)"]
)
def test_reauth_refuses_a_next_off_the_site(client, clock, verified, evil):
    response = client.post(
        REAUTH + "?" + f"next={evil}", {"password": PASSWORD, "code": verified.code()}
    )
    assert response["Location"] == "/"  # LOGIN_REDIRECT_URL


def test_reauth_of_a_password_only_user_refuses_a_next_off_the_site(client, password_only):
    response = client.post(f"{REAUTH}?next=https://evil.example/", {"password": PASSWORD})
    assert response["Location"] == "/"


def test_a_later_password_only_login_does_not_inherit_the_second_factor(client, clock, verified):
    # Verified, then 2FA turned off and the user signs in again with the password alone in
    # the same browser; once enrolled again elsewhere, this session has not used the factor.
    response = client.post(
        "/accounts/2fa/disable/", {"password": PASSWORD, "code": verified.code()}
    )
    assert response.status_code == 302
    assert login_password(client).status_code == 302
    enrol(verified.user)
    assert where(client.get("/protected/"))[0] == REAUTH


# --- The settings' system check -------------------------------------------------------------


@pytest.mark.parametrize("name", ["MFA_ENROLMENT_GRACE", "MFA_REAUTH_AGE", "MFA_REMEMBER_DAYS"])
@pytest.mark.parametrize("value", ["3600", -1, 1.5, True, None])
def test_e011_durations_must_be_whole_seconds(settings, name, value):
    from mfa.checks import check_durations

    setattr(settings, name, value)
    assert [e.id for e in check_durations()] == ["mfa.E011"]


def test_no_e011_for_good_durations(settings):
    from mfa.checks import check_durations

    settings.MFA_ENROLMENT_GRACE = 7 * 24 * 3600
    settings.MFA_REAUTH_AGE = 0
    assert check_durations() == []
