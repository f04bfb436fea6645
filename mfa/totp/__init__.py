"""RFC 6238 time-based one-time passwords and the otpauth:// Key URI. No Django here.

Every function that holds a secret or a code hides its locals from error reports
(``mfa.redact.sensitive``, which does what Django's ``sensitive_variables`` does).

pyotp does the HMAC maths; this module decides which time steps are acceptable and compares in
constant time. Time is a parameter everywhere (``now``), so tests pin it instead of sleeping.

RFC 6238 Appendix B (SHA1, ASCII secret "12345678901234567890", 8 digits):

>>> rfc = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
>>> [code_at(rfc, step_of(t), digits=8) for t in (59, 1111111109, 1234567890, 2000000000)]
['94287082', '07081804', '89005924', '69279037']
"""

import hmac
import re
import secrets
import time
from base64 import b32encode
from urllib.parse import quote, urlencode

import pyotp

from ..redact import sensitive

__all__ = [
    "DIGITS",
    "STEP",
    "code_at",
    "generate_secret",
    "group_secret",
    "matching_step",
    "normalize_code",
    "now",
    "provisioning_uri",
    "step_of",
]

# SHA1, 6 digits and 30 s are the only parameters every authenticator app honours.
DIGITS = 6
STEP = 30
# 160 bits, the HMAC-SHA1 block size RFC 4226 R6 recommends (NIST asks at least 112).
SECRET_BYTES = 20

# What a person may type around the digits: spaces and dashes ("123 456", "123-456").
_SEPARATORS = re.compile(r"[\s\-]+")
_ASCII_DIGITS = re.compile(r"[0-9]+")


def now() -> float:
    """Return the server's Unix time; the single clock every verification reads."""
    return time.time()


def generate_secret() -> str:
    """Return a new base32 secret of 160 bits from the operating system's CSPRNG."""
    return b32encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii").rstrip("=")


def step_of(unix_time: float) -> int:
    """Return the RFC 6238 time step (T) that contains ``unix_time``."""
    return int(unix_time) // STEP


@sensitive
def code_at(secret: str, step: int, digits: int = DIGITS) -> str:
    """Return the code for time step ``step``."""
    return pyotp.TOTP(secret, digits=digits, interval=STEP).at(step * STEP)


def normalize_code(raw: str, digits: int = DIGITS) -> str | None:
    """Return the code without separators, or None if it cannot be a code.

    Only ASCII digits count: ``str.isdigit`` would accept "١٢٣٤٥٦" (Arabic-Indic digits).
    """
    if len(raw) > 64:
        return None
    code = _SEPARATORS.sub("", raw)
    if len(code) != digits or not _ASCII_DIGITS.fullmatch(code):
        return None
    return code


@sensitive
def matching_step(secret: str, code: str, at: float, window: int = 1) -> int | None:
    """Return the time step whose code equals ``code``, within ``window`` steps of ``at``.

    Every candidate step is computed and compared with ``hmac.compare_digest``, whatever
    matched before, so the time taken says nothing about which step (if any) matched. Should
    two steps share a code (one chance in a million), the newest wins: replay protection only
    moves forward.
    """
    current = step_of(at)
    found = None
    for step in range(current - window, current + window + 1):
        if hmac.compare_digest(code_at(secret, step).encode(), code.encode()):
            found = step
    return found


@sensitive
def group_secret(secret: str, size: int = 4) -> str:
    """Return the secret in groups of four for typing: ``ABCD EFGH ...``."""
    return " ".join(secret[i : i + size] for i in range(0, len(secret), size))


@sensitive
def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    """Return the otpauth:// Key URI that authenticator apps read from the QR code.

    The label is ``issuer:account``, both URI-encoded, and the ``issuer`` parameter repeats
    the prefix exactly, as the Key URI format asks. Colons inside either part would make the
    label ambiguous, so they are replaced.
    """
    issuer = issuer.replace(":", " ").strip()
    account = account.replace(":", " ").strip()
    label = f"{quote(issuer, safe='')}:{quote(account, safe='')}"
    query = urlencode(
        {
            "secret": secret,
            "issuer": issuer,
            "algorithm": "SHA1",
            "digits": DIGITS,
            "period": STEP,
        },
        quote_via=quote,
    )
    return f"otpauth://totp/{label}?{query}"
