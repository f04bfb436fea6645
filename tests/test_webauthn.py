"""Security keys through real ceremonies from a software authenticator (tests/soft_authenticator).

Each test breaks one thing a phishing site, a replay or a stolen session would rely on, and
expects a clear 4xx answer, never a 500 and never a login.
"""

import json

import pytest
from django.core import mail
from django.test import Client

from mfa import flows
from mfa.models import SecurityEvent, TwoFactor, WebAuthnCredential
from mfa.webauthn import ceremonies

from .conftest import enrol, full_login, is_logged_in, login_password
from .soft_authenticator import UV, SoftAuthenticator

Kind = SecurityEvent.Kind
KEY_LOGIN = "/accounts/2fa/key/"
KEY_OPTIONS = "/accounts/2fa/key/options/"
ADD = "/accounts/security/keys/add/"
ADD_OPTIONS = "/accounts/security/keys/options/"


@pytest.fixture(autouse=True)
def relying_party(settings):
    settings.MFA_WEBAUTHN_RP_ID = "example.com"
    settings.MFA_WEBAUTHN_ORIGINS = ["https://example.com"]


def give_key(user, authenticator: SoftAuthenticator | None = None) -> SoftAuthenticator:
    """Store a key as a registration would (the public key as COSE, as py_webauthn gives it)."""
    authenticator = authenticator or SoftAuthenticator()
    WebAuthnCredential.objects.create(
        user=user,
        credential_id=authenticator.id,
        public_key=authenticator._cose_key(),
        sign_count=authenticator.counter,
        name="blue key",
    )
    return authenticator


@pytest.fixture
def keyed(user_with_totp):
    return user_with_totp, give_key(user_with_totp.user)


def options(client, url=KEY_OPTIONS) -> dict:
    response = client.post(url)
    assert response.status_code == 200, response
    return response.json()


def post_key(client, body: str):
    return client.post(KEY_LOGIN, {"credential": body})


def pending(client):
    response = login_password(client)
    assert response.status_code == 302
    assert not is_logged_in(client)


def failures(enrolled) -> int:
    return TwoFactor.objects.get(user=enrolled.user).failure_count


# --- The login --------------------------------------------------------------------------------


def test_login_with_key(client, clock, keyed):
    enrolled, key = keyed
    pending(client)
    response = post_key(client, key.get(options(client)))
    assert response.status_code == 302
    assert is_logged_in(client)
    row = WebAuthnCredential.objects.get()
    assert row.sign_count == 1 and row.last_used_at is not None
    assert SecurityEvent.objects.filter(kind=Kind.KEY_USED).count() == 1
    assert SecurityEvent.objects.filter(kind=Kind.LOGIN, detail="security key").count() == 1
    assert any("security key was used" in m.subject for m in mail.outbox)


def test_verify_page_offers_the_key_only_to_a_user_with_one(client, clock, user_with_totp):
    pending(client)
    assert b"data-webauthn" not in client.get("/accounts/2fa/verify/").content
    give_key(user_with_totp.user)
    assert b'data-webauthn="get"' in client.get("/accounts/2fa/verify/").content


def test_options_allow_only_the_pending_users_keys(client, clock, keyed, django_user_model):
    _enrolled, key = keyed
    bob = django_user_model.objects.create_user("bob", "bob@example.com", "x")
    give_key(bob)
    pending(client)
    allowed = [c["id"] for c in options(client)["allowCredentials"]]
    assert allowed == [key.id]


def test_no_pending_marker_logs_nobody_in(client, clock, keyed):
    _enrolled, key = keyed
    pending(client)
    answer = key.get(options(client))
    session = client.session
    del session[flows.PENDING_KEY]  # the challenge stays: only the marker is missing
    session.save()
    response = post_key(client, answer)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert not is_logged_in(client)
    assert client.post(KEY_OPTIONS).status_code == 302  # no options either


def test_replayed_assertion_is_refused(client, clock, keyed):
    enrolled, key = keyed
    pending(client)
    answer = key.get(options(client))
    assert post_key(client, answer).status_code == 302
    client.post("/accounts/logout/")
    pending(client)
    # No challenge in this session: refused unchecked, not counted as a guess.
    assert post_key(client, answer).status_code == 400
    assert not is_logged_in(client)
    # A live challenge, but not the one the old answer signed.
    options(client)
    assert post_key(client, answer).status_code == 400
    assert not is_logged_in(client)
    assert failures(enrolled) == 1


