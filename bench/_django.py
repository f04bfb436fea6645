"""Set up Django in this process on a throw-away SQLite database and key ring (benchmarks)."""

import atexit
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup(database_url: str | None = None) -> Path:
    """Configure the environment, django.setup(), create the ring and tables; return tmp dir."""
    tmp = Path(tempfile.mkdtemp(prefix="mfa-bench-"))
    # Throw-away: the key ring and the database go with the process.
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    for key in [k for k in os.environ if k.startswith(("DJANGO_", "MFA_"))]:
        del os.environ[key]
    os.environ.pop("REDIS_URL", None)
    os.environ.update(
        DJANGO_SETTINGS_MODULE="bench.settings",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="testserver,127.0.0.1,localhost",
        DJANGO_SECURE_SSL_REDIRECT="0",
        MFA_PLAIN_STATIC="1",
        MFA_KEYS_DIR=str(tmp / "keys"),
        MFA_LOG_LEVEL="WARNING",
        DATABASE_URL=database_url or f"sqlite:///{tmp / 'db.sqlite3'}",
    )
    import django

    django.setup()
    from django.core.management import call_command

    from mfa import crypto

    crypto.write_ring([crypto.new_key()])
    call_command("migrate", verbosity=0)
    return tmp
