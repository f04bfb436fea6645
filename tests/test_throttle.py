"""Rate limits and the database back-off: guessing stays hopeless across sessions and addresses.

Requirement 4 of SECURITY-REQUIREMENTS.md (NIST 3.2.2, RFC 4226 7.3, ASVS 6.3.1): failures are
counted per account whatever session or address they come from, the count survives a cache
flush and a Redis outage, no more than 100 consecutive failures are possible, and a success
resets it. The clock is frozen (``clock``) so a burst of attempts falls in one rate window.
"""

import hashlib
import logging
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.test import Client, RequestFactory, override_settings
from django.utils import timezone

from mfa import throttle
from mfa.models import SecurityEvent, TOTPDevice, TwoFactor
from tests.conftest import (
    PASSWORD,
    full_login,
    is_logged_in,
    login_password,
    require_services,
)
from tests.test_recovery import run_together, threaded_db  # noqa: F401  (a fixture)

VERIFY_URL = "/accounts/2fa/verify/"
Kind = SecurityEvent.Kind
UNREACHABLE_REDIS = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",
        "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
    }
}


def wrong(enrolled) -> str:
    """A well-formed code that is none of the codes of steps T-1, T, T+1."""
    valid = {enrolled.code(offset) for offset in (-1, 0, 1)}
    return next(f"{n:06d}" for n in range(1_000_000) if f"{n:06d}" not in valid)


def assert_limited(response):
    assert response.status_code == 429, response.status_code
    assert int(response["Retry-After"]) >= 1


def pending_client(address: str = "127.0.0.1") -> Client:
    client = Client(REMOTE_ADDR=address)
    assert login_password(client).status_code == 302
    return client


# --- the per-account rate of code attempts --------------------------------------------------


@pytest.mark.parametrize("sixth_from", ["same session", "new session", "new address"])
def test_sixth_code_attempt_in_a_minute_is_refused_even_when_right(
    user_with_totp, clock, sixth_from
):
    first = pending_client()
    # Malformed input: counted by the rate limit, not by the database back-off, so the 429
    # below can only come from the per-account rate.
    for _ in range(5):
        assert first.post(VERIFY_URL, {"code": "abc"}).status_code == 400
    assert user_with_totp.two_factor.failure_count == 0

    if sixth_from == "same session":
        response = first.post(VERIFY_URL, {"code": user_with_totp.code()})
        client = first
    elif sixth_from == "new session":
        client = pending_client()
        response = client.post(VERIFY_URL, {"code": user_with_totp.code()})
    else:
        client = pending_client("198.51.100.23")
        response = client.post(
            VERIFY_URL, {"code": user_with_totp.code()}, REMOTE_ADDR="198.51.100.23"
        )

    assert_limited(response)
    assert not is_logged_in(client)
    # The next window lets the right code in.
    clock.shift(60)
    client = pending_client("198.51.100.24")
    assert client.post(VERIFY_URL, {"code": user_with_totp.code()}).status_code == 302
    assert is_logged_in(client)


def test_five_attempts_in_a_minute_are_allowed(user_with_totp, clock):
    client = pending_client()
    for _ in range(4):
        assert client.post(VERIFY_URL, {"code": "abc"}).status_code == 400
    assert client.post(VERIFY_URL, {"code": user_with_totp.code()}).status_code == 302


def test_recovery_page_shares_the_code_rate(user_with_totp, clock):
    client = pending_client()
    for _ in range(5):
        assert client.post("/accounts/2fa/recovery/", {"code": "x"}).status_code == 400
    assert_limited(client.post(VERIFY_URL, {"code": user_with_totp.code()}))


# --- the database back-off ------------------------------------------------------------------


def fail(client, enrolled, times: int):
    for _ in range(times):
        assert client.post(VERIFY_URL, {"code": wrong(enrolled)}).status_code == 400


