"""The key ring's life through ``mfa_keys``: generate, add, rotate, retire, status.

Requirements 6 to 8 of SECURITY-REQUIREMENTS.md: keys can be replaced and every secret
re-encrypted, after which the old key goes; no step locks anyone out; a lost key is named
loudly. Users log in through the real two-step flow between the steps.
"""

import io
import stat

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from django.test import Client

from mfa import crypto, rotation
from mfa.models import TOTPDevice
from tests.conftest import PASSWORD, enrol, full_login, is_logged_in

pytestmark = pytest.mark.django_db


def keys(*args, **options) -> tuple[str, str]:
    """Run ``mfa_keys`` with ``args``; return its stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    call_command("mfa_keys", *args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


def ring_ids() -> list[str]:
    return [crypto.key_id(key) for key in crypto.load_keys()]


def ring_text() -> bytes:
    return crypto.ring_path().read_bytes()


def make_users(django_user_model, names):
    return [
        enrol(django_user_model.objects.create_user(name, f"{name}@example.com", PASSWORD))
        for name in names
    ]


def encrypting_key_id(enrolled) -> str:
    key = crypto.decrypting_key(TOTPDevice.objects.get(user=enrolled.user).encrypted_secret)
    return crypto.key_id(key) if key else "none"


def logs_in(enrolled) -> bool:
    client = Client()
    response = full_login(client, enrolled)
    return response.status_code == 302 and is_logged_in(client)


def everyone_logs_in(users, clock) -> None:
    # A new time step each round, so no login is refused as a replay of the last one.
    clock.shift(30)
    for enrolled in users:
        assert logs_in(enrolled), enrolled.user.get_username()


# --- generate -------------------------------------------------------------------------------


def test_generate_refuses_to_overwrite_a_ring():
    before = ring_text()
    with pytest.raises(CommandError, match="refusing to overwrite"):
        keys("generate")
    assert ring_text() == before


def test_generate_creates_a_private_ring(settings, tmp_path):
    settings.MFA_KEYS_DIR = str(tmp_path / "fresh" / "keys")
    out, _err = keys("generate")
    path = crypto.ring_path()
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    (key,) = crypto.load_keys()
    Fernet(key)  # a valid key
    assert crypto.key_id(key) in out
    assert key.decode() not in out  # the key itself is never printed
    with pytest.raises(CommandError):
        keys("generate")


def test_generate_refuses_a_new_ring_over_secrets_that_need_the_lost_one(
    django_user_model, settings, tmp_path
):
    make_users(django_user_model, ["alice", "bob"])
    settings.MFA_KEYS_DIR = str(tmp_path / "restored-volume-not-mounted")
    with pytest.raises(CommandError, match="holds 2 secret"):
        keys("generate")
    assert not crypto.ring_path().exists()
    out, _err = keys("generate", force=True)  # lost for good: the operator says so
    assert crypto.ring_path().is_file() and "Created" in out


def test_generate_creates_no_ring_when_the_database_cannot_say_what_it_holds(
    settings, tmp_path, monkeypatch
):
    from django.db import OperationalError
    from django.db.backends.base.introspection import BaseDatabaseIntrospection

    def unreachable(self, *args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(BaseDatabaseIntrospection, "table_names", unreachable)
    settings.MFA_KEYS_DIR = str(tmp_path / "ring-volume")
    with pytest.raises(OperationalError):
        keys("generate")
    assert not crypto.ring_path().exists()


def test_new_key_prints_a_key_without_touching_the_ring():
    before = ring_text()
    out, err = keys("new-key")
    Fernet(out.strip().encode())
    assert crypto.key_id(out.strip().encode()) in err
    assert ring_text() == before


# --- add, rotate, retire --------------------------------------------------------------------


def test_add_then_rotate_keeps_everyone_logging_in(django_user_model, clock):
    users = make_users(django_user_model, ["alice", "bob", "carol"])
    (old,) = ring_ids()
    everyone_logs_in(users, clock)
    before = {u.user.pk: u.device.encrypted_secret for u in users}

    out, _ = keys("add")
    new, old_again = ring_ids()
    assert old_again == old and new != old
    assert new in out
    assert stat.S_IMODE(crypto.ring_path().stat().st_mode) == 0o600
    # Nothing re-encrypted yet; the old key still serves.
    assert {u.user.pk: u.device.encrypted_secret for u in users} == before
    assert {encrypting_key_id(u) for u in users} == {old}
    everyone_logs_in(users, clock)

    out, _ = keys("rotate")
    assert "Rotated 3" in out
    after = {u.user.pk: u.device.encrypted_secret for u in users}
    assert all(after[pk] != before[pk] for pk in before)
    assert {encrypting_key_id(u) for u in users} == {new}
    # Still bound to their users: each decrypts to its own secret, and only for its owner.
    for enrolled in users:
        assert crypto.decrypt_secret(after[enrolled.user.pk], enrolled.user.pk) == enrolled.secret
        other = next(u for u in users if u is not enrolled)
        with pytest.raises(crypto.UndecryptableSecret):
            crypto.decrypt_secret(after[enrolled.user.pk], other.user.pk)
    everyone_logs_in(users, clock)


def test_retire_only_after_rotate_and_never_the_primary(django_user_model, clock):
    users = make_users(django_user_model, ["alice", "bob", "carol"])
    (old,) = ring_ids()
    keys("add")
    new = ring_ids()[0]
    everyone_logs_in(users, clock)

    # The old key cannot go while secrets need it.
    ring_before = ring_text()
    with pytest.raises(CommandError, match="rotate"):
        keys("retire", old)
    assert ring_text() == ring_before
    everyone_logs_in(users, clock)

    keys("rotate")
    with pytest.raises(CommandError, match="primary"):
        keys("retire", new)
    assert ring_ids() == [new, old]
    out, _ = keys("retire", old)
    assert old in out
    assert ring_ids() == [new]
    assert stat.S_IMODE(crypto.ring_path().stat().st_mode) == 0o600
    everyone_logs_in(users, clock)


def test_retire_refuses_the_primary_and_retires_an_unused_key():
    (old,) = ring_ids()
    keys("add")
    new = ring_ids()[0]
    with pytest.raises(CommandError, match="primary"):
        keys("retire", new)
    assert ring_ids() == [new, old]
    keys("retire", old.upper())
    assert ring_ids() == [new]


def test_retire_unknown_key_is_refused():
    keys("add")
    before = ring_text()
    with pytest.raises(CommandError, match="No key"):
        keys("retire", "0123456789ab")
    assert ring_text() == before


def test_retire_refuses_while_one_secret_needs_the_key(django_user_model, clock):
    (first,) = make_users(django_user_model, ["alice"])
    (old,) = ring_ids()
    keys("add")
    new = ring_ids()[0]
    second = make_users(django_user_model, ["bob"])[0]  # encrypted under the new key
    assert encrypting_key_id(second) == new
    before = ring_text()
    with pytest.raises(CommandError, match="1 secret"):
        keys("retire", old)
    assert ring_text() == before
    assert ring_ids() == [new, old]
    everyone_logs_in([first, second], clock)


def test_rotate_twice_is_idempotent(django_user_model, clock):
    users = make_users(django_user_model, ["alice", "bob"])
    keys("add")
    out, _ = keys("rotate")
    assert "Rotated 2" in out
    tokens = {u.user.pk: u.device.encrypted_secret for u in users}
    out, _ = keys("rotate")
    assert "Rotated 0" in out
    assert "2 already used it" in out
    assert {u.user.pk: u.device.encrypted_secret for u in users} == tokens
    everyone_logs_in(users, clock)


def assert_first_batch_only_then_resume(users, old: str, new: str, clock) -> None:
    """After a rotation of five users in batches of two stopped in its second batch: only the
    first batch is under the new key, everyone logs in, and a second run finishes the rest."""
    by_pk = sorted(users, key=lambda u: u.device.pk)
    assert [encrypting_key_id(u) for u in by_pk] == [new, new, old, old, old]
    everyone_logs_in(users, clock)
    out, _ = keys("rotate", "--batch-size", "2")
    assert "Rotated 3" in out and "2 already used it" in out
    assert {encrypting_key_id(u) for u in users} == {new}
    everyone_logs_in(users, clock)


def test_rotate_interrupted_after_a_batch_then_resumed(django_user_model, clock, monkeypatch):
    users = make_users(django_user_model, ["u1", "u2", "u3", "u4", "u5"])
    (old,) = ring_ids()
    keys("add")
    new = ring_ids()[0]

    real_reencrypt = crypto.KeyRing.reencrypt
    calls = []

    def crash_in_second_batch(self, token, user_pk):
        calls.append(user_pk)
        if len(calls) > 2:  # the first secret of the second batch of two
            raise RuntimeError("killed")
        return real_reencrypt(self, token, user_pk)

    with monkeypatch.context() as patch, pytest.raises(RuntimeError, match="killed"):
        patch.setattr(crypto.KeyRing, "reencrypt", crash_in_second_batch)
        keys("rotate", "--batch-size", "2")
    assert len(calls) == 3

    # The second batch was rolled back as a whole, and nobody is locked out.
    assert_first_batch_only_then_resume(users, old, new, clock)


def test_rotate_rejects_a_bad_batch_size():
    with pytest.raises(CommandError):
        keys("rotate", "--batch-size", "0")


# --- rotation with committed batches -------------------------------------------------------
#
# Outside a transaction, on PostgreSQL, the rotation writes each batch from a second thread on
# its own connection while it encrypts the next (mfa/rotation.py); elsewhere it reads, encrypts
# and writes each batch in one locked transaction. These tests commit for real, so pass 2 of
# `./run test` (PostgreSQL) runs the overlapped writer and pass 1 (SQLite) the in-place loop.


@pytest.fixture
def rotation_paths(monkeypatch):
    """Record which rotation loop ran."""
    taken = []
    for name in ("_rotate_overlapped", "_rotate_in_place"):
        real = getattr(rotation, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            taken.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(rotation, name, spy)
    return taken


def expected_path() -> str:
    return "_rotate_overlapped" if connection.vendor == "postgresql" else "_rotate_in_place"


@pytest.mark.django_db(transaction=True)
def test_committed_rotation_keeps_everyone_logging_in(django_user_model, clock, rotation_paths):
    users = make_users(django_user_model, [f"user{i}" for i in range(7)])
    keys("add")
    new = ring_ids()[0]
    out, _ = keys("rotate", "--batch-size", "3")
    assert rotation_paths == [expected_path()]
    assert "Rotated 7" in out and "0 already used it" in out
    assert {encrypting_key_id(u) for u in users} == {new}
    for enrolled in users:
        assert crypto.decrypt_secret(enrolled.device.encrypted_secret, enrolled.user.pk) == (
            enrolled.secret
        )
    everyone_logs_in(users, clock)


@pytest.mark.django_db(transaction=True)
def test_rotation_never_overwrites_a_secret_changed_meanwhile(
    django_user_model, clock, monkeypatch, rotation_paths
):
    """A user who enrols again while their row is being rotated keeps the new authenticator."""
    users = make_users(django_user_model, ["u1", "u2", "u3", "u4"])
    keys("add")
    new = ring_ids()[0]
    victim = users[1]
    fresh_secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    real_reencrypt = crypto.KeyRing.reencrypt

    def enrol_again_while_read(self, token, user_pk):
        if user_pk == victim.user.pk:
            # A concurrent re-enrolment commits a new secret after the rotation read the row
            # and before it writes it back.
            TOTPDevice.objects.filter(user=victim.user).update(
                encrypted_secret=crypto.encrypt_secret(fresh_secret, user_pk)
            )
        return real_reencrypt(self, token, user_pk)

    monkeypatch.setattr(crypto.KeyRing, "reencrypt", enrol_again_while_read)
    out, _ = keys("rotate", "--batch-size", "2")
    assert rotation_paths == [expected_path()]
    # Three rewritten; the victim's write found another ciphertext and was skipped.
    assert "Rotated 3" in out, out
    if connection.vendor == "postgresql":
        # Read again under lock at the end: it already holds a secret under the primary. (On
        # SQLite the batch holds the write lock, so only this test's own connection can change a
        # row mid-batch, and nothing is read again.)
        assert "1 already used it" in out, out
    assert crypto.decrypt_secret(victim.device.encrypted_secret, victim.user.pk) == fresh_secret
    assert {encrypting_key_id(u) for u in users} == {new}
    victim.secret = fresh_secret
    everyone_logs_in(users, clock)


@pytest.mark.django_db(transaction=True)
def test_committed_rotation_stops_on_a_failed_write_and_resumes(
    django_user_model, clock, monkeypatch, rotation_paths
):
    users = make_users(django_user_model, ["u1", "u2", "u3", "u4", "u5"])
    (old,) = ring_ids()
    keys("add")
    new = ring_ids()[0]
    real_write = rotation._write
    writes = []

    def fail_second_write(*args, **kwargs):
        writes.append(1)
        if len(writes) == 2:
            raise DatabaseError("connection lost")
        return real_write(*args, **kwargs)

    with monkeypatch.context() as patch, pytest.raises(DatabaseError, match="connection lost"):
        patch.setattr(rotation, "_write", fail_second_write)
        keys("rotate", "--batch-size", "2")
    assert rotation_paths == [expected_path()]
    # The first batch committed; the failed one and everything after it are untouched.
    assert_first_batch_only_then_resume(users, old, new, clock)


@pytest.mark.django_db(transaction=True)
def test_rotation_inside_a_callers_transaction_writes_on_its_connection(
    django_user_model, clock, rotation_paths
):
    """No second connection while the caller holds a transaction (its locks could deadlock)."""
    users = make_users(django_user_model, ["u1", "u2", "u3"])
    keys("add")
    new = ring_ids()[0]
    transaction.set_autocommit(False)
    try:
        # (No lock is taken here: were the second connection used, the test should fail on the
        # path taken, not hang on a lock.)
        tally = rotation.rotate(crypto.current(), batch_size=2)
        transaction.commit()
    finally:
        transaction.set_autocommit(True)
    assert rotation_paths == ["_rotate_in_place"]
    assert tally.rotated == 3
    assert {encrypting_key_id(u) for u in users} == {new}
    everyone_logs_in(users, clock)


# --- status ---------------------------------------------------------------------------------


def _status_counts(out: str) -> dict[str, tuple[str, int]]:
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[-1] == "secret(s)":
            counts[parts[0]] = (parts[1], int(parts[-2]))
    return counts


def test_status_counts_secrets_per_key(django_user_model):
    make_users(django_user_model, ["a1", "a2"])
    (key_a,) = ring_ids()
    keys("add")
    key_b = ring_ids()[0]
    make_users(django_user_model, ["b1", "b2", "b3"])
    keys("add")
    key_c = ring_ids()[0]
    make_users(django_user_model, ["c1"])

    out, err = keys("status")
    assert _status_counts(out) == {
        key_c: ("primary", 1),
        key_b: ("old", 3),
        key_a: ("old", 2),
    }
    assert "cannot be decrypted" not in err


def test_status_names_undecryptable_users_loudly(django_user_model):
    alice, bob, carol = make_users(django_user_model, ["alice", "bob", "carol"])
    # Bob's secret under a key the ring does not hold; carol's copied from alice (bound to her).
    foreign = Fernet(Fernet.generate_key()).encrypt(b"mfa-totp-v1:%d:ABC" % bob.user.pk)
    TOTPDevice.objects.filter(user=bob.user).update(encrypted_secret=foreign.decode())
    TOTPDevice.objects.filter(user=carol.user).update(
        encrypted_secret=alice.device.encrypted_secret
    )

    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match="2 secret"):
        call_command("mfa_keys", "status", stdout=out, stderr=err)
    assert _status_counts(out.getvalue()) == {ring_ids()[0]: ("primary", 1)}
    assert f"user {bob.user.pk} bob" in err.getvalue()
    assert f"user {carol.user.pk} carol" in err.getvalue()
    assert "alice" not in err.getvalue()

    # rotate refuses loudly too, and re-encrypts the rest.
    keys("add")
    with pytest.raises(CommandError, match="2 secret"):
        keys("rotate")
    assert encrypting_key_id(alice) == ring_ids()[0]


# --- a ring kept in the environment ---------------------------------------------------------


def test_env_ring_logs_in_refuses_changes_and_rotates(django_user_model, clock, monkeypatch):
    key_a = crypto.new_key()
    monkeypatch.setenv("MFA_FERNET_KEYS", key_a.decode())
    crypto.reload()
    users = make_users(django_user_model, ["alice", "bob"])
    assert {encrypting_key_id(u) for u in users} == {crypto.key_id(key_a)}
    everyone_logs_in(users, clock)

    file_before = ring_text()
    for args in (["add"], ["retire", crypto.key_id(key_a)], ["generate"]):
        with pytest.raises(CommandError, match="MFA_FERNET_KEYS") as excinfo:
            keys(*args)
        assert "new-key" in str(excinfo.value)
        assert key_a.decode() not in str(excinfo.value)
    assert ring_text() == file_before

    key_b = crypto.new_key()
    monkeypatch.setenv("MFA_FERNET_KEYS", f"{key_b.decode()},{key_a.decode()}")
    crypto.reload()
    everyone_logs_in(users, clock)
    out, _ = keys("rotate")
    assert "Rotated 2" in out
    assert {encrypting_key_id(u) for u in users} == {crypto.key_id(key_b)}

    monkeypatch.setenv("MFA_FERNET_KEYS", key_b.decode())
    crypto.reload()
    everyone_logs_in(users, clock)


def test_status_of_an_env_ring(django_user_model, monkeypatch):
    key_a, key_b = crypto.new_key(), crypto.new_key()
    monkeypatch.setenv("MFA_FERNET_KEYS", key_a.decode())
    crypto.reload()
    make_users(django_user_model, ["alice", "bob"])
    monkeypatch.setenv("MFA_FERNET_KEYS", f"{key_b.decode()},{key_a.decode()}")
    crypto.reload()
    status, _ = keys("status")
    assert "MFA_FERNET_KEYS" in status
    assert _status_counts(status) == {
        crypto.key_id(key_b): ("primary", 0),
        crypto.key_id(key_a): ("old", 2),
    }
    assert key_a.decode() not in status and key_b.decode() not in status


# --- mfa_reset ------------------------------------------------------------------------------


def test_mfa_reset_removes_the_second_factor_audited_and_emailed(user_with_totp, mailoutbox, clock):
    from mfa.models import RecoveryCode, SecurityEvent

    out = io.StringIO()
    call_command("mfa_reset", "alice", stdout=out)
    assert not TOTPDevice.objects.filter(user=user_with_totp.user).exists()
    assert not RecoveryCode.objects.filter(user=user_with_totp.user).exists()
    event = SecurityEvent.objects.get(user=user_with_totp.user, kind="admin_reset")
    assert event.detail.startswith("by command line")
    assert [m.to for m in mailoutbox] == [["alice@example.com"]]
    assert "reset" in mailoutbox[0].subject.lower()
    # The password alone logs in now (and the user is asked to enrol again elsewhere).
    client = Client()
    response = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302
    assert is_logged_in(client)


def test_mfa_reset_and_unlock_say_when_there_is_nothing_to_do(
    django_user_model, user_with_totp, mailoutbox, clock
):
    from mfa.models import SecurityEvent, UserSession

    django_user_model.objects.create_user("frank", "frank@example.com", PASSWORD)
    frank = Client()
    assert (
        frank.post("/accounts/login/", {"username": "frank", "password": PASSWORD}).status_code
        == 302
    )
    sessions_before = UserSession.objects.count()
    for command, name, expected in [
        ("mfa_reset", "frank", "no two-factor authentication; nothing to reset"),
        ("mfa_unlock", "frank", "no two-factor authentication; nothing to unlock"),
        ("mfa_unlock", "alice", "not locked and has no failures; nothing to unlock"),
    ]:
        out = io.StringIO()
        call_command(command, name, stdout=out)
        assert expected in out.getvalue()
    assert is_logged_in(frank)  # no session was ended
    assert UserSession.objects.count() == sessions_before
    assert mailoutbox == []
    assert not SecurityEvent.objects.filter(kind__in=["admin_reset", "unlocked"]).exists()


def test_mfa_reset_and_unlock_name_unknown_users():
    with pytest.raises(CommandError, match="nobody"):
        call_command("mfa_reset", "nobody")
    with pytest.raises(CommandError, match="nobody"):
        call_command("mfa_unlock", "nobody")


def test_ring_file_keys_never_reach_the_output(django_user_model):
    make_users(django_user_model, ["alice"])
    keys("add")
    outputs = []
    for args in (["rotate"], ["add"]):
        outputs.extend(keys(*args))
    text = "".join(outputs)
    for key in crypto.load_keys():
        assert key.decode() not in text