def test_racing_replay_in_one_session_is_accepted_once(client, clock, keyed):
    """Two requests that both read the challenge before either saved the session."""
    _enrolled, key = keyed
    pending(client)
    # A key without a counter (many passkeys): only the row's challenge guard stops it.
    answer = key.get(options(client), counter_step=0)
    kept = client.session[ceremonies.CHALLENGE_KEY]
    marker = client.session[flows.PENDING_KEY]
    assert post_key(client, answer).status_code == 302
    other = Client()  # the racing request's copy of the session, in a session of its own
    session = other.session
    session[flows.PENDING_KEY] = marker
    session[ceremonies.CHALLENGE_KEY] = kept
    session.save()
    assert post_key(other, answer).status_code == 400
    assert not is_logged_in(other)
    assert SecurityEvent.objects.filter(kind=Kind.LOGIN).count() == 1


def test_challenge_is_spent_by_a_failed_answer(client, clock, keyed):
    _enrolled, key = keyed
    pending(client)
    challenge = options(client)
    assert post_key(client, key.get(challenge, origin="https://evil.test")).status_code == 400
    assert post_key(client, key.get(challenge)).status_code == 400
    assert not is_logged_in(client)


def test_expired_challenge_is_refused(client, clock, keyed, settings):
    settings.MFA_WEBAUTHN_CHALLENGE_TIMEOUT = 60
    _enrolled, key = keyed
    pending(client)
    answer = key.get(options(client))
    clock.shift(61)
    response = post_key(client, answer)
    assert response.status_code == 400
    assert b"expired" in response.content
    assert not is_logged_in(client)


def test_challenge_of_an_earlier_pending_login_is_refused(client, clock, keyed):
    _enrolled, key = keyed
    pending(client)
    answer = key.get(options(client))
    clock.shift(5)
    pending(client)  # a new password step in the same browser: a new pending login
    assert post_key(client, answer).status_code == 400
    assert not is_logged_in(client)


@pytest.mark.parametrize(
    "tamper",
    [
        {"origin": "https://example.com.evil.test"},
        {"origin": "http://example.com"},
        {"rp_id": "evil.test"},
    ],
    ids=["phishing-origin", "http-origin", "rp-id"],
)
def test_wrong_origin_or_rp_id_is_refused_and_counted(client, clock, keyed, tamper):
    enrolled, key = keyed
    pending(client)
    response = post_key(client, key.get(options(client), **tamper))
    assert response.status_code == 400
    assert not is_logged_in(client)
    assert failures(enrolled) == 1
    assert WebAuthnCredential.objects.get().sign_count == 0


def test_another_users_credential_is_refused(client, clock, user_with_totp, django_user_model):
    bob = django_user_model.objects.create_user("bob", "bob@example.com", "x")
    enrol(bob)
    bobs_key = give_key(bob)
    give_key(user_with_totp.user)
    pending(client)  # alice
    # Bob's real key signs alice's challenge: still not alice's key.
    response = post_key(client, bobs_key.get(options(client)))
    assert response.status_code == 400
    assert not is_logged_in(client)
    assert failures(user_with_totp) == 1
    assert WebAuthnCredential.objects.get(user=bob).last_used_at is None


def test_wrong_signature_is_refused(client, clock, keyed):
    enrolled, key = keyed
    pending(client)
    impostor = SoftAuthenticator(credential_id=key.credential_id)  # same id, another key
    assert post_key(client, impostor.get(options(client))).status_code == 400
    assert not is_logged_in(client)


def test_counter_regression_is_refused_and_reported(client, clock, user_with_totp):
    key = SoftAuthenticator(counter=10)
    give_key(user_with_totp.user, key)
    key.counter = 4  # a copy of the key, used less often
    pending(client)
    response = post_key(client, key.get(options(client)))
    assert response.status_code == 400
    assert not is_logged_in(client)
    assert SecurityEvent.objects.filter(kind=Kind.KEY_CLONED).count() == 1
    assert WebAuthnCredential.objects.get().sign_count == 10
    assert any("copied" in m.subject for m in mail.outbox)


