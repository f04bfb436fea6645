"""Test settings: the production settings, with what a test client over plain HTTP needs."""

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-secret-key-" + "x" * 40)
os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "testserver,127.0.0.1,localhost")
# The test client speaks plain HTTP; everything else stays as in production.
os.environ.setdefault("DJANGO_SECURE_SSL_REDIRECT", "0")
os.environ.setdefault("MFA_PLAIN_STATIC", "1")

from config.settings import *  # noqa: E402, F403

# Notices are collected in django.core.mail.outbox (Django's test set-up swaps every mailer
# for the locmem backend).
# Audit events go to the database; keep the test output readable.
LOGGING["loggers"]["mfa"]["level"] = "WARNING"  # noqa: F405

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    # A file, not Django's default in-memory test database: the concurrency tests run several
    # threads with their own connections, which must see one database and contend for its
    # write lock exactly as server processes do.
    import tempfile

    DATABASES["default"]["TEST"] = {  # noqa: F405
        "NAME": os.path.join(tempfile.gettempdir(), f"mfa-tests-{os.getpid()}.sqlite3")
    }
