"""Carry second factors over from django-otp's tables (``mfa_import``; docs/import.md).

django-otp keeps TOTP keys and static (backup) tokens in plaintext; django-two-factor-auth
uses the same tables. The tables are read with raw SQL, so the import works after django-otp
has been uninstalled, as long as its tables are still there. Nothing is ever written to them.

For each user with a confirmed TOTP device there:

- the hex key becomes this app's base32 secret, encrypted under the primary key and bound to
  the user, exactly as an enrolment here stores it;
- django-otp's ``last_t`` (the time step of the last accepted code, which with t0 = 0 and a
  30 s step is this app's step) becomes ``last_used_step``: no code accepted there is
  accepted again here;
- every token of the user's confirmed static devices becomes an imported recovery code
  (``mfa.recovery``): one Argon2id hash each, one-time, on the same failure budget.

What cannot be carried is skipped and named in the report: devices with other digits, step
or t0 (this app speaks 6 digits, 30 s, from 0, like every authenticator app), keys shorter
than 128 bits (RFC 4226's minimum) or not hex, unconfirmed devices, tokens of another shape
than django-otp's own, phone devices of two-factor (not TOTP). A user who already has a second
factor here, or was imported once already (the audit trail says so), is skipped: rerunning
the import is safe, and it never brings back a factor the user turned off since.

Each user is imported in one transaction, so an interrupted run leaves every user either done
or untouched, and the next run carries on.
"""

import binascii
import logging
from base64 import b32encode
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connection, transaction

from . import crypto, flows, notify, recovery, totp
from .conf import settings
from .models import RecoveryCode, SecurityEvent, TOTPDevice, TwoFactor
from .redact import sensitive

__all__ = ["SOURCES", "Report", "SourceMissing", "run"]

logger = logging.getLogger(__name__)
Kind = SecurityEvent.Kind

# django-two-factor-auth stores its TOTP and backup tokens in django-otp's tables.
SOURCES = ("django-otp", "two-factor")
TOTP_TABLE = "otp_totp_totpdevice"
STATIC_DEVICE_TABLE = "otp_static_staticdevice"
STATIC_TOKEN_TABLE = "otp_static_statictoken"
# two-factor's SMS and voice devices: a phone number, no secret to carry.
PHONE_TABLE = "two_factor_phonedevice"
# RFC 4226 R6: a shared secret of at least 128 bits. django-otp's default is 160.
MIN_KEY_BYTES = 16


class SourceMissing(Exception):
    """The source's TOTP table does not exist in this database."""


@dataclass
class _Device:
    id: int
    user_id: Any
    name: str
    key: str = field(repr=False)  # the plaintext hex key
    step: int
    t0: int
    digits: int
    drift: int
    last_t: int
    confirmed: bool

    @property
    def label(self) -> str:
        return f"TOTP device #{self.id}"


@dataclass
class Report:
    """What an import did (or, in a dry run, would do), one line per user or device."""

    imported: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def lines(self, dry_run: bool) -> list[str]:
        verb = "Would import" if dry_run else "Imported"
        out = [f"{verb} {len(self.imported)} users, skipped {len(self.skipped)} items."]
        out += [f"  imported: {line}" for line in self.imported]
        out += [f"  skipped: {line}" for line in self.skipped]
        out += [f"  warning: {line}" for line in self.warnings]
        return out


