"""The module's settings, each read lazily so ``override_settings`` just works."""

from pathlib import Path

from django.conf import settings as django_settings

__all__ = ["settings"]


class Settings:
    """Typed access to the ``MFA_*`` settings, with the reason beside each default."""

    @property
    def ISSUER(self) -> str:
        # Shown by the authenticator app above the account name. Colons would break the label.
        return getattr(django_settings, "MFA_ISSUER", "Django")

    @property
    def KEYS_DIR(self) -> Path:
        # The Fernet key ring lives in the file "ring" here, outside the database and git.
        return Path(getattr(django_settings, "MFA_KEYS_DIR", "keys"))

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