def test_retry_after_of_a_rate_limit_covers_the_back_off(user_with_totp, clock):
    # The rate window (5/m) ends 10 s after the fifth failure; the back-off it started, 60 s.
    clock.shift(50 - int(timezone.now().timestamp()) % 60)
    client = pending_client()
    fail(client, user_with_totp, 5)
    response = client.post(VERIFY_URL, {"code": user_with_totp.code()})  # the 6th: rate-limited
    assert_limited(response)
    assert int(response["Retry-After"]) == 60
    clock.shift(11)  # the rate window is over, the back-off is not
    assert_limited(client.post(VERIFY_URL, {"code": user_with_totp.code()}))


def test_backoff_survives_cache_flush_and_new_session_then_expires(user_with_totp, clock):
    client = pending_client()
    for _ in range(5):
        assert client.post(VERIFY_URL, {"code": wrong(user_with_totp)}).status_code == 400
    device = user_with_totp.two_factor
    assert device.failure_count == 5
    assert device.blocked_until == timezone.now() + timedelta(seconds=60)

    cache.clear()  # the rate-limit layer is gone
    again = pending_client("203.0.113.9")
    response = again.post(VERIFY_URL, {"code": user_with_totp.code()}, REMOTE_ADDR="203.0.113.9")
    assert_limited(response)
    assert 1 <= int(response["Retry-After"]) <= 60
    assert not is_logged_in(again)

    clock.shift(59)
    cache.clear()
    assert_limited(pending_client().post(VERIFY_URL, {"code": user_with_totp.code()}))

    clock.shift(2)  # 61 s after the fifth failure
    cache.clear()
    client = pending_client()
    assert client.post(VERIFY_URL, {"code": user_with_totp.code()}).status_code == 302
    assert is_logged_in(client)
    device.refresh_from_db()
    assert device.failure_count == 0
    assert device.blocked_until is None


def test_backoff_doubles(user_with_totp, clock):
    client = pending_client()
    fail(client, user_with_totp, 5)
    assert user_with_totp.two_factor.blocked_until == timezone.now() + timedelta(seconds=60)
    clock.shift(61)
    cache.clear()
    client = pending_client()
    assert client.post(VERIFY_URL, {"code": wrong(user_with_totp)}).status_code == 400
    device = user_with_totp.two_factor
    assert device.failure_count == 6
    assert device.blocked_until == timezone.now() + timedelta(seconds=120)
    # While backed off, even a wrong code is not counted (it is not even checked).
    assert_limited(client.post(VERIFY_URL, {"code": wrong(user_with_totp)}))
    assert user_with_totp.two_factor.failure_count == 6


def test_backoff_seconds_doubles_and_is_capped_at_a_day():
    assert [throttle.backoff_seconds(n) for n in range(0, 5)] == [0] * 5
    assert [throttle.backoff_seconds(n) for n in range(5, 10)] == [60, 120, 240, 480, 960]
    assert throttle.backoff_seconds(16) == 86400  # 60 * 2**11 = 122880, capped
    assert throttle.backoff_seconds(99) == 86400
    assert throttle.backoff_seconds(10**9) == 86400


def test_backoff_settings_are_honoured(settings):
    settings.MFA_BACKOFF_AFTER = 3
    settings.MFA_BACKOFF_BASE = 10
    settings.MFA_BACKOFF_MAX = 30
    assert [throttle.backoff_seconds(n) for n in range(2, 7)] == [0, 10, 20, 30, 30]


def test_record_failure_caps_blocked_until_at_a_day(user_with_totp, clock):
    TwoFactor.objects.filter(user=user_with_totp.user).update(failure_count=40)
    now = timezone.now()
    failure = throttle.record_failure(user_with_totp.two_factor.pk, now)
    device = failure.row
    assert failure.refused is None  # not blocked before this failure
    assert device.failure_count == 41
    assert device.blocked_until == now + timedelta(days=1)
    assert device.locked_at is None


@pytest.mark.usefixtures("threaded_db")
def test_concurrent_failures_are_all_counted(clock, django_user_model):
    from tests.conftest import enrol

    user = django_user_model.objects.create_user("alice", "alice@example.com", PASSWORD)
    device = enrol(user).two_factor
    now = timezone.now()

    results = run_together([lambda: throttle.record_failure(device.pk, now)] * 20)

    device.refresh_from_db()
    assert device.failure_count == 20
    # Each call saw the count it produced: 1..20, none twice.
    assert sorted(f.row.failure_count for f in results) == list(range(1, 21))
    # Those counted once the back-off had begun (after the 5th) say so.
    assert sorted(f.row.failure_count for f in results if f.refused) == list(range(6, 21))


