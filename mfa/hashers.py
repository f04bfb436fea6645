"""Django's Argon2 hasher at the parameters this project chose (see config/settings.py)."""

from django.contrib.auth.hashers import Argon2PasswordHasher

__all__ = ["Argon2idPasswordHasher"]


class Argon2idPasswordHasher(Argon2PasswordHasher):
    """Argon2id at OWASP's minimum: m=19 MiB, t=2, p=1.

    Django's default (m=100 MiB, p=8) is tuned for big machines; on a 2-core server eight lanes
    only queue behind each other and each login would cost ~150 ms of CPU. These parameters cost
    ~35 ms here and remain OWASP-compliant. Hashes made with other parameters still verify and
    are upgraded on the next successful login (Django's ``must_update``).
    """

    time_cost = 2
    memory_cost = 19 * 1024  # KiB
    parallelism = 1
