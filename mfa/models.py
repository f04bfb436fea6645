"""What the server keeps: whether 2FA is on, an encrypted secret, hashed recovery codes,
security keys' public keys, and an audit trail."""

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

__all__ = [
    "RecoveryCode",
    "RememberedBrowser",
    "SecurityEvent",
    "TOTPDevice",
    "TwoFactor",
    "UserSession",
    "WebAuthnCredential",
]


class TwoFactor(models.Model):
    """That a user has two-factor authentication on, and the back-off that guards it.

    The row is created with the user's first confirmed factor (an authenticator app or a
    security key) and deleted when 2FA is turned off or reset; ``mfa.flows.has_2fa`` asks for
    it and nothing else. Every factor's failures count here, so the app, the recovery codes and
    the keys share one budget: trying another factor does not buy more guesses. A pending
    login names this row, so one begun before a reset cannot be finished with a factor enrolled
    after it. The failure fields change only by conditional UPDATEs or under a row lock
    (``mfa.flows``, ``mfa.throttle``), so they hold across processes, restarts and cache flushes.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="mfa_two_factor"
    )
    enabled_at = models.DateTimeField(default=timezone.now, editable=False)
    # Consecutive failed second-factor attempts, of any factor.
    failure_count = models.PositiveIntegerField(default=0)
    blocked_until = models.DateTimeField(null=True, blank=True)
    locked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("two-factor authentication")
        verbose_name_plural = _("two-factor authentication")

    def __str__(self) -> str:
        return f"two-factor authentication of {self.user}"


class TOTPDevice(models.Model):
    """A user's confirmed authenticator app (one at most).

    A row exists only once the user has proved the secret with a working code; enrolment in
    progress lives in the session. The secret is Fernet ciphertext bound to the user (see
    ``mfa.crypto``). ``last_used_step`` is the replay guard, changed only by a conditional
    UPDATE (``mfa.flows``). The back-off lives on ``TwoFactor``, which every user with a row
    here also has.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="mfa_totp"
    )
    encrypted_secret = models.TextField(editable=False)
    # The time step of the last accepted code; only newer steps are accepted.
    last_used_step = models.BigIntegerField(default=-1, editable=False)
    confirmed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("authenticator app")
        verbose_name_plural = _("authenticator apps")

    def __str__(self) -> str:
        return f"TOTP for {self.user}"


