"""A user whose only factor is a passkey, in a real browser (Chromium's virtual authenticator).

Turn 2FA on with the key from the security page, keep the recovery codes it shows, sign out,
sign in with the password and the key (no code field is offered), then turn 2FA off with the
password and the key.
"""

import pytest

from mfa.models import RecoveryCode, SecurityEvent, TwoFactor, WebAuthnCredential
from tests.conftest import PASSWORD

from .conftest import axe_violations, path_of, shot, sign_in
from .test_webauthn import virtual_authenticator

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

HOME, VERIFY, SECURITY = "/", "/accounts/2fa/verify/", "/accounts/security/"
Kind = SecurityEvent.Kind


def test_a_passkey_alone_turns_2fa_on_signs_in_and_turns_it_off(site, user, pages, relying_party):
    page = pages.new()
    virtual_authenticator(page)
    sign_in(page, site, "alice", PASSWORD)
    assert path_of(page) == HOME  # no 2FA yet: the password was enough

    page.goto(site + SECURITY)
    assert page.locator("[data-state]").get_attribute("data-state") == "off"
    page.get_by_role("link", name="Add a security key or passkey").click()
    page.get_by_label("Name").fill("laptop passkey")
    with page.expect_navigation():
        page.get_by_role("button", name="Add the key").click()
    # 2FA is on now, and the recovery codes are shown once.
    assert page.get_by_text("Two-factor authentication is now on.").is_visible()
    assert page.locator(".recovery-code").count() == RecoveryCode.objects.filter(user=user).count()
    shot(page, "key-only-codes")
    assert axe_violations(page) == []
    assert TwoFactor.objects.filter(user=user).exists()
    assert SecurityEvent.objects.filter(
        user=user, kind=Kind.ENABLED, detail="security key"
    ).exists()

    page.goto(site + SECURITY)
    assert page.locator("[data-state]").get_attribute("data-state") == "on"
    assert page.locator("[data-app]").get_attribute("data-app") == "off"
    page.get_by_role("button", name="Sign out").click()

    sign_in(page, site, "alice", PASSWORD)
    assert path_of(page) == VERIFY
    assert page.locator("#id_code").count() == 0, "no app: no code field"
    shot(page, "key-only-verify")
    assert axe_violations(page) == []
    with page.expect_navigation():
        page.get_by_role("button", name="Use your security key").click()
    assert path_of(page) == HOME
    assert SecurityEvent.objects.filter(user=user, kind=Kind.LOGIN, detail="security key").exists()

    # The last factor is not removed on its own: 2FA is turned off, with the password and key.
    page.goto(site + SECURITY)
    page.get_by_role("link", name="Turn off two-factor authentication").click()
    page.get_by_label("Your password").fill(PASSWORD)
    with page.expect_navigation():
        page.get_by_role("button", name="Use your security key instead of a code").click()
    assert path_of(page) == SECURITY
    assert page.locator("[data-state]").get_attribute("data-state") == "off"
    assert not WebAuthnCredential.objects.filter(user=user).exists()
    assert not TwoFactor.objects.filter(user=user).exists()
