"""System checks mfa.E001-E011, W001, W010-W014: each situation yields exactly its own id."""

import io
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.core import checks as django_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from mfa import checks, crypto

ROOT = Path(__file__).resolve().parent.parent

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


# --- W001: commands that need no key run with a warning --------------------------------------


def test_running_command_outside_any_command_is_none():
    assert checks.running_command() is None


@pytest.mark.django_db
def test_w001_migrate_runs_without_a_ring(ring):
    ring.unlink()
    err = io.StringIO()
    call_command("migrate", skip_checks=False, verbosity=0, stdout=io.StringIO(), stderr=err)
    assert "mfa.W001" in err.getvalue()
    assert "mfa.E001" in err.getvalue()  # the hint names the error it stands for


def test_w001_is_exactly_its_id_for_a_lenient_command(ring, monkeypatch):
    ring.unlink()
    monkeypatch.setattr(checks, "running_command", lambda: "makemigrations")
    assert ids(checks.check_key_ring()) == ["mfa.W001"]


@pytest.mark.parametrize("content", ["", "not a key\n"])
def test_w001_stands_for_e003_too(ring, monkeypatch, content):
    ring.write_text(content)
    crypto.reload()
    monkeypatch.setattr(checks, "running_command", lambda: "test")
    assert ids(checks.check_key_ring()) == ["mfa.W001"]


def test_w001_does_not_soften_permission_errors(ring, monkeypatch):
    ring.chmod(0o644)
    monkeypatch.setattr(checks, "running_command", lambda: "migrate")
    assert ids(checks.check_key_ring()) == ["mfa.E004"]


@pytest.mark.parametrize("command", sorted(checks.STRICT_COMMANDS))
def test_e001_stays_an_error_for_serving_and_check(ring, monkeypatch, command):
    ring.unlink()
    monkeypatch.setattr(checks, "running_command", lambda: command)
    assert ids(checks.check_key_ring()) == ["mfa.E001"]


def test_e001_stops_call_command_check(ring):
    ring.unlink()
    with pytest.raises(SystemCheckError, match="mfa.E001"):
        call_command("check", stdout=io.StringIO(), stderr=io.StringIO())


def demo_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment for the demo's manage.py, with an empty key directory."""
    (tmp_path / "empty-keys").mkdir(mode=0o700, exist_ok=True)
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DJANGO_DEBUG": "1",
        "MFA_DATA_DIR": str(tmp_path / "data"),
        "MFA_KEYS_DIR": str(tmp_path / "empty-keys"),
        **extra,
    }


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_manage_py_migrate_runs_without_a_ring_and_check_refuses(tmp_path):
    env = demo_env(tmp_path)
    migrated = manage(env, "migrate", "--noinput", "-v0")
    assert migrated.returncode == 0, migrated.stderr[-2000:]
    assert "mfa.W001" in migrated.stderr
    checked = manage(env, "check")
    assert checked.returncode == 1
    assert "mfa.E001" in checked.stderr


# --- E010: a ring that git would commit -------------------------------------------------------


def git(*args: str, cwd: Path) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo(tmp_path, settings):
    """A real git repository whose keys/ holds the ring (MFA_KEYS_DIR points there)."""
    top = tmp_path / "site"
    top.mkdir()
    git("init", "-q", cwd=top)
    settings.MFA_KEYS_DIR = str(top / "keys")
    crypto.write_ring([crypto.new_key()])
    return top


def test_e010_ring_in_a_work_tree_not_ignored(repo):
    assert ids(checks.check_key_ring_not_in_git()) == ["mfa.E010"]


def test_e010_from_a_subdirectory_before_the_ring_exists(repo, settings):
    settings.MFA_KEYS_DIR = str(repo / "deep" / "er")
    assert ids(checks.check_key_ring_not_in_git()) == ["mfa.E010"]


def test_no_e010_when_git_ignores_it(repo):
    (repo / ".gitignore").write_text("/keys/\n")
    assert checks.check_key_ring_not_in_git() == []


