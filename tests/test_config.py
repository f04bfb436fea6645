"""Defaults for a site that sets little: where the ring lives, the issuer, the landing page.

Also the integrator's set-up around them: Django's password change keeps a 2FA session, and
gunicorn.conf.py runs the system checks before it serves.
"""

import io
import os
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.test import RequestFactory

from mfa import checks, conf, sessions
from mfa.conf import settings as mfa_settings
from mfa.models import UserSession
from tests.conftest import PASSWORD, full_login, is_logged_in, login_password
from tests.test_enrolment import decode_qr, qr_and_alt, split_uri

ROOT = Path(__file__).resolve().parent.parent


# --- The key ring's default place -----------------------------------------------------------


@pytest.fixture
def no_keys_dir(settings, monkeypatch, tmp_path):
    """MFA_KEYS_DIR unset, XDG_DATA_HOME unset, and a home directory of our own."""
    del settings.MFA_KEYS_DIR
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def test_default_keys_dir_is_in_the_users_data_dir(no_keys_dir):
    path = mfa_settings.KEYS_DIR
    assert path.is_absolute()
    assert path.parent == no_keys_dir / ".local" / "share" / "django-mfa"
    assert not path.is_relative_to(Path.cwd())


def test_default_keys_dir_follows_xdg_data_home(no_keys_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert mfa_settings.KEYS_DIR.parent == tmp_path / "xdg" / "django-mfa"


def test_a_relative_xdg_data_home_is_ignored(no_keys_dir, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", "relative/data")
    assert mfa_settings.KEYS_DIR.parent == no_keys_dir / ".local" / "share" / "django-mfa"


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_two_sites_on_one_account_get_two_rings(no_keys_dir, settings):
    first = mfa_settings.KEYS_DIR
    settings.DATABASES = {
        **settings.DATABASES,
        "default": {**settings.DATABASES["default"], "NAME": "/srv/other/db.sqlite3"},
    }
    assert first != mfa_settings.KEYS_DIR
    assert mfa_settings.KEYS_DIR.name.startswith("db-")


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
@pytest.mark.parametrize(
    "change", [{"PASSWORD": "rotated"}, {"HOST": "db.internal", "PORT": "6432"}]
)
def test_the_credentials_and_address_do_not_change_the_place(no_keys_dir, settings, change):
    first = mfa_settings.KEYS_DIR
    settings.DATABASES = {
        **settings.DATABASES,
        "default": {**settings.DATABASES["default"], **change},
    }
    assert first == mfa_settings.KEYS_DIR


@pytest.mark.parametrize("home", ["/nonexistent", "/", "~"])
def test_no_home_means_set_mfa_keys_dir(no_keys_dir, monkeypatch, home):
    monkeypatch.setenv("HOME", home)
    with pytest.raises(ImproperlyConfigured, match="MFA_KEYS_DIR"):
        conf.default_keys_dir()
    found = checks.check_key_ring()
    assert [m.id for m in found] == ["mfa.E001"]
    assert "MFA_KEYS_DIR" in found[0].msg


@pytest.mark.django_db
def test_generate_creates_the_default_dir_0700(no_keys_dir):
    out = io.StringIO()
    call_command("mfa_keys", "generate", stdout=out)
    path = mfa_settings.KEYS_DIR
    assert (path / "ring").stat().st_mode & 0o777 == 0o600
    assert path.stat().st_mode & 0o777 == 0o700
    assert str(path) in out.getvalue()
    assert checks.check_key_ring() == []


# --- The issuer -----------------------------------------------------------------------------


@pytest.fixture
def no_issuer(settings):
    del settings.MFA_ISSUER


def test_issuer_setting_wins(settings):
    settings.MFA_ISSUER = "Acme Login"
    assert conf.issuer(RequestFactory().get("/")) == "Acme Login"


def test_issuer_is_the_host_without_its_port(no_issuer, settings):
    settings.ALLOWED_HOSTS = ["login.example.org"]
    request = RequestFactory().get("/", HTTP_HOST="login.example.org:8443")
    assert conf.issuer(request) == "login.example.org"


def test_issuer_without_a_request_is_the_first_concrete_allowed_host(no_issuer, settings):
    settings.ALLOWED_HOSTS = ["*", ".example.org", "shop.example.org"]
    assert conf.issuer() == "shop.example.org"


def test_issuer_is_never_the_frameworks_name(no_issuer, settings):
    settings.ALLOWED_HOSTS = ["*"]
    assert "django" not in conf.issuer().lower()


@pytest.mark.parametrize(
    ("site_name", "expected"), [("Acme Shop", "Acme Shop"), ("example.com", "testserver")]
)
def test_issuer_is_the_sites_name(no_issuer, settings, monkeypatch, site_name, expected):
    # django.contrib.sites' own default name, "example.com", is nobody's: the host wins then.
    import django.contrib.sites.shortcuts as shortcuts

    settings.INSTALLED_APPS = [*settings.INSTALLED_APPS, "django.contrib.sites"]
    monkeypatch.setattr(
        shortcuts, "get_current_site", lambda request: SimpleNamespace(name=site_name)
    )
    assert conf.issuer(RequestFactory().get("/")) == expected


def test_setup_page_names_the_site_not_django(no_issuer, client, clock, user):
    login_password(client)
    html = client.get("/accounts/2fa/setup/").content.decode()
    uri = decode_qr(qr_and_alt(html)[0])
    _, prefix, _, query = split_uri(uri)
    assert prefix == query["issuer"][0] == "testserver"
    assert "Django" not in uri


# --- Where a login lands --------------------------------------------------------------------


def test_django_default_landing_page_becomes_the_security_page(client, user, settings):
    settings.LOGIN_REDIRECT_URL = "/accounts/profile/"  # Django's default; nothing serves it
    response = login_password(client)
    assert response.status_code == 302
    assert response["Location"] == "/accounts/security/"


def test_an_explicit_landing_page_is_kept_even_if_it_is_missing(client, user, settings):
    settings.LOGIN_REDIRECT_URL = "/welcome/"  # the site's choice: W012 tells, we obey
    assert login_password(client)["Location"] == "/welcome/"


def test_the_landing_page_of_the_site(client, user, settings):
    settings.LOGIN_REDIRECT_URL = "home"
    assert login_password(client)["Location"] == "/"


# --- Django's password change, mounted after mfa.urls ---------------------------------------


def test_password_change_keeps_the_2fa_session(client, clock, user_with_totp, settings):
    settings.ROOT_URLCONF = "tests.urls_auth_after"
    assert full_login(client, user_with_totp).status_code == 302
    key_before = client.session.session_key
    new = "an entirely new passphrase 42"
    response = client.post(
        "/accounts/password_change/",
        {"old_password": PASSWORD, "new_password1": new, "new_password2": new},
    )
    assert response.status_code == 302
    assert response["Location"] == "/accounts/password_change/done/"
    # update_session_auth_hash gave the session a new key; its registration followed at once,
    # so "sign out other sessions" from another device still finds and ends this one.
    session = client.session
    assert session.session_key != key_before
    registration = UserSession.objects.get(sid=session[sessions.SID_KEY])
    assert registration.session_key == session.session_key
    assert client.get("/accounts/security/").status_code == 200
    assert is_logged_in(client)
    user = get_user_model().objects.get(pk=user_with_totp.user.pk)
    assert user.check_password(new)


# --- gunicorn.conf.py's start-up checks -----------------------------------------------------


class Log:
    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def __getattr__(self, level):
        return lambda fmt, *args: self.lines.append((level, fmt % args))


@pytest.fixture
def server(monkeypatch, tmp_path):
    """A stand-in for gunicorn's arbiter with three workers, and the demo's environment."""
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "config.settings")
    monkeypatch.setenv("DJANGO_DEBUG", "1")
    monkeypatch.setenv("MFA_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("WEB_CONCURRENCY", "1")  # what -w 3 on the command line overrides
    return SimpleNamespace(cfg=SimpleNamespace(workers=3), log=Log())


def gunicorn_conf() -> dict:
    return runpy.run_path(str(ROOT / "gunicorn.conf.py"))


def test_gunicorn_refuses_to_start_on_a_check_error(server, monkeypatch, tmp_path):
    empty = tmp_path / "empty-keys"
    empty.mkdir(mode=0o700)
    monkeypatch.setenv("MFA_KEYS_DIR", str(empty))
    with pytest.raises(RuntimeError, match="system checks failed"):
        gunicorn_conf()["on_starting"](server)
    assert any(level == "error" and "mfa.E001" in line for level, line in server.log.lines)


def test_gunicorn_warns_about_its_real_worker_count(server, monkeypatch, key_ring):
    monkeypatch.setenv("MFA_KEYS_DIR", str(key_ring))
    gunicorn_conf()["on_starting"](server)
    assert os.environ["WEB_CONCURRENCY"] == "3"
    assert any(level == "warning" and "mfa.W010" in line for level, line in server.log.lines)
    assert not any(level == "error" for level, _ in server.log.lines)
