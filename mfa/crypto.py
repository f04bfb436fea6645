"""The key ring, and the only code that encrypts or decrypts a TOTP secret.

The ring is a list of Fernet keys, primary first: the primary encrypts, every key decrypts
(``MultiFernet``). It comes from the environment variable named by ``MFA_KEYS_ENV`` when that
is set (containers), or else from the file ``ring`` in ``MFA_KEYS_DIR``: one key per line, mode
0600, outside the database and source control. Rotation is therefore three small steps: put a
new key first (``add``), re-encrypt every secret under it (``rotate``), drop the old key once
nothing needs it (``retire``).

A secret is bound to its user: the plaintext carries the user's primary key, and decryption
checks it. Fernet is authenticated, so the binding cannot be edited without the key; a
ciphertext copied into another user's row fails to decrypt for that user, as if no key fit.
Every failure to decrypt raises ``UndecryptableSecret``; callers fail closed on it.
"""

import hashlib
import os
import stat
import tempfile
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.views.decorators.debug import sensitive_variables

from .conf import settings

__all__ = [
    "KeyRing",
    "KeyRingError",
    "UndecryptableSecret",
    "current",
    "decrypt_secret",
    "decrypting_key",
    "encrypt_secret",
    "key_id",
    "load_keys",
    "new_key",
    "reencrypt",
    "reload",
    "ring_path",
    "write_ring",
]

RING_FILE = "ring"
# Versioned so that a future format can be told apart from this one.
_PREFIX = b"mfa-totp-v1:"


class KeyRingError(Exception):
    """The key ring is missing, empty, unreadable or malformed."""


class UndecryptableSecret(Exception):
    """No key in the ring decrypts this secret for this user."""


def ring_path() -> Path:
    """Return the ring file's path, or raise ``KeyRingError`` when no directory is known."""
    try:
        return settings.KEYS_DIR / RING_FILE
    except ImproperlyConfigured as exc:
        raise KeyRingError(str(exc)) from None


def new_key() -> bytes:
    return Fernet.generate_key()


def key_id(key: bytes) -> str:
    """Return a short, stable, non-secret name for a key: 12 hex digits of its SHA-256."""
    return hashlib.sha256(key.strip()).hexdigest()[:12]


def _parse(lines: Iterable[str], source: str) -> list[bytes]:
    keys = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key = line.encode("ascii", "replace")
        try:
            Fernet(key)
        except ValueError:
            # The line number, never the line: it may be most of a real key.
            raise KeyRingError(f"{source}: entry {number} is not a Fernet key") from None
        keys.append(key)
    if not keys:
        raise KeyRingError(f"{source} holds no key")
    return keys


def load_keys() -> list[bytes]:
    """Return the ring's keys, primary first, or raise ``KeyRingError``."""
    from_env = os.environ.get(settings.KEYS_ENV, "")
    if from_env.strip():
        return _parse(from_env.split(","), f"environment variable {settings.KEYS_ENV}")
    path = ring_path()
    try:
        text = path.read_text("ascii")
    except FileNotFoundError:
        raise KeyRingError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyRingError(f"{path} cannot be read: {exc.__class__.__name__}") from None
    return _parse(text.splitlines(), str(path))