def test_e010_when_ignored_but_committed_already(repo):
    (repo / ".gitignore").write_text("/keys/\n")
    git("add", "-f", "keys/ring", cwd=repo)
    assert ids(checks.check_key_ring_not_in_git()) == ["mfa.E010"]


def test_e010_in_a_linked_worktree(repo, settings):
    # A linked worktree has a .git *file*; the walk must find it.
    (repo / ".gitignore").write_text("/keys/\n")
    git("add", ".gitignore", cwd=repo)
    git("commit", "-q", "-m", "init", cwd=repo)
    linked = repo.parent / "linked"
    git("worktree", "add", "-q", str(linked), cwd=repo)
    assert (linked / ".git").is_file()
    settings.MFA_KEYS_DIR = str(linked / "secrets")
    assert ids(checks.check_key_ring_not_in_git()) == ["mfa.E010"]
    settings.MFA_KEYS_DIR = str(linked / "keys")
    assert checks.check_key_ring_not_in_git() == []


def test_no_e010_outside_any_work_tree(ring):
    assert checks.check_key_ring_not_in_git() == []


def test_the_demo_keys_folder_passes(settings):
    # keys/.gitignore ignores everything there but itself and the README.
    settings.MFA_KEYS_DIR = str(ROOT / "keys")
    assert checks.check_key_ring_not_in_git() == []


def test_no_e010_for_a_ring_in_the_environment(repo, monkeypatch):
    monkeypatch.setenv("MFA_FERNET_KEYS", Fernet.generate_key().decode())
    assert checks.check_key_ring_not_in_git() == []


def test_w013_without_git_installed(repo, monkeypatch, tmp_path):
    empty = tmp_path / "no-git-here"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    found = checks.check_key_ring_not_in_git()
    assert ids(found) == ["mfa.W013"]
    assert "git is not installed" in found[0].msg


# --- E009: a login page that is not the app's -------------------------------------------------


def test_no_e009_for_the_demo_urls():
    assert checks.check_login_url() == []


def test_e009_auth_urls_mounted_before_mfa_urls(settings):
    settings.ROOT_URLCONF = "tests.urls_auth_first"
    assert ids(checks.check_login_url()) == ["mfa.E009"]


def test_no_e009_auth_urls_mounted_after_mfa_urls(settings):
    from django.urls import resolve, reverse

    settings.ROOT_URLCONF = "tests.urls_auth_after"
    assert checks.check_login_url() == []
    # Password change and reset still come from django.contrib.auth.
    assert resolve(reverse("password_reset")).func.view_class.__name__ == "PasswordResetView"
    assert resolve(reverse("password_change")).func.view_class.__name__ == "PasswordChangeView"


@pytest.mark.parametrize("login_url", ["/nowhere/", "/accounts/security/", "admin:login"])
def test_e009_login_url_not_the_apps(settings, login_url):
    settings.LOGIN_URL = login_url
    assert ids(checks.check_login_url()) == ["mfa.E009"]


@pytest.mark.parametrize("login_url", ["mfa:login", "/accounts/login/", "/accounts/login/?x=1"])
def test_no_e009_for_the_apps_login(settings, login_url):
    settings.LOGIN_URL = login_url
    assert checks.check_login_url() == []


def test_no_e009_for_a_login_on_another_host(settings):
    settings.LOGIN_URL = "https://sso.example.org/login/"
    assert checks.check_login_url() == []


def test_e009_for_a_stock_login_mounted_elsewhere(settings):
    settings.ROOT_URLCONF = "tests.urls_auth_elsewhere"
    found = checks.check_login_url()
    assert ids(found) == ["mfa.E009"]
    assert '"login"' in found[0].msg


def test_e009_is_registered_under_security_and_urls(settings):
    settings.ROOT_URLCONF = "tests.urls_auth_first"
    for tag in (django_checks.Tags.security, django_checks.Tags.urls):
        assert "mfa.E009" in ids(django_checks.run_checks(tags=[tag]))