# --- lock-out at 100 ------------------------------------------------------------------------


def test_hundredth_failure_locks_until_an_admin_unlocks(user_with_totp, clock, mailoutbox):
    TwoFactor.objects.filter(user=user_with_totp.user).update(failure_count=99)
    client = pending_client()
    assert client.post(VERIFY_URL, {"code": wrong(user_with_totp)}).status_code == 400
    device = user_with_totp.two_factor
    assert device.failure_count == 100
    assert device.locked_at == timezone.now()
    assert SecurityEvent.objects.filter(user=user_with_totp.user, kind=Kind.LOCKED).count() == 1
    assert any("locked" in m.subject.lower() for m in mailoutbox)

    for shift in (0, 3600, 2 * 86400, 30 * 86400):
        clock.shift(shift)
        cache.clear()
        client = pending_client()
        response = client.post(VERIFY_URL, {"code": user_with_totp.code()})
        assert_limited(response)
        assert not is_logged_in(client)
        # The recovery page is locked as well.
        cache.clear()
        response = client.post("/accounts/2fa/recovery/", {"code": user_with_totp.codes[0]})
        assert_limited(response)

    mailoutbox.clear()
    call_command("mfa_unlock", "alice", stdout=open("/dev/null", "w"))  # noqa: SIM115
    device.refresh_from_db()
    assert (device.failure_count, device.blocked_until, device.locked_at) == (0, None, None)
    assert SecurityEvent.objects.filter(user=user_with_totp.user, kind=Kind.UNLOCKED).count() == 1
    assert [m.to for m in mailoutbox] == [["alice@example.com"]]
    assert "unlocked" in mailoutbox[0].subject.lower()

    cache.clear()
    client = pending_client()
    assert client.post(VERIFY_URL, {"code": user_with_totp.code()}).status_code == 302
    assert is_logged_in(client)


def test_fifth_failure_is_recorded_as_suspicious_and_emailed(user_with_totp, clock, mailoutbox):
    # In a re-authentication (a logged-in session, where one wrong code is no news), the
    # fifth failure in a row is the notice. A pending login reports its first wrong code
    # already: tests/test_review_guards.py.
    client = Client()
    assert full_login(client, user_with_totp).status_code == 302
    mailoutbox.clear()
    for n in range(1, 6):
        data = {"password": PASSWORD, "code": wrong(user_with_totp)}
        assert client.post("/accounts/2fa/disable/", data).status_code == 400
        suspicious = SecurityEvent.objects.filter(user=user_with_totp.user, kind=Kind.SUSPICIOUS)
        assert suspicious.count() == (1 if n == 5 else 0)
    notices = [m for m in mailoutbox if "not your second factor" in m.subject]
    assert [m.to for m in notices] == [["alice@example.com"]]
    assert SecurityEvent.objects.filter(user=user_with_totp.user, kind=Kind.MFA_FAILED).count() == 5


# --- password attempts ----------------------------------------------------------------------


def test_password_attempts_are_limited_per_username(user_with_totp, clock):
    for n in range(10):
        address = f"192.0.2.{n + 1}"
        response = Client(REMOTE_ADDR=address).post(
            "/accounts/login/", {"username": "alice", "password": "wrong"}
        )
        assert response.status_code == 400
    # The eleventh, from yet another address and with the right password, is refused; so is
    # the same name in other letter case.
    client = Client(REMOTE_ADDR="192.0.2.200")
    assert_limited(login_password(client, "alice"))
    assert_limited(login_password(Client(REMOTE_ADDR="192.0.2.202"), "ALICE"))
    assert client.get(VERIFY_URL).status_code == 302  # no pending login was started
    assert client.get(VERIFY_URL)["Location"].startswith("/accounts/login/")
    # Another account is not affected.
    other = Client(REMOTE_ADDR="192.0.2.201")
    assert other.post("/accounts/login/", {"username": "bob", "password": "x"}).status_code == 400


