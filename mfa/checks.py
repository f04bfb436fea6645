"""System checks: a broken key ring or a per-process rate limit speaks up before users do.

mfa.E001  the key ring does not exist
mfa.E002  the key ring cannot be read
mfa.E003  the key ring holds no key, or an entry that is not a Fernet key
mfa.E004  the key ring file can be read or written by other users
mfa.E005  the key directory can be written by other users
mfa.E006  a rate setting (MFA_*_RATE) is not a rate such as 5/m or 100/15m
mfa.E007  MFA_BASE_TEMPLATE cannot be loaded
mfa.E008  a block that MFA_BASE_BLOCKS names is not in that template (or is not a block name)
mfa.E009  LOGIN_URL or the URL named "login" leads to a login view that is not the app's
mfa.E010  the key ring's directory is inside a git work tree, and git does not ignore the ring
mfa.E011  MFA_ENROLMENT_GRACE, MFA_REAUTH_AGE or MFA_REMEMBER_DAYS is not a whole number, 0 or more
mfa.E012  the WebAuthn RP ID is not a host of ALLOWED_HOSTS (nor a parent domain of one)
mfa.E013  a WebAuthn origin is not https (http only for localhost) or not on the RP ID
mfa.E014  MFA_WEBAUTHN_USER_VERIFICATION or MFA_WEBAUTHN_CHALLENGE_TIMEOUT is not valid
mfa.W001  E001, E002 or E003 while a command that needs no key runs (migrate, test, ...)
mfa.W010  the per-process in-process cache backs the rate limits of a multi-process server
mfa.W011  the admin lets staff in without two-factor authentication (production)
mfa.W012  LOGIN_REDIRECT_URL leads to no page of this site
mfa.W013  the key ring is inside a git work tree, and whether git ignores it cannot be told
mfa.W014  no Content-Security-Policy is configured (check --deploy only)

docs/settings.md lists them with what to do about each.
"""

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import global_settings
from django.conf import settings as django_settings
from django.core.checks import Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand
from django.shortcuts import resolve_url
from django.template import Context, Engine, TemplateDoesNotExist, TemplateSyntaxError
from django.template.base import Template
from django.template.loader_tags import BlockNode, ExtendsNode
from django.urls import NoReverseMatch, Resolver404, resolve, reverse

from . import conf, crypto, pages
from .conf import settings

__all__ = [
    "STRICT_COMMANDS",
    "check_base_template",
    "check_content_security_policy",
    "check_durations",
    "check_key_ring",
    "check_key_ring_not_in_git",
    "check_login_redirect",
    "check_login_url",
    "check_rate_limit_cache",
    "check_rates",
    "check_staff_policy",
    "check_webauthn",
    "running_command",
]

LOCMEM = "django.core.cache.backends.locmem.LocMemCache"


# The commands for which a missing or broken ring is an error: they serve requests, or they
# are how a deploy pipeline asks whether the site may serve (`check`, `check --deploy`).
# mfa_keys runs no checks: its subcommands that need a ring refuse on their own. Every other
# command (migrate, makemigrations, test, shell, collectstatic, ...) reads no key, so a fresh
# clone or a CI job without a ring gets mfa.W001 and runs. Checks run outside any command
# (a WSGI server's start-up hook such as gunicorn.conf.py's, a direct run_checks()) are strict.
STRICT_COMMANDS = frozenset({"check", "runserver", "mfa_keys"})
_NEEDS_A_RING = {"mfa.E001", "mfa.E002", "mfa.E003"}


def running_command() -> str | None:
    """Return the name of the management command whose checks are running, if any.

    Found on the call stack rather than in sys.argv, so that call_command("migrate") and
    `manage.py migrate` are told apart from pytest or a server: the innermost frame whose
    ``self`` is a BaseCommand names the command (its module is management/commands/<name>).
    """
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, BaseCommand):
            return type(candidate).__module__.rpartition(".")[2]
        frame = frame.f_back
    return None


@register(Tags.security)
def check_key_ring(app_configs=None, **kwargs) -> list:
    found = _key_ring_problems()
    command = running_command()
    if command is None or command in STRICT_COMMANDS:
        return found
    return [_as_warning(message) if message.id in _NEEDS_A_RING else message for message in found]


