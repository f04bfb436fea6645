"""Shared by the commands that act on one user."""

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError


def get_user(username: str):
    User = get_user_model()
    try:
        return User._default_manager.get_by_natural_key(username)
    except User.DoesNotExist:
        raise CommandError(f"No user {username!r}.") from None


def actor() -> str:
    import getpass

    try:
        return f"command line ({getpass.getuser()})"
    except Exception:  # no login name in a container without /etc/passwd entry
        return "command line"
