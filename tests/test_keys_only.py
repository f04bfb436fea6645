"""A user whose only factor is a security key (and their recovery codes).

A key turns 2FA on as an app's enrolment does; such a user signs in with the key or a recovery
code, on the same back-off as everyone; and their last factor goes only with 2FA itself.
"""

import pytest
from django.core import mail
from django.test import Client

from mfa import flows, signals, totp
from mfa.conf import settings as mfa_settings
from mfa.models import RecoveryCode, SecurityEvent, TOTPDevice, TwoFactor, WebAuthnCredential
from mfa.test import enrol, verified_login
from mfa.webauthn import keys

from .conftest import PASSWORD, enrolling_secret, full_login, is_logged_in, login_password
from .soft_authenticator import SoftAuthenticator
from .test_webauthn import ADD, ADD_OPTIONS, KEY_OPTIONS, give_key, options, pending, post_key

Kind = SecurityEvent.Kind
VERIFY, RECOVERY = "/accounts/2fa/verify/", "/accounts/2fa/recovery/"
SECURITY, SETUP, DISABLE = "/accounts/security/", "/accounts/2fa/setup/", "/accounts/2fa/disable/"


@pytest.fixture(autouse=True)
def relying_party(settings):
    settings.MFA_WEBAUTHN_RP_ID = "example.com"
    settings.MFA_WEBAUTHN_ORIGINS = ["https://example.com"]


class KeyOnly:
    def __init__(self, user, key: SoftAuthenticator, codes: list[str]):
        self.user, self.key, self.codes = user, key, codes

    @property
    def two_factor(self) -> TwoFactor:
        return TwoFactor.objects.get(user=self.user)


@pytest.fixture
def key_only(user) -> KeyOnly:
    """The rows that adding a first key leaves (``test_a_first_key_turns_2fa_on`` proves it)."""
    TwoFactor.objects.create(user=user)
    return KeyOnly(user, give_key(user), flows._replace_recovery_codes(user))


def add_key(client, key: SoftAuthenticator, name="yubikey"):
    answer = key.create(options(client, ADD_OPTIONS))
    return client.post(ADD, {"name": name, "credential": answer})


def key_login(client, key_only: KeyOnly) -> None:
    pending(client)
    assert post_key(client, key_only.key.get(options(client, KEY_OPTIONS))).status_code == 302
    assert is_logged_in(client)


# --- Turning 2FA on with a key --------------------------------------------------------------


def test_a_first_key_turns_2fa_on(client, clock, user, django_capture_on_commit_callbacks):
    enabled = []

    def receiver(sender, user, **kwargs):
        enabled.append(user)

    signals.two_factor_enabled.connect(receiver)
    try:
        login_password(client)  # no 2FA: signed in with the password, which is fresh
        with django_capture_on_commit_callbacks(execute=True):
            response = add_key(client, SoftAuthenticator())
        assert response.status_code == 200
        codes = response.context["codes"]
    finally:
        signals.two_factor_enabled.disconnect(receiver)
    assert flows.has_2fa(user) and not flows.has_app(user)
    assert RecoveryCode.objects.filter(user=user).count() == len(codes) > 0
    assert b"Two-factor authentication is now on." in response.content
    assert "no-store" in response["Cache-Control"]
    assert SecurityEvent.objects.filter(kind=Kind.ENABLED, detail="security key").count() == 1
    assert enabled == [user]
    assert any("turned on" in m.subject for m in mail.outbox)
    # The key proved itself: this session has used a second factor (mfa_required passes).
    assert isinstance(client.session.get(flows.VERIFIED_AT_KEY), int)


def test_a_first_key_needs_a_fresh_password(client, clock, user):
    login_password(client)
    clock.shift(mfa_settings.REAUTH_AGE + 1)
    response = client.get(ADD)
    assert response.status_code == 302 and "/accounts/reauth/" in response["Location"]
    assert client.post(ADD_OPTIONS).status_code == 403
    assert not flows.has_2fa(user)


def test_a_refused_first_key_leaves_2fa_off(client, clock, user):
    login_password(client)
    answer = SoftAuthenticator().create(options(client, ADD_OPTIONS), origin="https://evil.test")
    assert client.post(ADD, {"name": "k", "credential": answer}).status_code == 400
    assert not flows.has_2fa(user)
    assert not RecoveryCode.objects.exists() and not TwoFactor.objects.exists()


def test_a_second_key_keeps_the_recovery_codes(client, clock, key_only):
    key_login(client, key_only)
    before = set(RecoveryCode.objects.values_list("code_hash", flat=True))
    response = add_key(client, SoftAuthenticator(), name="spare")
    assert response.status_code == 302
    assert set(RecoveryCode.objects.values_list("code_hash", flat=True)) == before
    assert not SecurityEvent.objects.filter(kind=Kind.ENABLED).exists()


