"""System checks: a broken key ring or a per-process rate limit speaks up before users do.

mfa.E001  the key ring does not exist
mfa.E002  the key ring cannot be read
mfa.E003  the key ring holds no key, or an entry that is not a Fernet key
mfa.E004  the key ring file can be read or written by other users
mfa.E005  the key directory can be written by other users
mfa.E006  a rate setting (MFA_*_RATE) is not a rate such as 5/m or 100/15m
mfa.W010  the per-process in-process cache backs the rate limits of a multi-process server
mfa.W011  the admin lets staff in without two-factor authentication (production)
mfa.E011  MFA_ENROLMENT_GRACE or MFA_REAUTH_AGE is not a whole number of seconds, 0 or more
"""

import os
import re
import stat

from django.conf import settings as django_settings
from django.core.checks import Error, Tags, Warning, register

from . import crypto
from .conf import settings

__all__ = [
    "check_durations",
    "check_key_ring",
    "check_rate_limit_cache",
    "check_rates",
    "check_staff_policy",
]

LOCMEM = "django.core.cache.backends.locmem.LocMemCache"


@register(Tags.security)
def check_key_ring(app_configs=None, **kwargs) -> list:
    if os.environ.get(settings.KEYS_ENV, "").strip():
        try:
            crypto.load_keys()
        except crypto.KeyRingError as exc:
            return [Error(f"The MFA key ring is invalid: {exc}.", id="mfa.E003")]
        return []
    path = crypto.ring_path()
    hint = "Create it with: python manage.py mfa_keys generate"
    if not path.exists():
        return [
            Error(
                f"The MFA key ring {path} does not exist: no TOTP secret can be stored or read.",
                hint=f"On a first start: python manage.py mfa_keys generate (or set "
                f"{settings.KEYS_ENV}). If users have enrolled already, the ring was lost: "
                "restore it from its backup.",
                id="mfa.E001",
            )
        ]
    errors = []
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        with path.open("rb"):
            pass
    except OSError as exc:
        return [Error(f"The MFA key ring {path} cannot be read ({exc.strerror}).", id="mfa.E002")]
    try:
        crypto.load_keys()
    except crypto.KeyRingError as exc:
        errors.append(Error(f"The MFA key ring is invalid: {exc}.", hint=hint, id="mfa.E003"))
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        errors.append(
            Error(
                f"The MFA key ring {path} is accessible to other users (mode {mode:04o}).",
                hint=f"chmod 600 {path}",
                id="mfa.E004",
            )
        )
    directory = path.parent
    if stat.S_IMODE(directory.stat().st_mode) & (stat.S_IWGRP | stat.S_IWOTH):
        errors.append(
            Error(
                f"The MFA key directory {directory} can be written by other users, who could "
                "replace the key ring.",
                hint=f"chmod 700 {directory}",
                id="mfa.E005",
            )
        )
    return errors


RATE_SETTINGS = ["CODE_RATE", "CODE_IP_RATE", "LOGIN_USER_RATE", "LOGIN_IP_RATE", "CHANGE_RATE"]
# At most four digits of period multiplier: a longer period is a typo (and beyond Redis's
# expiry times).
_RATE = re.compile(r"[1-9][0-9]*/([1-9][0-9]{0,3})?[smhd]")


@register(Tags.security)
def check_rates(app_configs=None, **kwargs) -> list:
    # throttle.check_rates fails open on errors so that a cache outage never blocks logins; a
    # malformed rate would fail open on every request, so it is refused here instead.
    errors = []
    for name in RATE_SETTINGS:
        value = getattr(settings, name)
        if not (isinstance(value, str) and _RATE.fullmatch(value)):
            errors.append(
                Error(f"MFA_{name} = {value!r} is not a rate such as '5/m'.", id="mfa.E006")
            )
    return errors


@register(Tags.security)
def check_durations(app_configs=None, **kwargs) -> list:
    # Read on every request to a view protected by mfa.decorators: a string or a float there
    # would be a server error on each protected page (or a proof that never expires).
    return [
        Error(f"MFA_{name} = {value!r} is not a whole number of seconds, 0 or more.", id="mfa.E011")
        for name in ("ENROLMENT_GRACE", "REAUTH_AGE")
        if not (type(value := getattr(settings, name)) is int and value >= 0)
    ]


@register(Tags.security, Tags.caches)
def check_rate_limit_cache(app_configs=None, **kwargs) -> list:
    name = getattr(django_settings, "RATELIMIT_USE_CACHE", "default")
    backend = django_settings.CACHES.get(name, {}).get("BACKEND", "")
    # WEB_CONCURRENCY is the worker count gunicorn (and our gunicorn.conf.py) reads. One
    # process sharing one cache is exactly what `./run` and `runserver` are: no warning then.
    try:
        processes = int(os.environ.get("WEB_CONCURRENCY", "1"))
    except ValueError:
        processes = 2
    if backend != LOCMEM or processes <= 1:
        return []
    return [
        Warning(
            "The rate limits are counted in the in-process cache, so each server process "
            "counts separately and a restart forgets them.",
            hint="Set REDIS_URL so that every process shares the counters (the database "
            "back-off holds either way).",
            id="mfa.W010",
        )
    ]


@register(Tags.security)
def check_staff_policy(app_configs=None, **kwargs) -> list:
    if settings.REQUIRE_FOR_STAFF or django_settings.DEBUG:
        return []
    return [
        Warning(
            "MFA_REQUIRE_FOR_STAFF is off: staff may use the admin with a password alone.",
            id="mfa.W011",
        )
    ]
