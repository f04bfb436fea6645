"""mfa_import: django-otp's TOTP devices and static tokens, carried over and still working.

The source tables are made by django-otp's own migrations and filled through its own models;
codes come from its own TOTP (``django_otp.oath``). The import itself, and every login after
it, runs with django-otp no longer installed (the tables still there), as on a site that has
switched: the import reads the tables with raw SQL, not through django-otp.
"""

import io
from binascii import unhexlify

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings

from mfa import crypto, flows, importer, recovery, totp
from mfa.models import RecoveryCode, SecurityEvent, TOTPDevice, TwoFactor
from tests.conftest import PASSWORD, enrol, is_logged_in, login_password

OTP_APPS = ["django_otp", "django_otp.plugins.otp_totp", "django_otp.plugins.otp_static"]
VERIFY_URL = "/accounts/2fa/verify/"
RECOVERY_URL = "/accounts/2fa/recovery/"
Kind = SecurityEvent.Kind

# transactional_db: django-otp's migrations create (and at the end drop) its tables.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def otp(transactional_db):
    """django-otp installed, its tables migrated; yields its models' module namespace."""
    base_apps = list(django_settings.INSTALLED_APPS)
    with override_settings(INSTALLED_APPS=[*base_apps, *OTP_APPS]):
        for app in ("otp_totp", "otp_static"):
            call_command("migrate", app, verbosity=0)
        from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
        from django_otp.plugins.otp_totp.models import TOTPDevice as OtpTOTPDevice

        class Models:
            TOTPDevice = OtpTOTPDevice
            static_device = StaticDevice
            static_token = StaticToken
            apps = base_apps

        yield Models
        for app in ("otp_totp", "otp_static"):
            call_command("migrate", app, "zero", verbosity=0)


def uninstalled(otp):
    """The site after the switch: django-otp gone from INSTALLED_APPS, its tables kept."""
    return override_settings(INSTALLED_APPS=otp.apps)


def run_import(otp, *args: str) -> str:
    out = io.StringIO()
    with uninstalled(otp):
        call_command("mfa_import", "--from", "django-otp", *args, stdout=out)
    return out.getvalue()


def otp_code(device, at: float, offset_steps: int = 0) -> str:
    """The code django-otp's own TOTP computes for ``device`` at ``at``."""
    from django_otp.oath import TOTP

    calc = TOTP(device.bin_key, device.step, device.t0, device.digits)
    calc.time = at + offset_steps * device.step
    return f"{calc.token():0{device.digits}d}"


def make_user(name: str):
    return get_user_model().objects.create_user(name, f"{name}@example.com", PASSWORD)


def otp_device(otp, user, **fields):
    """A TOTP device as django-otp makes it: a random 20-byte key by default, confirmed."""
    return otp.TOTPDevice.objects.create(user=user, name=fields.pop("name", "phone"), **fields)


def backup_tokens(otp, user, count: int = 10, confirmed: bool = True) -> list[str]:
    """django-two-factor's backup tokens: a StaticDevice with django-otp's random tokens."""
    device = otp.static_device.objects.create(user=user, name="backup", confirmed=confirmed)
    tokens = [otp.static_token.random_token() for _ in range(count)]
    for token in tokens:
        device.token_set.create(token=token)
    return tokens


@pytest.fixture
def migrated(otp, clock):
    """alice, who used django-otp a moment ago (its last accepted code) and has backup tokens."""
    alice = make_user("alice")
    device = otp_device(otp, alice)
    last = otp_code(device, totp.now())
    assert device.verify_token(last)  # django-otp accepted it: last_t is this step now
    device.refresh_from_db()
    tokens = backup_tokens(otp, alice)
    return alice, device, last, tokens


def login_with_code(client, code: str, url: str = VERIFY_URL):
    assert login_password(client).status_code == 302
    return client.post(url, {"code": code})


# --- The happy path: the same authenticator, the same backup codes ----------------------------


def test_next_code_of_the_same_authenticator_logs_in(client, otp, migrated, clock):
    alice, device, _last, _tokens = migrated
    run_import(otp)
    clock.shift(totp.STEP)
    with uninstalled(otp):
        response = login_with_code(client, otp_code(device, totp.now()))
        assert response.status_code == 302
        assert is_logged_in(client)


