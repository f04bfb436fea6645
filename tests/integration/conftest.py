"""The Python a generated project runs on: the app installed in it from the built wheel."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.wheel import ROOT, the_wheel

# `./run test` names the interpreter of a matrix venv (.venv-django-5.2, ...), into which it
# installed the wheel it built; without it, a throw-away venv gets the wheel and its
# dependencies from the package index.
PYTHON_ENV = "MFA_TEST_PROJECT_PYTHON"
# What the test's own environment must not hand to a project that stands for someone else's.
NOT_INHERITED = ("DJANGO_", "MFA_", "DATABASE_URL", "REDIS_URL", "PYTHONPATH", "VIRTUAL_ENV")


def project_env(**extra: str) -> dict[str, str]:
    """Return a clean environment for the generated project's commands."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(NOT_INHERITED)}
    return {**env, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", **extra}


@pytest.fixture(scope="session")
def project_python(tmp_path_factory) -> Path:
    """Return a Python whose ``mfa`` is the installed wheel, never this source tree."""
    if named := os.environ.get(PYTHON_ENV):
        python = Path(named)
    else:
        venv = tmp_path_factory.mktemp("project-venv")
        wheel = the_wheel(tmp_path_factory.mktemp("wheel"))
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        python = venv / "bin" / "python"
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", str(wheel)],
            check=True,
            env=project_env(PIP_DISABLE_PIP_VERSION_CHECK="1"),
        )
    where = subprocess.run(
        [str(python), "-c", "import mfa; print(mfa.__file__)"],
        cwd=tmp_path_factory.mktemp("elsewhere"),
        env=project_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert "site-packages" in where and Path(where).parent != ROOT / "mfa", where
    return python
