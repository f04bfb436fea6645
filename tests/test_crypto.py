"""Secrets at rest: encrypted, bound to their user, and failing closed without the key."""

import logging

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth import get_user_model
from django.test import Client

from mfa import crypto, totp
from mfa.models import SecurityEvent, TOTPDevice
from tests.conftest import PASSWORD, enrol, is_logged_in, login_password

pytestmark = pytest.mark.django_db


@pytest.fixture
def bob(db):
    return get_user_model().objects.create_user("bob", "bob@example.com", PASSWORD)


# --- Unit level -----------------------------------------------------------------------------


def test_round_trip_and_no_plaintext():
    secret = totp.generate_secret()
    token = crypto.encrypt_secret(secret, 7)
    assert secret not in token
    assert crypto.decrypt_secret(token, 7) == secret
    # Fernet: a fresh IV each time.
    assert crypto.encrypt_secret(secret, 7) != token


def test_ciphertext_is_bound_to_the_user():
    token = crypto.encrypt_secret(totp.generate_secret(), 7)
    with pytest.raises(crypto.UndecryptableSecret):
        crypto.decrypt_secret(token, 8)
    # A prefix of another pk must not match either ("7" vs "77").
    with pytest.raises(crypto.UndecryptableSecret):
        crypto.decrypt_secret(crypto.encrypt_secret("ABCDEFGH", 77), 7)


def test_tampered_token_is_refused():
    token = crypto.encrypt_secret(totp.generate_secret(), 1)
    tampered = token[:-5] + ("A" if token[-5] != "A" else "B") + token[-4:]
    with pytest.raises(crypto.UndecryptableSecret):
        crypto.decrypt_secret(tampered, 1)
    with pytest.raises(crypto.UndecryptableSecret):
        crypto.decrypt_secret("not a token é", 1)


def test_other_key_cannot_decrypt():
    token = crypto.encrypt_secret("JBSWY3DPEHPK3PXP", 1)
    crypto.write_ring([crypto.new_key()])
    with pytest.raises(crypto.UndecryptableSecret):
        crypto.decrypt_secret(token, 1)


def test_rotation_keeps_old_tokens_readable():
    old = crypto.load_keys()[0]
    token = crypto.encrypt_secret("JBSWY3DPEHPK3PXP", 1)
    new = crypto.new_key()
    crypto.write_ring([new, old])
    assert crypto.decrypt_secret(token, 1) == "JBSWY3DPEHPK3PXP"
    rotated = crypto.reencrypt(token, 1)
    assert rotated is not None
    assert crypto.decrypting_key(rotated) == new
    crypto.write_ring([new])
    assert crypto.decrypt_secret(rotated, 1) == "JBSWY3DPEHPK3PXP"
    with pytest.raises(crypto.UndecryptableSecret):
        crypto.decrypt_secret(token, 1)


def test_missing_ring_raises_undecryptable(key_ring):
    token = crypto.encrypt_secret("JBSWY3DPEHPK3PXP", 1)
    (key_ring / "ring").unlink()
    with pytest.raises(crypto.UndecryptableSecret):
        crypto.decrypt_secret(token, 1)


def test_ring_file_is_private(key_ring):
    path = crypto.write_ring([crypto.new_key()])
    assert path.stat().st_mode & 0o077 == 0


def test_env_ring_wins(monkeypatch):
    key = Fernet.generate_key()
    monkeypatch.setenv("MFA_FERNET_KEYS", key.decode())
    assert crypto.load_keys() == [key]
    token = crypto.encrypt_secret("JBSWY3DPEHPK3PXP", 3)
    assert Fernet(key).decrypt(token.encode()).endswith(b"JBSWY3DPEHPK3PXP")


def test_key_error_message_does_not_leak_key(monkeypatch):
    almost = Fernet.generate_key().decode()[:-3] + "!!="
    monkeypatch.setenv("MFA_FERNET_KEYS", almost)
    with pytest.raises(crypto.KeyRingError) as excinfo:
        crypto.load_keys()
    assert almost not in str(excinfo.value)
    assert almost[:20] not in str(excinfo.value)


# --- Through the login ----------------------------------------------------------------------


def _assert_refused_403(response, client):
    assert response.status_code == 403
    assert b"unavailable" in response.content
    assert "_auth_user_id" not in client.session
    assert not is_logged_in(client)


def test_ciphertext_swap_between_users_fails_closed(client, clock, user, bob):
    alice_enrolled = enrol(user)
    bob_enrolled = enrol(bob)
    TOTPDevice.objects.filter(user=user).update(
        encrypted_secret=bob_enrolled.device.encrypted_secret
    )
    # Bob's code, in Alice's login.
    assert login_password(client, "alice").status_code == 302
    response = client.post("/accounts/2fa/verify/", {"code": bob_enrolled.code()})
    _assert_refused_403(response, client)
    # Alice's own code does not help either.
    client2 = Client()
    assert login_password(client2, "alice").status_code == 302
    response = client2.post("/accounts/2fa/verify/", {"code": alice_enrolled.code()})
    _assert_refused_403(response, client2)
    assert SecurityEvent.objects.filter(
        user=user, kind=SecurityEvent.Kind.SECRET_UNREADABLE
    ).exists()


@pytest.mark.parametrize("how", ["other key", "ring deleted"])
def test_missing_key_fails_closed(client, clock, user_with_totp, key_ring, mfa_log, how):
    if how == "other key":
        crypto.write_ring([crypto.new_key()])
    else:
        (key_ring / "ring").unlink()
        crypto.reload()
    assert login_password(client).status_code == 302
    response = client.post("/accounts/2fa/verify/", {"code": user_with_totp.code()})
    _assert_refused_403(response, client)
    assert "recovery code" in response.content.decode()  # the way in that needs no key
    errors = [r for r in mfa_log.records if r.name.startswith("mfa") and r.levelno >= logging.ERROR]
    assert errors, "the operator is told in the log"
    assert all(user_with_totp.secret not in r.getMessage() for r in mfa_log.records)
    assert SecurityEvent.objects.filter(
        user=user_with_totp.user, kind=SecurityEvent.Kind.SECRET_UNREADABLE
    ).exists()
    # The pending login is over: the same code cannot be retried in this session.
    response = client.post("/accounts/2fa/verify/", {"code": user_with_totp.code()})
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert not is_logged_in(client)


def test_db_column_never_holds_plaintext(client, clock, user_with_totp):
    stored = TOTPDevice.objects.values_list("encrypted_secret", flat=True).get(
        user=user_with_totp.user
    )
    assert user_with_totp.secret not in stored
    assert crypto.decrypt_secret(stored, user_with_totp.user.pk) == user_with_totp.secret