@sensitive  # its frame and every frame below hold plaintext keys and tokens
def run(source: str, *, dry_run: bool = False, notify_users: bool = False) -> Report:
    """Import every user's TOTP device and static tokens from ``source``'s tables."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}")
    tables = set(connection.introspection.table_names())
    if TOTP_TABLE not in tables:
        raise SourceMissing(f"table {TOTP_TABLE} does not exist")
    report = Report()
    devices = _read_devices()
    tokens = _read_tokens(report) if STATIC_TOKEN_TABLE in tables else {}
    if PHONE_TABLE in tables:
        _name_phone_devices(report)
    User = get_user_model()
    users = User._default_manager.in_bulk({d.user_id for d in devices} | set(tokens))
    for user_id in sorted({d.user_id for d in devices}):
        user = users.get(user_id)
        mine = [d for d in devices if d.user_id == user_id]
        if user is None:
            report.skipped.append(f"user id {user_id}: no such user here")
            continue
        _import_user(source, user, mine, tokens.get(user_id, []), report, dry_run, notify_users)
    for user_id in sorted(tokens.keys() - {d.user_id for d in devices}):
        name = users[user_id].get_username() if user_id in users else f"user id {user_id}"
        report.skipped.append(f"{name}: static tokens but no TOTP device to attach them to")
    return report


def _q(name: str) -> str:
    return connection.ops.quote_name(name)


def _read_devices() -> list[_Device]:
    columns = ["id", "user_id", "name", "key", "step", "t0", "digits", "drift", "last_t"]
    columns.append("confirmed")
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {', '.join(_q(c) for c in columns)} FROM {_q(TOTP_TABLE)} ORDER BY {_q('id')}"
        )
        return [_Device(*row[:-1], confirmed=bool(row[-1])) for row in cursor.fetchall()]


def _read_tokens(report: Report) -> dict[Any, list[str]]:
    """Return the tokens of confirmed static devices by user; name unconfirmed devices."""
    by_user: dict[Any, list[str]] = defaultdict(list)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT d.{_q('id')}, d.{_q('user_id')}, d.{_q('confirmed')}, t.{_q('token')} "
            f"FROM {_q(STATIC_DEVICE_TABLE)} d JOIN {_q(STATIC_TOKEN_TABLE)} t "
            f"ON t.{_q('device_id')} = d.{_q('id')} ORDER BY t.{_q('id')}"
        )
        unconfirmed: set[int] = set()
        for device_id, user_id, confirmed, token in cursor.fetchall():
            if confirmed:
                by_user[user_id].append(token)
            elif device_id not in unconfirmed:
                unconfirmed.add(device_id)
                report.skipped.append(f"static device #{device_id}: unconfirmed")
    return dict(by_user)


def _name_phone_devices(report: Report) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {_q('id')}, {_q('user_id')} FROM {_q(PHONE_TABLE)}")
        for device_id, user_id in cursor.fetchall():
            report.skipped.append(
                f"phone device #{device_id} of user id {user_id}: SMS and voice are not TOTP"
            )


@sensitive
def _secret_of(device: _Device) -> tuple[str | None, str]:
    """Return the device's base32 secret, or None and why it cannot be carried."""
    if device.digits != totp.DIGITS or device.step != totp.STEP or device.t0 != 0:
        return None, (
            f"digits={device.digits}, step={device.step}, t0={device.t0} "
            f"(only {totp.DIGITS} digits, {totp.STEP} s, t0=0 are carried)"
        )
    try:
        key = binascii.unhexlify(device.key.strip())
    except (binascii.Error, ValueError):
        return None, "the key is not hex"
    if len(key) < MIN_KEY_BYTES:
        return None, f"the key has {len(key) * 8} bits, fewer than {MIN_KEY_BYTES * 8}"
    # Any length of at least 128 bits is kept as it is: pyotp reads base32 of any length,
    # and changing the key would break the user's authenticator.
    return b32encode(key).decode("ascii").rstrip("="), ""


def _choose(user_name: str, devices: list[_Device], report: Report) -> tuple[_Device, str] | None:
    """Return the device to carry and its secret; name every other device of the user."""
    usable: list[tuple[_Device, str]] = []
    for device in devices:
        if not device.confirmed:
            report.skipped.append(f"{user_name}: {device.label}: unconfirmed")
            continue
        secret, why = _secret_of(device)
        if secret is None:
            report.skipped.append(f"{user_name}: {device.label}: {why}")
        else:
            usable.append((device, secret))
    if not usable:
        return None
    # The most recently used one (the highest last_t): the authenticator the user really
    # has at hand. Among never-used devices, the oldest.
    chosen = max(usable, key=lambda pair: (pair[0].last_t, -pair[0].id))
    for device, _secret in usable:
        if device is not chosen[0]:
            report.skipped.append(
                f"{user_name}: {device.label}: one device per user is carried, "
                f"{chosen[0].label} was used more recently"
            )
    return chosen


