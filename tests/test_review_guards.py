"""The findings of the outside review (issue 15), each as a property that a test can break.

1. Every spelling of a username that signs in as a user counts against that user's one
   password budget; a username too long to exist is refused before anything is counted.
2. IPv6 spellings of one IPv4 address are limited as that address.
3. Re-authentication forms spend the login's per-user password budget too.
4. A right password followed by a wrong or abandoned second step is reported to the owner,
   at most once per MFA_SUSPICIOUS_NOTICE_INTERVAL.
"""

import ipaddress

import pytest
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.test import Client, RequestFactory

from mfa import flows, forms, throttle, totp
from mfa.models import SecurityEvent, TOTPDevice
from tests.conftest import PASSWORD, full_login, is_logged_in, login_password

LOGIN = "/accounts/login/"
VERIFY = "/accounts/2fa/verify/"
SETUP = "/accounts/2fa/setup/"
DISABLE = "/accounts/2fa/disable/"
REGENERATE = "/accounts/2fa/recovery-codes/"
Kind = SecurityEvent.Kind


def wrong_code(enrolled) -> str:
    valid = {enrolled.code(offset) for offset in (-1, 0, 1)}
    return next(f"{n:06d}" for n in range(1_000_000) if f"{n:06d}" not in valid)


def notices(mailoutbox) -> list:
    return [m for m in mailoutbox if "not your second factor" in m.subject]


def suspicious(user) -> int:
    return SecurityEvent.objects.filter(user=user, kind=Kind.SUSPICIOUS).count()


# --- 1. One budget per username, whatever the spelling --------------------------------------

# Spellings of "alice" that Django's form authenticates as alice. Padding past 300 characters
# used to cut the rate-limit key short ("alic", "ali", ...): a fresh budget per length.
SPELLINGS = [" " * n + "alice" for n in range(296, 302)] + [
    "\t" * 299 + "alice",
    "\u3000" * 298 + "alice",  # ideographic space: stripped too
    "alice" + " " * 400,
    "ａｌｉｃｅ",
    " ＡＬＩＣＥ",  # another case: a budget merged, never split
]


def test_spellings_authenticate_as_alice(clock, user):
    # The premise: under the limit, each spelling but the upper-case one signs in as alice.
    for spelling in SPELLINGS[:-1]:
        client = Client()
        assert login_password(client, spelling).status_code == 302, repr(spelling[-12:])
        assert is_logged_in(client)
        cache.clear()  # each spelling spends the one budget: start afresh


@pytest.mark.parametrize("first", ["alice", *SPELLINGS], ids=lambda s: repr(s[:3] + s[-5:]))
def test_every_spelling_spends_and_meets_the_one_budget(clock, user, first):
    # Ten wrong passwords, from ten addresses, under spellings that start with ``first``.
    tries = [first, *SPELLINGS, "alice"][:10]
    for n, spelling in enumerate(tries):
        response = Client(REMOTE_ADDR=f"192.0.2.{n + 1}").post(
            LOGIN, {"username": spelling, "password": f"wrong {n}"}
        )
        assert response.status_code == 400
    # The eleventh is refused under every spelling, the right password notwithstanding.
    for n, spelling in enumerate(["alice", *SPELLINGS]):
        client = Client(REMOTE_ADDR=f"198.51.100.{n + 1}")
        response = login_password(client, spelling, PASSWORD)
        assert response.status_code == 429, repr(spelling[-12:])
        assert not is_logged_in(client)


def test_an_over_long_username_is_refused_and_counts_nothing(clock, user, monkeypatch, settings):
    def no_authenticate(*args, **kwargs):
        raise AssertionError("authenticate() ran for an over-long username")

    monkeypatch.setattr("django.contrib.auth.forms.authenticate", no_authenticate)
    client = Client(REMOTE_ADDR="203.0.113.9")
    before = SecurityEvent.objects.count()
    # 150 is the max_length of django.contrib.auth's username; 151 cannot exist.
    for username in ["a" * 151, " " + "b" * 151 + " ", "ａ" * 151, "alice" * 10_000]:
        for _ in range(20):  # more than LOGIN_IP_RATE's 30 altogether
            response = login_password(client, username, PASSWORD)
            assert response.status_code == 400
            assert [e.code for e in response.context["form"].errors.as_data()["username"]] == [
                "max_length"
            ]
            assert "correct username and password" in response.content.decode()
    assert SecurityEvent.objects.count() == before  # nothing written either
    monkeypatch.undo()
    # Neither the address's budget nor any username's was spent.
    assert login_password(client, "alice", PASSWORD).status_code == 302
    assert is_logged_in(client)


def test_the_longest_possible_username_still_signs_in(clock, db, django_user_model):
    name = "z" * 150
    django_user_model.objects.create_user(name, "z@example.com", PASSWORD)
    client = Client()
    assert login_password(client, " " + name + " ").status_code == 302
    assert is_logged_in(client)


