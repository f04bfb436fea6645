"""Turning 2FA on (QR code, secret, confirmation) and off (password and a current code)."""

import base64
import io
import re
from urllib.parse import parse_qs, unquote, urlparse

import pytest
import zxingcpp
from django.contrib.auth import get_user_model
from PIL import Image

from mfa import crypto, flows, totp
from mfa.models import RecoveryCode, SecurityEvent, TOTPDevice
from tests.conftest import (
    PASSWORD,
    enrolling_secret,
    full_login,
    is_logged_in,
    login_password,
    secret_from_setup_page,
)

pytestmark = pytest.mark.django_db
Kind = SecurityEvent.Kind
SETUP = "/accounts/2fa/setup/"
DISABLE = "/accounts/2fa/disable/"

IMG = re.compile(r'<img\b[^>]*\bsrc="(data:image/png;base64,[A-Za-z0-9+/=]+)"[^>]*>', re.S)


def qr_and_alt(html: str) -> tuple[str, str]:
    match = IMG.search(html)
    assert match, "the setup page shows the QR code as an inline PNG"
    alt = re.search(r'\balt="([^"]*)"', match.group(0))
    return match.group(1), (alt.group(1) if alt else "")


def decode_qr(data_uri: str) -> str:
    png = base64.b64decode(data_uri.split(",", 1)[1])
    image = Image.open(io.BytesIO(png))
    # QR codes only: about 1 image in 2,000 also yields a spurious Codabar read otherwise.
    barcodes = zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode)
    assert len(barcodes) == 1, "exactly one readable QR code"
    return barcodes[0].text


def code_now(secret: str, offset: int = 0) -> str:
    return totp.code_at(secret, totp.step_of(totp.now()) + offset)


def wrong_code_for(secret: str) -> str:
    near = {code_now(secret, o) for o in range(-2, 3)}
    return next(c for c in ("000000", "111111", "222222", "333333", "444444") if c not in near)


@pytest.fixture
def logged_in(client, clock, user):
    """A client fully logged in as alice, who has no 2FA yet (at the frozen time)."""
    assert login_password(client).status_code == 302
    assert is_logged_in(client)
    return client


# --- The setup page -------------------------------------------------------------------------


def test_setup_page_shows_qr_and_grouped_secret(logged_in, clock):
    response = logged_in.get(SETUP)
    assert response.status_code == 200
    html = response.content.decode()
    data_uri, alt = qr_and_alt(html)
    assert alt.strip(), "the QR code has a text alternative"
    grouped = re.search(r'id="secret">([^<]+)<', html).group(1)
    assert re.fullmatch(r"[A-Z2-7]{4}( [A-Z2-7]{1,4})+", grouped), grouped
    secret = grouped.replace(" ", "")
    assert len(secret) >= 32, "at least 160 bits"
    assert len(base64.b32decode(secret + "=" * (-len(secret) % 8))) >= 20
    assert "no-store" in response["Cache-Control"]
    assert not TOTPDevice.objects.exists()
    # Reloading keeps the same secret (it lives in the session until confirmed).
    assert secret_from_setup_page(logged_in.get(SETUP).content.decode()) == secret


def test_each_enrolment_gets_a_new_secret(client, clock, db):
    User = get_user_model()
    secrets_seen = set()
    for name in ("u1", "u2", "u3"):
        User.objects.create_user(name, f"{name}@example.com", PASSWORD)
        client.post("/accounts/logout/")
        login_password(client, name)
        secrets_seen.add(secret_from_setup_page(client.get(SETUP).content.decode()))
    assert len(secrets_seen) == 3


def test_wrong_code_rerenders_same_secret_and_writes_nothing(logged_in, clock):
    first = logged_in.get(SETUP).content.decode()
    secret = secret_from_setup_page(first)
    qr_first, _ = qr_and_alt(first)
    response = logged_in.post(SETUP, {"code": wrong_code_for(secret)})
    assert response.status_code == 400
    html = response.content.decode()
    assert 'id="code-errors"' in html
    assert secret_from_setup_page(html) == secret
    assert qr_and_alt(html)[0] == qr_first
    assert not TOTPDevice.objects.exists()
    assert not RecoveryCode.objects.exists()


def test_a_setup_whose_key_was_retired_starts_over_and_says_why(logged_in, clock, user):
    scanned = secret_from_setup_page(logged_in.get(SETUP).content.decode())
    crypto.write_ring([crypto.new_key()])  # mfa_keys add, rotate, retire the old key
    crypto.reload()
    response = logged_in.post(SETUP, {"code": code_now(scanned)})  # right for the app's entry
    html = response.content.decode()
    assert "Setup had to start over" in html and "not match" not in html
    new = secret_from_setup_page(html)
    assert new != scanned and not TOTPDevice.objects.exists()
    clock.shift(totp.STEP)
    assert logged_in.post(SETUP, {"code": code_now(new)}).status_code == 200
    assert crypto.decrypt_secret(TOTPDevice.objects.get(user=user).encrypted_secret, user.pk) == new


