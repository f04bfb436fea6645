"""RFC 6238 / RFC 4226 maths: published vectors, the module's doctest, and Debian's oathtool.

Everything goes through the time seam: ``code_at(secret, step_of(t))`` and
``matching_step(secret, code, at=t)``, never the wall clock.
"""

import base64
import doctest
import os
import shutil
import subprocess

import pyotp
import pytest

import mfa.totp
from mfa import totp

# ASCII "12345678901234567890" in base32.
RFC_SECRET = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"

# RFC 6238 Appendix B, SHA1 rows.
RFC6238_SHA1 = [
    (59, "94287082"),
    (1111111109, "07081804"),
    (1111111111, "14050471"),
    (1234567890, "89005924"),
    (2000000000, "69279037"),
    (20000000000, "65353130"),
]

# RFC 4226 Appendix D, counters 0 to 9.
RFC4226 = [
    "755224",
    "287082",
    "359152",
    "969429",
    "338314",
    "254676",
    "287922",
    "162583",
    "399871",
    "520489",
]


def test_rfc_secret_is_the_ascii_seed():
    import base64

    assert base64.b32decode(RFC_SECRET) == b"12345678901234567890"


@pytest.mark.parametrize(("unix_time", "expected"), RFC6238_SHA1)
def test_rfc6238_appendix_b_code_at(unix_time, expected):
    assert totp.code_at(RFC_SECRET, totp.step_of(unix_time), digits=8) == expected


@pytest.mark.parametrize(("unix_time", "expected"), RFC6238_SHA1)
def test_rfc6238_appendix_b_matching_step(unix_time, expected):
    # matching_step compares 6-digit codes: the last six digits of the 8-digit vector are the
    # 6-digit code of the same step (both are the same truncated value mod 10^n).
    code6 = expected[-6:]
    assert totp.matching_step(RFC_SECRET, code6, at=unix_time, window=0) == totp.step_of(unix_time)
    # The same code one step away from the window is not accepted.
    assert totp.matching_step(RFC_SECRET, code6, at=unix_time + 2 * totp.STEP, window=1) is None


@pytest.mark.parametrize(("counter", "expected"), list(enumerate(RFC4226)))
def test_rfc4226_hotp_via_code_at(counter, expected):
    # A TOTP step is an HOTP counter.
    assert totp.code_at(RFC_SECRET, counter) == expected


@pytest.mark.parametrize(("counter", "expected"), list(enumerate(RFC4226)))
def test_rfc4226_hotp_via_pyotp(counter, expected):
    assert pyotp.HOTP(RFC_SECRET).at(counter) == expected


def test_module_doctest_passes():
    result = doctest.testmod(mfa.totp)
    assert result.attempted >= 1
    assert result.failed == 0


def test_step_of_boundaries():
    assert totp.step_of(0) == 0
    assert totp.step_of(29.999) == 0
    assert totp.step_of(30) == 1
    assert totp.step_of(59) == 1


def test_matching_step_window_edges():
    at = 1_800_000_007
    current = totp.step_of(at)
    table = {offset: totp.code_at(RFC_SECRET, current + offset) for offset in range(-3, 4)}
    results = [
        totp.matching_step(RFC_SECRET, table[offset], at=at, window=1) == current + offset
        for offset in range(-3, 4)
    ]
    assert results == [False, False, True, True, True, False, False]


def test_generated_secret_has_at_least_160_bits():
    secret = totp.generate_secret()
    assert len(secret) >= 32
    assert set(secret) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
    assert totp.generate_secret() != secret


def test_generated_secret_comes_from_the_csprng(monkeypatch):
    # The secret is the base32 of what secrets.token_bytes (the OS CSPRNG) returned: 20 bytes.
    asked = []

    def token_bytes(n):
        asked.append(n)
        return bytes(range(n))

    monkeypatch.setattr(totp.secrets, "token_bytes", token_bytes)
    secret = totp.generate_secret()
    assert asked == [20]
    assert base64.b32decode(secret + "=" * (-len(secret) % 8)) == bytes(range(20))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("123456", "123456"),
        ("123 456", "123456"),
        ("123-456", "123456"),
        (" 123456 ", "123456"),
        ("١٢٣٤٥٦", None),
        ("12345", None),
        ("1234567", None),
        ("12345a", None),
        ("", None),
        ("1" * 1_000_000, None),
    ],
)
def test_normalize_code(raw, expected):
    assert totp.normalize_code(raw) == expected


def test_group_secret():
    assert totp.group_secret("ABCDEFGHIJ") == "ABCD EFGH IJ"


# --- Debian's oathtool as an independent implementation ------------------------------------

OATHTOOL = shutil.which("oathtool")


def _require_oathtool():
    if OATHTOOL:
        return
    if os.environ.get("CI"):
        pytest.fail("CI must have oathtool installed (apt-get install -y oathtool)")
    pytest.skip("oathtool is not installed (apt-get install -y oathtool)")


def _oathtool_totp(secret: str, unix_time: int, digits: int = 6) -> str:
    # The key on stdin ("-"), not on the command line where other users could see it.
    result = subprocess.run(
        [OATHTOOL, "--totp", "--base32", f"--digits={digits}", f"--now=@{unix_time}", "-"],
        input=secret + "\n",
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return result.stdout.strip()


@pytest.mark.parametrize(("unix_time", "expected"), RFC6238_SHA1)
def test_oathtool_agrees_on_rfc_vectors(unix_time, expected):
    _require_oathtool()
    assert _oathtool_totp(RFC_SECRET, unix_time, digits=8) == expected
    assert totp.code_at(RFC_SECRET, totp.step_of(unix_time), digits=8) == expected


@pytest.mark.parametrize("unix_time", [0, 29, 30, 1_767_225_600, 1_800_000_007, 4_102_444_799])
def test_oathtool_agrees_on_random_secret(unix_time):
    _require_oathtool()
    secret = totp.generate_secret()
    ours = totp.code_at(secret, totp.step_of(unix_time))
    assert _oathtool_totp(secret, unix_time) == ours
    assert totp.matching_step(secret, ours, at=unix_time, window=0) == totp.step_of(unix_time)
