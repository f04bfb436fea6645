"""Recovery codes: their format, and their Argon2id hashes. No database access here.

A code reads ``SSSV-VVVV-VVVV-VVVV``: 16 characters of Crockford's base32 (no I, L, O or U, so
nothing to confuse), in four groups. The first three characters are the *selector*, stored in
plaintext and unique among the user's codes; the other thirteen are the *verifier*, 65 bits
from the CSPRNG, stored only as a salted Argon2id hash.

Why a selector: peers loop over every stored hash until one matches, so a wrong code costs
the server ten Argon2 runs with ten codes left, a free amplifier for anyone who can submit
codes. With the selector the database finds the one candidate row, and every attempt costs
exactly one Argon2 verification. The selector gives an attacker nothing: it only names a row,
and the 65-bit verifier behind it is what must be guessed.

Input is forgiving: case, spaces and dashes are ignored, and the letters people mistake for
digits (O for 0, I and L for 1) are read as the digits, as Crockford's alphabet intends.

Imported codes (``mfa_import``, docs/import.md): django-otp's static tokens, 8 lowercase base32
characters by default, keep working once. Their rows sit in the same table, marked by a
selector that starts with ``~`` (never in ALPHABET, so never a native selector): ``~`` and 7 hex
digits of an HMAC of the token under Django's SECRET_KEY. The selector is derived from the code
because the user types only the code; it is keyed because such a token has only 40 bits, and
an unkeyed hash of it would let anyone holding the database find it by brute force without
touching Argon2. So an imported code, too, costs one lookup and one Argon2 verification. It is
also looked up under each of SECRET_KEY_FALLBACKS, so rotating SECRET_KEY the documented way
keeps it working; a key dropped from the fallbacks takes its imported codes with it.
Inputs of exactly 8 letters and digits are read as imported codes (lowercase, spaces and dashes
ignored): the length of django-otp's own tokens, and one that neither a native code (16) nor a
TOTP code (6) has, nor a native code with a character or two missing, which is still answered
as a typing error and not counted as a guess.
"""

import re
import secrets
from dataclasses import dataclass
from functools import cache

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from django.conf import settings
from django.utils.crypto import salted_hmac

from ..redact import sensitive

__all__ = [
    "ALPHABET",
    "IMPORTED_PREFIX",
    "ParsedCode",
    "format_code",
    "generate",
    "hash_imported",
    "hash_verifier",
    "normalize_imported",
    "parse",
    "verify",
]

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
SELECTOR_LENGTH = 3
VERIFIER_LENGTH = 13  # 13 * 5 = 65 bits: NIST SP 800-63B-4 asks 64 for saved recovery codes.
CODE_LENGTH = SELECTOR_LENGTH + VERIFIER_LENGTH
_READ_AS = str.maketrans({"O": "0", "I": "1", "L": "1"})
# Imported codes (see the module docstring): the selector's marker, and the token's shape.
IMPORTED_PREFIX = "~"
_IMPORTED_SHAPE = re.compile(r"[a-z0-9]{8}")
_IMPORTED_SALT = "mfa.recovery.imported-selector"

# OWASP's minimum Argon2id configuration (m=19 MiB, t=2, p=1). A verifier of 65 random bits
# does not need more: the hash only has to make an offline search of 2**65 hopeless, and each
# online attempt already costs one hash and one unit of the account's failure budget.
HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1, type=Type.ID)


@dataclass(frozen=True)
class ParsedCode:
    selector: str
    verifier: str
    # An imported code's selectors under SECRET_KEY_FALLBACKS, looked up too.
    fallback_selectors: tuple[str, ...] = ()

    @property
    def selectors(self) -> tuple[str, ...]:
        """Return every selector the code may be stored under (one, for a native code)."""
        return (self.selector, *self.fallback_selectors)

    @property
    def _hashed(self) -> str:
        # An imported code's hash is bound to the marker, not to one key's selector, so that
        # it still verifies when found under a fallback key's selector.
        if self.selector.startswith(IMPORTED_PREFIX):
            return IMPORTED_PREFIX + self.verifier
        return self.selector + self.verifier


def _random(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


@sensitive
def format_code(selector: str, verifier: str) -> str:
    raw = selector + verifier
    return "-".join(raw[i : i + 4] for i in range(0, CODE_LENGTH, 4))


@sensitive
def generate(count: int) -> list[tuple[str, str]]:
    """Return ``count`` fresh (selector, verifier) pairs with distinct selectors."""
    pairs: dict[str, str] = {}
    while len(pairs) < count:
        selector = _random(SELECTOR_LENGTH)
        if selector not in pairs:
            pairs[selector] = _random(VERIFIER_LENGTH)
    return list(pairs.items())


@sensitive
def parse(raw: str, imported: bool = True) -> ParsedCode | None:
    """Return the code's selector and verifier, or None if it cannot be a code.

    ``imported=False`` for a user who holds no imported token: 8 letters and digits are then
    a typing error (half a native code, say), not a guess to verify and count.
    """
    if len(raw) > 64:
        return None
    cleaned = "".join(raw.split()).replace("-", "").upper().translate(_READ_AS)
    if len(cleaned) != CODE_LENGTH or any(ch not in ALPHABET for ch in cleaned):
        return _parse_imported(raw) if imported else None
    return ParsedCode(cleaned[:SELECTOR_LENGTH], cleaned[SELECTOR_LENGTH:])


@sensitive
def normalize_imported(raw: str) -> str | None:
    """Return an imported token as it is stored and typed, or None if it cannot be one."""
    cleaned = "".join(raw.split()).replace("-", "").lower()
    return cleaned if _IMPORTED_SHAPE.fullmatch(cleaned) else None


@sensitive
def _imported_selector(token: str, secret: str) -> str:
    digest = salted_hmac(_IMPORTED_SALT, token, secret=secret, algorithm="sha256").hexdigest()
    return IMPORTED_PREFIX + digest[:7]


@sensitive
def _parse_imported(raw: str) -> ParsedCode | None:
    token = normalize_imported(raw)
    if token is None:
        return None
    fallbacks = getattr(settings, "SECRET_KEY_FALLBACKS", [])
    return ParsedCode(
        _imported_selector(token, settings.SECRET_KEY),
        token,
        tuple(_imported_selector(token, key) for key in fallbacks),
    )


@sensitive
def hash_imported(token: str) -> tuple[str, str]:
    """Return the selector and Argon2id hash under which to store an imported token."""
    normalized = normalize_imported(token)
    if normalized is None:
        raise ValueError("not an importable token")
    # As ParsedCode._hashed has it for an imported code; only the primary key's selector.
    selector = _imported_selector(normalized, settings.SECRET_KEY)
    return selector, HASHER.hash(IMPORTED_PREFIX + normalized)


@sensitive
def hash_verifier(selector: str, verifier: str) -> str:
    # The selector is hashed too, so a hash cannot be moved to another row and still match.
    return HASHER.hash(selector + verifier)


@cache
def _decoy_hash() -> str:
    return HASHER.hash(_random(CODE_LENGTH))


@sensitive
def verify(encoded: str | None, parsed: ParsedCode) -> bool:
    """Run exactly one Argon2 verification of ``parsed`` against ``encoded``.

    With no stored hash (no unused code has this selector) a decoy hash is checked instead,
    so every attempt costs the same and the response time does not tell which selectors exist.
    """
    try:
        matched = HASHER.verify(encoded or _decoy_hash(), parsed._hashed)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return matched and encoded is not None
