"""The module's settings, each read lazily so ``override_settings`` just works.

docs/settings.md is the reference: every setting, its default and the reason for it.
"""

import hashlib
import os
from pathlib import Path

from django.apps import apps
from django.conf import global_settings
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured, ObjectDoesNotExist
from django.http import HttpRequest
from django.http.request import split_domain_port
from django.shortcuts import resolve_url
from django.urls import Resolver404, resolve, reverse

__all__ = ["default_keys_dir", "issuer", "landing_url", "serves", "settings"]


class Settings:
    """Typed access to the ``MFA_*`` settings, with the reason beside each default."""

    @property
    def ISSUER(self) -> str:
        # Shown by the authenticator app above the account name. Colons would break the label.
        # Empty: issuer() names the site instead (never the framework).
        return getattr(django_settings, "MFA_ISSUER", "")

    @property
    def BASE_TEMPLATE(self) -> str | None:
        # The site's base template the app's pages render inside, e.g. "base.html". None: they
        # are complete pages of their own (mfa/standalone.html), so an installed app shows its
        # forms whatever templates the site has (mfa.pages explains).
        return getattr(django_settings, "MFA_BASE_TEMPLATE", None)

    @property
    def BASE_BLOCKS(self) -> dict[str, str]:
        # The names of that base's blocks that take the app's title, content and (optionally)
        # CSS/JS link tags: {"title": "page_title", "content": "main", "head": "extra_head"}.
        # Missing roles default to "title" and "content"; without "head" the link tags go at
        # the top of the content. Checked by mfa.E008.
        return getattr(django_settings, "MFA_BASE_BLOCKS", {})

    @property
    def SHOW_MESSAGES(self) -> bool:
        # The app's pages show the flash messages ("Two-factor authentication is now off")
        # above their content, since not every site's base does. Turn it off when yours shows
        # them, or each appears twice.
        return getattr(django_settings, "MFA_SHOW_MESSAGES", True)

    @property
    def KEYS_DIR(self) -> Path:
        # The Fernet key ring lives in the file "ring" here, outside the database and git. The
        # default is outside every project (default_keys_dir), never relative to the current
        # directory, where a `git add -A` would commit it.
        value = getattr(django_settings, "MFA_KEYS_DIR", None)
        return Path(value) if value else default_keys_dir()

    @property
    def KEYS_ENV(self) -> str:
        # Containers may pass the ring in this environment variable instead (comma-separated,
        # primary first); it wins over the files when set.
        return getattr(django_settings, "MFA_KEYS_ENV", "MFA_FERNET_KEYS")

    @property
    def PENDING_TIMEOUT(self) -> int:
        # Seconds between a correct password and the code. Long enough to open the app and
        # type, short enough that an abandoned half-login is soon worthless (peers: 600-900 s).
        return getattr(django_settings, "MFA_PENDING_TIMEOUT", 300)

    @property
    def REAUTH_AGE(self) -> int:
        # Seconds after the last password proof during which the session may add a second
        # factor without typing the password again ("sudo mode").
        return getattr(django_settings, "MFA_REAUTH_AGE", 15 * 60)

    @property
    def REMEMBER_DAYS(self) -> int:
        # "Don't ask again on this browser for N days" after a second step (the three peers
        # offer it): 30, as they do. 0 turns it off, and remembered browsers are then ignored.
        return getattr(django_settings, "MFA_REMEMBER_DAYS", 30)

    @property
    def REMEMBER_COOKIE_NAME(self) -> str:
        # The cookie of a remembered browser (mfa.remember): signed, HttpOnly, SameSite=Lax.
        return getattr(django_settings, "MFA_REMEMBER_COOKIE_NAME", "mfa_remember")

    @property
    def ENROLMENT_GRACE(self) -> int:
        # Seconds after a user joined (``date_joined``) during which ``mfa_required`` views
        # still open without a second factor; later they send the user to set one up. 0: at
        # once, the secure default. A user model without ``date_joined`` gets no grace.
        return getattr(django_settings, "MFA_ENROLMENT_GRACE", 0)

    @property
    def VALID_WINDOW(self) -> int:
        # Steps of clock skew tolerated either side: T-1, T, T+1 (RFC 6238 section 5.2).
        # A deliberate deviation from ASVS 6.5.5's 30 s, documented in SECURITY.md.
        return getattr(django_settings, "MFA_VALID_WINDOW", 1)

    @property
    def RECOVERY_CODE_COUNT(self) -> int:
        # Ten, as most services give: enough for years of lost phones, few enough to store.
        return getattr(django_settings, "MFA_RECOVERY_CODE_COUNT", 10)

    @property
    def RECOVERY_CODES_LOW(self) -> int:
        # The security page warns when this many unused codes or fewer remain.
        return getattr(django_settings, "MFA_RECOVERY_CODES_LOW", 2)

    @property
    def WEBAUTHN_RP_ID(self) -> str:
        # The domain security keys and passkeys are bound to ("example.com" covers its
        # subdomains). Empty: the first ALLOWED_HOSTS entry that is a plain name. Changing it
        # later orphans every registered key, so set it once. Checked by mfa.E012.
        return getattr(django_settings, "MFA_WEBAUTHN_RP_ID", "")

    @property
    def WEBAUTHN_RP_NAME(self) -> str:
        # Shown by the browser when a key is added. Empty: the issuer's name (MFA_ISSUER).
        return getattr(django_settings, "MFA_WEBAUTHN_RP_NAME", "")

    @property
    def WEBAUTHN_ORIGINS(self) -> list[str]:
        # Every origin a ceremony may come from, e.g. ["https://example.com"]: the browser
        # signs the page's origin, so a phishing site's assertion fails here. Empty:
        # "https://<RP ID>". https only, except http://localhost. Checked by mfa.E013.
        return list(getattr(django_settings, "MFA_WEBAUTHN_ORIGINS", []))

    @property
    def WEBAUTHN_USER_VERIFICATION(self) -> str:
        # "preferred" (the default: a PIN or fingerprint when the key has one; the password
        # is the other factor anyway), "required" (refuse keys that did not verify the user)
        # or "discouraged". Checked by mfa.E014.
        return getattr(django_settings, "MFA_WEBAUTHN_USER_VERIFICATION", "preferred")

    @property
    def WEBAUTHN_CHALLENGE_TIMEOUT(self) -> int:
        # Seconds a ceremony's challenge stays usable: time to find the key and touch it, as
        # long as the pending login itself lasts (MFA_PENDING_TIMEOUT).
        return getattr(django_settings, "MFA_WEBAUTHN_CHALLENGE_TIMEOUT", 300)

    @property
    def REQUIRE_FOR_STAFF(self) -> bool:
        # The admin refuses staff who have not enrolled, and sends them to set up 2FA.
        return getattr(django_settings, "MFA_REQUIRE_FOR_STAFF", True)

    @property
    def CODE_RATE(self) -> str:
        # Second-factor attempts per pending account, whatever session or address they use.
        return getattr(django_settings, "MFA_CODE_RATE", "5/m")

    @property
    def CODE_IP_RATE(self) -> str:
        # Second-factor attempts per client address, across accounts.
        return getattr(django_settings, "MFA_CODE_IP_RATE", "20/m")

    @property
    def WEBAUTHN_OPTIONS_RATE(self) -> str:
        # Security key challenges per pending account: not guesses, so not the code budget, but
        # each one writes the session. A user may cancel the browser's prompt and retry.
        return getattr(django_settings, "MFA_WEBAUTHN_OPTIONS_RATE", "10/m")

    @property
    def WEBAUTHN_OPTIONS_IP_RATE(self) -> str:
        # Security key challenges per client address, across accounts.
        return getattr(django_settings, "MFA_WEBAUTHN_OPTIONS_IP_RATE", "30/m")

    @property
    def LOGIN_USER_RATE(self) -> str:
        # Password attempts per username: slows guessing one account from many addresses.
        return getattr(django_settings, "MFA_LOGIN_USER_RATE", "10/m")

    @property
    def LOGIN_IP_RATE(self) -> str:
        # Password attempts per client address: slows spraying many accounts from one address.
        return getattr(django_settings, "MFA_LOGIN_IP_RATE", "30/m")

    @property
    def CHANGE_RATE(self) -> str:
        # Disable and regenerate attempts per user: each costs a password hash.
        return getattr(django_settings, "MFA_CHANGE_RATE", "5/m")

    @property
    def BACKOFF_AFTER(self) -> int:
        # Consecutive failures tolerated before the database back-off starts.
        return getattr(django_settings, "MFA_BACKOFF_AFTER", 5)

    @property
    def BACKOFF_BASE(self) -> int:
        # Seconds of the first back-off; it doubles with each further failure.
        return getattr(django_settings, "MFA_BACKOFF_BASE", 60)

    @property
    def BACKOFF_MAX(self) -> int:
        # The back-off never exceeds a day.
        return getattr(django_settings, "MFA_BACKOFF_MAX", 24 * 60 * 60)

    @property
    def LOCKOUT_AFTER(self) -> int:
        # NIST SP 800-63B-4 3.2.2: no more than 100 consecutive failed attempts per account.
        # At this count only an administrator can unlock.
        return getattr(django_settings, "MFA_LOCKOUT_AFTER", 100)

    @property
    def SUSPICIOUS_NOTICE_INTERVAL(self) -> int:
        # Seconds: at most one "someone entered your password" email per user in this time,
        # however many pending logins fail or are abandoned (the audit trail records each), so
        # whoever holds the password cannot use the notice to flood the owner's inbox.
        return getattr(django_settings, "MFA_SUSPICIOUS_NOTICE_INTERVAL", 60 * 60)

    @property
    def TRUSTED_PROXY_HEADER(self) -> str:
        # e.g. "X-Forwarded-For" when a trusted proxy sets it; empty means REMOTE_ADDR.
        return getattr(django_settings, "MFA_TRUSTED_PROXY_HEADER", "")

    @property
    def TRUSTED_PROXY_COUNT(self) -> int:
        # How many proxies append to that header; the address that many hops from the right
        # is the client's (the ones to its left are client-supplied and forgeable).
        return getattr(django_settings, "MFA_TRUSTED_PROXY_COUNT", 1)

    @property
    def EVENTS_SHOWN(self) -> int:
        # How many recent security events the user's security page lists.
        return getattr(django_settings, "MFA_EVENTS_SHOWN", 20)


