"""The app's pages stand on their own: with no site templates, or inside any site's base.

Three configurations, each walked through every page an app view renders:

- standalone: no site templates at all (TEMPLATES DIRS = [], no context processors) and no
  MFA_BASE_TEMPLATE, as for an integrator who just installed the wheel;
- othersite: a site base whose blocks are called ``page_title`` and ``main`` (not the demo's
  ``title`` and ``content``) and which shows no flash messages;
- demo: the demo site's own base, which has a head block and shows the messages itself.

Each page must carry its content (the QR code and the secret on the setup page), the app's
CSS and JavaScript, and each flash message exactly once. Then the system checks mfa.E007 and
mfa.E008, and the static rules: the CSS stays under .mfa, nothing inline for the CSP.
"""

import re
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import Client

from mfa import checks, crypto, pages, totp
from mfa.conf import settings as mfa_settings

from .conftest import PASSWORD, full_login, login_password, secret_from_setup_page

ROOT = Path(__file__).resolve().parents[1]
SITE_TEMPLATES = Path(__file__).resolve().parent / "site_templates"

LOGIN, LOGOUT = "/accounts/login/", "/accounts/logout/"
VERIFY, RECOVERY = "/accounts/2fa/verify/", "/accounts/2fa/recovery/"
SETUP, SECURITY = "/accounts/2fa/setup/", "/accounts/security/"
DISABLE, REGENERATE = "/accounts/2fa/disable/", "/accounts/2fa/recovery-codes/"
CSS = '<link rel="stylesheet" href="/static/mfa/mfa.css">'
JS = '<script src="/static/mfa/mfa.js" defer></script>'
ALREADY_ON = "You have an authenticator app already."


def configure(settings, name: str) -> str:
    """Apply one configuration; return the text that shows its base was used."""
    engine = dict(settings.TEMPLATES[0])
    if name == "standalone":
        engine["DIRS"] = []
        engine["OPTIONS"] = {"context_processors": []}
        del settings.MFA_BASE_TEMPLATE
        del settings.MFA_BASE_BLOCKS
        del settings.MFA_SHOW_MESSAGES
        marker = 'class="mfa-standalone"'
    elif name == "othersite":
        engine["DIRS"] = [SITE_TEMPLATES]
        settings.MFA_BASE_TEMPLATE = "othersite/base.html"
        settings.MFA_BASE_BLOCKS = {"title": "page_title", "content": "main"}
        del settings.MFA_SHOW_MESSAGES
        marker = "OTHERSITE-MARKER"
    else:
        engine["DIRS"] = [ROOT / "templates"]
        settings.MFA_BASE_TEMPLATE = "base.html"
        settings.MFA_BASE_BLOCKS = {"head": "head"}
        settings.MFA_SHOW_MESSAGES = False
        marker = 'class="site-header"'
    settings.TEMPLATES = [engine]
    return marker


CONFIGS = ["standalone", "othersite", "demo"]


@pytest.fixture(params=CONFIGS)
def config(request, settings):
    return request.param, configure(settings, request.param)


def title_of(html: str) -> str:
    match = re.search(r"<title>(.*?)</title>", html, re.S)
    assert match, "the page has a title"
    return match.group(1).strip()


def assert_app_page(response, status: int, title: str, marker: str, config_name: str):
    """The page rendered in its configuration's base, whole, with the app's CSS and JS."""
    html = response.content.decode()
    assert response.status_code == status, html[:500]
    assert title_of(html).startswith(title), title_of(html)
    assert marker in html
    assert "<h1>" in html
    # Once each: twice would bind mfa.js's handlers twice.
    assert html.count(CSS) == 1 and html.count(JS) == 1, "the app's CSS and JS, once each"
    head, _, body = html.partition("</head>")
    if config_name == "othersite":  # no head block named: the links open the content
        assert CSS in body and JS in body
        assert re.search(r'<div id="main-area"><div class="mfa">\s*<link', html)
    else:
        assert CSS in head and JS in head
    assert 'class="mfa' in body, "the content is inside the app's wrapper"