# --- W012: where a login lands ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["/accounts/profile/", "/nowhere/", "no-such-url-name"])
def test_w012_login_redirect_url_leads_nowhere(settings, value):
    settings.LOGIN_REDIRECT_URL = value
    assert ids(checks.check_login_redirect()) == ["mfa.W012"]


@pytest.mark.parametrize("value", ["home", "/", "mfa:security", "https://www.example.org/"])
def test_no_w012_when_it_leads_somewhere(settings, value):
    settings.LOGIN_REDIRECT_URL = value
    assert checks.check_login_redirect() == []


# --- The rate-limit cache -------------------------------------------------------------------


def test_w010_locmem_with_several_workers(settings, monkeypatch):
    settings.CACHES = LOCMEM
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    assert ids(checks.check_rate_limit_cache()) == ["mfa.W010"]


def test_w010_names_django_settings_not_the_demos_variables(settings, monkeypatch):
    settings.CACHES = LOCMEM
    monkeypatch.setenv("WEB_CONCURRENCY", "2")
    (warning,) = checks.check_rate_limit_cache()
    assert "RATELIMIT_USE_CACHE" in warning.hint and "CACHES" in warning.hint
    assert "REDIS_URL" not in warning.msg + warning.hint


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


# --- W014: no Content-Security-Policy (check --deploy) ----------------------------------------

DJANGO_CSP = "django.middleware.csp.ContentSecurityPolicyMiddleware"
DJANGO_CSP_PACKAGE = "csp.middleware.CSPMiddleware"
A_POLICY = {"default-src": ["'self'"]}


def without_csp(middleware: list[str]) -> list[str]:
    return [m for m in middleware if m not in (DJANGO_CSP, DJANGO_CSP_PACKAGE)]


def test_w014_without_any_csp(settings):
    settings.MIDDLEWARE = without_csp(settings.MIDDLEWARE)
    found = checks.check_content_security_policy()
    assert ids(found) == ["mfa.W014"]
    # The two ways, and the policy the app's pages need.
    assert DJANGO_CSP in found[0].hint and DJANGO_CSP_PACKAGE in found[0].hint
    assert (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'self'"
    ) in found[0].hint


@pytest.mark.parametrize("policy", [{}, None])
def test_w014_djangos_middleware_without_a_policy(settings, policy):
    settings.MIDDLEWARE = [*without_csp(settings.MIDDLEWARE), DJANGO_CSP]
    settings.SECURE_CSP = policy
    assert ids(checks.check_content_security_policy()) == ["mfa.W014"]


def test_w014_a_policy_without_djangos_middleware(settings):
    settings.MIDDLEWARE = without_csp(settings.MIDDLEWARE)
    settings.SECURE_CSP = A_POLICY
    assert ids(checks.check_content_security_policy()) == ["mfa.W014"]


def test_no_w014_with_djangos_csp(settings):
    settings.MIDDLEWARE = [*without_csp(settings.MIDDLEWARE), DJANGO_CSP]
    settings.SECURE_CSP = A_POLICY
    assert checks.check_content_security_policy() == []


def test_no_w014_with_django_csp(settings):
    # django-csp, the way on Django 5.2 (its settings are its own business).
    settings.MIDDLEWARE = [*without_csp(settings.MIDDLEWARE), DJANGO_CSP_PACKAGE]
    assert checks.check_content_security_policy() == []


def test_the_demo_has_a_csp_where_django_has_one():
    has_csp = find_spec("django.utils.csp") is not None
    assert ids(checks.check_content_security_policy()) == ([] if has_csp else ["mfa.W014"])


def test_w014_is_a_deploy_check_under_security(settings):
    settings.MIDDLEWARE = without_csp(settings.MIDDLEWARE)
    tags = [django_checks.Tags.security]
    assert "mfa.W014" not in ids(django_checks.run_checks(tags=tags))
    found = django_checks.run_checks(tags=tags, include_deployment_checks=True)
    assert "mfa.W014" in ids(found)
