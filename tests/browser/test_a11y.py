"""Every page, in light and dark, on a desktop and a phone: axe-core finds nothing serious.

One walk visits each page a user meets (sign in, security, setup, recovery codes, the
re-authentication forms, the code step with and without an error, the recovery code step),
keeps a screenshot of each, runs axe-core in it, and checks that it fits a phone's width.
The last test reads the templates: every string a user sees is marked for translation.
"""

import re
from pathlib import Path

import pytest

from tests.conftest import PASSWORD

from .conftest import axe_violations, path_of, shot, sign_in, usable_code, wrong_code

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = sorted(
    [*(ROOT / "templates").rglob("*.html"), *(ROOT / "mfa" / "templates" / "mfa").glob("*.html")]
)


def relative_luminance(css_color: str) -> float:
    """WCAG relative luminance of an ``rgb(r, g, b)`` computed colour."""
    r, g, b = (int(v) / 255 for v in re.findall(r"\d+", css_color)[:3])

    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    return 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b)


def contrast(a: str, b: str) -> float:
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


class Checked:
    """Screenshot, axe and layout findings of every page of one walk."""

    def __init__(self, page):
        self.page = page
        self.findings: list[str] = []

    def __call__(self, name: str) -> None:
        page = self.page
        page.wait_for_load_state()
        shot(page, name)
        self.findings += [f"{name}: {v}" for v in axe_violations(page)]
        if page.viewport_name == "phone":
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            if overflow > 0:
                self.findings.append(f"{name}: {overflow}px wider than the phone's screen")
        if not page.locator("h1").first.is_visible():
            self.findings.append(f"{name}: no visible h1")


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("viewport", "scheme"),
    [("desktop", "light"), ("desktop", "dark"), ("phone", "light"), ("phone", "dark")],
)
def test_every_page_passes_axe_and_fits_the_screen(site, user, pages, viewport, scheme):
    # A second session already signed in, so the security page offers to end it after the
    # factor change.
    sign_in(pages.new(viewport, scheme), site, "alice", PASSWORD)

    page = pages.new(viewport, scheme)
    check = Checked(page)
    page.goto(f"{site}/accounts/login/")
    check("login")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Continue").click()
    check("login-error")
    sign_in(page, site, "alice", PASSWORD)
    check("home")
    page.goto(f"{site}/accounts/security/")
    check("security-off")
    page.goto(f"{site}/accounts/2fa/setup/")
    check("setup")
    page.locator("#id_code").fill("12345")
    page.get_by_role("button", name="Turn on two-factor authentication").click()
    check("setup-error")
    secret = page.locator("code#secret").inner_text().replace(" ", "")
    code, _ = usable_code(secret, None)
    page.locator("#id_code").fill(code)
    page.get_by_role("button", name="Turn on two-factor authentication").click()
    check("recovery-codes")
    page.goto(f"{site}/accounts/security/")
    assert page.locator("section.highlight").is_visible(), "no offer to end the other session"
    check("security")
    page.goto(f"{site}/accounts/2fa/recovery-codes/")
    check("regenerate")
    page.goto(f"{site}/accounts/2fa/disable/")
    page.get_by_label("Your password").fill("wrong password")
    page.locator("#id_code").fill("123456")
    page.get_by_role("button", name="Turn off two-factor authentication").click()
    check("disable-error")
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, site, "alice", PASSWORD)
    assert path_of(page) == "/accounts/2fa/verify/"
    check("verify")
    with page.expect_navigation():
        page.locator("#id_code").fill(wrong_code(secret))  # six digits: submitted by mfa.js
    assert page.locator("#code-errors").get_by_text("not right").is_visible()
    check("verify-error")
    page.get_by_role("link", name="Use a recovery code").click()
    check("recovery-login")

    assert check.findings == [], "\n".join(check.findings)


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_colour_scheme_follows_the_system(site, pages, scheme):
    page = pages.new("desktop", scheme)
    page.goto(f"{site}/accounts/login/")
    colours = page.evaluate(
        """() => {
          const s = el => getComputedStyle(document.querySelector(el));
          return {bg: s("body").backgroundColor, fg: s("body").color,
                  input: s("#id_username").backgroundColor, button: s("button").backgroundColor,
                  buttonText: s("button").color};
        }"""
    )
    background = relative_luminance(colours["bg"])
    if scheme == "dark":
        assert background < 0.05, f"the dark scheme has a light background: {colours['bg']}"
    else:
        assert background > 0.9, f"the light scheme has a dark background: {colours['bg']}"
    assert relative_luminance(colours["input"]) == pytest.approx(background, abs=0.05)
    assert contrast(colours["fg"], colours["bg"]) >= 7
    assert contrast(colours["buttonText"], colours["button"]) >= 4.5


# --- Translation ----------------------------------------------------------------------------

# Template syntax, removed before looking for words: comments, translated blocks, tags and
# variables. What remains between HTML tags is text a user sees, and must be empty.
_COMMENT = re.compile(r"{%\s*comment\s*%}.*?{%\s*endcomment\s*%}|{#.*?#}", re.S)
_BLOCKTRANS = re.compile(r"{%\s*blocktranslate\b.*?{%\s*endblocktranslate\s*%}", re.S)
_CLASS_BLOCK = re.compile(r"{%\s*block \w*class\s*%}.*?{%\s*endblock\s*%}")
_TAG = re.compile(r"{%.*?%}|{{.*?}}", re.S)
_HTML = re.compile(r"<!--.*?-->|<[^>]*>", re.S)
_ATTRIBUTE = re.compile(r'\b(alt|title|placeholder|aria-label|data-done)="([^"]*)"')
# Words that are not a language: the brand of the demo site falls under it as a default only.
_NOT_WORDS = re.compile(r"^[\s·—–\-:|()/.,]*$")


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_string_a_user_sees_is_marked_for_translation(template):
    source = _BLOCKTRANS.sub("", _COMMENT.sub("", template.read_text(encoding="utf-8")))
    # Class names given by a block, and the site name's default (a filter argument).
    source = _CLASS_BLOCK.sub("", source).replace('|default:"MFA Demo"', "")
    problems = [
        f'{name}="{value}"'
        for name, value in _ATTRIBUTE.findall(source)
        if not _NOT_WORDS.match(_TAG.sub("", value))
    ]
    text = _HTML.sub("\n", _TAG.sub("", source))
    problems += [line.strip() for line in text.splitlines() if not _NOT_WORDS.match(line)]
    assert problems == [], f"untranslated text in {template.name}: {problems}"
