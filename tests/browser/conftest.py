"""Browser fixtures: Debian's chromium, driven by Playwright, against pytest-django's live server.

The browser tests run on the real clock: the live server answers from its own thread, and a
frozen clock in the test thread would not be the one the server reads. They never wait for
time by guessing; ``usable_code`` computes which step the server accepts next (the window is
T-1..T+1 and a step is spent once) and waits only when every acceptable step is spent, at
most one step.

Every page a test opens is watched: a script error, a Content Security Policy violation or an
unexpected console error fails the test at teardown, so a template that slips in an inline
script or ``style=`` attribute is caught by the page that uses it.
"""

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import pytest

from mfa import totp

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
VIEWPORTS = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "phone": {
        "viewport": {"width": 390, "height": 844},
        "is_mobile": True,
        "has_touch": True,
        "device_scale_factor": 2,
    },
}
# Console errors a test may cause on purpose: a form error is answered 400, and Chromium logs
# the status of the document. Anything else in the console (a missing static file too) is a
# finding.
DOCUMENT_STATUS = re.compile(r"^Failed to load resource: the server responded with a status of 400")
# Fired for every violation, including ones Chromium reports only as an event.
CSP_WATCH = """
document.addEventListener("securitypolicyviolation", function (e) {
  console.error("CSP violation: " + e.violatedDirective + " blocked " + e.blockedURI);
});
"""


def _missing(what: str, reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the browser tests: {reason} (.ci/run installs {what})")
    pytest.skip(f"{reason}; install it with apt-get install {what}")


def require_chromium() -> None:
    if not os.access(CHROMIUM, os.X_OK):
        _missing("chromium", f"{CHROMIUM} is missing")


def require_oathtool() -> None:
    if shutil.which("oathtool") is None:
        _missing("oathtool", "oathtool is missing")


@pytest.fixture(scope="module")
def chromium():
    """A headless chromium for one test module.

    Playwright's sync API keeps an asyncio event loop in the test thread while it runs, and
    Django refuses ORM calls from a thread with a running loop. The test thread only prepares
    rows and reads results between browser steps (the server thread, which does the real work,
    has no loop), so the check is lifted while Playwright runs, and only then: module scope,
    because pytest-randomly shuffles modules as wholes, so no other test module runs meanwhile.
    """
    require_chromium()
    from playwright.sync_api import sync_playwright

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            yield browser
            browser.close()


@pytest.fixture
def site(live_server) -> str:
    return live_server.url


@dataclass
class Watched:
    """A page and what went wrong in it."""

    page: object
    name: str
    problems: list[str] = field(default_factory=list)


class Pages:
    """Open pages in fresh browser contexts (fresh cookies), each one watched."""

    def __init__(self, browser):
        self.browser = browser
        self.contexts = []
        self.watched: list[Watched] = []

    def new(
        self,
        viewport: str = "desktop",
        color_scheme: str = "light",
        javascript: bool = True,
        **options,
    ):
        context = self.browser.new_context(
            **VIEWPORTS[viewport],
            color_scheme=color_scheme,
            java_script_enabled=javascript,
            locale="en-GB",
            **options,
        )
        # Generous: a wait that ends early costs nothing, and on a loaded 2-core machine a
        # page (one Argon2 verification, a few commits) has taken over 10 s.
        context.set_default_timeout(30_000)
        if javascript:
            context.add_init_script(CSP_WATCH)
        self.contexts.append(context)
        page = context.new_page()
        watched = Watched(page, f"{viewport}-{color_scheme}{'' if javascript else '-nojs'}")
        page.on("console", lambda message: self._console(watched, message))
        page.on("pageerror", lambda error: watched.problems.append(f"script error: {error}"))
        page.viewport_name = viewport
        page.scheme_name = watched.name
        self.watched.append(watched)
        return page

    @staticmethod
    def _console(watched: Watched, message) -> None:
        text = message.text
        if "Content Security Policy" in text or text.startswith("CSP violation"):
            watched.problems.append(f"{watched.page.url}: {text}")
        elif message.type == "error" and not (
            DOCUMENT_STATUS.match(text) and message.location.get("url") == watched.page.url
        ):
            watched.problems.append(f"{watched.page.url}: console error: {text}")

    def close(self) -> list[str]:
        for context in self.contexts:
            context.close()
        return [p for w in self.watched for p in w.problems]


@pytest.fixture
def pages(chromium):
    """``pages.new(viewport, color_scheme, javascript)``; fails on CSP or script errors."""
    opened = Pages(chromium)
    yield opened
    problems = opened.close()
    assert not problems, "the pages logged problems:\n" + "\n".join(problems)


# --- Helpers --------------------------------------------------------------------------------


def shot(page, name: str) -> Path:
    """Keep a full-page screenshot as a test artifact, named by page, viewport and scheme."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}-{page.scheme_name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page, site: str, username: str, password: str) -> None:
    """Fill the first step of the login and submit it."""
    page.goto(f"{site}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Continue").click()
    page.wait_for_load_state()


def path_of(page) -> str:
    return urlparse(page.url).path


def usable_code(secret: str, last_used_step: int | None) -> tuple[str, int]:
    """Return (code, step) of the earliest step the server accepts now and has not seen.

    The server accepts steps T-1, T and T+1 of its own clock, each once. T-1 is used only with
    more than 5 s left in step T, so the server's clock cannot leave the window before it
    checks; when T+1 is spent too, wait for the next step to begin (at most 30 s).
    """
    now = time.time()
    current = totp.step_of(now)
    earliest = current - 1 if now % totp.STEP < totp.STEP - 5 else current
    step = max(earliest, (last_used_step or 0) + 1)
    if step > current + 1:
        wait = (step - 1) * totp.STEP - now + 0.2
        assert 0 < wait <= totp.STEP + 1
        time.sleep(wait)
    return totp.code_at(secret, step), step


def wrong_code(secret: str) -> str:
    """A 6-digit code that no step in the server's window accepts."""
    current = totp.step_of(time.time())
    taken = {totp.code_at(secret, current + k) for k in range(-2, 3)}
    return next(c for c in ("000000", "111111", "123456", "654321") if c not in taken)


def oathtool_code(secret: str, step: int) -> str:
    """The code for ``step`` as Debian's oathtool computes it (an independent implementation)."""
    require_oathtool()
    result = subprocess.run(
        ["oathtool", "--totp", "--base32", f"--now=@{step * totp.STEP}", "-"],
        input=secret,
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return result.stdout.strip()


def decode_qr(locator, path: Path) -> str:
    """Screenshot the QR code as the browser shows it and decode it with zxing-cpp."""
    import zxingcpp
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    locator.screenshot(path=str(path))
    with Image.open(path) as image:
        # QR codes only: about 1 image in 2,000 also yields a spurious Codabar read otherwise.
        results = zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode)
    assert len(results) == 1, f"expected one QR code in the screenshot, found {len(results)}"
    return results[0].text


@dataclass
class KeyUri:
    issuer_label: str
    account: str
    params: dict[str, str]

    @property
    def secret(self) -> str:
        return self.params["secret"]


def parse_otpauth(uri: str) -> KeyUri:
    parsed = urlparse(uri)
    assert parsed.scheme == "otpauth" and parsed.netloc == "totp", "not an otpauth TOTP URI"
    issuer, _, account = unquote(parsed.path.lstrip("/")).partition(":")
    params = {key: values[0] for key, values in parse_qs(parsed.query, strict_parsing=True).items()}
    return KeyUri(issuer, account, params)


def focused_id(page) -> str:
    return page.evaluate("document.activeElement && document.activeElement.id")


def axe_violations(page, minimum: tuple[str, ...] = ("serious", "critical")) -> list[str]:
    """Run axe-core in the page; return the violations of at least serious impact."""
    # page.evaluate runs through the DevTools protocol, which the page's CSP does not govern:
    # the site keeps its strict policy and axe is not served by it.
    page.evaluate(_axe_source())
    result = page.evaluate(
        """async () => {
          const r = await axe.run(document, {resultTypes: ["violations"]});
          return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
            nodes: v.nodes.map(n => n.target.join(" ")).slice(0, 5)}));
        }"""
    )
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {', '.join(v['nodes'])}"
        for v in result
        if v["impact"] in minimum
    ]