def test_keys_without_a_counter_keep_working(client, clock, user_with_totp):
    key = give_key(user_with_totp.user)
    for _ in range(2):
        pending(client)
        assert post_key(client, key.get(options(client), counter_step=0)).status_code == 302
        client.post("/accounts/logout/")
    assert not SecurityEvent.objects.filter(kind=Kind.KEY_CLONED).exists()


def test_user_verification_required(client, clock, keyed, settings):
    settings.MFA_WEBAUTHN_USER_VERIFICATION = "required"
    _enrolled, key = keyed
    pending(client)
    assert options(client)["userVerification"] == "required"
    assert post_key(client, key.get(options(client), flags=0x01)).status_code == 400
    assert not is_logged_in(client)
    assert post_key(client, key.get(options(client), flags=0x01 | UV)).status_code == 302


# Browser answers that are not WebAuthn credentials at all, by name (also tests of re-auth).
MALFORMED = {
    "empty": "",
    "garbage": "not json",
    "list": "[]",
    "bad-id": '{"id": 1}',
    "no-response": json.dumps({"id": "AA", "rawId": "AA", "type": "public-key", "response": {}}),
    "deep": "{" * 5000,
    "one-megabyte": "x" * (1024 * 1024),
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_answer_is_a_clear_error(client, clock, keyed, body):
    enrolled, _key = keyed
    pending(client)
    options(client)
    response = post_key(client, body)
    assert response.status_code == 400
    assert b"security key" in response.content
    assert not is_logged_in(client)
    assert failures(enrolled) == 0


def test_the_code_form_shown_after_a_key_error_still_offers_to_remember(client, clock, keyed):
    # The page after a refused key is the verify page: its code form keeps the checkbox.
    pending(client)
    options(client)
    response = post_key(client, "not json")
    assert response.status_code == 400
    assert b'name="remember"' in response.content
    assert b'name="remember"' in client.get("/accounts/2fa/verify/").content


def test_backed_off_before_any_check(client, clock, keyed):
    enrolled, key = keyed
    pending(client)
    answer = key.get(options(client))
    TwoFactor.objects.filter(user=enrolled.user).update(failure_count=5, blocked_until=None)
    from django.utils import timezone

    TwoFactor.objects.update(blocked_until=timezone.now() + timezone.timedelta(minutes=5))
    response = post_key(client, answer)
    assert response.status_code == 429
    assert not is_logged_in(client)
    assert WebAuthnCredential.objects.get().sign_count == 0
    # Not even looked at: the challenge is still there, unspent.
    assert ceremonies.CHALLENGE_KEY in client.session


def test_failures_count_towards_the_back_off(client, clock, keyed, settings):
    settings.MFA_BACKOFF_AFTER = 2
    settings.MFA_CODE_RATE = "100/m"
    enrolled, key = keyed
    pending(client)
    for _ in range(2):
        post_key(client, key.get(options(client), origin="https://evil.test"))
    # Backed off: not even a challenge is made now (tests/test_webauthn_step.py also shows an
    # answer to an earlier challenge refused unchecked).
    assert client.post(KEY_OPTIONS).status_code == 429
    assert not is_logged_in(client)


def test_password_change_voids_the_pending_key_login(client, clock, keyed):
    enrolled, key = keyed
    pending(client)
    answer = key.get(options(client))
    enrolled.user.set_password("a new one entirely")
    enrolled.user.save()
    response = post_key(client, answer)
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    assert not is_logged_in(client)


# --- Adding, renaming, removing ---------------------------------------------------------------


def add(client, authenticator: SoftAuthenticator, name="yubikey", **tamper):
    answer = authenticator.create(options(client, ADD_OPTIONS), **tamper)
    return client.post(ADD, {"name": name, "credential": answer})


def test_add_key_then_log_in_with_it(client, clock, user_with_totp):
    full_login(client, user_with_totp)
    key = SoftAuthenticator()
    response = add(client, key)
    assert response.status_code == 302, response.content
    row = WebAuthnCredential.objects.get()
    assert (row.user, row.name, row.credential_id) == (user_with_totp.user, "yubikey", key.id)
    assert SecurityEvent.objects.filter(kind=Kind.KEY_ADDED).count() == 1
    assert any("security key was added" in m.subject for m in mail.outbox)
    page = client.get("/accounts/security/").content.decode()
    assert "yubikey" in page and "never" in page
    client.post("/accounts/logout/")
    pending(client)
    assert post_key(client, key.get(options(client))).status_code == 302
    assert is_logged_in(client)


def test_add_refuses_a_wrong_origin(client, clock, user_with_totp):
    full_login(client, user_with_totp)
    response = add(client, SoftAuthenticator(), origin="https://evil.test")
    assert response.status_code == 400
    assert not WebAuthnCredential.objects.exists()


def test_add_refuses_a_wrong_rp_id(client, clock, user_with_totp):
    full_login(client, user_with_totp)
    assert add(client, SoftAuthenticator(), rp_id="evil.test").status_code == 400
    assert not WebAuthnCredential.objects.exists()


def test_add_challenge_is_one_time(client, clock, user_with_totp):
    full_login(client, user_with_totp)
    key = SoftAuthenticator()
    answer = key.create(options(client, ADD_OPTIONS))
    assert client.post(ADD, {"name": "a", "credential": answer}).status_code == 302
    WebAuthnCredential.objects.all().delete()
    assert client.post(ADD, {"name": "a", "credential": answer}).status_code == 400
    assert not WebAuthnCredential.objects.exists()


def test_credential_ids_are_unique_across_users(client, clock, user_with_totp, django_user_model):
    bob = django_user_model.objects.create_user("bob", "bob@example.com", "x")
    key = give_key(bob)
    full_login(client, user_with_totp)
    response = add(client, SoftAuthenticator(credential_id=key.credential_id))
    assert response.status_code == 400
    assert b"already registered" in response.content
    assert WebAuthnCredential.objects.get().user == bob


def test_add_needs_a_fresh_second_factor(client, clock, user_with_totp, settings):
    full_login(client, user_with_totp)
    clock.shift(settings.MFA_REAUTH_AGE if hasattr(settings, "MFA_REAUTH_AGE") else 15 * 60 + 1)
    clock.shift(1)
    response = client.get(ADD)
    assert response.status_code == 302 and "/accounts/reauth/" in response["Location"]
    assert client.post(ADD_OPTIONS).status_code == 403


def test_rename_only_own_key(client, clock, keyed, django_user_model):
    enrolled, _key = keyed
    bob = django_user_model.objects.create_user("bob", "bob@example.com", "x")
    give_key(bob)
    full_login(client, enrolled)
    mine, bobs = (
        WebAuthnCredential.objects.get(user=enrolled.user),
        WebAuthnCredential.objects.get(user=bob),
    )
    client.post(f"/accounts/security/keys/{mine.pk}/rename/", {"name": "red key"})
    assert (
        client.post(f"/accounts/security/keys/{bobs.pk}/rename/", {"name": "mine now"}).status_code
        == 404
    )
    assert WebAuthnCredential.objects.get(pk=mine.pk).name == "red key"
    assert WebAuthnCredential.objects.get(pk=bobs.pk).name == "blue key"


def test_remove_needs_password_and_code(client, clock, keyed, django_user_model):
    enrolled, _key = keyed
    full_login(client, enrolled)
    row = WebAuthnCredential.objects.get()
    url = f"/accounts/security/keys/{row.pk}/remove/"
    assert client.post(url, {"password": "wrong", "code": enrolled.code(1)}).status_code == 400
    assert WebAuthnCredential.objects.exists()
    response = client.post(
        url, {"password": "correct horse battery staple", "code": enrolled.code(1)}
    )
    assert response.status_code == 302
    assert not WebAuthnCredential.objects.exists()
    assert SecurityEvent.objects.filter(kind=Kind.KEY_REMOVED).count() == 1
    assert flows.has_2fa(enrolled.user)  # the last key gone: 2FA stays on


def test_remove_another_users_key_is_not_found(client, clock, user_with_totp, django_user_model):
    bob = django_user_model.objects.create_user("bob", "bob@example.com", "x")
    give_key(bob)
    full_login(client, user_with_totp)
    row = WebAuthnCredential.objects.get()
    assert client.get(f"/accounts/security/keys/{row.pk}/remove/").status_code == 404


def test_disable_and_reset_remove_the_keys(rf, keyed, django_user_model):
    enrolled, _key = keyed
    assert flows.reset(enrolled.user, actor="admin")
    assert not WebAuthnCredential.objects.exists()


# --- System checks ----------------------------------------------------------------------------


def webauthn_ids() -> list[str]:
    from mfa.checks import check_webauthn

    return [error.id for error in check_webauthn()]


def test_check_passes_for_a_matching_rp_id(settings):
    settings.ALLOWED_HOSTS = ["login.example.com"]
    assert webauthn_ids() == []


@pytest.mark.parametrize("hosts", [["example.org"], ["notexample.com"], []])
def test_check_e012_rp_id_not_served(settings, hosts):
    settings.ALLOWED_HOSTS = hosts
    settings.DEBUG = False
    assert webauthn_ids() == ["mfa.E012"]


@pytest.mark.parametrize(
    "origin",
    ["http://example.com", "https://example.com.evil.test", "https://evil.test", "example.com"],
)
def test_check_e013_origin(settings, origin):
    settings.ALLOWED_HOSTS = ["example.com"]
    settings.MFA_WEBAUTHN_ORIGINS = ["https://example.com", origin]
    assert webauthn_ids() == ["mfa.E013"]


def test_check_allows_http_localhost(settings):
    settings.ALLOWED_HOSTS = ["localhost"]
    settings.MFA_WEBAUTHN_RP_ID = "localhost"
    settings.MFA_WEBAUTHN_ORIGINS = ["http://localhost:8000"]
    assert webauthn_ids() == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MFA_WEBAUTHN_USER_VERIFICATION", "always"),
        ("MFA_WEBAUTHN_CHALLENGE_TIMEOUT", "300"),
        ("MFA_WEBAUTHN_CHALLENGE_TIMEOUT", 0),
    ],
)
def test_check_e014(settings, name, value):
    settings.ALLOWED_HOSTS = ["example.com"]
    setattr(settings, name, value)
    assert webauthn_ids() == ["mfa.E014"]