def test_secret_is_stored_encrypted_and_bound_to_the_user(otp, migrated):
    alice, device, _last, _tokens = migrated
    run_import(otp)
    row = TOTPDevice.objects.get(user=alice)
    assert device.key not in row.encrypted_secret
    secret = crypto.decrypt_secret(row.encrypted_secret, alice.pk)
    assert unhexlify(device.key) == __import__("base64").b32decode(secret)
    bob = make_user("bob")
    with pytest.raises(crypto.UndecryptableSecret):
        crypto.decrypt_secret(row.encrypted_secret, bob.pk)


def test_code_last_accepted_by_django_otp_is_not_accepted_again(client, otp, migrated):
    alice, device, last, _tokens = migrated
    run_import(otp)
    assert TOTPDevice.objects.get(user=alice).last_used_step == device.last_t
    with uninstalled(otp):
        response = login_with_code(client, last)
        assert b"already been used" in response.content
        assert not is_logged_in(client)


def test_imported_backup_token_logs_in_once(client, otp, migrated):
    alice, _device, _last, tokens = migrated
    run_import(otp)
    with uninstalled(otp):
        # As the user may type it: upper case, with a space.
        typed = f"{tokens[3][:4].upper()} {tokens[3][4:]}"
        assert login_with_code(client, typed, RECOVERY_URL).status_code == 302
        assert is_logged_in(client)
        client.logout()
        again = login_with_code(client, tokens[3], RECOVERY_URL)
        assert "already been used" in again.text
        assert not is_logged_in(client)
    assert SecurityEvent.objects.filter(user=alice, kind=Kind.RECOVERY_USED).count() == 1


def test_imported_tokens_are_stored_as_argon2id_hashes_only(otp, migrated):
    alice, _device, _last, tokens = migrated
    run_import(otp)
    rows = list(RecoveryCode.objects.filter(user=alice))
    assert len(rows) == len(tokens)
    for row in rows:
        assert row.code_hash.startswith("$argon2id$")
        assert row.selector.startswith(recovery.IMPORTED_PREFIX)
        assert not any(token in row.selector + row.code_hash for token in tokens)


def test_imported_selector_is_keyed_with_the_secret_key(otp, migrated, settings):
    # Unkeyed, the selector of a 40-bit token would be a fast oracle for it: anyone with the
    # database could search 2**40 tokens without running Argon2 once.
    _alice, _device, _last, tokens = migrated
    selector = recovery.parse(tokens[0]).selector
    settings.SECRET_KEY = "another-secret-key-" + "y" * 40
    assert recovery.parse(tokens[0]).selector != selector


def test_imported_tokens_survive_a_secret_key_rotation(client, otp, migrated, settings):
    _alice, _device, _last, tokens = migrated
    run_import(otp)
    old = settings.SECRET_KEY
    settings.SECRET_KEY = "the-new-secret-key-" + "z" * 40
    settings.SECRET_KEY_FALLBACKS = [old]
    with uninstalled(otp):
        assert login_with_code(client, tokens[0], RECOVERY_URL).status_code == 302


def test_an_imported_token_turns_two_factor_off_once_with_the_password(client, otp, migrated):
    # The re-authentication forms take either kind of code (flows.verify_any_code).
    alice, device, _last, tokens = migrated
    run_import(otp)
    with uninstalled(otp):
        clock_code = otp_code(device, totp.now(), offset_steps=1)
        assert login_with_code(client, clock_code).status_code == 302
        form = {"password": PASSWORD, "code": tokens[5]}
        assert client.post("/accounts/2fa/disable/", form).status_code == 302
    assert not TOTPDevice.objects.filter(user=alice).exists()


def test_a_wrong_token_costs_one_failure_like_any_code(client, otp, migrated):
    alice, _device, _last, tokens = migrated
    run_import(otp)
    with uninstalled(otp):
        wrong = "a" * 8 if "a" * 8 not in tokens else "b" * 8
        response = login_with_code(client, wrong, RECOVERY_URL)
        assert "is not right" in response.text
    assert TwoFactor.objects.get(user=alice).failure_count == 1


def test_parse_reads_eight_characters_as_an_imported_code_only():
    parsed = recovery.parse("ABCD-2345")
    assert parsed is not None and parsed.verifier == "abcd2345"
    assert parsed.selector.startswith(recovery.IMPORTED_PREFIX)
    # A native code with a character missing is still a typing error, not a counted guess.
    assert recovery.parse("ABCD-EFGH-JKMN-PQR") is None
    assert recovery.parse("abcd234") is None
    assert recovery.parse("abcd_234") is None


# --- Idempotent, resumable, read-only, audited -----------------------------------------------


