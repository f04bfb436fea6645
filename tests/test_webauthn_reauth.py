"""Re-authentication with a security key instead of a code (``views._reauth``).

The key's answer to a REAUTH challenge (``mfa:webauthn_reauth_options``) is posted with the
password in the page's own form. Each test breaks one thing a stolen session, a replay or a
login's challenge would rely on, and expects a clear 4xx answer, never a 500 and never the
change the page is for.
"""

import re

import pytest
from django.test import Client

from mfa import flows, totp
from mfa.models import RecoveryCode, SecurityEvent, TOTPDevice, TwoFactor, WebAuthnCredential
from mfa.webauthn import ceremonies

from .conftest import PASSWORD, enrol, full_login, is_logged_in, login_password
from .soft_authenticator import SoftAuthenticator
from .test_webauthn import KEY_LOGIN, KEY_OPTIONS, MALFORMED, failures, give_key, options

Kind = SecurityEvent.Kind
REAUTH_OPTIONS = "/accounts/reauth/key/options/"
DISABLE = "/accounts/2fa/disable/"
REGENERATE = "/accounts/2fa/recovery-codes/"
REAUTH = "/accounts/reauth/"
STALE = b"expired or was already used"
REFUSED = b"The password or the security key was not accepted."


@pytest.fixture(autouse=True)
def relying_party(settings):
    settings.MFA_WEBAUTHN_RP_ID = "example.com"
    settings.MFA_WEBAUTHN_ORIGINS = ["https://example.com"]


@pytest.fixture
def signed_in(client, clock, user_with_totp):
    """Alice, signed in through both steps with a code, who also has a key."""
    key = give_key(user_with_totp.user)
    assert full_login(client, user_with_totp).status_code == 302
    return user_with_totp, key


def answer(client, key: SoftAuthenticator, **tamper) -> str:
    """The key's answer to a fresh re-authentication challenge of ``client``'s session."""
    return key.get(options(client, REAUTH_OPTIONS), **tamper)


def post(client, url: str, credential: str, password: str = PASSWORD, **extra):
    return client.post(url, {"password": password, "credential": credential, **extra})


def still_on(enrolled) -> bool:
    return flows.has_2fa(enrolled.user)


def key_used() -> list[str]:
    return list(SecurityEvent.objects.filter(kind=Kind.KEY_USED).values_list("detail", flat=True))


def selectors(enrolled) -> set[str]:
    return set(RecoveryCode.objects.filter(user=enrolled.user).values_list("selector", flat=True))


def set_challenge(client, **changes) -> None:
    session = client.session
    session[ceremonies.CHALLENGE_KEY] = {**session[ceremonies.CHALLENGE_KEY], **changes}
    session.save()


# --- What works ---------------------------------------------------------------------------------


def test_disable_with_password_and_key(client, signed_in):
    enrolled, key = signed_in
    row = WebAuthnCredential.objects.get()
    response = post(client, DISABLE, answer(client, key))
    assert response.status_code == 302 and response["Location"] == "/accounts/security/"
    assert not still_on(enrolled)
    assert not WebAuthnCredential.objects.exists()  # the keys went with 2FA
    assert key_used() == [f"key {row.pk}, re-authentication"]
    assert SecurityEvent.objects.filter(kind=Kind.DISABLED).count() == 1


def test_regenerate_with_password_and_key_is_audited_as_a_re_authentication(client, signed_in):
    enrolled, key = signed_in
    before = selectors(enrolled)
    response = post(client, REGENERATE, answer(client, key))
    assert response.status_code == 200
    assert b"recovery-code" in response.content
    assert selectors(enrolled) and not before & selectors(enrolled)
    row = WebAuthnCredential.objects.get()
    assert key_used() == [f"key {row.pk}, re-authentication"]
    assert row.sign_count == 1 and row.last_used_at is not None
    assert ceremonies.CHALLENGE_KEY not in client.session


