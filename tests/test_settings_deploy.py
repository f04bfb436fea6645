"""Production settings: `check --deploy` is clean, security headers, Argon2id parameters."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.conf import settings as django_settings
from django.contrib.auth.hashers import get_hasher
from django.utils.module_loading import import_string

from tests.conftest import login_password, needs_django_csp

ROOT = Path(__file__).resolve().parent.parent


def production_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """The environment of a production start: nothing inherited from the test settings."""
    keys = tmp_path / "prod-keys"
    keys.mkdir(mode=0o700, exist_ok=True)
    ring = keys / "ring"
    ring.write_bytes(Fernet.generate_key() + b"\n")
    ring.chmod(0o600)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50)[:50],
        "DJANGO_ALLOWED_HOSTS": "example.com",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "MFA_KEYS_DIR": str(keys),
        "MFA_DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
    }
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_env_is_clean_of_test_overrides(tmp_path):
    env = production_env(tmp_path)
    assert "REDIS_URL" not in env
    assert "DJANGO_SECURE_SSL_REDIRECT" not in env
    assert "MFA_PLAIN_STATIC" not in env
    assert "MFA_FERNET_KEYS" not in env
    assert len(env["DJANGO_SECRET_KEY"]) == 50


@needs_django_csp  # on 5.2, mfa.W014: the demo serves no CSP there
def test_check_deploy_is_clean(tmp_path):
    result = manage(production_env(tmp_path), "check", "--deploy", "--fail-level", "WARNING")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "no issues" in output


def test_check_deploy_fails_without_key_ring(tmp_path):
    # The other side: the same command does speak up.
    env = production_env(tmp_path)
    Path(env["MFA_KEYS_DIR"], "ring").unlink()
    result = manage(env, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode != 0
    assert "mfa.E001" in result.stdout + result.stderr


def test_check_deploy_warns_about_staff_policy(tmp_path):
    env = production_env(tmp_path, MFA_REQUIRE_FOR_STAFF="0")
    result = manage(env, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode != 0
    assert "mfa.W011" in result.stdout + result.stderr


def test_the_smtp_settings_reach_the_mailer_of_either_django(tmp_path):
    # Django 6.1 reads MAILERS (and refuses EMAIL_* beside it); 5.2 reads only EMAIL_*.
    env = production_env(tmp_path, DJANGO_EMAIL_HOST="mail.example.com", DJANGO_EMAIL_PORT="587")
    code = (
        "import django; from django.conf import settings; from django.core.mail import "
        "get_connection; django.setup(); c = get_connection(); "
        "print(type(c).__name__, c.host, c.port)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["EmailBackend", "mail.example.com", "587"]


def test_production_refuses_to_start_without_secret_key(tmp_path):
    env = production_env(tmp_path)
    del env["DJANGO_SECRET_KEY"]
    result = manage(env, "check")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


# --- Headers --------------------------------------------------------------------------------


def csp_directives(header: str) -> dict[str, list[str]]:
    directives = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            directives[words[0]] = words[1:]
    return directives


@needs_django_csp
@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/accounts/login/", "/accounts/2fa/setup/"])
def test_security_headers(client, user, url):
    if url != "/accounts/login/":
        assert login_password(client).status_code == 302
    response = client.get(url)
    assert response.status_code == 200
    csp = response["Content-Security-Policy"]
    directives = csp_directives(csp)
    assert directives["object-src"] == ["'none'"]
    assert directives["base-uri"] == ["'none'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert "default-src" in directives
    assert "'unsafe-inline'" not in csp
    assert "'unsafe-eval'" not in csp
    assert "*" not in csp.split()
    assert response["X-Frame-Options"] == "DENY"
    assert response["Referrer-Policy"]
    assert response["X-Content-Type-Options"] == "nosniff"
    # The QR code is an inline data: PNG; images are the only thing data: may serve.
    for name, sources in directives.items():
        if name != "img-src":
            assert "data:" not in sources, name


def test_production_cookie_and_hsts_settings():
    assert django_settings.DEBUG is False
    assert django_settings.SESSION_COOKIE_SECURE is True
    assert django_settings.CSRF_COOKIE_SECURE is True
    assert django_settings.SESSION_COOKIE_HTTPONLY is True
    assert django_settings.SECURE_HSTS_SECONDS >= 31_536_000


# --- Password hashing -----------------------------------------------------------------------


def test_first_hasher_is_argon2id_with_owasp_parameters():
    hasher_class = import_string(django_settings.PASSWORD_HASHERS[0])
    hasher = hasher_class()
    assert hasher.algorithm == "argon2"
    assert hasher.memory_cost >= 19456
    assert hasher.time_cost >= 2
    assert hasher.parallelism >= 1
    assert get_hasher("default").__class__ is hasher_class


@pytest.mark.django_db
def test_stored_password_hash_is_argon2id(user):
    user.refresh_from_db()
    stored = user.password
    assert stored.startswith("argon2")
    assert "argon2id" in stored
    params = dict(p.split("=") for p in stored.split("$")[3].split(","))
    assert int(params["m"]) >= 19456
    assert int(params["t"]) >= 2
    assert int(params["p"]) >= 1