def test_correct_code_creates_encrypted_device(logged_in, clock, user, mailoutbox):
    secret = secret_from_setup_page(logged_in.get(SETUP).content.decode())
    response = logged_in.post(SETUP, {"code": code_now(secret)})
    assert response.status_code == 200
    codes = re.findall(r'class="recovery-code">([^<]+)<', response.content.decode())
    assert len(codes) == 10
    assert "no-store" in response["Cache-Control"]
    stored = TOTPDevice.objects.values_list("encrypted_secret", flat=True).get(user=user)
    assert secret not in stored
    assert secret.lower() not in stored.lower()
    assert crypto.decrypt_secret(stored, user.pk) == secret
    assert RecoveryCode.objects.filter(user=user).count() == 10
    assert SecurityEvent.objects.filter(user=user, kind=Kind.ENABLED).exists()
    assert any("turned on" in m.subject for m in mailoutbox)
    # The confirming step is spent: the same code cannot finish a login.
    assert TOTPDevice.objects.get(user=user).last_used_step == totp.step_of(totp.now())


def test_confirming_code_cannot_be_reused_to_log_in(logged_in, client, clock, user):
    secret = secret_from_setup_page(logged_in.get(SETUP).content.decode())
    code = code_now(secret)
    assert logged_in.post(SETUP, {"code": code}).status_code == 200
    logged_in.post("/accounts/logout/")
    login_password(client)
    assert client.post("/accounts/2fa/verify/", {"code": code}).status_code == 400
    assert not is_logged_in(client)


def test_confirmation_accepts_grouped_code(logged_in, clock, user):
    secret = secret_from_setup_page(logged_in.get(SETUP).content.decode())
    code = code_now(secret)
    assert logged_in.post(SETUP, {"code": f"{code[:3]} {code[3:]}"}).status_code == 200
    assert TOTPDevice.objects.filter(user=user).exists()


# --- The otpauth URI and the QR code --------------------------------------------------------


def split_uri(uri: str) -> tuple[str, str, str, dict]:
    parsed = urlparse(uri)
    assert parsed.scheme == "otpauth" and parsed.netloc == "totp"
    raw_label = parsed.path.lstrip("/")
    prefix, sep, account = raw_label.partition(":")
    assert sep == ":", "label is ISSUER:ACCOUNT"
    return raw_label, unquote(prefix), unquote(account), parse_qs(parsed.query)


@pytest.mark.parametrize(
    "account", ["alice", "ann smith@example.com", "odd:name@example.com", "é ü@x.example"]
)
def test_provisioning_uri_format(account):
    secret = totp.generate_secret()
    uri = totp.provisioning_uri(secret, account, "Example Corp")
    raw_label, prefix, decoded_account, query = split_uri(uri)
    assert query["issuer"] == [prefix] == ["Example Corp"]
    assert query["secret"] == [secret]
    assert "=" not in secret
    assert query.get("digits", ["6"]) == ["6"]
    assert query.get("period", ["30"]) == ["30"]
    assert query.get("algorithm", ["SHA1"]) == ["SHA1"]
    # The account is URI-encoded in the label: no raw space, '@' or second ':'.
    assert raw_label.count(":") == 1
    assert " " not in uri and "@" not in raw_label
    assert ":" not in decoded_account
    assert decoded_account == account.replace(":", " ").strip()


def test_issuer_colon_is_removed():
    _, prefix, _, query = split_uri(totp.provisioning_uri("JBSWY3DPEHPK3PXP", "a", "Acme: Test"))
    assert ":" not in prefix
    assert query["issuer"] == [prefix]


def test_qr_code_holds_the_uri_with_the_session_secret(client, clock, settings):
    settings.MFA_ISSUER = "Example Corp"
    account = "ann smith:x@example.com"  # space, colon and '@'
    get_user_model().objects.create_user(account, "ann@example.com", PASSWORD)
    login_password(client, account)
    html = client.get(SETUP).content.decode()
    secret = enrolling_secret(client)
    assert secret_from_setup_page(html) == secret
    data_uri, _ = qr_and_alt(html)
    decoded = decode_qr(data_uri)
    assert decoded == totp.provisioning_uri(secret, account, "Example Corp")
    _, prefix, decoded_account, query = split_uri(decoded)
    assert prefix == query["issuer"][0] == "Example Corp"
    assert query["secret"] == [secret]
    assert decoded_account == "ann smith x@example.com"


def test_issuer_comes_from_settings(logged_in, clock, settings):
    settings.MFA_ISSUER = "Configured Issuer"
    html = logged_in.get(SETUP).content.decode()
    uri = decode_qr(qr_and_alt(html)[0])
    assert split_uri(uri)[1] == "Configured Issuer"
    assert "Configured Issuer" in html