def test_remove_a_key_with_that_key(client, signed_in):
    _enrolled, key = signed_in
    row = WebAuthnCredential.objects.get()
    response = post(client, f"/accounts/security/keys/{row.pk}/remove/", answer(client, key))
    assert response.status_code == 302
    assert not WebAuthnCredential.objects.exists()


@pytest.mark.urls("tests.urls_protected")
def test_reauth_view_with_a_key_opens_a_reauth_required_page(client, clock, signed_in, settings):
    _enrolled, key = signed_in
    clock.shift(settings.MFA_REAUTH_AGE if hasattr(settings, "MFA_REAUTH_AGE") else 15 * 60)
    clock.shift(1)
    assert client.get("/sudo/").status_code == 302
    response = post(client, f"{REAUTH}?next=/sudo/", answer(client, key))
    assert response.status_code == 302 and response["Location"] == "/sudo/"
    assert client.get("/sudo/").status_code == 200
    assert client.session[flows.VERIFIED_AT_KEY] == int(totp.now())


@pytest.mark.parametrize("page", ["disable", "regenerate", "remove", "reauth"])
def test_every_reauth_page_offers_the_key_to_a_user_with_one(client, clock, user_with_totp, page):
    full_login(client, user_with_totp)
    give_key(user_with_totp.user)
    url = {
        "disable": DISABLE,
        "regenerate": REGENERATE,
        "remove": f"/accounts/security/keys/{WebAuthnCredential.objects.get().pk}/remove/",
        "reauth": REAUTH,
    }[page]
    html = client.get(url).content.decode()
    assert 'data-webauthn="get"' in html
    assert f'data-options="{REAUTH_OPTIONS}"' in html
    assert 'name="credential"' in html
    # The key's button is inside the one form that also holds the password.
    forms = [f for f in re.findall(r"<form.*?</form>", html, re.S) if 'name="password"' in f]
    assert len(forms) == 1
    assert 'data-webauthn="get"' in forms[0] and 'name="credential"' in forms[0]
    # Hidden until mfa/webauthn.js shows it: without JavaScript, only the code's way is seen.
    assert "data-webauthn-block hidden" in forms[0]


def test_no_key_no_key_button(client, clock, user_with_totp):
    full_login(client, user_with_totp)
    html = client.get(DISABLE).content.decode()
    assert "data-webauthn" not in html and 'name="credential"' not in html


def test_the_code_still_works_for_a_user_with_a_key(client, clock, signed_in):
    enrolled, _key = signed_in
    clock.shift(totp.STEP)
    response = client.post(DISABLE, {"password": PASSWORD, "code": enrolled.code()})
    assert response.status_code == 302
    assert not still_on(enrolled)


# --- The options --------------------------------------------------------------------------------


def test_options_allow_only_the_users_keys(client, signed_in, django_user_model):
    _enrolled, key = signed_in
    bob = django_user_model.objects.create_user("bob", "bob@example.com", "x")
    give_key(bob)
    body = options(client, REAUTH_OPTIONS)
    assert [c["id"] for c in body["allowCredentials"]] == [key.id]
    kept = client.session[ceremonies.CHALLENGE_KEY]
    assert kept["purpose"] == ceremonies.REAUTH
    assert kept["bind"] == client.session[flows.AUTH_AT_KEY]


def test_options_need_a_logged_in_post_with_csrf(client, signed_in, settings):
    assert Client().post(REAUTH_OPTIONS).status_code == 302  # anonymous: to the login
    assert client.get(REAUTH_OPTIONS).status_code == 405
    # The signed-in session, in a client that enforces CSRF as a browser's requests meet it.
    strict = Client(enforce_csrf_checks=True)
    name = settings.SESSION_COOKIE_NAME
    strict.cookies[name] = client.cookies[name].value
    page = strict.get(DISABLE).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    assert strict.post(REAUTH_OPTIONS).status_code == 403
    assert ceremonies.CHALLENGE_KEY not in strict.session
    assert strict.post(REAUTH_OPTIONS, HTTP_X_CSRFTOKEN=token).status_code == 200
    assert ceremonies.CHALLENGE_KEY in strict.session


