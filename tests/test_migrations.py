"""The migrations describe the models: a model change without its migration fails here."""

import io

import pytest
from django.core.management import call_command


@pytest.mark.django_db
def test_no_model_change_lacks_a_migration():
    out = io.StringIO()
    try:
        call_command("makemigrations", "mfa", "--check", "--dry-run", stdout=out, stderr=out)
    except SystemExit as exit:  # --check exits 1 when a migration is missing
        pytest.fail(f"a migration is missing (exit {exit.code}):\n{out.getvalue()}")


@pytest.mark.django_db(transaction=True)
def test_0006_carries_the_back_off_onto_two_factor_and_back(django_user_model):
    """An upgrade must not unlock a locked user, nor forget a back-off (and a downgrade too)."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor
    from django.utils import timezone

    before, after = [("mfa", "0005_security_event_kinds")], [("mfa", "0006_two_factor")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    locked_at = timezone.now().replace(microsecond=0)
    alice = django_user_model.objects.create_user("alice")
    bob = django_user_model.objects.create_user("bob")
    Device = old.get_model("mfa", "TOTPDevice")
    Device.objects.create(
        user_id=alice.pk, encrypted_secret="x", failure_count=100, locked_at=locked_at
    )
    Device.objects.create(user_id=bob.pk, encrypted_secret="y", failure_count=3)
    try:
        executor = MigrationExecutor(connection)
        executor.migrate(after)
        new = executor.loader.project_state(after).apps
        rows = {
            r.user_id: (r.failure_count, r.locked_at)
            for r in new.get_model("mfa", "TwoFactor").objects.all()
        }
        assert rows == {alice.pk: (100, locked_at), bob.pk: (3, None)}

        executor = MigrationExecutor(connection)
        executor.migrate(before)
        back = executor.loader.project_state(before).apps.get_model("mfa", "TOTPDevice")
        assert back.objects.get(user_id=alice.pk).locked_at == locked_at
        assert back.objects.get(user_id=bob.pk).failure_count == 3
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes("mfa"))
