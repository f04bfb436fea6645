"""A second Django project, someone else's, with the app installed from the built wheel.

The project is what an integrator has after ``django-admin startproject``: Django's own
settings plus the lines of ``SETTINGS`` (the README quotes them), ``URLS``, a custom user
model that signs in with its email address, a base template whose blocks have other names
than the app's, and pages of its own behind ``login_required``, ``mfa_required`` and
``reauth_required``. The test drives it over real HTTP against ``manage.py runserver``, as a
browser would: cookies, CSRF tokens scraped from the forms, codes computed with pyotp from the
secret the setup page shows.
"""

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pyotp
import pytest

from .client import Browser, Page
from .conftest import project_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# --- The integrator's part: what the README says, line for line ------------------------------
# Appended to the settings.py that `django-admin startproject` wrote.
SETTINGS = """\
INSTALLED_APPS[INSTALLED_APPS.index("django.contrib.admin")] = "mfa.apps.MfaAdminConfig"
INSTALLED_APPS += ["mfa"]
AUTH = MIDDLEWARE.index("django.contrib.auth.middleware.AuthenticationMiddleware")
MIDDLEWARE.insert(AUTH + 1, "mfa.middleware.SecondFactorMiddleware")
LOGIN_URL = "mfa:login"
LOGIN_REDIRECT_URL = "home"
MFA_KEYS_DIR = BASE_DIR.parent / "keys"  # outside the repository; back it up on its own
# The app's pages inside the site's base template, whose blocks have their own names:
MFA_BASE_TEMPLATE = "base.html"
MFA_BASE_BLOCKS = {"title": "page_title", "content": "main"}
"""
# The whole urls.py; the two accounts/ lines are the integrator's, in this order.
URLS = """\
from django.contrib import admin
from django.urls import include, path

from accounts import views

urlpatterns = [
    path("accounts/", include("mfa.urls")),
    path("accounts/", include("django.contrib.auth.urls")),  # password change and reset
    path("admin/", admin.site.urls),
    path("", views.home, name="home"),
    path("payments/", views.payments, name="payments"),
    path("close-account/", views.close_account, name="close_account"),
]
"""
INTEGRATOR_URL_LINES = [line for line in URLS.splitlines() if 'include("' in line]

# --- The rest of the project: its own app, user model, templates and pages ------------------
SITE_SETTINGS = """\
INSTALLED_APPS += ["accounts"]
AUTH_USER_MODEL = "accounts.User"
TEMPLATES[0]["DIRS"] = [BASE_DIR / "templates"]
"""
MODELS = """\
from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    email = models.EmailField(unique=True)
    USERNAME_FIELD = "email"
    REQUIRED_FIELDS = ["username"]
"""
VIEWS = """\
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import render

from mfa.decorators import mfa_required, reauth_required


@login_required
def home(request):
    return render(request, "home.html")


@mfa_required
def payments(request):
    return HttpResponse("The payments page.")


@reauth_required
def close_account(request):
    return HttpResponse("The close-account page.")
"""
BASE_TEMPLATE = """\
<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{% block page_title %}{% endblock %} | Shop</title></head>
<body>
<header class="shop-header">Shop</header>
<main>{% block main %}{% endblock %}</main>
</body>
</html>
"""
HOME_TEMPLATE = """\
{% extends "base.html" %}
{% block page_title %}Home{% endblock %}
{% block main %}
<p>Signed in as {{ user.get_username }}.</p>
<form method="post" action="{% url 'mfa:logout' %}">{% csrf_token %}<button>Sign out</button></form>
{% endblock %}
"""
TESTS = """\
from django.contrib.auth import get_user_model
from django.test import TestCase

from mfa.test import enrol, verified_login


class PaymentsTests(TestCase):
    def setUp(self):
        self.user = get_user_model().objects.create_user(
            username="bob", email="bob@example.com", password="a long test password"
        )
        enrol(self.user)

    def test_a_verified_user_sees_the_payments_page(self):
        verified_login(self.client, self.user)
        self.assertContains(self.client.get("/payments/"), "The payments page.")

    def test_force_login_is_not_enough_for_a_user_with_2fa(self):
        self.client.force_login(self.user)
        self.assertRedirects(
            self.client.get("/payments/"), "/accounts/login/", fetch_redirect_response=False
        )
"""
EMAIL, PASSWORD = "alice@example.com", "correct horse battery staple"
START_TIMEOUT = 60  # seconds for runserver to answer; it usually takes one or two


def test_the_integrators_settings_and_urls_stay_short():
    settings = [line for line in SETTINGS.splitlines() if not line.startswith("#")]
    assert len(settings) + len(INTEGRATOR_URL_LINES) <= 15


# --- Making the project -----------------------------------------------------------------------


