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
"""

import secrets
from dataclasses import dataclass
from functools import cache

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from .redact import sensitive

__all__ = ["ALPHABET", "ParsedCode", "format_code", "generate", "hash_verifier", "parse", "verify"]

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
SELECTOR_LENGTH = 3
VERIFIER_LENGTH = 13  # 13 * 5 = 65 bits: NIST SP 800-63B-4 asks 64 for saved recovery codes.
CODE_LENGTH = SELECTOR_LENGTH + VERIFIER_LENGTH
_READ_AS = str.maketrans({"O": "0", "I": "1", "L": "1"})

# OWASP's minimum Argon2id configuration (m=19 MiB, t=2, p=1). A verifier of 65 random bits
# does not need more: the hash only has to make an offline search of 2**65 hopeless, and each
# online attempt already costs one hash and one unit of the account's failure budget.
HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1, type=Type.ID)


@dataclass(frozen=True)
class ParsedCode:
    selector: str
    verifier: str


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
def parse(raw: str) -> ParsedCode | None:
    """Return the code's selector and verifier, or None if it cannot be a code."""
    if len(raw) > 64:
        return None
    cleaned = "".join(raw.split()).replace("-", "").upper().translate(_READ_AS)
    if len(cleaned) != CODE_LENGTH or any(ch not in ALPHABET for ch in cleaned):
        return None
    return ParsedCode(cleaned[:SELECTOR_LENGTH], cleaned[SELECTOR_LENGTH:])


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
        matched = HASHER.verify(encoded or _decoy_hash(), parsed.selector + parsed.verifier)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return matched and encoded is not None