@sensitive
def _codes_for(user_name: str, tokens: Iterable[str], report: Report) -> list[RecoveryCode]:
    """Hash the user's static tokens as imported recovery codes; count what cannot be."""
    rows: dict[str, RecoveryCode] = {}
    seen: set[str] = set()
    bad = 0
    for raw in tokens:
        token = recovery.normalize_imported(raw)
        if token is None:
            bad += 1
            continue
        if token in seen:
            continue  # the same token twice (two devices): one code
        seen.add(token)
        selector, code_hash = recovery.hash_imported(token)
        if selector in rows:
            bad += 1  # two tokens share a selector (one chance in 2**28 per pair)
            continue
        rows[selector] = RecoveryCode(selector=selector, code_hash=code_hash)
    if bad:
        # How many, never which: the tokens are secrets.
        report.skipped.append(
            f"{user_name}: {bad} static tokens not of django-otp's shape "
            "(8 letters and digits), not carried"
        )
    return list(rows.values())


def _already_here(user: Any) -> str:
    if flows.has_2fa(user):
        return "already has two-factor authentication here"
    if SecurityEvent.objects.filter(user=user, kind=Kind.IMPORTED).exists():
        # Imported once, then turned off or reset here: importing the old secret again would
        # bring back the factor the user (or an administrator) removed.
        return "imported before (audit trail); not imported again"
    return ""


def _import_user(
    source: str,
    user: Any,
    devices: list[_Device],
    tokens: list[str],
    report: Report,
    dry_run: bool,
    notify_users: bool,
) -> None:
    name = user.get_username()
    if why := _already_here(user):
        report.skipped.append(f"{name}: {why}")
        return
    chosen = _choose(name, devices, report)
    if chosen is None:
        report.skipped.append(f"{name}: no TOTP device that can be carried")
        return
    device, secret = chosen
    codes = _codes_for(name, tokens, report)
    if abs(device.drift) > settings.VALID_WINDOW:
        # django-otp followed the device's clock; this app accepts only VALID_WINDOW steps
        # either side of the server's, so codes from that device may be refused until its
        # clock is set right.
        report.warnings.append(
            f"{name}: the authenticator's clock was {device.drift} steps off; its codes may be "
            "refused until the phone's time is set automatically"
        )
    line = f"{name}: {device.label}, {len(codes)} backup codes"
    if dry_run:
        report.imported.append(line)
        return
    if not _save(source, user, device, secret, codes):
        report.skipped.append(f"{name}: enrolled here during the import")
        return
    report.imported.append(line)
    if notify_users:
        notify.send(user, Kind.IMPORTED)


@sensitive
def _save(source: str, user: Any, device: _Device, secret: str, codes: list[RecoveryCode]) -> bool:
    with transaction.atomic():
        # The TwoFactor row first, as every path that turns 2FA on makes it; has_2fa() above
        # said there was none, so only a concurrent enrolment can have made one meanwhile.
        _two_factor, turned_on = TwoFactor.objects.get_or_create(user=user)
        _device, created = TOTPDevice.objects.get_or_create(
            user=user,
            defaults={
                "encrypted_secret": crypto.encrypt_secret(secret, user.pk),
                "last_used_step": device.last_t,
            },
        )
        if not (created and turned_on):
            transaction.set_rollback(True)
            return False
        for code in codes:
            code.user = user
        RecoveryCode.objects.bulk_create(codes)
        flows.record(None, user, Kind.IMPORTED, detail=f"from {source}: {len(codes)} backup codes")
    logger.info("imported the second factor of user %s from %s", user.pk, source)
    return True
