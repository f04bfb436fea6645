"""The public signals: each fires once, after the commit, with its documented arguments."""

import pytest
from django.contrib.sessions.backends.db import SessionStore
from django.test import Client
from django.test.client import RequestFactory

from mfa import flows, signals, totp
from mfa.models import TwoFactor
from tests.conftest import PASSWORD, enrolling_secret, full_login, is_logged_in, login_password

ALL = [
    signals.two_factor_enabled,
    signals.two_factor_disabled,
    signals.login_verified,
    signals.verification_failed,
    signals.recovery_code_used,
    signals.recovery_codes_regenerated,
    signals.locked,
]


class Received(list):
    """(signal, sender, arguments) of every public signal sent while the test runs."""

    def of(self, signal) -> list[dict]:
        return [kwargs for sent, _, kwargs in self if sent is signal]


@pytest.fixture
def received():
    calls = Received()

    def receiver(sender, signal, **kwargs):
        calls.append((signal, sender, kwargs))

    for signal in ALL:
        signal.connect(receiver, dispatch_uid="tests.received")
    yield calls
    for signal in ALL:
        signal.disconnect(dispatch_uid="tests.received")


@pytest.fixture
def committed(django_capture_on_commit_callbacks):
    """Run the on-commit callbacks of what happens inside ``with committed():``."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def assert_request_of(kwargs, user):
    assert kwargs["request"].user == user
    assert kwargs["user"] == user


def test_login_verified_with_totp(client, clock, user_with_totp, received, committed):
    with committed():
        assert full_login(client, user_with_totp).status_code == 302
    [kwargs] = received.of(signals.login_verified)
    assert set(kwargs) == {"request", "user", "method"}
    assert kwargs["method"] == "totp"
    assert_request_of(kwargs, user_with_totp.user)
    assert [sender for _, sender, _ in received] == [type(user_with_totp.user)]


def test_login_verified_and_recovery_code_used(client, clock, user_with_totp, received, committed):
    with committed():
        assert login_password(client).status_code == 302
        response = client.post("/accounts/2fa/recovery/", {"code": user_with_totp.codes[0]})
        assert response.status_code == 302
    [used] = received.of(signals.recovery_code_used)
    assert set(used) == {"request", "user", "remaining"}
    assert used["remaining"] == 9
    [verified] = received.of(signals.login_verified)
    assert verified["method"] == "recovery code"
    assert_request_of(verified, user_with_totp.user)


def test_a_login_without_2fa_sends_none(client, clock, user, received, committed):
    with committed():
        assert login_password(client).status_code == 302
    assert received == []


def test_verification_failed_invalid(client, clock, user_with_totp, received, committed):
    with committed():
        assert login_password(client).status_code == 302
        client.post("/accounts/2fa/verify/", {"code": wrong(user_with_totp.code())})
        client.post("/accounts/2fa/recovery/", {"code": "ZZZZ-ZZZZ-ZZZZ-ZZZZ"})
    sent = received.of(signals.verification_failed)
    assert [(k["method"], k["reason"]) for k in sent] == [
        ("totp", "invalid"),
        ("recovery code", "invalid"),
    ]
    assert set(sent[0]) == {"request", "user", "method", "reason"}
    assert sent[0]["user"] == user_with_totp.user
    assert received.of(signals.login_verified) == []


def test_verification_failed_replay(client, clock, user_with_totp, received, committed):
    code, recovery_code = user_with_totp.code(), user_with_totp.codes[0]
    assert full_login(client, user_with_totp).status_code == 302
    assert login_password(client, username="alice").status_code == 302
    client.post("/accounts/2fa/recovery/", {"code": recovery_code})
    other = Client()
    with committed():
        assert login_password(other).status_code == 302
        assert other.post("/accounts/2fa/verify/", {"code": code}).status_code == 400
        assert other.post("/accounts/2fa/recovery/", {"code": recovery_code}).status_code == 400
    sent = received.of(signals.verification_failed)
    assert [(k["method"], k["reason"]) for k in sent] == [
        ("totp", "replay"),
        ("recovery code", "replay"),
    ]


def test_locked(rf, settings, clock, user_with_totp, received, committed):
    settings.MFA_BACKOFF_AFTER = 10
    settings.MFA_LOCKOUT_AFTER = 2
    request = rf.post("/accounts/2fa/verify/")
    with committed():
        for _ in range(2):
            outcome = flows.verify_totp(request, user_with_totp.user, wrong(user_with_totp.code()))
            assert outcome.result is flows.Result.INVALID
    [kwargs] = received.of(signals.locked)
    assert kwargs == {"request": request, "user": user_with_totp.user}
    assert len(received.of(signals.verification_failed)) == 2


def test_two_factor_enabled(client, clock, user, received, committed):
    assert login_password(client).status_code == 302
    assert client.get("/accounts/2fa/setup/").status_code == 200
    code = totp.code_at(enrolling_secret(client), totp.step_of(totp.now()))
    with committed():
        assert client.post("/accounts/2fa/setup/", {"code": code}).status_code == 200
    [kwargs] = received.of(signals.two_factor_enabled)
    assert set(kwargs) == {"request", "user"}
    assert_request_of(kwargs, user)


def test_two_factor_disabled_by_the_user(client, clock, user_with_totp, received, committed):
    assert full_login(client, user_with_totp).status_code == 302
    clock.shift(totp.STEP)
    with committed():
        response = client.post(
            "/accounts/2fa/disable/", {"password": PASSWORD, "code": user_with_totp.code()}
        )
        assert response.status_code == 302
    [kwargs] = received.of(signals.two_factor_disabled)
    assert set(kwargs) == {"request", "user", "actor"}
    assert kwargs["actor"] is None
    assert_request_of(kwargs, user_with_totp.user)


def test_two_factor_disabled_by_an_administrator(clock, user_with_totp, received, committed):
    with committed():
        assert flows.reset(user_with_totp.user, "admin root")
    [kwargs] = received.of(signals.two_factor_disabled)
    assert kwargs == {"request": None, "user": user_with_totp.user, "actor": "admin root"}


def test_recovery_codes_regenerated(client, clock, user_with_totp, received, committed):
    assert full_login(client, user_with_totp).status_code == 302
    clock.shift(totp.STEP)
    with committed():
        response = client.post(
            "/accounts/2fa/recovery-codes/", {"password": PASSWORD, "code": user_with_totp.code()}
        )
        assert response.status_code == 200
    [kwargs] = received.of(signals.recovery_codes_regenerated)
    assert set(kwargs) == {"request", "user"}
    assert_request_of(kwargs, user_with_totp.user)


def test_nothing_is_sent_for_a_login_that_rolled_back(clock, user_with_totp, received, committed):
    request = RequestFactory().post("/accounts/2fa/verify/")
    request.session = SessionStore()
    request.user = user_with_totp.user.__class__()  # not yet logged in
    user_with_totp.user.backend = "django.contrib.auth.backends.ModelBackend"

    def accept_then_fail():
        flows.complete_login(request, user_with_totp.user, method="totp")
        raise RuntimeError("the step failed after the login")

    with committed(), pytest.raises(RuntimeError):
        flows.verify_totp(request, user_with_totp.user, user_with_totp.code(), accept_then_fail)
    assert received.of(signals.login_verified) == []


# --- A receiver that raises -----------------------------------------------------------------


@pytest.fixture
def broken_receiver():
    def receiver(sender, **kwargs):
        raise RuntimeError("the site's receiver is broken")

    for signal in ALL:
        signal.connect(receiver, dispatch_uid="tests.broken")
    yield
    for signal in ALL:
        signal.disconnect(dispatch_uid="tests.broken")


@pytest.mark.django_db(transaction=True)
def test_a_raising_receiver_cannot_refuse_a_login(
    client, clock, user_with_totp, broken_receiver, mfa_log
):
    # A real commit: the receiver runs inside the request, after the login committed.
    assert full_login(client, user_with_totp).status_code == 302
    assert is_logged_in(client)
    assert "mfa signal receiver" in mfa_log.text
    assert "the site's receiver is broken" in mfa_log.text  # its traceback is kept


@pytest.mark.django_db(transaction=True)
def test_a_raising_receiver_cannot_accept_a_refused_login(
    client, clock, user_with_totp, broken_receiver
):
    assert login_password(client).status_code == 302
    response = client.post("/accounts/2fa/verify/", {"code": wrong(user_with_totp.code())})
    assert response.status_code == 400
    assert not is_logged_in(client)
    assert TwoFactor.objects.get(user=user_with_totp.user).failure_count == 1