def test_default_rp_id_and_origin_come_from_allowed_hosts(settings):
    del settings.MFA_WEBAUTHN_RP_ID
    del settings.MFA_WEBAUTHN_ORIGINS
    settings.ALLOWED_HOSTS = [".example.net", "10.0.0.1", "www.example.org"]
    assert ceremonies.rp_id() == "www.example.org"
    assert ceremonies.origins() == ["https://www.example.org"]


# --- Admin ------------------------------------------------------------------------------------


@pytest.fixture
def root_client(django_user_model, clock):
    from mfa.test import verified_login

    root = django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-1")
    enrol(root)
    client = Client()
    verified_login(client, root)
    return client


def test_admin_lists_keys_without_ids_or_public_keys(root_client, keyed):
    _enrolled, key = keyed
    page = root_client.get("/admin/mfa/webauthncredential/").content.decode()
    assert "blue key" in page
    row = WebAuthnCredential.objects.get()
    detail = root_client.get(f"/admin/mfa/webauthncredential/{row.pk}/change/").content.decode()
    assert "blue key" in detail
    assert key.id not in page + detail
    assert root_client.get("/admin/mfa/webauthncredential/add/").status_code == 403


def test_admin_removes_a_key_audited(root_client, keyed):
    _enrolled, _key = keyed
    row = WebAuthnCredential.objects.get()
    response = root_client.post(f"/admin/mfa/webauthncredential/{row.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not WebAuthnCredential.objects.exists()
    assert SecurityEvent.objects.get(kind=Kind.KEY_REMOVED).detail == "by admin root"


def test_admin_deletes_a_user_with_keys(root_client, keyed, django_user_model):
    enrolled, _key = keyed
    response = root_client.post(f"/admin/auth/user/{enrolled.user.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not WebAuthnCredential.objects.exists()


def test_key_attempts_share_the_code_rate_limit(client, clock, keyed, settings):
    settings.MFA_CODE_RATE = "2/m"
    enrolled, key = keyed
    pending(client)
    client.post("/accounts/2fa/verify/", {"code": "000000"})  # one TOTP attempt
    post_key(client, key.get(options(client), origin="https://evil.test"))
    response = post_key(client, key.get(options(client)))  # the third attempt this minute
    assert response.status_code == 429
    assert not is_logged_in(client)