settings = Settings()


def default_keys_dir() -> Path:
    """Return the per-user data directory of this site's key ring (MFA_KEYS_DIR unset).

    ``$XDG_DATA_HOME/django-mfa/<site>``, else ``~/.local/share/django-mfa/<site>``: outside
    any repository, and private to the account. ``<site>`` tells two sites on one account
    apart by the database whose secrets the ring encrypts (its engine and name, hashed), so two
    releases of one site share a ring and two sites do not. Not the host or port: a database
    reached under a new address is still the same database, and must keep its ring.
    Production sites should set MFA_KEYS_DIR anyway (docs/settings.md).
    """
    base = os.environ.get("XDG_DATA_HOME", "")
    if not os.path.isabs(base):  # the XDG spec: a relative value is to be ignored
        home = os.path.expanduser("~")
        # A service account may have no home ("~" stays unexpanded) or "/" or /nonexistent.
        if not os.path.isabs(home) or home == "/" or not os.path.isdir(home):
            raise ImproperlyConfigured(
                "MFA_KEYS_DIR is not set and this account has no home directory for the "
                "default; set MFA_KEYS_DIR to a directory outside the repository."
            )
        base = os.path.join(home, ".local", "share")
    return Path(base) / "django-mfa" / _site_name()


def _site_name() -> str:
    database = django_settings.DATABASES.get("default", {})
    identity = "|".join(str(database.get(part) or "") for part in ("ENGINE", "NAME"))
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    stem = Path(str(database.get("NAME") or "site")).stem or "site"
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in stem)[:40]
    return f"{safe}-{digest}"


