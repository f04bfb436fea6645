"""mfa.session_store: Django's database sessions, written once per login step.

The store must keep Django's guarantees (a new key on every cycle, the old row gone, a key
collision answered by a new key, nothing lost when data changes after a write) while writing
the session once: at the explicit save inside the step's transaction.
"""

import pytest
from django.contrib.sessions.models import Session
from django.db import DatabaseError, IntegrityError, transaction
from django.test import Client

from mfa.session_store import SessionStore
from tests.conftest import is_logged_in, login_password

pytestmark = pytest.mark.django_db


def stored(key: str) -> dict | None:
    row = Session.objects.filter(session_key=key).first()
    return None if row is None else SessionStore().decode(row.session_data)


def saved_session(**data) -> SessionStore:
    session = SessionStore()
    session.update(data)
    session.save()
    return SessionStore(session.session_key)


def test_cycle_key_writes_nothing_then_one_update_moves_the_row(django_assert_num_queries):
    session = saved_session(a=1)
    old_key = session.session_key
    with django_assert_num_queries(1):  # loads the data, writes nothing
        session.cycle_key()
    new_key = session.session_key
    assert new_key != old_key and len(new_key) == 32
    # Until the save, the old row keeps the old data and the new key holds nothing.
    assert stored(old_key) == {"a": 1} and stored(new_key) is None
    session["b"] = 2
    with django_assert_num_queries(1):  # one UPDATE: no existence check, no savepoint
        session.save()
    assert stored(old_key) is None  # the old key is gone with the move
    assert stored(new_key) == {"a": 1, "b": 2}
    assert Session.objects.count() == 1


def test_a_cycled_key_with_no_stored_row_is_inserted(django_assert_num_queries):
    session = SessionStore()
    session["a"] = 1
    session.cycle_key()  # a new visitor: nothing stored yet
    with django_assert_num_queries(1):
        session.save()
    assert stored(session.session_key) == {"a": 1}


def test_an_old_row_ended_meanwhile_is_not_resurrected_under_its_old_key():
    session = saved_session(a=1)
    old_key = session.session_key
    session.cycle_key()
    SessionStore(old_key).delete()  # "sign out everywhere else" between the cycle and the save
    session["b"] = 2
    session.save()  # moves nothing, so INSERTs
    assert stored(old_key) is None
    assert stored(session.session_key) == {"a": 1, "b": 2}


def test_cycling_twice_before_a_save_replaces_the_stored_row_once():
    session = saved_session(a=1)
    old_key = session.session_key
    session.cycle_key()
    session.cycle_key()
    session.save()
    assert stored(old_key) is None
    assert stored(session.session_key) == {"a": 1}
    assert Session.objects.count() == 1


@pytest.mark.parametrize("how", ["flush", "delete"])
def test_ending_a_cycled_session_before_its_save_removes_the_old_row(how):
    session = saved_session(a=1)
    old_key = session.session_key
    session.cycle_key()
    if how == "flush":  # logout() after login() in the same request
        session.flush()
    else:
        session.delete()
    assert stored(old_key) is None
    assert Session.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_save_leaves_the_old_session_as_it_was():
    session = saved_session(a=1)
    old_key = session.session_key
    with pytest.raises(RuntimeError), transaction.atomic():
        session.cycle_key()
        session["b"] = 2
        session.save()
        raise RuntimeError("the step fails after writing the session")
    assert stored(old_key) == {"a": 1}
    assert Session.objects.count() == 1


def test_a_save_of_unchanged_data_writes_nothing(django_assert_num_queries):
    session = saved_session(a=1)
    session["b"] = 2
    session.save()
    with django_assert_num_queries(0):
        session.save()  # SessionMiddleware's save after the step's own
    session["c"] = 3  # ...but anything changed later is written
    session.save()
    assert stored(session.session_key) == {"a": 1, "b": 2, "c": 3}


def taken_key_next(monkeypatch, taken: str) -> None:
    keys = iter([taken, "k" * 32])
    monkeypatch.setattr(SessionStore, "_get_new_session_key", lambda self: next(keys))


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("stored_before", [True, False], ids=["move", "insert"])
def test_a_taken_key_is_replaced_by_a_new_one(monkeypatch, stored_before):
    other = saved_session(owner="someone else")
    if stored_before:
        session = saved_session(owner="me")
    else:
        session = SessionStore()
        session["owner"] = "me"
    old_key = session.session_key
    taken_key_next(monkeypatch, other.session_key)
    session.cycle_key()
    assert session.session_key == other.session_key
    session.save()
    assert session.session_key == "k" * 32
    assert stored("k" * 32) == {"owner": "me"}
    assert stored(other.session_key) == {"owner": "someone else"}
    assert old_key is None or stored(old_key) is None
    assert Session.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_keys_that_are_always_taken_fail_instead_of_looping(monkeypatch):
    from django.contrib.sessions.backends.base import CreateError

    other = saved_session(owner="someone else")
    session = saved_session(owner="me")
    old_key = session.session_key
    monkeypatch.setattr(SessionStore, "_get_new_session_key", lambda self: other.session_key)
    session.cycle_key()
    with pytest.raises(CreateError):
        session.save()
    assert stored(old_key) == {"owner": "me"}
    assert stored(other.session_key) == {"owner": "someone else"}