def write_ring(keys: list[bytes], *, create: bool = False) -> Path:
    """Replace the ring file atomically with ``keys`` (primary first), mode 0600.

    The new file is written beside the old one and renamed over it, so a crash leaves either
    the old ring or the new one, never half of either. With ``create`` the ring must not exist
    yet: the file is linked into place, which fails if another process got there first, so two
    first starts sharing a volume cannot each write a different ring.
    """
    if not keys:
        raise KeyRingError("refusing to write an empty key ring")
    path = ring_path()
    # 0700: the ring's own directory is the site user's alone (check mfa.E005).
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ring-")
    try:
        os.fchmod(fd, stat.S_IRUSR | stat.S_IWUSR)
        with os.fdopen(fd, "wb") as handle:
            handle.write(b"".join(key + b"\n" for key in keys))
            handle.flush()
            os.fsync(handle.fileno())
        if create:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise KeyRingError(f"{path} already exists") from None
            finally:
                Path(tmp).unlink(missing_ok=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    reload()
    return path


class KeyRing:
    """The keys of the ring, primary first, and the one place that uses them."""

    def __init__(self, keys: list[bytes]):
        self.keys = tuple(keys)
        self._fernets = tuple(Fernet(key) for key in self.keys)
        self._multi = MultiFernet(self._fernets)

    @property
    def primary(self) -> bytes:
        return self.keys[0]

    @sensitive_variables()
    def encrypt(self, secret: str, user_pk: object) -> str:
        """Encrypt a base32 TOTP secret for one user under the primary key."""
        return self._multi.encrypt(_bind(secret, user_pk)).decode("ascii")

    @sensitive_variables()
    def decrypt(self, token: str, user_pk: object) -> str:
        """Decrypt a user's secret with whichever key fits, or raise ``UndecryptableSecret``."""
        try:
            plaintext = self._multi.decrypt(token.encode("ascii"))
        except (InvalidToken, UnicodeEncodeError):
            raise UndecryptableSecret("no key in the ring decrypts the secret") from None
        return _unbind(plaintext, user_pk)

    def decrypting_key(self, token: str) -> bytes | None:
        """Return the first key that decrypts ``token``, or None."""
        for fernet, key in zip(self._fernets, self.keys, strict=True):
            try:
                fernet.decrypt(token.encode("ascii"))
            except (InvalidToken, UnicodeEncodeError):
                continue
            return key
        return None

    @sensitive_variables()
    def reencrypt(self, token: str, user_pk: object) -> str | None:
        """Return ``token`` re-encrypted under the primary key, or None if it already is.

        The user binding is checked before and kept after: rotation never moves a secret.
        """
        raw = token.encode("ascii", "replace")
        try:
            plaintext = self._fernets[0].decrypt(raw)
        except InvalidToken:
            plaintext = None
        if plaintext is not None:
            _unbind(plaintext, user_pk)  # already primary; still refuse a moved secret
            return None
        for fernet in self._fernets[1:]:
            try:
                plaintext = fernet.decrypt(raw)
            except InvalidToken:
                continue
            return self.encrypt(_unbind(plaintext, user_pk), user_pk)
        raise UndecryptableSecret("no key in the ring decrypts the secret")


def current() -> KeyRing:
    """Return the ring as it is now, or raise ``KeyRingError``.

    Cached on the file's identity and mtime (or the variable's value), so a long-running
    server notices `mfa_keys add` or `retire` at the cost of one stat() per call, without a
    restart. Callers that process many secrets take the ring once.
    """
    from_env = os.environ.get(settings.KEYS_ENV, "")
    if from_env.strip():
        return _ring_for(("env", from_env))
    path = str(ring_path())
    try:
        st = os.stat(path)
    except OSError:
        return _ring_for(("file", path, None))
    return _ring_for(("file", path, st.st_ino, st.st_mtime_ns, st.st_size))


@lru_cache(maxsize=2)  # the ring now, and the one before a change; old keys leave memory
def _ring_for(signature: tuple) -> KeyRing:
    return KeyRing(load_keys())


def reload() -> None:
    """Forget the cached ring; the next use reads it again."""
    _ring_for.cache_clear()


@receiver(setting_changed)
def _reload_on_setting_change(*, setting: str, **kwargs) -> None:
    if setting.startswith("MFA_KEYS"):
        reload()


@sensitive_variables()
def _bind(secret: str, user_pk: object) -> bytes:
    return _PREFIX + str(user_pk).encode() + b":" + secret.encode("ascii")


@sensitive_variables()
def _unbind(plaintext: bytes, user_pk: object) -> str:
    expected = _PREFIX + str(user_pk).encode() + b":"
    if not plaintext.startswith(expected):
        # Authentic ciphertext, but someone else's: moved between rows.
        raise UndecryptableSecret("the secret is bound to another user")
    return plaintext[len(expected) :].decode("ascii")


@sensitive_variables()
def encrypt_secret(secret: str, user_pk: object) -> str:
    """Encrypt a base32 TOTP secret for one user under the primary key."""
    return current().encrypt(secret, user_pk)


def decrypt_secret(token: str, user_pk: object) -> str:
    """Decrypt a user's TOTP secret with whichever key fits, or raise ``UndecryptableSecret``."""
    try:
        ring = current()
    except KeyRingError as exc:
        raise UndecryptableSecret(f"key ring unavailable: {exc}") from None
    return ring.decrypt(token, user_pk)


def decrypting_key(token: str) -> bytes | None:
    """Return the first key of the ring that decrypts ``token``, or None."""
    return current().decrypting_key(token)


def reencrypt(token: str, user_pk: object) -> str | None:
    """Return ``token`` re-encrypted under the primary key, or None if it already is."""
    return current().reencrypt(token, user_pk)