def test_password_attempts_are_limited_per_address(user_with_totp, clock):
    client = Client(REMOTE_ADDR="192.0.2.50")
    for n in range(30):
        response = client.post("/accounts/login/", {"username": f"user{n}", "password": "x"})
        assert response.status_code == 400
    assert_limited(login_password(client))
    assert client.get(VERIFY_URL).status_code == 302
    # Another address still gets through.
    assert login_password(Client(REMOTE_ADDR="192.0.2.51")).status_code == 302


def test_login_user_rate_setting_is_honoured(user_with_totp, clock, settings):
    settings.MFA_LOGIN_USER_RATE = "2/m"
    client = Client()
    for _ in range(2):
        assert (
            client.post("/accounts/login/", {"username": "alice", "password": "x"}).status_code
            == 400
        )
    assert_limited(login_password(client))


# --- the counters themselves (the in-process cache in pass 1, Redis in pass 2) --------------


def test_every_counter_counts_even_after_one_refuses(clock, rf):
    request = rf.post("/")
    tight, loose = ("test.tight", "10.0.0.1", "1/m"), ("test.loose", "alice", "3/m")
    outcomes = [throttle.check_rates(request, tight, loose) for _ in range(3)]
    assert outcomes[0] is None
    # Refused by the first counter from the second attempt on, within the minute.
    assert all(0 < o.retry_after <= 60 for o in outcomes[1:])
    # The second counter saw all three: one more is its fourth, over 3/m.
    assert throttle.check_rates(request, loose) is not None
    assert throttle.check_rates(request, ("test.loose", "bob", "3/m")) is None
    # A new window starts afresh.
    clock.shift(60)
    assert throttle.check_rates(request, tight, loose) is None


def test_a_counter_refuses_only_after_its_rate(clock, rf):
    request = rf.post("/")
    check = ("test.rate", "alice", "5/m")
    assert [throttle.check_rates(request, check) is None for _ in range(7)] == [True] * 5 + [
        False
    ] * 2


def test_rate_limits_can_be_switched_off_like_django_ratelimit(clock, rf, settings):
    settings.RATELIMIT_ENABLE = False
    check = ("test.off", "alice", "1/m")
    assert [throttle.check_rates(rf.post("/"), check) for _ in range(3)] == [None] * 3


@pytest.mark.services
def test_redis_counters_do_not_name_the_user(clock, rf):
    from django.core.cache import caches
    from django.core.cache.backends.redis import RedisCache

    require_services()
    redis_cache = caches["default"]
    assert isinstance(redis_cache, RedisCache)
    throttle.check_rates(rf.post("/"), ("mfa.login.user", "alice-the-user", "5/m"))
    client = redis_cache._cache.get_client()
    keys = [key.decode() for key in client.scan_iter(count=1000)]
    assert len(keys) == 1 and "mfa.rate:mfa.login.user:60:" in keys[0]
    assert "alice-the-user" not in keys[0]
    # Keyed: not the plain SHA-256 that anyone could recompute from a list of names.
    assert hashlib.sha256(b"alice-the-user").hexdigest()[:32] not in keys[0]
    assert 0 < client.ttl(keys[0]) <= 61


# --- Redis down: fail open, loudly, and the database still counts ---------------------------


@pytest.fixture
def mfa_log(caplog):
    """Capture the ``mfa`` loggers (which do not propagate to the root logger)."""
    logger = logging.getLogger("mfa")
    logger.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.WARNING)
    yield caplog
    logger.removeHandler(caplog.handler)


def test_unreachable_redis_fails_open_loudly_and_backoff_still_holds(
    user_with_totp, clock, mfa_log
):
    # override_settings, not the settings fixture: the autouse cache clearing must run after
    # the real cache is back.
    with override_settings(CACHES=UNREACHABLE_REDIS):
        from django.core.cache import caches

        assert "redis" in type(caches["default"]).__module__
        client = Client()
        response = full_login(client, user_with_totp)
        assert response.status_code == 302
        assert is_logged_in(client)
        errors = [
            r for r in mfa_log.records if r.levelno >= logging.ERROR and r.name == "mfa.throttle"
        ]
        assert errors, "an unreachable cache is logged as an error"

        client = pending_client()
        for _ in range(5):
            assert client.post(VERIFY_URL, {"code": wrong(user_with_totp)}).status_code == 400
        clock.shift(30)  # a fresh, unused step: only the back-off can refuse it
        assert_limited(pending_client().post(VERIFY_URL, {"code": user_with_totp.code()}))
    assert user_with_totp.two_factor.failure_count == 5