def test_options_without_a_key(client, clock, user_with_totp):
    full_login(client, user_with_totp)
    assert client.post(REAUTH_OPTIONS).status_code == 404
    assert ceremonies.CHALLENGE_KEY not in client.session


def test_options_are_rate_limited(client, signed_in, settings):
    settings.MFA_CHANGE_RATE = "2/m"
    for _ in range(2):
        assert client.post(REAUTH_OPTIONS).status_code == 200
    response = client.post(REAUTH_OPTIONS)
    assert response.status_code == 429
    assert int(response["Retry-After"]) >= 1


# --- What is refused ----------------------------------------------------------------------------


def test_wrong_password_and_a_good_key_is_refused_and_spends_the_challenge(client, signed_in):
    enrolled, key = signed_in
    good = answer(client, key)
    response = post(client, DISABLE, good, password="not the password")
    assert response.status_code == 400
    assert REFUSED in response.content
    assert still_on(enrolled)
    assert SecurityEvent.objects.filter(
        kind=Kind.PASSWORD_FAILED, detail="re-authentication"
    ).exists()
    assert ceremonies.CHALLENGE_KEY not in client.session
    # The same answer with the right password now: its challenge is gone.
    response = post(client, DISABLE, good)
    assert response.status_code == 400
    assert STALE in response.content
    assert still_on(enrolled)
    assert WebAuthnCredential.objects.get().sign_count == 0
    assert failures(enrolled) == 0  # a wrong password is the password's budget, not the key's


def test_another_users_key_is_refused(client, signed_in, django_user_model):
    enrolled, _key = signed_in
    bob = django_user_model.objects.create_user("bob", "bob@example.com", "x")
    enrol(bob)
    bobs_key = give_key(bob)
    # Bob's real key signs alice's challenge: still not alice's key.
    response = post(client, DISABLE, answer(client, bobs_key))
    assert response.status_code == 400
    assert REFUSED in response.content
    assert still_on(enrolled)
    assert failures(enrolled) == 1
    assert WebAuthnCredential.objects.get(user=bob).last_used_at is None


def test_a_login_challenge_does_not_answer_a_re_authentication(client, signed_in):
    enrolled, key = signed_in
    good = answer(client, key)
    set_challenge(client, purpose=ceremonies.LOGIN)  # all else as issued
    response = post(client, DISABLE, good)
    assert response.status_code == 400
    assert STALE in response.content
    assert still_on(enrolled)


def test_a_re_authentication_challenge_does_not_answer_a_login(client, clock, user_with_totp):
    key = give_key(user_with_totp.user)
    assert login_password(client).status_code == 302
    good = key.get(options(client, KEY_OPTIONS))
    set_challenge(client, purpose=ceremonies.REAUTH)  # all else as issued
    assert client.post(KEY_LOGIN, {"credential": good}).status_code == 400
    assert not is_logged_in(client)


def test_a_real_login_challenge_is_refused(client, signed_in):
    """The challenge of a pending login, with its own binding, moved into this session."""
    enrolled, key = signed_in
    other = Client()
    assert login_password(other).status_code == 302
    good = key.get(options(other, KEY_OPTIONS))
    session = client.session
    session[ceremonies.CHALLENGE_KEY] = other.session[ceremonies.CHALLENGE_KEY]
    session.save()
    assert post(client, DISABLE, good).status_code == 400
    assert still_on(enrolled)