@pytest.mark.django_db
def test_every_page_renders_whole_in_each_configuration(config, user, clock):
    name, marker = config
    client = Client()

    def page(path, title, status=200, method="get", data=None):
        response = getattr(client, method)(path, data or {})
        assert_app_page(response, status, title, marker, name)
        return response.content.decode()

    page(LOGIN, "Sign in")
    page(LOGIN, "Sign in", 400, "post", {"username": "alice", "password": "wrong"})
    assert login_password(client).status_code == 302  # no second factor yet: signed in
    clock.shift(mfa_settings.REAUTH_AGE + 1)
    page(SETUP, "Confirm your password")
    assert client.post(SETUP, {"password": PASSWORD}).status_code == 302
    html = page(SETUP, "Set up two-factor authentication")
    assert re.search(r'<img class="qr" src="data:image/png;base64,[A-Za-z0-9+/=]{200,}"', html)
    secret = secret_from_setup_page(html)
    page(SETUP, "Set up two-factor authentication", 400, "post", {"code": "12345"})
    code = totp.code_at(secret, totp.step_of(totp.now()))
    html = page(SETUP, "Your recovery codes", 200, "post", {"code": code})
    assert html.count('class="recovery-code"') == mfa_settings.RECOVERY_CODE_COUNT
    page(SECURITY, "Security")
    page(DISABLE, "Turn off two-factor authentication")
    page(REGENERATE, "New recovery codes")
    client.post(LOGOUT)
    assert login_password(client).status_code == 302
    page(VERIFY, "Two-factor code")
    page(RECOVERY, "Recovery code")


@pytest.mark.django_db
def test_the_429_page_renders_whole_in_each_configuration(config, settings, user):
    name, marker = config
    settings.MFA_LOGIN_IP_RATE = "1/m"
    client = Client()
    login_password(client, password="wrong")
    response = login_password(client, password="wrong")
    assert_app_page(response, 429, "Too many attempts", marker, name)
    assert "Please wait" in response.content.decode()


@pytest.mark.django_db
def test_the_unreadable_page_renders_whole_in_each_configuration(config, user_with_totp, clock):
    name, marker = config
    crypto.write_ring([crypto.new_key()])  # the key that encrypted the secret is gone
    client = Client()
    assert login_password(client).status_code == 302
    response = client.post(VERIFY, {"code": user_with_totp.code()})
    assert_app_page(response, 403, "Sign-in unavailable", marker, name)


@pytest.mark.django_db
def test_a_flash_message_appears_exactly_once_in_each_configuration(config, user_with_totp, clock):
    name, marker = config
    client = Client()
    assert full_login(client, user_with_totp).status_code == 302
    assert client.get(SETUP).status_code == 302  # already on: back to the security page
    html = client.get(SECURITY).content.decode()
    assert marker in html
    assert html.count(ALREADY_ON) == 1, html
    # Shown once, then gone.
    assert ALREADY_ON not in client.get(SECURITY).content.decode()


@pytest.mark.django_db
def test_a_site_base_that_shows_messages_and_the_app_both_showing_them_is_what_the_setting_is_for(
    settings, user_with_totp, clock
):
    configure(settings, "demo")
    settings.MFA_SHOW_MESSAGES = True
    client = Client()
    full_login(client, user_with_totp)
    client.get(SETUP)
    assert client.get(SECURITY).content.decode().count(ALREADY_ON) == 2


@pytest.mark.django_db
def test_a_site_may_override_mfa_base_html_instead(settings, user, clock):
    configure(settings, "othersite")
    del settings.MFA_BASE_TEMPLATE
    del settings.MFA_BASE_BLOCKS
    settings.TEMPLATES = [
        {**settings.TEMPLATES[0], "DIRS": [SITE_TEMPLATES / "override", SITE_TEMPLATES]}
    ]
    client = Client()
    login_password(client)
    html = client.get(SETUP).content.decode()
    assert "OVERRIDE-MARKER" in html and "OTHERSITE-MARKER" in html
    assert title_of(html).startswith("Set up two-factor authentication")
    secret_from_setup_page(html)
    assert html.count(CSS) == 1 and html.count(JS) == 1


