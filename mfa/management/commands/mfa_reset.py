from django.core.management.base import BaseCommand, CommandParser

from mfa import flows

from ._user import actor, get_user


class Command(BaseCommand):
    help = (
        "Remove a user's TOTP secret and recovery codes so they must enrol again (audited, "
        "and the user is emailed). For when the user, or the administrator, lost everything."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")

    def handle(self, *args, username: str, **options) -> None:
        user = get_user(username)
        if flows.reset(user, actor()):
            self.stdout.write(
                f"Reset two-factor authentication of {username}; they must enrol again."
            )
        else:
            self.stdout.write(f"{username} has no two-factor authentication; nothing to reset.")