def test_a_missing_username_counts_nothing(clock, user):
    client = Client(REMOTE_ADDR="203.0.113.10")
    for _ in range(40):
        assert client.post(LOGIN, {"password": PASSWORD}).status_code == 400
    assert login_password(client).status_code == 302


class EmailUser:
    """A stand-in for a custom user model that normalises its email USERNAME_FIELD."""

    @classmethod
    def normalize_username(cls, username: str) -> str:
        local, _, domain = username.rpartition("@")
        return f"{local}@{domain.lower()}"


def test_the_user_models_normalisation_is_applied(monkeypatch):
    monkeypatch.setattr(forms, "get_user_model", lambda: EmailUser)
    assert forms.normalize_username("  Bob@Example.COM ") == "Bob@example.com"
    keys = {
        forms.username_key(s) for s in ["Bob@Example.COM", " bob@example.com", "BOB@EXAMPLE.com"]
    }
    assert keys == {"bob@example.com"}
    with pytest.raises(ValidationError):
        forms.normalize_username("x" * 255 + "@example.com", max_length=254)


# --- 2. IPv6 spellings of IPv4 addresses ----------------------------------------------------


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("::ffff:cb00:7108", "203.0.113.8"),
        ("64:ff9b::203.0.113.9", "203.0.113.9"),  # NAT64, well-known prefix
        ("2002:cb00:710a::1", "203.0.113.10"),  # 6to4: the host's /48
        ("2002:cb00:710a:ffff::2", "203.0.113.10"),
    ],
)
def test_ipv6_spellings_of_an_ipv4_address_are_keyed_as_it(address, key):
    assert throttle.address_key(address) == key


def test_mapped_addresses_are_not_one_bucket():
    keys = {throttle.address_key(f"::ffff:198.51.100.{n}") for n in range(1, 5)}
    assert len(keys) == 4
    # Plain IPv6 is still grouped per /64.
    assert throttle.address_key("2001:db8::1") == throttle.address_key("2001:db8::2")