@pytest.mark.django_db(transaction=True)
def test_a_taken_key_inside_a_transaction_fails_it_as_a_whole(monkeypatch):
    other = saved_session(owner="someone else")
    session = saved_session(owner="me")
    taken_key_next(monkeypatch, other.session_key)
    with pytest.raises(IntegrityError), transaction.atomic():
        session.cycle_key()
        session.save()
    # Nothing of it happened: the old session is still there, the other one untouched.
    assert Session.objects.count() == 2
    assert stored(other.session_key) == {"owner": "someone else"}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("cycle", ["sync", "async"])
def test_the_async_api_inserts_a_cycled_key_too(cycle):
    # Under ASGI a view may cycle the key (login()) and the middleware save asynchronously.
    from asgiref.sync import async_to_sync

    session = saved_session(a=1)
    old_key = session.session_key
    if cycle == "sync":
        session.cycle_key()
    else:
        async_to_sync(session.acycle_key)()
    session["b"] = 2
    async_to_sync(session.asave)()
    assert stored(old_key) is None
    assert stored(session.session_key) == {"a": 1, "b": 2}


@pytest.mark.django_db(transaction=True)
def test_the_async_flush_of_a_cycled_session_removes_the_old_row():
    from asgiref.sync import async_to_sync

    session = saved_session(a=1)
    old_key = session.session_key
    async_to_sync(session.acycle_key)()
    async_to_sync(session.aflush)()
    assert stored(old_key) is None
    assert Session.objects.count() == 0


def test_flush_then_save_starts_a_new_row():
    session = saved_session(a=1)
    old_key = session.session_key
    session.flush()
    session["b"] = 2
    session.save()
    assert stored(old_key) is None
    assert stored(session.session_key) == {"b": 2}


def test_each_login_step_leaves_exactly_one_row_with_the_final_data(user_with_totp, clock):
    client = Client()
    assert login_password(client).status_code == 302
    pending_key = client.session.session_key
    assert Session.objects.count() == 1
    assert "_mfa_pending" in stored(pending_key)
    response = client.post("/accounts/2fa/verify/", {"code": user_with_totp.code()})
    assert response.status_code == 302
    logged_in_key = client.session.session_key
    assert logged_in_key != pending_key  # a new key at the second step too (no fixation)
    assert Session.objects.count() == 1
    data = stored(logged_in_key)
    assert data["_auth_user_id"] == str(user_with_totp.user.pk)
    assert "_mfa_pending" not in data
    assert is_logged_in(client)


@pytest.mark.parametrize(
    ("kind", "failing_event"),
    [("totp", "login"), ("recovery", "login"), ("recovery", "recovery_used")],
)
def test_a_login_that_fails_half_way_writes_nothing_and_spends_no_code(
    user_with_totp, clock, monkeypatch, kind, failing_event
):
    from mfa import flows
    from mfa.models import RecoveryCode, SecurityEvent, TOTPDevice, UserSession

    url, code = {
        "totp": ("/accounts/2fa/verify/", user_with_totp.code()),
        "recovery": ("/accounts/2fa/recovery/", user_with_totp.codes[0]),
    }[kind]
    client = Client(raise_request_exception=True)
    assert login_password(client).status_code == 302
    pending_key = client.session.session_key
    step_before = user_with_totp.device.last_used_step
    events_before = SecurityEvent.objects.count()
    real_record = flows.record

    def audit_fails_on_login(request, user, event_kind, detail=""):
        if event_kind == failing_event:
            raise DatabaseError("disk full")
        return real_record(request, user, event_kind, detail)

    monkeypatch.setattr(flows, "record", audit_fails_on_login)
    with pytest.raises(DatabaseError):
        client.post(url, {"code": code})
    # Rolled back as a whole: the code unspent, no audit event, the pending session as it was.
    assert TOTPDevice.objects.get(pk=user_with_totp.device.pk).last_used_step == step_before
    assert not RecoveryCode.objects.filter(used_at__isnull=False).exists()
    assert SecurityEvent.objects.count() == events_before
    assert list(Session.objects.values_list("session_key", flat=True)) == [pending_key]
    assert "_mfa_pending" in stored(pending_key)
    assert not UserSession.objects.exists()

    monkeypatch.setattr(flows, "record", real_record)
    client = Client()
    client.cookies["sessionid"] = pending_key
    response = client.post(url, {"code": code})
    assert response.status_code == 302 and is_logged_in(client)