def _as_warning(error: Error) -> Warning:
    return Warning(
        error.msg,
        hint=f"{error.hint + ' ' if error.hint else ''}(This is error {error.id} for "
        f"{', '.join(sorted(STRICT_COMMANDS))} and the server's start-up checks.)",
        id="mfa.W001",
    )


def _key_ring_problems() -> list:
    if os.environ.get(settings.KEYS_ENV, "").strip():
        try:
            crypto.load_keys()
        except crypto.KeyRingError as exc:
            return [Error(f"The MFA key ring is invalid: {exc}.", id="mfa.E003")]
        return []
    try:
        path = crypto.ring_path()
    except crypto.KeyRingError as exc:
        return [Error(f"The MFA key ring has no place: {exc}", id="mfa.E001")]
    hint = "Create it with: python manage.py mfa_keys generate"
    if not path.exists():
        return [
            Error(
                f"The MFA key ring {path} does not exist: no TOTP secret can be stored or read.",
                hint=f"On a first start: python manage.py mfa_keys generate (or set the "
                f"environment variable {settings.KEYS_ENV}), with MFA_KEYS_DIR naming a "
                "directory outside the repository. If users have enrolled already, the ring "
                "was lost or MFA_KEYS_DIR moved: restore it from its backup.",
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


@register(Tags.security)
def check_key_ring_not_in_git(app_configs=None, **kwargs) -> list:
    # A ring inside a work tree is one `git add -A` away from the repository, and from every
    # clone, fork and CI log of it. Ignored there (the demo's keys/.gitignore) is acceptable.
    if os.environ.get(settings.KEYS_ENV, "").strip():
        return []  # no ring file
    try:
        path = crypto.ring_path()
    except crypto.KeyRingError:
        return []  # E001 says so
    path = Path(os.path.abspath(path))
    top = _work_tree(path.parent)
    if top is None:
        return []
    git = shutil.which("git")
    if git is None:
        return [_cannot_tell(path, top, "git is not installed to ask whether it ignores it")]
    # Without GIT_DIR and friends from our own environment (a git hook, a CI runner): the
    # question is about the work tree found on disk.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    try:
        result = subprocess.run(
            [git, "-C", str(top), "check-ignore", "-q", str(path)],
            env=env,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return [_cannot_tell(path, top, "git could not be run")]
    if result.returncode == 0:
        return []
    if result.returncode == 1:  # not ignored, or tracked already (tracked files never are)
        return [
            Error(
                f"The MFA key ring {path} is inside the git work tree {top}, which does not "
                "ignore it: a `git add -A` would commit every user's TOTP key.",
                hint="Set MFA_KEYS_DIR to a directory outside the repository (or leave it "
                "unset for the per-user default), or ignore the file in .gitignore. If it "
                "was committed, the keys are compromised: add a new key and rotate.",
                id="mfa.E010",
            )
        ]
    return [_cannot_tell(path, top, "git check-ignore failed")]


def _work_tree(directory: Path) -> Path | None:
    """Return the nearest directory at or above ``directory`` holding ``.git`` (file or dir)."""
    for candidate in (directory, *directory.parents):
        if (candidate / ".git").exists():
            return candidate
    return None


def _cannot_tell(path: Path, top: Path, why: str) -> Warning:
    return Warning(
        f"The MFA key ring {path} is inside the git work tree {top}; {why}.",
        hint="Make sure git ignores it (git check-ignore -v), or set MFA_KEYS_DIR to a "
        "directory outside the repository.",
        id="mfa.W013",
    )


RATE_SETTINGS = [
    "CODE_RATE",
    "CODE_IP_RATE",
    "WEBAUTHN_OPTIONS_RATE",
    "WEBAUTHN_OPTIONS_IP_RATE",
    "LOGIN_USER_RATE",
    "LOGIN_IP_RATE",
    "CHANGE_RATE",
]
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
    # MFA_REMEMBER_DAYS likewise on every code step (days, not seconds).
    units = {"ENROLMENT_GRACE": "seconds", "REAUTH_AGE": "seconds", "REMEMBER_DAYS": "days"}
    return [
        Error(f"MFA_{name} = {value!r} is not a whole number of {unit}, 0 or more.", id="mfa.E011")
        for name, unit in units.items()
        if not (type(value := getattr(settings, name)) is int and value >= 0)
    ]


@register(Tags.security)
def check_webauthn(app_configs=None, **kwargs) -> list:
    # A key registered under one RP ID never signs for another: an RP ID the site is not
    # served under makes every key ceremony fail, and an origin that is plain http, or on
    # another domain, would accept assertions made on a page an attacker may control.
    from .webauthn import ceremonies

    rp_id = ceremonies.rp_id().lower()
    errors = []
    if not any(_host_within(host, rp_id) for host in _allowed_hosts()):
        errors.append(
            Error(
                f"The WebAuthn RP ID {rp_id!r} matches no host of ALLOWED_HOSTS.",
                hint="Set MFA_WEBAUTHN_RP_ID to this site's domain (or a parent domain of it).",
                id="mfa.E012",
            )
        )
    for origin in ceremonies.origins():
        problem = _origin_problem(origin, rp_id)
        if problem:
            errors.append(Error(f"MFA_WEBAUTHN_ORIGINS: {origin!r} {problem}.", id="mfa.E013"))
    timeout = settings.WEBAUTHN_CHALLENGE_TIMEOUT
    if settings.WEBAUTHN_USER_VERIFICATION not in ("required", "preferred", "discouraged"):
        errors.append(
            Error(
                "MFA_WEBAUTHN_USER_VERIFICATION must be 'required', 'preferred' or 'discouraged'.",
                id="mfa.E014",
            )
        )
    if not (type(timeout) is int and timeout > 0):
        errors.append(
            Error(
                "MFA_WEBAUTHN_CHALLENGE_TIMEOUT must be a whole number of seconds.", id="mfa.E014"
            )
        )
    return errors


def _allowed_hosts() -> list[str]:
    hosts = list(django_settings.ALLOWED_HOSTS)
    if django_settings.DEBUG and not hosts:
        hosts = ["localhost", "127.0.0.1", "[::1]"]  # what Django itself allows then
    return [h.lower() for h in hosts]


def _host_within(host: str, rp_id: str) -> bool:
    """Whether requests for ``host`` (an ALLOWED_HOSTS entry) may use the RP ID."""
    if host == "*":
        return True
    host = host.lstrip(".")  # ".example.com": the domain and its subdomains
    return host == rp_id or host.endswith("." + rp_id)


def _origin_problem(origin: str, rp_id: str) -> str:
    parts = urlsplit(origin)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("https", "http") or not host or parts.path not in ("", "/"):
        return "is not an origin such as 'https://example.com'"
    if parts.scheme == "http" and host != "localhost":
        return "is not https (plain http is allowed for localhost only)"
    if not (host == rp_id or host.endswith("." + rp_id)):
        return f"is not on the RP ID {rp_id!r} or a subdomain of it"
    return ""


@register(Tags.security, Tags.caches)
def check_rate_limit_cache(app_configs=None, **kwargs) -> list:
    name = getattr(django_settings, "RATELIMIT_USE_CACHE", "default")
    backend = django_settings.CACHES.get(name, {}).get("BACKEND", "")
    # WEB_CONCURRENCY is the worker count gunicorn reads; the demo's gunicorn.conf.py sets it
    # to the count it really runs, and runs these checks in the master before forking. Unset,
    # it is one process sharing one cache, which is what `./run` and `runserver` are: no
    # warning then.
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
            hint="Point RATELIMIT_USE_CACHE (default: the 'default' entry of CACHES) at a "
            "cache that every process shares, such as django.core.cache.backends.redis."
            "RedisCache; the database back-off holds either way.",
            id="mfa.W010",
        )
    ]


@register(Tags.security, Tags.urls)
def check_login_url(app_configs=None, **kwargs) -> list:
    # Django's LoginView in front of the app's (django.contrib.auth.urls mounted before
    # mfa.urls) logs a 2FA user in with a password alone; the middleware then ends that
    # session, and the user is sent back to the same page for ever.
    from . import views

    errors = []
    url = resolve_url(django_settings.LOGIN_URL)
    if "://" not in url and not url.startswith("//"):  # a login on another host: not ours
        view = _view_of(url)
        if view is not views.login_view:
            errors.append(
                Error(
                    f"LOGIN_URL ({django_settings.LOGIN_URL!r}, {url}) leads to "
                    f"{_name(view)}, not to mfa.views.login_view: users with two-factor "
                    "authentication could never log in.",
                    hint='Set LOGIN_URL = "mfa:login", and include("mfa.urls") before '
                    'include("django.contrib.auth.urls") when both share a prefix.',
                    id="mfa.E009",
                )
            )
    try:
        stock = reverse("login")
    except NoReverseMatch:
        return errors
    view = _view_of(stock)
    if view is not views.login_view and not (errors and stock == url):  # said once is enough
        errors.append(
            Error(
                f'The URL named "login" ({stock}) leads to {_name(view)}, not to '
                "mfa.views.login_view: a user with two-factor authentication who logs in "
                "there is sent back to the login page.",
                hint='Mount path("accounts/", include("mfa.urls")) before '
                'path("accounts/", include("django.contrib.auth.urls")), so that the app\'s '
                "login/ and logout/ win and password change and reset still work.",
                id="mfa.E009",
            )
        )
    return errors


def _view_of(url: str):
    try:
        return resolve(url.split("?", 1)[0]).func
    except Resolver404:
        return None


def _name(view) -> str:
    if view is None:
        return "no view"
    view = getattr(view, "view_class", view)
    return f"{view.__module__}.{view.__qualname__}"


@register(Tags.urls)
def check_login_redirect(app_configs=None, **kwargs) -> list:
    value = django_settings.LOGIN_REDIRECT_URL
    try:
        url = resolve_url(value)
    except NoReverseMatch:  # a bare name that reverses to nothing
        url = ""
    if conf.serves(url):
        return []
    if value == global_settings.LOGIN_REDIRECT_URL:
        return [
            Warning(
                f"LOGIN_REDIRECT_URL is Django's default {value}, which this site does not "
                "serve: the app lands users on their security page (mfa:security) instead.",
                hint="Set LOGIN_REDIRECT_URL to the page a login should land on.",
                id="mfa.W012",
            )
        ]
    return [
        Warning(
            f"LOGIN_REDIRECT_URL = {value!r} leads to no page of this site: a login without "
            "a next page lands on a 404.",
            hint="Set LOGIN_REDIRECT_URL to a URL name or path this site serves.",
            id="mfa.W012",
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


# Django 6.0's own CSP, and django-csp's (the way on Django 5.2, which has none).
DJANGO_CSP_MIDDLEWARE = "django.middleware.csp.ContentSecurityPolicyMiddleware"
DJANGO_CSP_PACKAGE_MIDDLEWARE = "csp.middleware.CSPMiddleware"
# What the app's pages need, and no more: static files from 'self' only, the QR code as an
# inline data: PNG, and no inline script or style anywhere.
CSP_THE_APP_NEEDS = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)


@register(Tags.security, deploy=True)
def check_content_security_policy(app_configs=None, **kwargs) -> list:
    # The app works without a CSP (it uses none of its own), but a policy is what keeps an
    # injected script off the pages where the secret and the recovery codes are shown.
    middleware = django_settings.MIDDLEWARE
    if DJANGO_CSP_MIDDLEWARE in middleware and getattr(django_settings, "SECURE_CSP", None):
        return []
    if DJANGO_CSP_PACKAGE_MIDDLEWARE in middleware:
        return []
    return [
        Warning(
            "No Content-Security-Policy is configured: the two-factor pages (which show the "
            "TOTP secret and the recovery codes) are served without one.",
            hint=f"On Django 6.0 or later, add {DJANGO_CSP_MIDDLEWARE} to MIDDLEWARE and set "
            f"SECURE_CSP; on Django 5.2, install django-csp and add "
            f"{DJANGO_CSP_PACKAGE_MIDDLEWARE}. The app's pages need: {CSP_THE_APP_NEEDS}.",
            id="mfa.W014",
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