# --- Signing in -----------------------------------------------------------------------------


def test_the_second_step_offers_the_key_and_recovery_codes_not_a_code(client, clock, key_only):
    pending(client)
    page = client.get(VERIFY).content.decode()
    assert 'data-webauthn="get"' in page
    assert 'name="code"' not in page
    assert RECOVERY in page


def test_sign_in_with_the_key(client, clock, key_only):
    key_login(client, key_only)
    assert SecurityEvent.objects.filter(kind=Kind.LOGIN, detail="security key").exists()


def test_sign_in_with_a_recovery_code(client, clock, key_only):
    pending(client)
    assert client.post(RECOVERY, {"code": key_only.codes[0]}).status_code == 302
    assert is_logged_in(client)


def test_a_six_digit_code_is_refused_and_not_counted(client, clock, key_only):
    pending(client)
    response = client.post(VERIFY, {"code": "123456"})
    assert response.status_code == 400
    assert b"no authenticator app" in response.content
    assert not is_logged_in(client)
    assert key_only.two_factor.failure_count == 0


def test_key_failures_back_off_the_recovery_codes_too(client, clock, key_only):
    """One budget for every factor: wrong keys exhaust it for the recovery codes as well."""
    stranger = SoftAuthenticator()
    for _ in range(mfa_settings.BACKOFF_AFTER):
        pending(client)
        # A key registered to no one: an unknown credential, counted.
        assert post_key(client, stranger.get(options(client, KEY_OPTIONS))).status_code == 400
    assert key_only.two_factor.failure_count == mfa_settings.BACKOFF_AFTER
    pending(client)
    assert client.post(RECOVERY, {"code": key_only.codes[0]}).status_code == 429
    assert not is_logged_in(client)


def test_a_pending_login_from_before_a_reset_cannot_finish_with_a_new_key(client, clock, key_only):
    pending(client)  # the password step saw the old TwoFactor row
    flows.reset(key_only.user, actor="admin")
    TwoFactor.objects.create(user=key_only.user)  # enrolled again, perhaps by a thief
    give_key(key_only.user, key_only.key)
    response = post_key(client, key_only.key.get(options(client, KEY_OPTIONS)))
    assert response.status_code == 302 and response["Location"] == "/accounts/login/"
    assert not is_logged_in(client)


# --- The last factor ------------------------------------------------------------------------


def remove_url(key_only: KeyOnly) -> str:
    return (
        f"/accounts/security/keys/{WebAuthnCredential.objects.get(user=key_only.user).pk}/remove/"
    )


def test_the_last_key_cannot_be_removed(client, clock, key_only):
    key_login(client, key_only)
    url = remove_url(key_only)
    page = client.get(url)
    assert page.status_code == 200 and b"only second factor" in page.content
    # Even with the password and a good recovery code: the page has no such form to honour.
    client.post(url, {"password": PASSWORD, "code": key_only.codes[1]})
    assert WebAuthnCredential.objects.filter(user=key_only.user).count() == 1
    assert RecoveryCode.objects.filter(user=key_only.user, used_at__isnull=False).count() == 0
    assert flows.has_2fa(key_only.user)


def test_removed_refuses_the_last_factor(key_only):
    pk = WebAuthnCredential.objects.get(user=key_only.user).pk
    assert keys.removed(None, key_only.user, pk, "test") == keys.RemoveResult.LAST
    assert WebAuthnCredential.objects.filter(pk=pk).exists()
    assert not SecurityEvent.objects.filter(kind=Kind.KEY_REMOVED).exists()


def test_a_key_beside_another_can_be_removed(client, clock, key_only):
    spare = give_key(key_only.user, SoftAuthenticator())
    key_login(client, key_only)
    row = WebAuthnCredential.objects.get(credential_id=spare.id)
    url = f"/accounts/security/keys/{row.pk}/remove/"
    response = client.post(url, {"password": PASSWORD, "code": key_only.codes[0]})
    assert response.status_code == 302
    assert list(WebAuthnCredential.objects.values_list("credential_id", flat=True)) == [
        key_only.key.id
    ]
    assert flows.has_2fa(key_only.user)


def test_the_admin_keeps_a_last_key(key_only, django_user_model):
    root = django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-1")
    enrol(root)
    admin = Client()
    verified_login(admin, root)
    pk = WebAuthnCredential.objects.get(user=key_only.user).pk
    response = admin.post(
        f"/admin/mfa/webauthncredential/{pk}/delete/", {"post": "yes"}, follow=True
    )
    assert WebAuthnCredential.objects.filter(pk=pk).exists()
    assert "last second factor" in response.content.decode()


