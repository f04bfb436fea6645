"""The app's pages without the demo's base: standalone, and inside a base with other blocks.

What tests/test_templates.py checks in the HTML, here in chromium: the app's CSS and
JavaScript load and run (the copy button appears, the buttons are styled) under the demo's
CSP, axe finds nothing serious, and the site's own elements keep the site's look.
"""

import pytest

from tests.conftest import PASSWORD
from tests.test_templates import configure

from .conftest import axe_violations, path_of, shot
from .test_a11y import relative_luminance

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SECURITY = "/accounts/security/"


def styles(page, selector: str) -> dict:
    return page.evaluate(
        """(selector) => {
          const s = getComputedStyle(document.querySelector(selector));
          return {font: s.fontFamily, bg: s.backgroundColor, color: s.color};
        }""",
        selector,
    )


@pytest.mark.parametrize("name", ["standalone", "othersite"])
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_pages_work_without_the_demo_base(site, settings, user, pages, name, scheme):
    marker = configure(settings, name)
    page = pages.new("desktop", scheme)
    findings = []
    page.goto(f"{site}/accounts/login/?next={SECURITY}")
    assert marker in page.content()
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Continue").click()
    page.wait_for_load_state()
    assert path_of(page) == SECURITY
    findings += [f"security: {v}" for v in axe_violations(page)]
    page.goto(f"{site}/accounts/2fa/setup/")
    shot(page, f"{name}-setup")
    findings += [f"setup: {v}" for v in axe_violations(page)]
    assert page.locator("img.qr").is_visible()
    assert page.locator("code#secret").is_visible()
    # mfa.js ran: it shows the copy button (hidden without JavaScript).
    assert page.get_by_role("button", name="Copy key").is_visible()
    # mfa.css applies: the submit button is the app's, not the browser's default.
    button = styles(page, "button[type=submit]")
    assert button["bg"] not in ("rgba(0, 0, 0, 0)", "rgb(239, 239, 239)"), button
    wrapper = styles(page, ".mfa")
    if name == "othersite":
        # ...and only inside the app's wrapper: the site's header keeps the site's font.
        assert "system-ui" not in styles(page, "header")["font"]
        assert "system-ui" in wrapper["font"]
        # A site that declares no dark scheme gets light forms, even on a dark system.
        assert relative_luminance(wrapper["bg"]) > 0.9, wrapper
    else:  # the standalone page declares "light dark": it follows the system
        assert (relative_luminance(wrapper["bg"]) > 0.9) == (scheme == "light"), wrapper
    assert findings == [], "\n".join(findings)
