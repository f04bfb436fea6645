"""The page's one "don't ask again" box, honoured when the user signs in with a security key.

Chromium's virtual authenticator (CDP) as in test_webauthn.py, holding a credential whose
public key the test stored for alice, so no code and no registration are needed first; the
page's own JavaScript (mfa/webauthn.js) posts the box's state with the key's answer.
"""

import base64

import pytest
from cryptography.hazmat.primitives import serialization

from mfa.models import RememberedBrowser, SecurityEvent
from tests.conftest import PASSWORD, enrol
from tests.soft_authenticator import SoftAuthenticator
from tests.test_webauthn import give_key

from .conftest import path_of, shot, sign_in
from .test_webauthn import virtual_authenticator

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

HOME = "/"
VERIFY = "/accounts/2fa/verify/"
BOX = "Don't ask again on this browser for 30 days"
Kind = SecurityEvent.Kind


def authenticator_holding(page, key: SoftAuthenticator) -> None:
    """Attach a virtual authenticator to ``page`` that holds ``key``'s credential."""
    cdp, authenticator = virtual_authenticator(page)
    private = key.key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cdp.send(
        "WebAuthn.addCredential",
        {
            "authenticatorId": authenticator,
            "credential": {
                "credentialId": base64.b64encode(key.credential_id).decode(),
                "isResidentCredential": False,
                "rpId": "localhost",
                "privateKey": base64.b64encode(private).decode(),
                "signCount": 0,
            },
        },
    )


def test_the_box_ticked_then_the_key_remembers_the_browser(site, user, pages, relying_party):
    enrol(user)
    key = give_key(user, SoftAuthenticator(rp_id="localhost"))
    page = pages.new()
    authenticator_holding(page, key)

    sign_in(page, site, "alice", PASSWORD)
    assert path_of(page) == VERIFY
    page.get_by_label(BOX).check()
    shot(page, "verify-key-remember")
    with page.expect_navigation():
        page.get_by_role("button", name="Use your security key").click()
    assert path_of(page) == HOME
    assert SecurityEvent.objects.filter(user=user, kind=Kind.LOGIN, detail="security key").exists()
    assert RememberedBrowser.objects.filter(user=user).count() == 1
    assert any(c["name"] == "mfa_remember" for c in page.context.cookies())

    page.get_by_role("button", name="Sign out").click()
    sign_in(page, site, "alice", PASSWORD)
    assert path_of(page) == HOME, "the remembered browser was asked for a second factor"
    assert SecurityEvent.objects.filter(user=user, kind=Kind.REMEMBERED_LOGIN).count() == 1