# --- which address counts -------------------------------------------------------------------


def _request(**meta):
    return RequestFactory().get("/", REMOTE_ADDR="10.0.0.9", **meta)


def test_client_ip_is_remote_addr_by_default():
    assert throttle.client_ip(_request(HTTP_X_FORWARDED_FOR="1.2.3.4")) == "10.0.0.9"


@pytest.mark.parametrize(
    ("forwarded", "count", "expected"),
    [
        ("203.0.113.7", 1, "203.0.113.7"),
        ("6.6.6.6, 203.0.113.7", 1, "203.0.113.7"),  # a forged left entry is ignored
        ("6.6.6.6,203.0.113.7", 1, "203.0.113.7"),
        ("6.6.6.6, 203.0.113.7, 10.1.1.1", 2, "203.0.113.7"),
        ("2001:db8::1", 1, "2001:db8::1"),
        ("6.6.6.6, not-an-address", 1, "10.0.0.9"),  # malformed: REMOTE_ADDR
        ("203.0.113.7, 999.1.1.1", 1, "10.0.0.9"),
        ("", 1, "10.0.0.9"),
        (" , ", 1, "10.0.0.9"),
        ("203.0.113.7", 2, "10.0.0.9"),  # fewer hops than proxies: REMOTE_ADDR
    ],
)
def test_client_ip_behind_trusted_proxies(settings, forwarded, count, expected):
    settings.MFA_TRUSTED_PROXY_HEADER = "X-Forwarded-For"
    settings.MFA_TRUSTED_PROXY_COUNT = count
    assert throttle.client_ip(_request(HTTP_X_FORWARDED_FOR=forwarded)) == expected


def test_client_ip_without_the_header_is_remote_addr(settings):
    settings.MFA_TRUSTED_PROXY_HEADER = "X-Forwarded-For"
    assert throttle.client_ip(_request()) == "10.0.0.9"


def test_forged_forwarded_entries_do_not_escape_the_address_limit(user_with_totp, clock, settings):
    settings.MFA_TRUSTED_PROXY_HEADER = "X-Forwarded-For"
    client = Client()
    for n in range(30):
        response = client.post(
            "/accounts/login/",
            {"username": f"user{n}", "password": "x"},
            HTTP_X_FORWARDED_FOR=f"6.6.6.{n}, 203.0.113.7",
        )
        assert response.status_code == 400
    response = client.post(
        "/accounts/login/",
        {"username": "alice", "password": PASSWORD},
        HTTP_X_FORWARDED_FOR="7.7.7.7, 203.0.113.7",
    )
    assert_limited(response)


# --- re-authenticated changes are rate limited per user -------------------------------------


@pytest.mark.parametrize("url", ["/accounts/2fa/disable/", "/accounts/2fa/recovery-codes/"])
def test_changes_are_rate_limited_per_user(user_with_totp, clock, url):
    first = Client()
    assert full_login(first, user_with_totp).status_code == 302
    clock.shift(30)
    second = Client()
    assert full_login(second, user_with_totp).status_code == 302
    clock.shift(30)
    for n in range(5):
        session = first if n % 2 else second
        response = session.post(url, {"password": "wrong", "code": user_with_totp.code()})
        assert response.status_code == 400
    before = user_with_totp.device.last_used_step
    # The sixth, from either session and with the right password and code, is refused.
    response = first.post(url, {"password": PASSWORD, "code": user_with_totp.code()})
    assert_limited(response)
    assert TOTPDevice.objects.filter(user=user_with_totp.user).exists()
    assert user_with_totp.device.last_used_step == before  # the code was not even checked
    assert not SecurityEvent.objects.filter(
        kind__in=[Kind.DISABLED, Kind.CODES_REGENERATED]
    ).exists()