def test_turning_2fa_off_with_password_and_recovery_code(client, clock, key_only):
    key_login(client, key_only)
    response = client.post(DISABLE, {"password": PASSWORD, "code": key_only.codes[0]})
    assert response.status_code == 302
    assert not flows.has_2fa(key_only.user)
    assert not WebAuthnCredential.objects.exists() and not RecoveryCode.objects.exists()


# --- Adding an app to the keys --------------------------------------------------------------


def test_adding_an_app_needs_a_second_factor_again(client, clock, key_only):
    key_login(client, key_only)
    clock.shift(mfa_settings.REAUTH_AGE + 1)
    response = client.get(SETUP)
    assert response.status_code == 302 and "/accounts/reauth/" in response["Location"]
    # The password alone is not enough: the re-authentication asks for a second factor.
    assert client.post("/accounts/reauth/", {"password": PASSWORD}).status_code == 400
    assert client.get(SETUP).status_code == 302


def test_an_app_joins_the_keys(client, clock, key_only):
    key_login(client, key_only)
    assert client.get(SETUP).status_code == 200
    secret = enrolling_secret(client)
    code = totp.code_at(secret, totp.step_of(totp.now()))
    response = client.post(SETUP, {"code": code})
    assert response.status_code == 302 and response["Location"] == SECURITY
    assert flows.has_app(key_only.user)
    assert TOTPDevice.objects.filter(user=key_only.user).count() == 1
    # The recovery codes stay (none replaced), and the trail says what happened.
    assert RecoveryCode.objects.filter(user=key_only.user).count() == len(key_only.codes)
    assert SecurityEvent.objects.filter(kind=Kind.APP_ADDED).count() == 1
    assert not SecurityEvent.objects.filter(kind=Kind.ENABLED).exists()
    assert any("authenticator app was added" in m.subject for m in mail.outbox)


def test_a_six_digit_code_at_re_authentication_tells_nothing_of_the_password(
    client, clock, key_only
):
    """Without an app, a 6-digit code is refused before the password is looked at: the same
    answer for a right and a wrong password, so a session thief learns nothing from it."""
    key_login(client, key_only)
    answers = [
        client.post(DISABLE, {"password": password, "code": "123456"})
        for password in (PASSWORD, "wrong guess")
    ]
    assert [a.status_code for a in answers] == [400, 400]
    errors = [a.context["form"].errors for a in answers]
    assert errors[0] == errors[1]
    assert b"no authenticator app" in answers[0].content
    assert not SecurityEvent.objects.filter(kind=Kind.PASSWORD_FAILED).exists()
    assert flows.has_2fa(key_only.user)


# --- Removing the app, keys staying ---------------------------------------------------------

REMOVE_APP = "/accounts/2fa/app/remove/"


@pytest.fixture
def app_and_key(user_with_totp):
    return user_with_totp, give_key(user_with_totp.user)


def test_the_app_is_removed_with_the_password_and_a_second_factor(client, clock, app_and_key):
    enrolled, _key = app_and_key
    full_login(client, enrolled)
    assert REMOVE_APP in client.get(SECURITY).content.decode()
    assert (
        client.post(REMOVE_APP, {"password": "wrong", "code": enrolled.code(1)}).status_code == 400
    )
    assert flows.has_app(enrolled.user)
    response = client.post(REMOVE_APP, {"password": PASSWORD, "code": enrolled.codes[0]})
    assert response.status_code == 302 and response["Location"] == SECURITY
    assert not flows.has_app(enrolled.user) and flows.has_2fa(enrolled.user)
    assert WebAuthnCredential.objects.filter(user=enrolled.user).exists()
    assert SecurityEvent.objects.filter(kind=Kind.APP_REMOVED).count() == 1
    assert any("authenticator app was removed" in m.subject for m in mail.outbox)


def test_the_app_alone_is_not_removed_on_its_own(client, clock, user_with_totp):
    full_login(client, user_with_totp)
    assert REMOVE_APP not in client.get(SECURITY).content.decode()
    page = client.get(REMOVE_APP)
    assert page.status_code == 200 and b"only second factor" in page.content
    client.post(REMOVE_APP, {"password": PASSWORD, "code": user_with_totp.codes[0]})
    assert flows.has_app(user_with_totp.user)
    assert not flows.remove_app(None, user_with_totp.user)  # the function refuses it too
    assert flows.has_app(user_with_totp.user)