@pytest.mark.parametrize("header", [False, True], ids=["REMOTE_ADDR", "forwarded"])
def test_client_ip_unmaps_an_ipv4_mapped_address(settings, header):
    meta = {"REMOTE_ADDR": "::ffff:10.0.0.9"}
    if header:
        settings.MFA_TRUSTED_PROXY_HEADER = "X-Forwarded-For"
        meta = {"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "::ffff:203.0.113.7"}
    expected = "203.0.113.7" if header else "10.0.0.9"
    assert throttle.client_ip(RequestFactory().get("/", **meta)) == expected
    assert ipaddress.ip_address(expected).version == 4


def test_one_ipv4_client_behind_a_dual_stack_socket_blocks_only_itself(clock, user):
    noisy = "::ffff:198.51.100.1"
    for n in range(30):  # LOGIN_IP_RATE
        data = {"username": f"nobody{n}", "password": "x"}
        assert Client(REMOTE_ADDR=noisy).post(LOGIN, data).status_code == 400
    assert login_password(Client(REMOTE_ADDR=noisy)).status_code == 429
    other = Client(REMOTE_ADDR="::ffff:198.51.100.2")
    assert login_password(other).status_code == 302
    # The audit trail has the address as the user knows it.
    event = SecurityEvent.objects.filter(user=user, kind=Kind.LOGIN).get()
    assert event.ip_address == "198.51.100.2"


# --- 3. One password budget per account, whatever the form ---------------------------------


def test_wrong_passwords_at_the_login_close_the_disable_form(client, clock, user_with_totp):
    assert full_login(client, user_with_totp).status_code == 302  # 1 of LOGIN_USER_RATE's 10
    for n in range(9):
        response = Client(REMOTE_ADDR=f"192.0.2.{n + 1}").post(
            LOGIN, {"username": "alice", "password": "wrong"}
        )
        assert response.status_code == 400
    for url in (DISABLE, REGENERATE):
        response = client.post(url, {"password": PASSWORD, "code": user_with_totp.code()})
        assert response.status_code == 429, url
    assert TOTPDevice.objects.filter(user=user_with_totp.user).exists()


def test_wrong_passwords_at_the_disable_form_close_the_login(
    client, clock, user_with_totp, settings
):
    settings.MFA_CHANGE_RATE = "100/m"  # only the shared budget is left to refuse
    assert full_login(client, user_with_totp).status_code == 302
    for _ in range(9):
        data = {"password": "wrong", "code": user_with_totp.code()}
        assert client.post(DISABLE, data).status_code == 400
    response = login_password(Client(REMOTE_ADDR="198.51.100.7"), " ALICE ")
    assert response.status_code == 429


def test_the_confirm_password_form_shares_the_budget(client, clock, user, settings):
    assert login_password(client).status_code == 302  # no 2FA: signed in
    clock.shift(16 * 60)  # no longer fresh; and a new rate window
    for n in range(10):
        response = Client(REMOTE_ADDR=f"192.0.2.{n + 1}").post(
            LOGIN, {"username": "alice", "password": "wrong"}
        )
        assert response.status_code == 400
    assert client.post(SETUP, {"password": PASSWORD}).status_code == 429
    # The change form's own, tighter rate is kept.
    clock.shift(60)
    statuses = [client.post(SETUP, {"password": "wrong"}).status_code for _ in range(6)]
    assert statuses == [400] * 5 + [429]


# --- 4. The owner hears of a right password with a wrong or missing second factor -----------


def test_one_wrong_code_after_the_password_is_reported(clock, user_with_totp, mailoutbox):
    client = Client()
    assert login_password(client).status_code == 302
    assert client.post(VERIFY, {"code": wrong_code(user_with_totp)}).status_code == 400
    assert [m.to for m in notices(mailoutbox)] == [["alice@example.com"]]
    assert suspicious(user_with_totp.user) == 1
    # Four more in the same pending login: no further email (the fifth is audited again).
    for _ in range(4):
        assert client.post(VERIFY, {"code": wrong_code(user_with_totp)}).status_code == 400
    assert len(notices(mailoutbox)) == 1
    assert suspicious(user_with_totp.user) == 2


def test_a_wrong_recovery_code_after_the_password_is_reported(clock, user_with_totp, mailoutbox):
    client = Client()
    assert login_password(client).status_code == 302
    bad = "ABCD-EFGH-JKMN-PQRS"
    assert client.post("/accounts/2fa/recovery/", {"code": bad}).status_code == 400
    assert len(notices(mailoutbox)) == 1


def test_the_email_is_sent_at_most_once_per_interval(clock, user_with_totp, mailoutbox):
    for _ in range(3):  # three pending logins, one wrong code each
        client = Client()
        assert login_password(client).status_code == 302
        assert client.post(VERIFY, {"code": wrong_code(user_with_totp)}).status_code == 400
    assert suspicious(user_with_totp.user) == 3  # each audited
    assert len(notices(mailoutbox)) == 1
    clock.shift(60 * 60 + 1)
    client = Client()
    assert login_password(client).status_code == 302
    assert client.post(VERIFY, {"code": wrong_code(user_with_totp)}).status_code == 400
    assert len(notices(mailoutbox)) == 2


def test_the_interval_setting_is_honoured(clock, user_with_totp, mailoutbox, settings):
    settings.MFA_SUSPICIOUS_NOTICE_INTERVAL = 60
    for _ in range(2):
        client = Client()
        assert login_password(client).status_code == 302
        assert client.post(VERIFY, {"code": wrong_code(user_with_totp)}).status_code == 400
        clock.shift(61)
    assert len(notices(mailoutbox)) == 2


def test_an_abandoned_pending_login_is_reported_at_the_next_one(clock, user_with_totp, mailoutbox):
    assert login_password(Client(REMOTE_ADDR="203.0.113.66")).status_code == 302  # stops here
    assert notices(mailoutbox) == []
    owner = Client(REMOTE_ADDR="198.51.100.20")
    assert full_login(owner, user_with_totp).status_code == 302
    assert len(notices(mailoutbox)) == 1
    event = SecurityEvent.objects.get(user=user_with_totp.user, kind=Kind.SUSPICIOUS)
    assert "abandoned" in event.detail
    # Reported once: the owner's next login says nothing more.
    clock.shift(2 * 60 * 60)
    assert full_login(Client(REMOTE_ADDR="198.51.100.20"), user_with_totp).status_code == 302
    assert len(notices(mailoutbox)) == 1


def test_an_expired_pending_login_from_the_same_address_is_reported(
    clock, user_with_totp, mailoutbox
):
    assert login_password(Client()).status_code == 302
    clock.shift(flows.settings.PENDING_TIMEOUT + 1)
    assert full_login(Client(), user_with_totp).status_code == 302
    assert len(notices(mailoutbox)) == 1


def test_the_owners_own_logins_send_nothing(clock, user_with_totp, mailoutbox):
    for _ in range(3):
        client = Client()
        assert full_login(client, user_with_totp).status_code == 302
        clock.shift(totp.STEP)
    # The password twice in a row from the same address (a double submit, the back button).
    client = Client()
    assert login_password(client).status_code == 302
    assert login_password(client).status_code == 302
    assert client.post(VERIFY, {"code": user_with_totp.code()}).status_code == 302
    assert notices(mailoutbox) == []
    assert suspicious(user_with_totp.user) == 0


def test_wrong_passwords_send_nothing(clock, user_with_totp, mailoutbox):
    for n in range(9):  # and the login below: LOGIN_USER_RATE
        client = Client(REMOTE_ADDR=f"192.0.2.{n + 1}")
        assert login_password(client, password="wrong").status_code == 400
    assert full_login(Client(), user_with_totp).status_code == 302
    assert notices(mailoutbox) == []
    assert suspicious(user_with_totp.user) == 0


def test_a_wrong_code_in_a_logged_in_session_alone_sends_nothing(
    client, clock, user_with_totp, mailoutbox
):
    assert full_login(client, user_with_totp).status_code == 302
    data = {"password": PASSWORD, "code": wrong_code(user_with_totp)}
    assert client.post(DISABLE, data).status_code == 400
    assert notices(mailoutbox) == []
