"""A security key in a real browser: Chromium's virtual authenticator (CDP), no mock.

The authenticator is CTAP2 with an internal transport, resident keys and user verification,
attached through the DevTools protocol; the page's own JavaScript (mfa/webauthn.js) runs both
ceremonies against the live server under the demo's strict CSP.
"""

import pytest

from mfa.models import SecurityEvent, TOTPDevice, WebAuthnCredential
from tests.conftest import PASSWORD, enrol

from .conftest import axe_violations, path_of, shot, sign_in, usable_code

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

HOME = "/"
VERIFY = "/accounts/2fa/verify/"
SECURITY = "/accounts/security/"
Kind = SecurityEvent.Kind


def virtual_authenticator(page) -> tuple:
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    added = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
            }
        },
    )
    return cdp, added["authenticatorId"]


def enter_code(page, secret: str, user) -> None:
    code, _ = usable_code(secret, TOTPDevice.objects.get(user=user).last_used_step)
    with page.expect_navigation():
        page.locator("#id_code").fill(code)  # six digits: the form submits itself


def test_add_a_key_sign_in_with_it_and_remove_it(site, user, pages, relying_party):
    enrolled = enrol(user)
    page = pages.new()
    cdp, authenticator = virtual_authenticator(page)

    sign_in(page, site, "alice", PASSWORD)
    assert path_of(page) == VERIFY
    assert page.get_by_role("button", name="Use your security key").count() == 0
    enter_code(page, enrolled.secret, user)
    assert path_of(page) == HOME

    # Add the key from the security page.
    page.goto(site + SECURITY)
    page.get_by_role("link", name="Add a security key or passkey").click()
    page.get_by_label("Name").fill("laptop passkey")
    shot(page, "key-add")
    assert axe_violations(page) == []
    with page.expect_navigation():
        page.get_by_role("button", name="Add the key").click()
    assert path_of(page) == SECURITY
    assert page.locator("table.keys").get_by_text("laptop passkey").count() == 1
    key = WebAuthnCredential.objects.get(user=user)
    stored = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})
    assert [c["credentialId"] for c in stored["credentials"]] != []
    assert stored["credentials"][0]["isResidentCredential"] is True
    shot(page, "security-with-key")
    assert axe_violations(page) == []

    # Sign out, then in again with the password and the key.
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, site, "alice", PASSWORD)
    assert path_of(page) == VERIFY
    shot(page, "verify-with-key")
    assert axe_violations(page) == []
    with page.expect_navigation():
        page.get_by_role("button", name="Use your security key").click()
    assert path_of(page) == HOME
    key.refresh_from_db()
    assert key.last_used_at is not None
    assert SecurityEvent.objects.filter(user=user, kind=Kind.LOGIN, detail="security key").exists()

    # Remove it, with the password and a code.
    page.goto(site + SECURITY)
    page.locator("table.keys").get_by_role("link", name="Remove").click()
    page.get_by_label("Your password").fill(PASSWORD)
    code, _ = usable_code(enrolled.secret, TOTPDevice.objects.get(user=user).last_used_step)
    page.locator("#id_code").fill(code)
    with page.expect_navigation():
        page.get_by_role("button", name="Remove the key").click()
    assert path_of(page) == SECURITY
    assert page.locator("table.keys").count() == 0
    assert not WebAuthnCredential.objects.filter(user=user).exists()
    assert TOTPDevice.objects.filter(user=user).exists(), "2FA stays on with the app"


def test_the_key_step_is_hidden_without_javascript(site, user, pages, relying_party, settings):
    enrol(user)
    from tests.test_webauthn import give_key

    give_key(user)
    page = pages.new(javascript=False)
    sign_in(page, site, "alice", PASSWORD)
    assert path_of(page) == VERIFY
    assert not page.get_by_role("button", name="Use your security key").is_visible()
    assert page.locator("#id_code").is_visible(), "the code still works"
