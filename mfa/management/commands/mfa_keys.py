"""Manage the Fernet key ring: generate, add, status, rotate, retire.

The life of a key: ``add`` puts a new key first (it encrypts from now on; the old ones still
decrypt), ``rotate`` re-encrypts every stored secret under it, ``retire`` drops an old key once
``status`` shows that nothing needs it. No step ever locks a user out: at every moment each
secret is readable by some key in the ring.
"""

import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections, router

from mfa import crypto, rotation
from mfa.conf import settings
from mfa.models import TOTPDevice

User = get_user_model()


def _stored_secrets() -> int:
    """The number of stored TOTP secrets; 0 before the first migration.

    A database that cannot be reached raises: it may hold secrets, so no ring is created.
    """
    connection = connections[router.db_for_read(TOTPDevice)]
    if TOTPDevice._meta.db_table not in connection.introspection.table_names():
        return 0  # a first start, before `migrate`
    return TOTPDevice.objects.count()


class Command(BaseCommand):
    # The key ring checks would stop `generate` from creating the ring they ask for.
    requires_system_checks = []
    help = "Manage the key ring that encrypts TOTP secrets: generate, add, status, rotate, retire."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        generate = sub.add_parser(
            "generate", help="Create the first key ring (never overwrites one)."
        )
        generate.add_argument(
            "--force",
            action="store_true",
            help="Create it even though the database holds secrets that a new ring cannot "
            "decrypt (the ring was lost for good: those users need a recovery code or a reset).",
        )
        sub.add_parser("add", help="Add a new primary key; old keys stay for decryption.")
        sub.add_parser("new-key", help="Print a new key, for a ring kept in the environment.")
        sub.add_parser("status", help="List the keys and how many secrets each decrypts.")
        rotate = sub.add_parser("rotate", help="Re-encrypt every secret under the primary key.")
        rotate.add_argument("--batch-size", type=int, default=1000)
        retire = sub.add_parser("retire", help="Remove a key that no secret needs any more.")
        retire.add_argument("key_id")

    def handle(self, *args, action: str, **options) -> None:
        getattr(self, "handle_" + action.replace("-", "_"))(**options)

    # --- helpers ----------------------------------------------------------------------------

    def _from_env(self) -> bool:
        return bool(os.environ.get(settings.KEYS_ENV, "").strip())

    def _refuse_env(self, what: str) -> None:
        if self._from_env():
            raise CommandError(
                f"The key ring comes from the environment variable {settings.KEYS_ENV}, which "
                f"this command cannot {what}. Run `mfa_keys new-key`, put the key first in "
                f"{settings.KEYS_ENV} on every server, restart them, then `mfa_keys rotate`."
            )

    def _keys(self) -> list[bytes]:
        return list(self._ring().keys)

    def _ring_path(self):
        try:
            return crypto.ring_path()
        except crypto.KeyRingError as exc:  # no MFA_KEYS_DIR and no home for the default
            raise CommandError(str(exc)) from None

    def _ring(self) -> crypto.KeyRing:
        try:
            return crypto.current()
        except crypto.KeyRingError as exc:
            raise CommandError(str(exc)) from None

    def _usage(self) -> tuple[dict[bytes, int], list[tuple[int, str]]]:
        """Count the secrets each key decrypts, and list those none does (user binding too)."""
        ring = self._ring()
        counts = dict.fromkeys(ring.keys, 0)
        lost: list[tuple[int, str]] = []
        rows = TOTPDevice.objects.values_list(
            "encrypted_secret", "user_id", f"user__{User.USERNAME_FIELD}"
        )
        for token, user_pk, username in rows.iterator(chunk_size=2000):
            key = ring.decrypting_key(token)
            if key is not None:
                try:
                    ring.decrypt(token, user_pk)
                except crypto.UndecryptableSecret:
                    key = None
            if key is None:
                lost.append((user_pk, username))
            else:
                counts[key] += 1
        return counts, lost

    # --- actions ----------------------------------------------------------------------------

    def handle_generate(self, force: bool = False, **options) -> None:
        self._refuse_env("generate")
        path = self._ring_path()
        stored = 0 if path.exists() else _stored_secrets()
        if stored and not force:
            # A missing ring with secrets in the database is a ring that was lost (a volume
            # not mounted, a file moved), not a first start: a new ring would read none of
            # them, and restoring the real one later would mean overwriting it again.
            raise CommandError(
                f"{path} is missing, but the database holds {stored} secret(s) encrypted with "
                "a key ring: restore that ring from its backup (or set "
                f"{settings.KEYS_ENV}). If it is lost for good, `mfa_keys generate --force` "
                "creates a new one; those users then sign in with a recovery code and enrol "
                "again, or an administrator resets them."
            )
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = crypto.new_key()
        try:
            crypto.write_ring([key], create=True)
        except crypto.KeyRingError:
            raise CommandError(f"{path} exists; refusing to overwrite a key ring.") from None
        self.stdout.write(f"Created {path} (mode 0600) with primary key {crypto.key_id(key)}.")
        self.stdout.write("Back it up apart from the database: without it no user can log in.")

    def handle_add(self, **options) -> None:
        self._refuse_env("change")
        keys = self._keys()
        key = crypto.new_key()
        crypto.write_ring([key, *keys])
        self.stdout.write(f"Added primary key {crypto.key_id(key)}; {len(keys)} older key(s) kept.")
        self.stdout.write("Next: `mfa_keys rotate` re-encrypts existing secrets under it.")

    def handle_new_key(self, **options) -> None:
        key = crypto.new_key()
        self.stdout.write(key.decode("ascii"))
        self.stderr.write(f"key id {crypto.key_id(key)}")

    def handle_status(self, **options) -> None:
        counts, lost = self._usage()
        source = settings.KEYS_ENV if self._from_env() else str(self._ring_path())
        self.stdout.write(f"Key ring: {source}")
        for index, (key, count) in enumerate(counts.items()):
            role = "primary" if index == 0 else "old    "
            self.stdout.write(f"  {crypto.key_id(key)}  {role}  decrypts {count} secret(s)")
        if lost:
            self.stderr.write(
                self.style.ERROR(
                    f"{len(lost)} secret(s) cannot be decrypted by any key; these users cannot "
                    "log in with TOTP until they are reset (mfa_reset) and enrol again:"
                )
            )
            for pk, username in lost:
                self.stderr.write(self.style.ERROR(f"  user {pk} {username}"))
            raise CommandError(f"{len(lost)} secret(s) undecryptable.")

    def handle_rotate(self, batch_size: int, **options) -> None:
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        # One snapshot of the ring for the whole run: the primary cannot change mid-way.
        ring = self._ring()
        total = TOTPDevice.objects.count()
        tally = rotation.rotate(
            ring, batch_size=batch_size, progress=lambda done: self._progress(done, total)
        )
        self.stderr.write("")
        self.stdout.write(
            f"Rotated {tally.rotated} secret(s) to primary key {crypto.key_id(ring.primary)}; "
            f"{tally.current} already used it."
        )
        if tally.failed:
            named = ", ".join(map(str, tally.failed_users))
            more = "..." if tally.failed > len(tally.failed_users) else ""
            raise CommandError(
                f"{tally.failed} secret(s) could not be decrypted by any key (users "
                f"{named}{more}); see `mfa_keys status`."
            )

    def _progress(self, done: int, total: int) -> None:
        total = max(total, done, 1)
        width = 30
        filled = width * done // total
        self.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}", ending="")
        self.stderr.flush()

    def handle_retire(self, key_id: str, **options) -> None:
        self._refuse_env("change")
        keys = self._keys()
        matches = [key for key in keys if crypto.key_id(key) == key_id.strip().lower()]
        if not matches:
            raise CommandError(f"No key with id {key_id} in the ring.")
        key = matches[0]
        if key == keys[0]:
            raise CommandError(
                "That is the primary key. `mfa_keys add` a new one and rotate before retiring it."
            )
        counts, _lost = self._usage()
        if counts[key]:
            raise CommandError(
                f"Key {key_id} still decrypts {counts[key]} secret(s); run `mfa_keys rotate` "
                "first. Nothing was changed."
            )
        crypto.write_ring([k for k in keys if k != key])
        self.stdout.write(f"Retired key {key_id}; {len(keys) - 1} key(s) remain.")
