"""Build the wheel of this tree, the one artefact a site installs (not a test module)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["ROOT", "WHEEL_ENV", "build_wheel", "the_wheel"]

ROOT = Path(__file__).resolve().parent.parent
# `./run test` builds the wheel once and names it here for every pass that installs it.
WHEEL_ENV = "MFA_TEST_WHEEL"


# Left out of the copy the wheel is built from: version control, environments, caches, the
# data and keys of a local run, and earlier build output. An old *.egg-info/SOURCES.txt above
# all: setuptools adds every file it lists, which would hide a package-data rule that ships
# nothing.
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv*", "*.egg-info", "build", "dist", "__pycache__", "*.pyc", ".*_cache",
    "data", "keys", "staticfiles", "test-artifacts",
)  # fmt: skip


def build_wheel(directory: Path) -> Path:
    """Build the project's wheel into ``directory`` the way a release does; return its path."""
    source = directory / "source"
    shutil.copytree(ROOT, source, ignore=NOT_COPIED, symlinks=True)
    # With build isolation: the wheel must build from pyproject.toml alone, not from whatever
    # the test environment happens to have installed.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(directory), "."],
        cwd=source,
        check=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    (wheel,) = directory.glob("django_mfa_hardened-*.whl")
    return wheel


def the_wheel(directory: Path) -> Path:
    """Return the wheel ``./run test`` built, or build one into ``directory``."""
    if named := os.environ.get(WHEEL_ENV):
        return Path(named)
    return build_wheel(directory)