def test_no_challenge_is_refused(client, signed_in):
    enrolled, key = signed_in
    good = key.get({"challenge": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"})
    response = post(client, DISABLE, good)
    assert response.status_code == 400
    assert STALE in response.content
    assert still_on(enrolled)
    assert failures(enrolled) == 0  # no live challenge: not a guess


def test_expired_challenge_is_refused(client, clock, signed_in, settings):
    settings.MFA_WEBAUTHN_CHALLENGE_TIMEOUT = 60
    enrolled, key = signed_in
    good = answer(client, key)
    clock.shift(61)
    response = post(client, DISABLE, good)
    assert response.status_code == 400
    assert STALE in response.content
    assert still_on(enrolled)


def test_a_challenge_from_before_the_last_sign_in_is_refused(client, clock, signed_in):
    """Bound to the session's last proof of the password: a re-authentication since voids it."""
    enrolled, key = signed_in
    good = answer(client, key)
    clock.shift(totp.STEP)
    response = client.post(REAUTH, {"password": PASSWORD, "code": enrolled.code()})
    assert response.status_code == 302
    response = post(client, DISABLE, good)
    assert response.status_code == 400
    assert STALE in response.content
    assert still_on(enrolled)


def test_replayed_assertion_is_refused(client, signed_in):
    enrolled, key = signed_in
    good = answer(client, key)
    assert post(client, REGENERATE, good).status_code == 200
    # Its challenge is spent: refused unchecked.
    response = post(client, REGENERATE, good)
    assert response.status_code == 400 and STALE in response.content
    # A live challenge, but not the one the old answer signed: refused and counted.
    options(client, REAUTH_OPTIONS)
    response = post(client, REGENERATE, good)
    assert response.status_code == 400 and REFUSED in response.content
    assert failures(enrolled) == 1
    assert SecurityEvent.objects.filter(kind=Kind.CODES_REGENERATED).count() == 1


def test_racing_replay_in_one_session_is_accepted_once(client, signed_in):
    """Two requests that both read the challenge before either saved the session."""
    _enrolled, key = signed_in
    # A key without a counter (many passkeys): only the row's challenge guard stops it.
    good = key.get(options(client, REAUTH_OPTIONS), counter_step=0)
    kept = client.session[ceremonies.CHALLENGE_KEY]
    assert post(client, REGENERATE, good).status_code == 200
    session = client.session
    session[ceremonies.CHALLENGE_KEY] = kept  # the racing request's copy of the session
    session.save()
    response = post(client, REGENERATE, good)
    assert response.status_code == 400 and STALE in response.content
    assert SecurityEvent.objects.filter(kind=Kind.CODES_REGENERATED).count() == 1


def test_counter_regression_is_refused_and_reported(client, clock, user_with_totp):
    key = SoftAuthenticator(counter=10)
    give_key(user_with_totp.user, key)
    full_login(client, user_with_totp)
    key.counter = 4  # a copy of the key, used less often
    assert post(client, DISABLE, answer(client, key)).status_code == 400
    assert still_on(user_with_totp)
    assert SecurityEvent.objects.filter(kind=Kind.KEY_CLONED).count() == 1
    assert WebAuthnCredential.objects.get().sign_count == 10


@pytest.mark.parametrize(
    "tamper",
    [{"origin": "https://example.com.evil.test"}, {"rp_id": "evil.test"}],
    ids=["phishing-origin", "rp-id"],
)
def test_wrong_origin_or_rp_id_is_refused_and_counted(client, signed_in, tamper):
    enrolled, key = signed_in
    response = post(client, DISABLE, answer(client, key, **tamper))
    assert response.status_code == 400 and REFUSED in response.content
    assert still_on(enrolled)
    assert failures(enrolled) == 1


# Not empty: an empty credential is "neither a code nor a key" (a test of its own).
@pytest.mark.parametrize(
    "body",
    [body for name, body in MALFORMED.items() if name != "empty"],
    ids=[name for name in MALFORMED if name != "empty"],
)
def test_malformed_answer_is_a_form_error(client, signed_in, body):
    enrolled, _key = signed_in
    options(client, REAUTH_OPTIONS)
    response = post(client, DISABLE, body)
    assert response.status_code == 400
    assert b"That is not an answer from a security key." in response.content
    assert still_on(enrolled)
    assert failures(enrolled) == 0
    assert not SecurityEvent.objects.filter(kind=Kind.PASSWORD_FAILED).exists()


def test_a_real_answer_over_the_size_cap_is_refused_unparsed(client, signed_in):
    enrolled, key = signed_in
    good = answer(client, key)
    padded = good[0] + " " * ceremonies.MAX_CREDENTIAL + good[1:]  # still valid JSON
    response = post(client, DISABLE, padded)
    assert response.status_code == 400
    assert b"That is not an answer from a security key." in response.content
    assert still_on(enrolled)
    assert WebAuthnCredential.objects.get().sign_count == 0


def test_both_a_code_and_a_key_is_a_form_error(client, clock, signed_in):
    enrolled, key = signed_in
    clock.shift(totp.STEP)
    step = TOTPDevice.objects.get(user=enrolled.user).last_used_step
    response = post(client, DISABLE, answer(client, key), code=enrolled.code())
    assert response.status_code == 400
    assert b"not both" in response.content
    assert still_on(enrolled)
    # Neither was checked: the code's step is unspent, the key unused, nothing counted.
    assert TOTPDevice.objects.get(user=enrolled.user).last_used_step == step
    assert WebAuthnCredential.objects.get().sign_count == 0
    assert failures(enrolled) == 0
    assert not SecurityEvent.objects.filter(kind=Kind.PASSWORD_FAILED).exists()


@pytest.mark.parametrize("blank", ["", "  \n "])
def test_neither_a_code_nor_a_key_is_a_form_error(client, signed_in, blank):
    enrolled, _key = signed_in
    response = client.post(DISABLE, {"password": PASSWORD, "code": blank, "credential": blank})
    assert response.status_code == 400
    assert b"Enter the 6-digit code from your app" in response.content
    assert still_on(enrolled)
    assert not SecurityEvent.objects.filter(kind=Kind.PASSWORD_FAILED).exists()


# --- The back-off -------------------------------------------------------------------------------


def test_failures_count_towards_the_back_off(client, signed_in, settings):
    settings.MFA_BACKOFF_AFTER = 2
    settings.MFA_CHANGE_RATE = "100/m"
    settings.MFA_LOGIN_USER_RATE = "100/m"
    enrolled, key = signed_in
    for _ in range(2):
        post(client, DISABLE, answer(client, key, origin="https://evil.test"))
    assert failures(enrolled) == 2
    # Backed off now: not even a challenge (a good answer to an earlier one: the next test).
    assert client.post(REAUTH_OPTIONS).status_code == 429
    assert still_on(enrolled)


def test_backed_off_before_any_check(client, signed_in):
    from django.utils import timezone

    enrolled, key = signed_in
    good = answer(client, key)
    TwoFactor.objects.filter(user=enrolled.user).update(
        failure_count=5, blocked_until=timezone.now() + timezone.timedelta(minutes=5)
    )
    assert post(client, DISABLE, good).status_code == 429
    assert still_on(enrolled)
    assert WebAuthnCredential.objects.get().sign_count == 0
    # Not even looked at: the challenge is still there, unspent.
    assert ceremonies.CHALLENGE_KEY in client.session


def test_no_challenge_while_backed_off(client, signed_in):
    from django.utils import timezone

    enrolled, _key = signed_in
    TwoFactor.objects.filter(user=enrolled.user).update(
        failure_count=5, blocked_until=timezone.now() + timezone.timedelta(minutes=5)
    )
    response = client.post(REAUTH_OPTIONS)
    assert response.status_code == 429 and int(response["Retry-After"]) > 60
    assert ceremonies.CHALLENGE_KEY not in client.session