# --- MFA_BASE_BLOCKS ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "blocks",
    [
        {"content": "main %}{% include 'x' %}{% block y"},
        {"content": ""},
        {"content": 7},
        {"title": "título"},
        {"body": "main"},
        ["main"],
    ],
)
def test_base_blocks_must_be_block_names_of_known_roles(settings, blocks):
    settings.MFA_BASE_BLOCKS = blocks
    with pytest.raises(ImproperlyConfigured):
        pages.base_blocks()


def test_base_blocks_default_to_title_and_content(settings):
    settings.MFA_BASE_BLOCKS = {"content": "main"}
    assert pages.base_blocks() == {"title": "title", "content": "main"}


# --- System checks --------------------------------------------------------------------------


def ids(messages) -> list[str]:
    return [m.id for m in messages]


@pytest.fixture
def othersite(settings):
    configure(settings, "othersite")
    return settings


def test_a_loadable_base_with_its_blocks_is_clean(othersite):
    assert checks.check_base_template() == []


def test_no_base_template_is_clean(othersite):
    del othersite.MFA_BASE_TEMPLATE
    assert checks.check_base_template() == []


def test_the_demo_settings_are_clean():
    assert checks.check_base_template() == []


def test_e007_base_template_missing(othersite):
    othersite.MFA_BASE_TEMPLATE = "othersite/nope.html"
    assert ids(checks.check_base_template()) == ["mfa.E007"]


def test_e007_base_template_broken(othersite):
    othersite.MFA_BASE_TEMPLATE = "othersite/broken.html"
    assert ids(checks.check_base_template()) == ["mfa.E007"]


def test_e008_a_named_block_is_missing(othersite):
    othersite.MFA_BASE_BLOCKS = {"content": "main"}  # "title" by default: not in that base
    messages = checks.check_base_template()
    assert ids(messages) == ["mfa.E008"]
    assert "'title'" in messages[0].msg


def test_e008_the_default_blocks_of_a_base_with_other_names(othersite):
    del othersite.MFA_BASE_BLOCKS
    assert ids(checks.check_base_template()) == ["mfa.E008", "mfa.E008"]


def test_e008_a_head_block_that_is_missing(othersite):
    othersite.MFA_BASE_BLOCKS = {"title": "page_title", "content": "main", "head": "extra"}
    assert ids(checks.check_base_template()) == ["mfa.E008"]


def test_e008_an_invalid_block_name(othersite):
    othersite.MFA_BASE_BLOCKS = {"content": "main %}"}
    assert ids(checks.check_base_template()) == ["mfa.E008"]


def test_the_blocks_of_the_base_templates_own_parents_count(othersite):
    othersite.MFA_BASE_TEMPLATE = "othersite/child.html"
    assert checks.check_base_template() == []


# --- Static rules ---------------------------------------------------------------------------

APP_TEMPLATES = sorted((ROOT / "mfa" / "templates" / "mfa").glob("*.html"))


def css_selectors(css: str) -> list[str]:
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    preludes = re.findall(r"([^{}]+)\{", css)
    return [
        selector.strip()
        for prelude in preludes
        if not prelude.strip().startswith("@")
        for selector in prelude.split(",")
    ]


def test_the_app_css_styles_nothing_outside_its_wrapper():
    css = (ROOT / "mfa" / "static" / "mfa" / "mfa.css").read_text(encoding="utf-8")
    selectors = css_selectors(css)
    assert len(selectors) > 40
    outside = [s for s in selectors if not re.match(r"\.mfa(-standalone)?(?![\w-])", s)]
    assert outside == []


@pytest.mark.parametrize("template", APP_TEMPLATES, ids=lambda p: p.name)
def test_no_inline_script_or_style(template: Path):
    # The demo's CSP is script-src 'self'; style-src 'self': a site may be as strict.
    source = template.read_text(encoding="utf-8")
    assert not re.search(r"<style|\sstyle=|\son[a-z]+=|javascript:", source, re.I)
    assert all("src=" in tag for tag in re.findall(r"<script[^>]*>", source))