def issuer(request: HttpRequest | None = None) -> str:
    """Return the name authenticator apps show for this site: MFA_ISSUER, else the site's."""
    if settings.ISSUER:
        return settings.ISSUER
    if apps.is_installed("django.contrib.sites"):
        from django.contrib.sites.shortcuts import get_current_site

        try:
            name = get_current_site(request).name
        except (ImproperlyConfigured, ObjectDoesNotExist):
            name = ""  # no SITE_ID and no request, or no Site row for this host
        # "example.com" is what Django's sites migration creates: nobody's real name.
        if name and name != "example.com":
            return name
    if request is not None:
        domain, _port = split_domain_port(request.get_host())
        if domain:
            return domain
    for host in django_settings.ALLOWED_HOSTS:
        if host and "*" not in host and not host.startswith("."):
            return host
    return "Two-factor login"


def serves(url: str) -> bool:
    """Tell whether ``url`` is a path this site serves (an absolute URL is taken on trust)."""
    if "://" in url or url.startswith("//"):
        return True
    if not url.startswith("/"):
        return False  # a URL name that does not reverse: resolve_url gave it back unchanged
    try:
        resolve(url.split("?", 1)[0])
    except Resolver404:
        return False
    return True


def landing_url() -> str:
    """Return where a login lands without a ``next``: LOGIN_REDIRECT_URL, if the site has it.

    Django's default, /accounts/profile/, is a page that few sites have; when it resolves to
    nothing the user lands on their security page instead of a 404 (check mfa.W012 says so).
    """
    url = resolve_url(django_settings.LOGIN_REDIRECT_URL)
    if django_settings.LOGIN_REDIRECT_URL == global_settings.LOGIN_REDIRECT_URL and not (
        serves(url)
    ):
        return reverse("mfa:security")
    return url
