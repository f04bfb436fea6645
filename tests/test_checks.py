"""System checks mfa.E001-E005, W010, W011: each situation yields exactly its own id."""

import os

import pytest
from cryptography.fernet import Fernet
from django.core import checks as django_checks

from mfa import checks, crypto

LOCMEM = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
REDIS = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://127.0.0.1:6379/15",
    }
}


def ids(messages) -> list[str]:
    return [m.id for m in messages]


@pytest.fixture
def ring(key_ring):
    return key_ring / "ring"


# --- The key ring ---------------------------------------------------------------------------


def test_good_ring_is_clean(ring):
    assert ring.stat().st_mode & 0o777 == 0o600
    assert checks.check_key_ring() == []


def test_e001_no_ring(ring):
    ring.unlink()
    assert ids(checks.check_key_ring()) == ["mfa.E001"]


def test_e002_unreadable_ring(ring):
    # Tests run as root, for whom chmod 000 still reads; a directory cannot be read as a file.
    ring.unlink()
    ring.mkdir(mode=0o700)
    assert ids(checks.check_key_ring()) == ["mfa.E002"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a mode 000 file anyway")
def test_e002_mode_000(ring):
    ring.chmod(0)
    assert ids(checks.check_key_ring()) == ["mfa.E002"]


@pytest.mark.parametrize(
    "content",
    [
        "",
        "\n\n",
        "# only a comment\n",
        "this is not a fernet key\n",
        Fernet.generate_key().decode()[:-4] + "\n",
        "\xff\xfe garbage bytes\n",
    ],
    ids=["empty", "blank lines", "comment only", "garbage", "truncated key", "non-ascii"],
)
def test_e003_no_valid_key(ring, content):
    ring.write_bytes(content.encode("latin-1"))
    ring.chmod(0o600)
    crypto.reload()
    assert ids(checks.check_key_ring()) == ["mfa.E003"]


def test_e003_garbage_after_a_good_key(ring):
    ring.write_text(Fernet.generate_key().decode() + "\nnot-a-key\n")
    crypto.reload()
    found = checks.check_key_ring()
    assert ids(found) == ["mfa.E003"]


def test_e003_message_does_not_quote_the_line(ring):
    almost = Fernet.generate_key().decode()[:-2] + "!="
    ring.write_text(almost + "\n")
    crypto.reload()
    (error,) = checks.check_key_ring()
    assert error.id == "mfa.E003"
    assert almost[:16] not in error.msg and almost[:16] not in (error.hint or "")


def test_e004_ring_readable_by_others(ring):
    ring.chmod(0o644)
    assert ids(checks.check_key_ring()) == ["mfa.E004"]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_e004_any_group_or_other_bit(ring, mode):
    ring.chmod(mode)
    assert ids(checks.check_key_ring()) == ["mfa.E004"]


def test_e005_keys_dir_world_writable(key_ring):
    key_ring.chmod(0o777)
    assert ids(checks.check_key_ring()) == ["mfa.E005"]


def test_e005_not_raised_for_a_readable_dir(key_ring):
    key_ring.chmod(0o755)
    assert checks.check_key_ring() == []


def test_env_ring_valid(ring, monkeypatch):
    ring.unlink()  # the environment wins; no file needed
    monkeypatch.setenv("MFA_FERNET_KEYS", Fernet.generate_key().decode())
    assert checks.check_key_ring() == []


def test_env_ring_with_two_keys(ring, monkeypatch):
    keys = [Fernet.generate_key().decode() for _ in range(2)]
    monkeypatch.setenv("MFA_FERNET_KEYS", ",".join(keys))
    assert checks.check_key_ring() == []


@pytest.mark.parametrize("value", ["garbage", "garbage,more", Fernet.generate_key().decode()[:20]])
def test_env_ring_garbage(ring, monkeypatch, value):
    monkeypatch.setenv("MFA_FERNET_KEYS", value)
    found = checks.check_key_ring()
    assert ids(found) == ["mfa.E003"]
    assert value not in found[0].msg


def test_checks_are_registered_under_security(ring):
    ring.unlink()
    found = django_checks.run_checks(tags=[django_checks.Tags.security])
    assert "mfa.E001" in ids(found)


# --- The rate-limit cache -------------------------------------------------------------------


def test_w010_locmem_with_several_workers(settings, monkeypatch):
    settings.CACHES = LOCMEM
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    assert ids(checks.check_rate_limit_cache()) == ["mfa.W010"]


def test_no_w010_with_one_worker(settings, monkeypatch):
    settings.CACHES = LOCMEM
    monkeypatch.setenv("WEB_CONCURRENCY", "1")
    assert checks.check_rate_limit_cache() == []


def test_no_w010_without_web_concurrency(settings, monkeypatch):
    settings.CACHES = LOCMEM
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    assert checks.check_rate_limit_cache() == []


def test_no_w010_with_redis(settings, monkeypatch):
    settings.CACHES = REDIS
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    assert checks.check_rate_limit_cache() == []


def test_w010_follows_ratelimit_use_cache(settings, monkeypatch):
    settings.CACHES = {**REDIS, "limits": LOCMEM["default"]}
    settings.RATELIMIT_USE_CACHE = "limits"
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    assert ids(checks.check_rate_limit_cache()) == ["mfa.W010"]


# --- Staff policy ---------------------------------------------------------------------------


def test_w011_staff_without_2fa_in_production(settings):
    settings.MFA_REQUIRE_FOR_STAFF = False
    settings.DEBUG = False
    assert ids(checks.check_staff_policy()) == ["mfa.W011"]


@pytest.mark.parametrize(("require", "debug"), [(True, False), (True, True), (False, True)])
def test_no_w011_otherwise(settings, require, debug):
    settings.MFA_REQUIRE_FOR_STAFF = require
    settings.DEBUG = debug
    assert checks.check_staff_policy() == []