_AXE: list[str] = []


def _axe_source() -> str:
    if not _AXE:
        # axe-core (MPL-2.0), as bundled by the axe-playwright-python package; read from disk,
        # never fetched, so the check works offline.
        _AXE.append((resources.files("axe_playwright_python") / "axe.min.js").read_text())
    return _AXE[0]


def code_input_problems(page, selector: str = "#id_code", numeric: bool = True) -> list[str]:
    """What a code input lacks of the issue's list; empty when it has everything."""
    field = page.locator(selector)
    problems = []
    if field.get_attribute("autocomplete") != "one-time-code":
        problems.append("autocomplete is not one-time-code")
    if numeric and field.get_attribute("inputmode") != "numeric":
        problems.append("inputmode is not numeric")
    label = page.locator(f"label[for={field.get_attribute('id')}]")
    if label.count() != 1 or not label.is_visible() or not label.inner_text().strip():
        problems.append("no visible label")
    for ref in (field.get_attribute("aria-describedby") or "").split():
        if page.locator(f"#{ref}").count() != 1:
            problems.append(f"aria-describedby names #{ref}, which is not on the page")
    return problems


def described_by_text(page, selector: str = "#id_code") -> str:
    """The text a screen reader reads as the field's description."""
    refs = (page.locator(selector).get_attribute("aria-describedby") or "").split()
    return " ".join(page.locator(f"#{ref}").inner_text() for ref in refs)


@pytest.fixture
def relying_party(settings, site):
    """Security keys against the live server: its origin, and localhost as the RP ID."""
    # The live server is http://localhost:<port>: a secure context, and a valid RP ID.
    settings.MFA_WEBAUTHN_RP_ID = "localhost"
    settings.MFA_WEBAUTHN_ORIGINS = [site]
