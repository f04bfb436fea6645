"""Third hostile review: users whose only factor is a security key (``TwoFactor`` rows).

Each test is an attack on the keys-only changes. The first two found a hole (the check that
lets a session add a factor ran before, not in, the transaction that saves it); the others
are attacks that held, kept so that they keep holding.
"""

import threading
from types import SimpleNamespace

import pytest
from django.db import connections, transaction

from mfa import flows, totp
from mfa.models import TOTPDevice, TwoFactor, WebAuthnCredential
from mfa.webauthn import ceremonies, keys

from .conftest import enrolling_secret, login_password
from .soft_authenticator import SoftAuthenticator
from .test_webauthn import ADD, ADD_OPTIONS, give_key, options

SETUP = "/accounts/2fa/setup/"


@pytest.fixture(autouse=True)
def relying_party(settings):
    settings.MFA_WEBAUTHN_RP_ID = "example.com"
    settings.MFA_WEBAUTHN_ORIGINS = ["https://example.com"]


def owner_turns_2fa_on(user) -> None:
    """What the owner's first key, added in another session, commits."""
    TwoFactor.objects.create(user=user)
    give_key(user)


# --- Found: a session that never proved a factor joins a 2FA turned on meanwhile -------------


def test_a_key_added_as_2fa_turns_on_elsewhere_needs_a_second_factor(
    client, clock, user, monkeypatch
):
    # Whoever holds the password signs in while 2FA is off (a fresh password lets a first key
    # in). While their key's answer is being checked, the owner turns 2FA on with their own
    # key in another session. The thief's key must not join it: this session never proved
    # the owner's factor, and after the owner's key it would need to.
    login_password(client)
    answer = SoftAuthenticator().create(options(client, ADD_OPTIONS))
    real = ceremonies.verify_registration

    def owner_meanwhile(*args, **kwargs):
        verified = real(*args, **kwargs)
        owner_turns_2fa_on(user)
        return verified

    monkeypatch.setattr(ceremonies, "verify_registration", owner_meanwhile)
    response = client.post(ADD, {"name": "thief", "credential": answer})
    assert response.status_code == 302 and response["Location"].startswith("/accounts/reauth/")
    assert not WebAuthnCredential.objects.filter(user=user, name="thief").exists()
    assert not flows.second_factor_verified(_request_of(client))


def test_an_app_confirmed_as_2fa_turns_on_elsewhere_needs_a_second_factor(
    client, clock, user, monkeypatch
):
    # The same race with an authenticator app: the setup page let the session in with the
    # password (2FA off), and the owner's key turned 2FA on before the code was confirmed.
    login_password(client)
    client.get(SETUP)
    secret = enrolling_secret(client)
    real = totp.matching_step

    def owner_meanwhile(*args, **kwargs):
        step = real(*args, **kwargs)
        owner_turns_2fa_on(user)
        return step

    monkeypatch.setattr(totp, "matching_step", owner_meanwhile)
    response = client.post(SETUP, {"code": totp.code_at(secret, totp.step_of(totp.now()))})
    assert response.status_code == 302 and response["Location"].startswith("/accounts/reauth/")
    assert not TOTPDevice.objects.filter(user=user).exists()
    assert not flows.second_factor_verified(_request_of(client))


def _request_of(client):
    class Request:
        session = client.session

    return Request()


# --- Held: the last two keys removed at once ------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_removals_of_the_last_two_keys_leave_one(user, monkeypatch):
    # Each request removes one key and then looks for another factor. Without the TwoFactor
    # row's lock both look before either commits, each sees the other's key, and both go
    # (seen on PostgreSQL with the lock taken out). The first request is held after its look
    # until the second has started; with the lock the second waits for the first's commit.
    TwoFactor.objects.create(user=user)
    give_key(user)
    give_key(user)
    first, second = WebAuthnCredential.objects.order_by("pk")
    real = flows.has_factor
    looked, go = threading.Event(), threading.Event()

    def held(owner, but=None):
        found = real(owner, but)
        if threading.current_thread().name == "first":
            looked.set()
            go.wait(10)
        return found

    monkeypatch.setattr(flows, "has_factor", held)
    results = {}

    def remove(name, pk):
        try:
            results[name] = keys.removed(None, user, pk, detail="test")
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=remove, args=(name, key.pk), name=name)
        for name, key in (("first", first), ("second", second))
    ]
    threads[0].start()
    assert looked.wait(10)
    threads[1].start()
    # Let the second reach the lock (or, without it, its own look) before the first commits.
    threads[1].join(1)
    go.set()
    for thread in threads:
        thread.join()
    assert sorted(results.values()) == [keys.RemoveResult.LAST, keys.RemoveResult.OK]
    assert WebAuthnCredential.objects.filter(user=user).count() == 1


# --- Held: turning 2FA off while a factor is being added --------------------------------------


@pytest.mark.django_db(transaction=True)
def test_turning_2fa_off_during_an_addition_leaves_no_factor_behind(user):
    # The addition joins the TwoFactor row and saves its key, then is held before its commit
    # while "turn 2FA off" runs. Without the row's lock (seen on PostgreSQL) the removal
    # deletes the row, cannot see the uncommitted key, and commits first: the key is then
    # saved under no TwoFactor row, a factor that signing in would never ask for.
    TwoFactor.objects.create(user=user)
    give_key(user)
    saved, go = threading.Event(), threading.Event()
    # A session that proved its password and a factor just now: it may add one.
    now = int(totp.now())
    session = {flows.AUTH_AT_KEY: now, flows.VERIFIED_AT_KEY: now}
    proved = SimpleNamespace(user=user, session=session)

    def add():
        try:
            with transaction.atomic():
                flows.turn_on_with_key(proved, user)
                give_key(user)
                saved.set()
                go.wait(10)
        finally:
            connections.close_all()

    def turn_off():
        try:
            flows._remove(user)
        finally:
            connections.close_all()

    adding, removing = threading.Thread(target=add), threading.Thread(target=turn_off)
    adding.start()
    assert saved.wait(10)
    removing.start()
    removing.join(1)  # let the removal reach the lock (or, without it, delete and commit)
    go.set()
    adding.join()
    removing.join()
    orphans = WebAuthnCredential.objects.filter(user=user).exclude(
        user__mfa_two_factor__isnull=False
    )
    assert not orphans.exists()
