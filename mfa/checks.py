"""System checks: a broken key ring or a per-process rate limit speaks up before users do.

mfa.E001  the key ring does not exist
mfa.E002  the key ring cannot be read
mfa.E003  the key ring holds no key, or an entry that is not a Fernet key
mfa.E004  the key ring file can be read or written by other users
mfa.E005  the key directory can be written by other users
mfa.E006  a rate setting (MFA_*_RATE) is not a rate such as 5/m or 100/15m
mfa.E007  MFA_BASE_TEMPLATE cannot be loaded
mfa.E008  a block that MFA_BASE_BLOCKS names is not in that template (or is not a block name)
mfa.W010  the per-process in-process cache backs the rate limits of a multi-process server
mfa.W011  the admin lets staff in without two-factor authentication (production)
"""

import os
import re
import stat

from django.conf import settings as django_settings
from django.core.checks import Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.template import Context, Engine, TemplateDoesNotExist, TemplateSyntaxError
from django.template.base import Template
from django.template.loader_tags import BlockNode, ExtendsNode

from . import crypto, pages
from .conf import settings

__all__ = [
    "check_base_template",
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


def _block_names(template: Template) -> set[str] | None:
    """Return the blocks of ``template`` and of the templates it extends; None if unknowable."""
    names: set[str] = set()
    seen = set()
    while template is not None:
        names |= {node.name for node in template.nodelist.get_nodes_by_type(BlockNode)}
        extends = template.nodelist.get_nodes_by_type(ExtendsNode)
        if not extends:
            return names
        parent = extends[0].parent_name.resolve(Context())
        if isinstance(parent, Template):
            template = parent
        elif isinstance(parent, str) and parent and parent not in seen:
            seen.add(parent)
            template = template.engine.get_template(parent)
        else:
            # {% extends some_variable %}: its blocks are known only when a page renders.
            return None
    return names


@register(Tags.templates)
def check_base_template(app_configs=None, **kwargs) -> list:
    # A content block the site's base does not have renders an empty page with status 200:
    # no QR code, no form, nothing in the logs. Said here instead, at start-up.
    name = settings.BASE_TEMPLATE
    if not name:
        return []
    try:
        names = _block_names(Engine.get_default().get_template(name))
    except (TemplateDoesNotExist, TemplateSyntaxError, ImproperlyConfigured) as exc:
        return [
            Error(
                f"MFA_BASE_TEMPLATE = {name!r} cannot be loaded ({type(exc).__name__}: {exc}).",
                hint="Name a template of your site's, or remove the setting for the app's own "
                "standalone pages.",
                id="mfa.E007",
            )
        ]
    try:
        blocks = pages.base_blocks()
    except ImproperlyConfigured as exc:
        return [Error(str(exc), id="mfa.E008")]
    if names is None:
        return []
    return [
        Error(
            f"MFA_BASE_TEMPLATE {name!r} has no block {block!r} for the app's {role}.",
            hint=f"Set MFA_BASE_BLOCKS = {{{role!r}: '<the name of its {role} block>'}}"
            + (
                ", or leave 'head' out to have the links in the content."
                if role == "head"
                else ", or the app's pages render empty."
            ),
            id="mfa.E008",
        )
        for role, block in sorted(blocks.items())
        if block not in names
    ]