def test_rerun_imports_nobody_twice(otp, migrated):
    alice, _device, _last, _tokens = migrated
    run_import(otp)
    first = TOTPDevice.objects.get(user=alice).encrypted_secret
    out = run_import(otp)
    assert "alice: already has two-factor authentication here" in out
    assert TOTPDevice.objects.get(user=alice).encrypted_secret == first
    assert SecurityEvent.objects.filter(user=alice, kind=Kind.IMPORTED).count() == 1


def test_a_factor_turned_off_after_the_import_is_not_brought_back(otp, migrated):
    alice, _device, _last, _tokens = migrated
    run_import(otp)
    flows.reset(alice, actor="test")
    out = run_import(otp)
    assert "alice: imported before" in out
    assert not TOTPDevice.objects.filter(user=alice).exists()


def test_an_interrupted_run_leaves_each_user_done_or_untouched(otp, migrated, monkeypatch):
    alice, _device, _last, _tokens = migrated
    bob = make_user("bob")
    otp_device(otp, bob)
    backup_tokens(otp, bob)
    real = flows.record

    def crash_for_bob(request, user, kind, detail=""):
        if user.pk == bob.pk:
            raise RuntimeError("power cut")
        return real(request, user, kind, detail)

    monkeypatch.setattr(flows, "record", crash_for_bob)
    with pytest.raises(RuntimeError):
        run_import(otp)
    # alice (first by id) is done; bob's device and codes rolled back with his event.
    assert TOTPDevice.objects.filter(user=alice).exists()
    assert not TOTPDevice.objects.filter(user=bob).exists()
    assert not RecoveryCode.objects.filter(user=bob).exists()
    monkeypatch.setattr(flows, "record", real)
    out = run_import(otp)
    assert "imported: bob" in out and "alice: already has" in out


def test_dry_run_writes_nothing_and_reports_the_same(otp, migrated):
    alice, _device, _last, _tokens = migrated
    dry = run_import(otp, "--dry-run")
    assert not TOTPDevice.objects.exists()
    assert not RecoveryCode.objects.exists()
    assert not SecurityEvent.objects.filter(kind=Kind.IMPORTED).exists()
    real = run_import(otp)
    assert dry.replace("Would import", "Imported") == real


def test_source_rows_are_never_changed(otp, migrated):
    alice, device, _last, tokens = migrated
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM otp_totp_totpdevice ORDER BY id")
        devices_before = cursor.fetchall()
        cursor.execute("SELECT * FROM otp_static_statictoken ORDER BY id")
        tokens_before = cursor.fetchall()
    run_import(otp)
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM otp_totp_totpdevice ORDER BY id")
        assert cursor.fetchall() == devices_before
        cursor.execute("SELECT * FROM otp_static_statictoken ORDER BY id")
        assert cursor.fetchall() == tokens_before


def test_each_imported_user_is_audited_and_emailed_only_on_request(otp, migrated):
    alice, _device, _last, _tokens = migrated
    run_import(otp)
    event = SecurityEvent.objects.get(user=alice, kind=Kind.IMPORTED)
    assert event.detail == "from django-otp: 10 backup codes"
    assert mail.outbox == []
    bob = make_user("bob")
    otp_device(otp, bob)
    run_import(otp, "--notify")
    assert [m.to for m in mail.outbox] == [["bob@example.com"]]


def test_the_report_never_shows_a_secret_or_a_token(otp, migrated):
    _alice, device, _last, tokens = migrated
    out = run_import(otp, "--dry-run") + run_import(otp)
    assert device.key not in out
    assert not any(token in out for token in tokens)


# --- What is skipped, and named ------------------------------------------------------------


def test_what_cannot_be_carried_is_skipped_and_named(otp, clock):
    odd = {
        "eight": {"digits": 8},
        "slow": {"step": 60},
        "late": {"t0": 1_000},
        "short": {"key": "00" * 10},
        "pending": {"confirmed": False},
    }
    for name, fields in odd.items():
        otp_device(otp, make_user(name), **fields)
    out = run_import(otp)
    assert "eight: TOTP device #" in out and "digits=8" in out
    assert "step=60" in out and "t0=1000" in out
    assert "short: TOTP device #" in out and "80 bits" in out
    assert "pending: TOTP device #" in out and "unconfirmed" in out
    for name in odd:
        assert f"skipped: {name}: no TOTP device that can be carried" in out
    assert not TOTPDevice.objects.exists()


