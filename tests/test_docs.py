"""The docs tell the truth: the README quotes what tests/integration runs, line for line, and
docs/settings.md lists every setting."""

from pathlib import Path

from mfa.conf import Settings
from tests.integration.test_generated_project import INTEGRATOR_URL_LINES, SETTINGS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_the_readme_quotes_the_integrators_settings():
    assert SETTINGS in README


def test_the_readme_quotes_the_integrators_urls_in_their_order():
    lines = [line.strip() for line in INTEGRATOR_URL_LINES]
    assert "\n".join(lines) in README


def test_every_setting_is_in_the_settings_reference():
    reference = (Path(__file__).resolve().parent.parent / "docs" / "settings.md").read_text()
    names = [name for name, value in vars(Settings).items() if isinstance(value, property)]
    assert names, "mfa.conf.Settings has no settings?"
    missing = [f"MFA_{name}" for name in names if f"`MFA_{name}`" not in reference]
    assert missing == []
