from django.core.management.base import BaseCommand, CommandError, CommandParser

from mfa import crypto, importer


class Command(BaseCommand):
    help = (
        "Import TOTP devices and backup tokens from django-otp's tables (django-otp or "
        "django-two-factor-auth); never changes them. See docs/import.md."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--from", dest="source", required=True, choices=importer.SOURCES)
        parser.add_argument(
            "--dry-run", action="store_true", help="Write nothing; print what would be done."
        )
        parser.add_argument(
            "--notify", action="store_true", help="Email each imported user (off by default)."
        )

    def handle(self, *args, source: str, dry_run: bool, notify: bool, **options) -> None:
        try:
            crypto.current()  # before the first user, not halfway through them
        except crypto.KeyRingError as exc:
            raise CommandError(f"The key ring is not usable: {exc}") from None
        try:
            report = importer.run(source, dry_run=dry_run, notify_users=notify)
        except importer.SourceMissing as exc:
            raise CommandError(f"Nothing to import from {source}: {exc}.") from None
        for line in report.lines(dry_run):
            self.stdout.write(line)
