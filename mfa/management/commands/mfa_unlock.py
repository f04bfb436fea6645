from django.core.management.base import BaseCommand, CommandParser

from mfa import flows

from ._user import actor, get_user


class Command(BaseCommand):
    help = "Clear the failure count, back-off and lock of a user's second factor (audited)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")

    def handle(self, *args, username: str, **options) -> None:
        user = get_user(username)
        if flows.unlock(user, actor()):
            self.stdout.write(f"Unlocked the second factor of {username}.")
        elif flows.has_2fa(user):
            self.stdout.write(f"{username} is not locked and has no failures; nothing to unlock.")
        else:
            self.stdout.write(f"{username} has no two-factor authentication; nothing to unlock.")
