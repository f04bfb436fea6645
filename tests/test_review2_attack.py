"""The second review's attacks on security keys, remembered browsers and imported tokens.

Each test is one finding: it failed before its fix (see the commit that added it).
"""

import json
import os

import cbor2
import pytest
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url

from mfa.models import RememberedBrowser, TOTPDevice, WebAuthnCredential
from mfa.test import verified_login

from .conftest import PASSWORD, enrol, full_login, is_logged_in, login_password
from .soft_authenticator import SoftAuthenticator
from .test_bad_input import LONE_SURROGATE_UTF7, post_utf7
from .test_webauthn import ADD, ADD_OPTIONS, KEY_LOGIN, KEY_OPTIONS, give_key, options


@pytest.fixture(autouse=True)
def relying_party(settings):
    settings.MFA_WEBAUTHN_RP_ID = "example.com"
    settings.MFA_WEBAUTHN_ORIGINS = ["https://example.com"]


def _attestation(answer: str, **changes) -> str:
    """The registration answer with its attestation object's fields replaced."""
    body = json.loads(answer)
    attestation = cbor2.loads(base64url_to_bytes(body["response"]["attestationObject"]))
    attestation.update(changes)
    body["response"]["attestationObject"] = bytes_to_base64url(cbor2.dumps(attestation))
    return json.dumps(body)


def _with_public_key(answer: str, cose: bytes) -> str:
    """The registration answer with the credential's public key replaced by ``cose``."""
    body = json.loads(answer)
    auth_data = cbor2.loads(base64url_to_bytes(body["response"]["attestationObject"]))["authData"]
    id_length = int.from_bytes(auth_data[53:55], "big")
    return _attestation(answer, authData=auth_data[: 55 + id_length] + cose)


# --- Finding 1: a crafted attestation answered 500 -------------------------------------------

JUNK_STATEMENT = {"alg": -7, "sig": b"x", "x5c": [b"junk"], "ver": "2.0"}
JUNK_STATEMENT |= {"pubArea": b"x", "certInfo": b"x"}
WRONG_TYPES = {"alg": "x", "sig": 5, "x5c": 5, "ver": 5, "response": 5}


@pytest.mark.parametrize(
    "tamper",
    [
        lambda answer: _attestation(answer, fmt="tpm", attStmt=JUNK_STATEMENT),
        lambda answer: _attestation(answer, fmt="android-safetynet", attStmt=WRONG_TYPES),
        lambda answer: _with_public_key(answer, cbor2.dumps([1])),
        lambda answer: _with_public_key(answer, cbor2.dumps({})),
    ],
    ids=["tpm-pub-area", "safetynet-types", "cose-list", "cose-no-kty"],
)
def test_a_crafted_attestation_is_refused_not_an_error(client, clock, user_with_totp, tamper):
    full_login(client, user_with_totp)
    answer = tamper(SoftAuthenticator().create(options(client, ADD_OPTIONS)))
    response = client.post(ADD, {"name": "odd key", "credential": answer})
    assert response.status_code == 400
    assert b"not accepted" in response.content
    assert not WebAuthnCredential.objects.exists()


# --- Finding 2: a credential id longer than WebAuthn allows (and than its column) ------------


@pytest.mark.parametrize("length, added", [(1023, True), (1024, False), (3000, False)])
def test_credential_ids_longer_than_1023_bytes_are_refused(
    client, clock, user_with_totp, length, added
):
    # WebAuthn Level 3, 7.1 (registering a new credential): at most 1023 bytes. A longer id
    # does not fit the credential_id column (1400 characters): an error on PostgreSQL.
    full_login(client, user_with_totp)
    key = SoftAuthenticator(credential_id=os.urandom(length))
    answer = key.create(options(client, ADD_OPTIONS))
    response = client.post(ADD, {"name": "long id", "credential": answer})
    assert response.status_code == (302 if added else 400)
    assert WebAuthnCredential.objects.exists() is added


# --- Finding 3: a session that never used its second factor renamed keys ---------------------


def test_renaming_a_key_needs_a_session_that_used_its_second_factor(client, clock, user):
    # Signed in with the password alone, before the user enrolled elsewhere: the security page
    # asks this session to step up; renaming the keys listed there must ask it too.
    login_password(client)
    give_key(enrol(user).user)
    key = WebAuthnCredential.objects.get()
    response = client.post(f"/accounts/security/keys/{key.pk}/rename/", {"name": "remove me"})
    assert response.status_code == 302 and "/accounts/reauth/" in response["Location"]
    assert WebAuthnCredential.objects.get().name == "blue key"


# --- Finding 4: a lone surrogate beside a well-formed assertion answered 500 -----------------


def test_a_lone_surrogate_beside_a_good_assertion_is_refused(client, clock, user_with_totp):
    # TextOnlyForm refuses the whole form (a non-field error) when any field has a lone
    # surrogate; the key step looked for an error on the credential field only.
    key = give_key(user_with_totp.user)
    login_password(client)
    answer = key.get(options(client, KEY_OPTIONS))
    response = post_utf7(client, KEY_LOGIN, {"credential": answer, "x": LONE_SURROGATE_UTF7})
    assert response.status_code == 400
    assert not is_logged_in(client)
    assert WebAuthnCredential.objects.get().sign_count == 0


# --- Finding 5 (not fixed): half a native recovery code is a counted guess -------------------


def test_half_a_native_code_is_a_typing_error_for_a_user_without_imported_codes(
    client, clock, user_with_totp
):
    # The first two groups of one of the user's own codes, as a hurried paste would give.
    half = user_with_totp.codes[0][:9]
    login_password(client)
    response = client.post("/accounts/2fa/recovery/", {"code": half})
    assert response.status_code == 400
    assert b"16 letters and digits" in response.content
    assert user_with_totp.two_factor.failure_count == 0


def test_half_a_native_code_is_a_typing_error_in_re_authentication_too(
    client, clock, user_with_totp
):
    verified_login(client, user_with_totp.user)
    half = user_with_totp.codes[0][:9]
    response = client.post("/accounts/2fa/disable/", {"password": PASSWORD, "code": half})
    assert response.status_code == 400
    assert b"or one of your recovery codes" in response.content
    assert user_with_totp.two_factor.failure_count == 0
    assert TOTPDevice.objects.filter(user=user_with_totp.user).exists()


# --- Finding 6: a browser remembered without the owner hearing of it ------------------------


def test_the_owner_is_told_when_a_browser_is_remembered(
    client, clock, user_with_totp, mailoutbox, django_capture_on_commit_callbacks
):
    # A phishing proxy that relays one code can tick the box: from then on the password alone
    # signs in from its browser for MFA_REMEMBER_DAYS. A key added or used is emailed; so is this.
    login_password(client)
    with django_capture_on_commit_callbacks(execute=True):
        client.post("/accounts/2fa/verify/", {"code": user_with_totp.code(), "remember": "on"})
    assert RememberedBrowser.objects.filter(user=user_with_totp.user).exists()
    subjects = [message.subject for message in mailoutbox]
    assert subjects == ["A browser will sign in to your account without a code"]
    assert "forget any you do not know" in mailoutbox[0].body


def test_no_notice_when_no_browser_is_remembered(
    client, clock, user_with_totp, mailoutbox, django_capture_on_commit_callbacks
):
    login_password(client)
    with django_capture_on_commit_callbacks(execute=True):
        client.post("/accounts/2fa/verify/", {"code": "000000", "remember": "on"})
        client.post("/accounts/2fa/verify/", {"code": user_with_totp.code()})
    assert not RememberedBrowser.objects.exists()
    assert not any("without a code" in message.subject for message in mailoutbox)