def test_the_most_recently_used_of_several_devices_is_carried(client, otp, clock):
    alice = make_user("alice")
    old = otp_device(otp, alice, name="old phone", last_t=totp.step_of(totp.now()) - 1000)
    new = otp_device(otp, alice, name="new phone", last_t=totp.step_of(totp.now()) - 10)
    out = run_import(otp)
    assert f"imported: alice: TOTP device #{new.id}" in out
    assert f"alice: TOTP device #{old.id}: one device per user is carried" in out
    with uninstalled(otp):
        assert login_with_code(client, otp_code(new, totp.now())).status_code == 302


def test_a_user_enrolled_here_already_keeps_their_factor(otp, clock):
    alice = make_user("alice")
    here = enrol(alice)
    otp_device(otp, alice)
    out = run_import(otp)
    assert "alice: already has two-factor authentication here" in out
    assert crypto.decrypt_secret(here.device.encrypted_secret, alice.pk) == here.secret


def test_tokens_of_another_shape_and_unconfirmed_static_devices_are_named(otp, clock):
    alice = make_user("alice")
    otp_device(otp, alice)
    kept = backup_tokens(otp, alice, count=2)
    device = otp.static_device.objects.get(user=alice)
    device.token_set.create(token="123")  # set by hand in django-otp's admin
    unconfirmed = backup_tokens(otp, alice, count=1, confirmed=False)
    out = run_import(otp)
    assert "alice: 1 static tokens not of django-otp's shape" in out
    assert "unconfirmed" in out
    assert RecoveryCode.objects.filter(user=alice).count() == len(kept)
    assert recovery.parse(unconfirmed[0]).selector not in set(
        RecoveryCode.objects.values_list("selector", flat=True)
    )


def test_one_token_on_two_static_devices_is_one_code(otp, clock):
    alice = make_user("alice")
    otp_device(otp, alice)
    token = backup_tokens(otp, alice, count=1)[0]
    otp.static_device.objects.create(user=alice, name="second").token_set.create(token=token)
    out = run_import(otp)
    assert "imported: alice: TOTP device #" in out and "1 backup codes" in out
    assert RecoveryCode.objects.filter(user=alice).count() == 1


def test_backup_tokens_without_a_totp_device_are_named(otp, clock):
    backup_tokens(otp, make_user("alice"))
    out = run_import(otp)
    assert "alice: static tokens but no TOTP device to attach them to" in out
    assert not RecoveryCode.objects.exists()


def test_a_large_drift_is_imported_with_a_warning(otp, clock):
    otp_device(otp, make_user("alice"), drift=3)
    out = run_import(otp)
    assert "imported: alice" in out
    assert "warning: alice: the authenticator's clock was 3 steps off" in out


def test_phone_devices_of_two_factor_are_named(otp, clock):
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE two_factor_phonedevice (id integer primary key, user_id integer)"
        )
        cursor.execute("INSERT INTO two_factor_phonedevice VALUES (7, 1)")
    try:
        out = io.StringIO()
        with uninstalled(otp):
            call_command("mfa_import", "--from", "two-factor", stdout=out)
        assert "phone device #7 of user id 1: SMS and voice are not TOTP" in out.getvalue()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE two_factor_phonedevice")


def test_no_source_table_is_a_clear_error(transactional_db):
    with pytest.raises(CommandError, match="otp_totp_totpdevice does not exist"):
        call_command("mfa_import", "--from", "django-otp", stdout=io.StringIO())


def test_the_importer_names_its_sources():
    assert importer.SOURCES == ("django-otp", "two-factor")


def test_an_error_during_the_import_reports_no_key_and_no_token(otp, migrated, settings):
    from base64 import b32encode

    from django.views.debug import ExceptionReporter

    _alice, device, _last, tokens = migrated
    settings.DEBUG = False  # the filter hides nothing while DEBUG is on (Django's choice)

    def failing_save(*args, **kwargs):
        raise RuntimeError("forced")

    original = importer._save
    importer._save = failing_save
    try:
        with uninstalled(otp), pytest.raises(RuntimeError) as raised:
            importer.run("django-otp")
    finally:
        importer._save = original
    # From the importer down: this test's own frame holds the key and tokens to look for.
    exc_info = (raised.type, raised.value, raised.tb.tb_next)
    secret = b32encode(unhexlify(device.key)).decode().rstrip("=")
    for is_email in (False, True):
        reporter = ExceptionReporter(None, *exc_info, is_email=is_email)
        for text in (reporter.get_traceback_text(), reporter.get_traceback_html()):
            assert "in run" in text  # the importer's frames are in the report...
            for needle in (device.key, secret, *tokens):  # ...with none of their secrets
                assert needle not in text