# --- A user who already has 2FA -------------------------------------------------------------


def test_enrolled_user_cannot_replace_the_secret(client, clock, user_with_totp):
    assert full_login(client, user_with_totp).status_code == 302
    before = user_with_totp.device.encrypted_secret
    response = client.get(SETUP)
    assert response.status_code == 302
    assert response["Location"] == "/accounts/security/"
    assert flows.ENROL_KEY not in client.session, "no enrolment secret is minted"
    # Plant an enrolment secret in the session and prove it: still refused.
    attacker_secret = totp.generate_secret()
    session = client.session
    session[flows.ENROL_KEY] = crypto.encrypt_secret(attacker_secret, user_with_totp.user.pk)
    session.save()
    clock.shift(totp.STEP)
    response = client.post(SETUP, {"code": code_now(attacker_secret)})
    assert response.status_code == 302
    device = user_with_totp.device
    assert device.encrypted_secret == before
    assert crypto.decrypt_secret(device.encrypted_secret, device.user_id) == user_with_totp.secret
    assert TOTPDevice.objects.filter(user=user_with_totp.user).count() == 1


def test_confirm_enrolment_itself_refuses_to_replace(rf, clock, user_with_totp):
    # The second layer under the view's redirect: the flow alone keeps the existing secret.
    from django.contrib.sessions.backends.db import SessionStore

    request = rf.post(SETUP)
    request.session = SessionStore()
    request.user = user_with_totp.user
    new_secret = flows.begin_enrolment(request, user_with_totp.user)[0]
    before = user_with_totp.device.encrypted_secret
    assert flows.confirm_enrolment(request, user_with_totp.user, code_now(new_secret)) is None
    assert user_with_totp.device.encrypted_secret == before
    assert RecoveryCode.objects.filter(user=user_with_totp.user).count() == 10
    assert not SecurityEvent.objects.filter(kind=Kind.ENABLED).exists()


def test_setup_requires_login(client, clock, user):
    response = client.get(SETUP)
    assert response.status_code == 302
    assert urlparse(response["Location"]).path == "/accounts/login/"


# --- Disable --------------------------------------------------------------------------------


@pytest.fixture
def enrolled_and_in(client, clock, user_with_totp):
    assert full_login(client, user_with_totp).status_code == 302
    assert is_logged_in(client)
    clock.shift(totp.STEP)  # the login spent step T; the next code is fresh
    return user_with_totp


def still_enabled(enrolled) -> bool:
    return (
        TOTPDevice.objects.filter(user=enrolled.user).exists()
        and RecoveryCode.objects.filter(user=enrolled.user).count() == 10
    )


def test_disable_get_changes_nothing(client, enrolled_and_in):
    assert client.get(DISABLE).status_code == 200
    assert still_enabled(enrolled_and_in)


def test_disable_wrong_password(client, enrolled_and_in, mailoutbox):
    response = client.post(DISABLE, {"password": "wrong", "code": enrolled_and_in.code()})
    assert response.status_code == 400
    assert still_enabled(enrolled_and_in)
    assert not mailoutbox


def test_disable_wrong_code(client, enrolled_and_in, mailoutbox):
    near = {enrolled_and_in.code(o) for o in range(-2, 3)}
    bad = next(c for c in ("000000", "111111", "222222") if c not in near)
    response = client.post(DISABLE, {"password": PASSWORD, "code": bad})
    assert response.status_code == 400
    assert still_enabled(enrolled_and_in)
    assert not mailoutbox


@pytest.mark.parametrize("missing", ["password", "code"])
def test_disable_needs_both_even_when_logged_in(client, enrolled_and_in, missing):
    data = {"password": PASSWORD, "code": enrolled_and_in.code()}
    del data[missing]
    assert client.post(DISABLE, data).status_code == 400
    assert still_enabled(enrolled_and_in)


def test_disable_replayed_login_code_refused(client, enrolled_and_in):
    # The code that finished the login (step T, now T-1) is spent.
    response = client.post(DISABLE, {"password": PASSWORD, "code": enrolled_and_in.code(-1)})
    assert response.status_code == 400
    assert still_enabled(enrolled_and_in)


def test_disable_with_password_and_code(client, enrolled_and_in, mailoutbox):
    user = enrolled_and_in.user
    response = client.post(DISABLE, {"password": PASSWORD, "code": enrolled_and_in.code()})
    assert response.status_code == 302
    assert not TOTPDevice.objects.filter(user=user).exists()
    assert not RecoveryCode.objects.filter(user=user).exists()
    assert SecurityEvent.objects.filter(user=user, kind=Kind.DISABLED).exists()
    assert len(mailoutbox) == 1
    assert mailoutbox[0].to == [user.email]
    assert "turned off" in mailoutbox[0].subject
    # Still logged in; the next login needs the password alone.
    assert is_logged_in(client)
