"""The wheel: everything the app needs at run time, its licence, and nothing of the demo."""

import re
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from tests.wheel import ROOT, build_wheel

pytestmark = pytest.mark.slow  # pip builds the wheel in an isolated environment (~5 s)

APP = ROOT / "mfa"
# Whatever is in mfa/ ships, bytecode caches aside.
NOT_SHIPPED = {"__pycache__"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    path = build_wheel(tmp_path_factory.mktemp("wheel"))
    with zipfile.ZipFile(path) as archive:
        yield archive


@pytest.fixture(scope="module")
def metadata(wheel):
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return Parser().parsestr(wheel.read(name).decode())


def app_files() -> set[str]:
    return {
        path.relative_to(ROOT).as_posix()
        for path in APP.rglob("*")
        if path.is_file()
        and not NOT_SHIPPED.intersection(path.relative_to(APP).parts)
        and path.suffix != ".pyc"
    }


def test_the_wheel_carries_every_file_of_the_app(wheel):
    files = app_files()
    # The kinds the issue names, so that an empty glob cannot pass unnoticed.
    for kind in ("mfa/templates/mfa/", "mfa/static/mfa/", "mfa/migrations/0001"):
        assert any(f.startswith(kind) for f in files), kind
    assert "mfa/py.typed" in files
    assert files - set(wheel.namelist()) == set()


def test_the_wheel_carries_the_licence(wheel):
    (licence,) = [n for n in wheel.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
    assert wheel.read(licence) == (ROOT / "LICENSE").read_bytes()
    assert b"BSD 3-Clause" in wheel.read(licence)


@pytest.mark.parametrize(
    "prefix", ["tests/", "config/", "keys/", "templates/", ".venv", "bench/", "docker/", "data/"]
)
def test_the_wheel_carries_nothing_of_the_demo_or_the_checkout(wheel, prefix):
    assert [n for n in wheel.namelist() if n.startswith(prefix)] == []


def test_the_tests_import_the_app_of_this_tree():
    # ./run test's Django 5.2 venv has the wheel installed too: the tests must test the tree.
    import mfa

    assert Path(mfa.__file__).resolve().parent == APP.resolve()


def test_only_the_app_is_a_top_level_package(wheel):
    tops = {n.split("/")[0] for n in wheel.namelist() if ".dist-info/" not in n}
    assert tops == {"mfa"}


def test_the_metadata_declares_the_supported_versions(metadata):
    assert metadata["License-Expression"] == "BSD-3-Clause"
    assert metadata["Requires-Python"] == ">=3.12"
    requires = metadata.get_all("Requires-Dist")
    # The app itself: Django 5.2 LTS and 6.x; the demo alone pins 6.1.
    assert "django<6.2,>=5.2" in requires
    assert 'django<6.2,>=6.1; extra == "demo"' in requires
    classifiers = set(metadata.get_all("Classifier"))
    for version in ("5.2", "6.0", "6.1"):
        assert f"Framework :: Django :: {version}" in classifiers
    for version in ("3.12", "3.13", "3.14"):
        assert f"Programming Language :: Python :: {version}" in classifiers
    assert set(metadata.get_all("Provides-Extra")) == {"demo-stack", "demo", "testtools", "test"}
    # The Django 5.2 venv of ./run test installs these two to run the app's tests there.
    for extra in ("demo-stack", "testtools"):
        pins = [r for r in requires if f'extra == "{extra}"' in r and re.match(r"django[<>=;]", r)]
        assert pins == [], extra


def test_the_readme_is_the_long_description(metadata):
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert metadata.get_payload().strip() == Path(ROOT / "README.md").read_text().strip()