def manage(python: Path, project: Path, *args: str, check: bool = True):
    """Run ``manage.py args`` in ``project``; return the completed process."""
    result = subprocess.run(
        [str(python), "manage.py", *args],
        cwd=project,
        env=project_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert result.returncode == 0, (
            f"manage.py {' '.join(args)}:\n{result.stdout}{result.stderr}"
        )
    return result


def make_project(python: Path, where: Path) -> Path:
    """Generate the project in ``where``/shop; its key ring would live in ``where``/keys."""
    project = where / "shop"
    project.mkdir()
    env = project_env()
    subprocess.run(
        [str(python), "-m", "django", "startproject", "shop", str(project)], env=env, check=True
    )
    manage(python, project, "startapp", "accounts")
    settings = project / "shop" / "settings.py"
    settings.write_text(settings.read_text() + "\n" + SETTINGS + SITE_SETTINGS)
    (project / "shop" / "urls.py").write_text(URLS)
    (project / "accounts" / "models.py").write_text(MODELS)
    (project / "accounts" / "views.py").write_text(VIEWS)
    (project / "accounts" / "tests.py").write_text(TESTS)
    (project / "templates").mkdir()
    (project / "templates" / "base.html").write_text(BASE_TEMPLATE)
    (project / "templates" / "home.html").write_text(HOME_TEMPLATE)
    return project


def test_makemigrations_and_migrate_work_before_the_key_ring_exists_and_check_refuses(
    project_python, tmp_path
):
    # Not tmp_path itself: the suite's autouse key ring lives in tmp_path/keys.
    where = tmp_path / "site"
    where.mkdir()
    project = make_project(project_python, where)
    assert not (where / "keys").exists()
    # Commands that read no key run, and say what is missing as a warning.
    made = manage(project_python, project, "makemigrations", "accounts")
    assert "mfa.W001" in made.stdout + made.stderr
    migrated = manage(project_python, project, "migrate", "--noinput")
    assert "mfa.W001" in migrated.stdout + migrated.stderr
    # `check` is how a deploy asks whether the site may serve: without a ring it may not.
    check = manage(project_python, project, "check", check=False)
    assert check.returncode == 1
    assert "mfa.E001" in check.stdout + check.stderr
    assert not (where / "keys").exists()


# --- The project, served --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def runserver(python: Path, project: Path):
    """Serve ``project`` on 127.0.0.1 and a free port until the block ends; yield the port."""
    port = free_port()
    log = project / "runserver.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(python), "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
            cwd=project,
            env=project_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"runserver exited with {process.returncode}:\n{log.read_text()}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            if time.monotonic() > deadline:
                pytest.fail(f"runserver did not answer in {START_TIMEOUT} s:\n{log.read_text()}")
            time.sleep(0.1)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@pytest.fixture(scope="module")
def served(project_python, tmp_path_factory):
    """The project with its key ring, its database and one user, under runserver."""
    where = tmp_path_factory.mktemp("served")
    project = make_project(project_python, where)
    manage(project_python, project, "mfa_keys", "generate")
    manage(project_python, project, "makemigrations", "accounts")
    manage(project_python, project, "migrate", "--noinput")
    create = (
        "from django.contrib.auth import get_user_model; get_user_model().objects.create_user("
        f"username='alice', email={EMAIL!r}, password={PASSWORD!r})"
    )
    manage(project_python, project, "shell", "-c", create)
    with runserver(project_python, project) as port:
        yield project, port


class Authenticator:
    """The user's phone: the secret read off the setup page, each time step used once."""

    def __init__(self, secret: str) -> None:
        self.totp = pyotp.TOTP(secret)
        self.last_step: int | None = None

    def code(self) -> str:
        # The app accepts one step either side of its clock and each step once. The step just
        # behind is used while it has 5 s to live; when no acceptable step is left unused, wait
        # for the real clock (the server's) to reach the next one: at most once a run, < 30 s.
        now = time.time()
        step = int(now // 30)
        earliest = step - 1 if now % 30 < 25 else step
        wanted = earliest if self.last_step is None else max(earliest, self.last_step + 1)
        if wanted > step + 1:
            time.sleep((step + 1) * 30 - now + 0.5)
        self.last_step = wanted
        return self.totp.at(wanted * 30)


def sign_out(browser: Browser) -> None:
    home = browser.get("/")
    assert home.status == 200, home.text
    out = browser.submit(home.form_with("csrfmiddlewaretoken"))
    assert out.status == 302
    assert browser.get("/").status == 302, "still signed in after signing out"


def sign_in_with_password(browser: Browser, next_path: str = "/") -> Page:
    page = browser.get(f"/accounts/login/?next={next_path}")
    assert page.status == 200, page.text
    assert "| Shop</title>" in page.text, "the login page is not inside the site's base"
    return browser.submit(page.form_with("username", "password"), username=EMAIL, password=PASSWORD)


def test_the_whole_flow_over_http(served):
    project, port = served
    browser = Browser(port)

    # Anonymous: the site's own pages send to the app's login.
    for path in ("/", "/payments/", "/close-account/"):
        page = browser.get(path)
        assert page.status == 302 and page.location.startswith("/accounts/login/"), path

    # The login page is the app's, inside the site's base, with the app's stylesheet.
    login = browser.get("/accounts/login/")
    assert login.status == 200
    assert 'class="shop-header"' in login.text
    stylesheet = re.search(r'href="([^"]*mfa\.css)"', login.text)
    assert stylesheet, "the app's CSS is missing from its page in the site's base"
    assert browser.get(stylesheet.group(1)).status == 200

    # Password only: no second factor yet.
    page = sign_in_with_password(browser)
    assert page.status == 302 and page.location == "/", page.text
    assert f"Signed in as {EMAIL}." in browser.get("/").text

    # Enrol: confirm the password if asked, "scan" the secret, confirm a code.
    page = browser.get("/accounts/2fa/setup/")
    if "code" not in page.form_with("csrfmiddlewaretoken").fields:
        page = browser.submit(page.form_with("password"), password=PASSWORD)
        page = browser.follow(page)
    assert page.status == 200, page.text
    grouped = re.search(r'<code class="secret" id="secret">([A-Z2-7 ]+)</code>', page.text)
    assert grouped, "no secret on the setup page"
    secret = grouped.group(1).replace(" ", "")
    uri = re.search(r'href="(otpauth://[^"]+)"', page.text).group(1).replace("&amp;", "&")
    assert pyotp.parse_uri(uri).secret == secret
    phone = Authenticator(secret)
    page = browser.submit(page.form_with("code"), code=phone.code())
    assert page.status == 200, page.text
    recovery_codes = re.findall(r'<code class="recovery-code">([^<]+)</code>', page.text)
    assert len(recovery_codes) == 10
    assert "| Shop</title>" in page.text
    sign_out(browser)

    # Password and a code; then the site's pages behind mfa_required and reauth_required.
    page = sign_in_with_password(browser, "/payments/")
    assert page.status == 302 and page.location.startswith("/accounts/2fa/verify/"), page.text
    page = browser.get(page.location)
    page = browser.submit(page.form_with("code"), code=phone.code())
    assert page.status == 302 and page.location == "/payments/", page.text
    assert browser.get("/payments/").text == "The payments page."
    page = browser.get("/close-account/")
    if page.status == 302:  # a session not fresh enough: the password and a code again
        assert page.location.startswith("/accounts/reauth/?next="), page.location
        page = browser.follow(page)
        form = page.form_with("password")
        values = {"password": PASSWORD}
        if "code" in form.fields:
            values["code"] = phone.code()
        page = browser.follow(browser.submit(form, **values))
    assert page.status == 200 and page.text == "The close-account page.", page.text
    sign_out(browser)

    # A recovery code instead of the phone.
    page = sign_in_with_password(browser)
    verify = browser.get(page.location)
    lost_phone = re.search(r'href="(/accounts/2fa/recovery/[^"]*)"', verify.text).group(1)
    page = browser.get(lost_phone.replace("&amp;", "&"))
    page = browser.submit(page.form_with("code"), code=recovery_codes[0])
    assert page.status == 302 and page.location == "/", page.text

    # Turn it off with the password and a code; then the password alone signs in.
    page = browser.get("/accounts/2fa/disable/")
    page = browser.submit(page.form_with("password", "code"), password=PASSWORD, code=phone.code())
    assert page.status == 302 and page.location == "/accounts/security/", page.text
    assert "Two-factor authentication is now off." in browser.get(page.location).text
    sign_out(browser)
    page = sign_in_with_password(browser)
    assert page.status == 302 and page.location == "/", page.text


def test_manage_py_test_of_the_project_uses_verified_login(served, project_python):
    project, _ = served
    result = manage(project_python, project, "test", "accounts", "-v", "2", check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "test_a_verified_user_sees_the_payments_page" in output and "OK" in output


def test_the_project_checks_clean_with_its_key_ring(served, project_python):
    project, _ = served
    result = manage(project_python, project, "check", "--fail-level", "WARNING", check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_app_runs_on_the_django_of_the_matrix(project_python):
    script = "import django, sys; print(django.get_version(), *sys.version_info[:2])"
    version, *python = subprocess.run(
        [str(project_python), "-c", script],
        env=project_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    wanted = os.environ.get("MFA_TEST_DJANGO_SERIES")
    if wanted:  # ./run test's matrix pass names the series it installed
        assert version.startswith(wanted + "."), (version, wanted)
    assert tuple(map(int, python)) >= (3, 12)
