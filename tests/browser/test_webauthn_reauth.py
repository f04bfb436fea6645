"""Re-authentication with a security key in a real browser (Chromium's virtual authenticator).

The page's own JavaScript (mfa/webauthn.js) fetches the REAUTH options, asks the key and posts
its answer with the password in the page's one form, under the demo's strict CSP.
"""

import pytest

from mfa.models import RecoveryCode, SecurityEvent, TOTPDevice, WebAuthnCredential
from tests.conftest import PASSWORD, enrol

from .conftest import axe_violations, path_of, shot, sign_in
from .test_webauthn import enter_code, virtual_authenticator

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

VERIFY = "/accounts/2fa/verify/"
SECURITY = "/accounts/security/"
REGENERATE = "/accounts/2fa/recovery-codes/"
KEY_BUTTON = "Use your security key instead of a code"
Kind = SecurityEvent.Kind


def test_regenerate_recovery_codes_with_password_and_key(site, user, pages, relying_party):
    enrolled = enrol(user)
    page = pages.new()
    virtual_authenticator(page)
    sign_in(page, site, "alice", PASSWORD)
    assert path_of(page) == VERIFY
    enter_code(page, enrolled.secret, user)

    # Register a key from the security page.
    page.goto(site + "/accounts/security/keys/add/")
    page.get_by_label("Name").fill("laptop passkey")
    with page.expect_navigation():
        page.get_by_role("button", name="Add the key").click()
    assert path_of(page) == SECURITY
    key = WebAuthnCredential.objects.get(user=user)
    old_codes = set(RecoveryCode.objects.filter(user=user).values_list("selector", flat=True))
    last_step = TOTPDevice.objects.get(user=user).last_used_step

    page.goto(site + REGENERATE)
    button = page.get_by_role("button", name=KEY_BUTTON)
    assert button.is_visible()
    shot(page, "regenerate-with-key")
    assert axe_violations(page) == []

    # Without the password, the key is not even asked: the page says what is missing.
    button.click()
    assert page.get_by_text("Enter your password first").is_visible()
    assert path_of(page) == REGENERATE
    key.refresh_from_db()
    assert key.last_used_at is None

    page.get_by_label("Your password").fill(PASSWORD)
    with page.expect_navigation():
        button.click()
    assert path_of(page) == REGENERATE
    assert page.locator(".recovery-code").count() == RecoveryCode.objects.filter(user=user).count()
    new_codes = set(RecoveryCode.objects.filter(user=user).values_list("selector", flat=True))
    assert new_codes and not new_codes & old_codes
    key.refresh_from_db()
    assert key.last_used_at is not None
    assert SecurityEvent.objects.filter(
        user=user, kind=Kind.KEY_USED, detail=f"key {key.pk}, re-authentication"
    ).exists()
    assert SecurityEvent.objects.filter(user=user, kind=Kind.CODES_REGENERATED).count() == 1
    # No code was used for it.
    assert TOTPDevice.objects.get(user=user).last_used_step == last_step