class RecoveryCode(models.Model):
    """One recovery code: a plaintext selector and the Argon2id hash of the whole code."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="mfa_recovery_codes"
    )
    selector = models.CharField(max_length=8, editable=False)
    code_hash = models.CharField(max_length=200, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "selector"], name="mfa_recovery_selector")
        ]

    def __str__(self) -> str:
        return f"recovery code of {self.user}"


class WebAuthnCredential(models.Model):
    """A security key or passkey: a second factor, beside or instead of the authenticator app.

    Nothing here is secret: the public key is kept as the authenticator gave it (COSE), and
    the credential id is unique across users, so an assertion names one user's key only.
    ``sign_count`` and ``last_challenge`` change only by a conditional UPDATE (``mfa.flows``),
    so of any number of requests racing with one assertion, exactly one is accepted.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="mfa_webauthn_credentials",
    )
    # base64url of the raw id (at most 1023 bytes, WebAuthn Level 3): comparable and indexable
    # on every database, unlike a binary column.
    credential_id = models.CharField(max_length=1400, unique=True, editable=False)
    public_key = models.BinaryField(editable=False)
    sign_count = models.PositiveBigIntegerField(default=0, editable=False)
    # Hints for the browser ("usb", "internal", ...), as the key reported them.
    transports = models.JSONField(default=list, blank=True, editable=False)
    name = models.CharField(_("name"), max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    # SHA-256 of the challenge of the last accepted assertion: the same one never twice.
    last_challenge = models.CharField(max_length=64, blank=True, editable=False)

    class Meta:
        verbose_name = _("security key")
        verbose_name_plural = _("security keys")
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"security key {self.name!r} of {self.user}"


class SecurityEvent(models.Model):
    """An entry of the audit trail. Never holds a code, secret or password."""

    class Kind(models.TextChoices):
        PASSWORD_FAILED = "password_failed", _("Password rejected")
        PASSWORD_OK = "password_ok", _("Password accepted, awaiting second factor")
        LOGIN = "login", _("Signed in")
        MFA_FAILED = "mfa_failed", _("Second factor rejected")
        RECOVERY_USED = "recovery_used", _("Signed in with a recovery code")
        SUSPICIOUS = "suspicious", _("Correct password, then a wrong or missing second factor")
        BACKOFF = "backoff", _("Second factor paused after repeated failures")
        LOCKED = "locked", _("Second factor locked after too many failures")
        UNLOCKED = "unlocked", _("Second factor unlocked by an administrator")
        ENABLED = "enabled", _("Two-factor authentication turned on")
        DISABLED = "disabled", _("Two-factor authentication turned off")
        CODES_REGENERATED = "codes_regenerated", _("Recovery codes replaced")
        ADMIN_RESET = "admin_reset", _("Two-factor authentication reset by an administrator")
        IMPORTED = "imported", _("Two-factor authentication imported from the previous system")
        SECRET_UNREADABLE = "secret_unreadable", _("Two-factor secret could not be decrypted")
        SESSIONS_ENDED = "sessions_ended", _("Other sessions signed out")
        LOGOUT = "logout", _("Signed out")
        BROWSER_REMEMBERED = "browser_remembered", _("Browser remembered: no code for a while")
        REMEMBERED_LOGIN = "remembered_login", _("Signed in on a remembered browser")
        BROWSER_FORGOTTEN = "browser_forgotten", _("Remembered browser forgotten")
        KEY_ADDED = "key_added", _("Security key added")
        KEY_REMOVED = "key_removed", _("Security key removed")
        KEY_USED = "key_used", _("Signed in with a security key")
        KEY_CLONED = "key_cloned", _("Security key's counter went back: possibly cloned")
        APP_ADDED = "app_added", _("Authenticator app added")
        APP_REMOVED = "app_removed", _("Authenticator app removed")

    # SET_NULL: deleting a user keeps their audit trail.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="mfa_events",
    )
    kind = models.CharField(max_length=32, choices=Kind.choices)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    # A short, fixed reason ("replayed code", "by admin alice"): never user input.
    detail = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["user", "-created_at"], name="mfa_event_user_time")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} ({self.created_at:%Y-%m-%d %H:%M})"


class UserSession(models.Model):
    """A session created by a completed login, so that it can be ended from elsewhere.

    ``sid`` is a random id kept inside the session's own data; it survives the session key
    changing (``cycle_key`` on a password change), and ``session_key`` follows it (see
    ``mfa.sessions``). A logged-in session whose ``sid`` has no row here has been ended.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="mfa_sessions"
    )
    sid = models.CharField(max_length=64, unique=True)
    session_key = models.CharField(max_length=40, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"session of {self.user}"


class RememberedBrowser(models.Model):
    """A browser that may skip the second factor at its user's next logins (``mfa.remember``).

    The browser holds a signed cookie naming ``selector`` and carrying a random verifier; the
    row keeps only the verifier's SHA-256. Never a substitute for the password: it is looked
    at only after a correct one. ``password_fingerprint`` is an HMAC of the password hash at
    the time it was remembered, so a password change voids the row.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="mfa_remembered_browsers"
    )
    selector = models.CharField(max_length=32, unique=True, editable=False)
    verifier_hash = models.CharField(max_length=64, editable=False)
    password_fingerprint = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(db_index=True)
    # "Firefox on Linux": a hint for the owner's list, from the User-Agent (client-supplied).
    label = models.CharField(max_length=100, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = _("remembered browser")
        verbose_name_plural = _("remembered browsers")

    def __str__(self) -> str:
        return f"remembered browser of {self.user}"
