"""Who may remove or unlock a second factor, and what the admin lets staff read (issue 15).

Every admin path that resets or unlocks goes through ``mfa.admin.may_manage_two_factor``: the
change permission on TOTPDevice is needed, and only a superuser may touch a superuser's. Each
test logs in staff holding exactly one permission through the two-step login and uses the real
admin URLs. The changelists also refuse filters on secret fields (``lookup_allowed``).
"""

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from mfa.models import RecoveryCode, SecurityEvent, TOTPDevice, TwoFactor, UserSession
from tests.conftest import is_logged_in, logged_in_as, make_user

pytestmark = pytest.mark.django_db

Kind = SecurityEvent.Kind
DEVICES = "/admin/mfa/twofactor/"
USERS = "/admin/auth/user/"
PERMISSIONS = ["view_twofactor", "delete_twofactor", "change_twofactor"]


@pytest.fixture
def root(db):
    return make_user("root", superuser=True)


@pytest.fixture
def alice(db):
    return make_user("alice")


def intact(enrolled) -> bool:
    """The user's second factor is still there, and no reset or unlock was recorded."""
    return (
        TOTPDevice.objects.filter(user=enrolled.user).exists()
        and RecoveryCode.objects.filter(user=enrolled.user).count() == len(enrolled.codes)
        and not SecurityEvent.objects.filter(
            user=enrolled.user, kind__in=[Kind.ADMIN_RESET, Kind.UNLOCKED]
        ).exists()
    )


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


# --- the delete view and "Delete selected" ---------------------------------------------------


@pytest.mark.parametrize("perm", PERMISSIONS)
@pytest.mark.parametrize("target", ["root", "alice"])
def test_device_delete_view_needs_change_permission_and_superuser_for_superuser(
    clock, request, perm, target
):
    victim = request.getfixturevalue(target)
    victims_session = logged_in_as(victim)
    staff = make_user("staff", staff=True, perms=[perm])
    client = logged_in_as(staff)
    url = f"{DEVICES}{victim.two_factor.pk}/delete/"
    assert client.get(url).status_code == 403
    assert client.post(url, {"post": "yes"}).status_code == 403
    assert intact(victim)
    assert is_logged_in(victims_session)  # a reset would have ended it


@pytest.mark.parametrize("perm", PERMISSIONS)
@pytest.mark.parametrize("target", ["root", "alice"])
def test_bulk_delete_needs_change_permission_and_superuser_for_superuser(
    clock, request, perm, target
):
    victim = request.getfixturevalue(target)
    staff = make_user("staff", staff=True, perms=[perm])
    client = logged_in_as(staff)
    data = {"action": "delete_selected", "_selected_action": [victim.two_factor.pk], "post": "yes"}
    response = client.post(DEVICES, data)
    assert response.status_code in (200, 302, 403)
    assert intact(victim)


def test_delete_and_change_permissions_delete_a_normal_users_device(clock, root, alice):
    staff = make_user("staff", staff=True, perms=["delete_twofactor", "change_twofactor"])
    client = logged_in_as(staff)
    url = f"{DEVICES}{root.two_factor.pk}/delete/"
    assert client.get(url).status_code == 403
    assert client.post(url, {"post": "yes"}).status_code == 403
    data = {"action": "delete_selected", "_selected_action": [root.two_factor.pk], "post": "yes"}
    assert client.post(DEVICES, data).status_code == 403
    # Hidden among others, the superuser still refuses the whole batch.
    data["_selected_action"] = [alice.two_factor.pk, root.two_factor.pk]
    assert client.post(DEVICES, data).status_code == 403
    assert intact(root) and intact(alice)

    url = f"{DEVICES}{alice.two_factor.pk}/delete/"
    assert client.get(url).status_code == 200
    assert client.post(url, {"post": "yes"}).status_code == 302
    assert not TOTPDevice.objects.filter(user=alice.user).exists()
    event = SecurityEvent.objects.get(user=alice.user, kind=Kind.ADMIN_RESET)
    assert event.detail == "by admin staff"
    assert intact(root)


# --- the actions, on both admins -------------------------------------------------------------


def run_action(client, url: str, action: str, pks):
    return client.post(url, {"action": action, "_selected_action": list(pks)}, follow=True)


@pytest.mark.parametrize("perm", ["view_twofactor", "delete_twofactor"])
@pytest.mark.parametrize("action", ["reset_two_factor", "unlock_two_factor"])
@pytest.mark.parametrize("target", ["root", "alice"])
def test_device_actions_need_change_permission(clock, request, perm, action, target):
    victim = request.getfixturevalue(target)
    TwoFactor.objects.filter(user=victim.user).update(failure_count=5)
    staff = make_user("staff", staff=True, perms=[perm])
    client = logged_in_as(staff)
    response = run_action(client, DEVICES, action, [victim.two_factor.pk])
    assert response.status_code in (200, 403)
    assert intact(victim)
    assert victim.two_factor.failure_count == 5


@pytest.mark.parametrize("url", [DEVICES, USERS])
@pytest.mark.parametrize("action", ["reset_two_factor", "unlock_two_factor"])
def test_change_permission_resets_and_unlocks_a_normal_user_only(clock, root, alice, url, action):
    roots_session = logged_in_as(root)
    for enrolled in (root, alice):
        TwoFactor.objects.filter(user=enrolled.user).update(failure_count=5)
    staff = make_user("staff", staff=True, perms=["change_twofactor", "view_user"])
    client = logged_in_as(staff)

    def pks(*enrolled):
        return [e.user.pk if url == USERS else e.two_factor.pk for e in enrolled]

    for selection in (pks(root), pks(alice, root)):
        response = run_action(client, url, action, selection)
        assert response.status_code == 200
        assert any("Only a superuser" in m for m in messages_of(response))
        assert intact(root) and intact(alice)
        assert root.two_factor.failure_count == 5 and alice.two_factor.failure_count == 5
        assert is_logged_in(roots_session)

    response = run_action(client, url, action, pks(alice))
    assert response.status_code == 200
    if action == "reset_two_factor":
        assert not TOTPDevice.objects.filter(user=alice.user).exists()
    else:
        assert alice.two_factor.failure_count == 0
    assert intact(root)


@pytest.mark.parametrize("action", ["reset_two_factor", "unlock_two_factor"])
def test_user_admin_change_user_permission_alone_is_not_enough(clock, alice, action):
    # The rule asks for the device's change permission, whichever admin the action runs from.
    TwoFactor.objects.filter(user=alice.user).update(failure_count=5)
    staff = make_user("staff", staff=True, perms=["change_user"])
    client = logged_in_as(staff)
    page = client.get(USERS)
    assert page.status_code == 200
    form = page.context["action_form"]  # None when no action at all is offered
    assert form is None or action not in dict(form.fields["action"].choices)
    run_action(client, USERS, action, [alice.user.pk])
    assert intact(alice) and alice.two_factor.failure_count == 5


# --- deleting a user takes the device with it --------------------------------------------------


@pytest.mark.parametrize("target", ["root", "alice"])
def test_deleting_a_user_needs_the_reset_rule(clock, request, target):
    victim = request.getfixturevalue(target)
    staff = make_user("staff", staff=True, perms=["view_user", "delete_user"])
    client = logged_in_as(staff)
    url = f"{USERS}{victim.user.pk}/delete/"
    assert client.post(url, {"post": "yes"}).status_code == 403
    data = {"action": "delete_selected", "_selected_action": [victim.user.pk], "post": "yes"}
    assert client.post(USERS, data).status_code == 403
    assert get_user_model().objects.filter(pk=victim.user.pk).exists()
    assert intact(victim)


def test_deleting_a_superuser_needs_a_superuser(clock, root):
    perms = ["view_user", "delete_user", "delete_twofactor", "change_twofactor"]
    staff = make_user("staff", staff=True, perms=perms)
    client = logged_in_as(staff)
    assert client.post(f"{USERS}{root.user.pk}/delete/", {"post": "yes"}).status_code == 403
    assert intact(root)


@pytest.mark.parametrize("how", ["delete_view", "delete_selected"])
def test_deleting_a_user_records_and_notifies_the_reset(clock, alice, mailoutbox, how):
    perms = ["view_user", "delete_user", "delete_twofactor", "change_twofactor"]
    staff = make_user("staff", staff=True, perms=perms)
    client = logged_in_as(staff)
    pk = alice.user.pk
    mailoutbox.clear()
    if how == "delete_view":
        response = client.post(f"{USERS}{pk}/delete/", {"post": "yes"})
    else:
        data = {"action": "delete_selected", "_selected_action": [pk], "post": "yes"}
        response = client.post(USERS, data)
    assert response.status_code == 302
    assert not get_user_model().objects.filter(pk=pk).exists()
    event = SecurityEvent.objects.get(kind=Kind.ADMIN_RESET)
    assert event.user is None  # kept, SET_NULL, when the user went
    assert event.detail == f"by admin staff, deleting user {pk}"
    assert [m.to for m in mailoutbox] == [["alice@example.com"]]


# --- no changelist filter reads a secret -----------------------------------------------------

EVENTS = "/admin/mfa/securityevent/"


def secret_filters(victim) -> list[tuple[str, str, str, str]]:
    """(changelist, lookup, a value that matches, one that does not) for each secret field.

    Each crosses a relation, which Django refuses unless listed in ``list_filter``: kept so that
    a new list filter cannot open them.
    """
    token = victim.device.encrypted_secret
    code_hash = RecoveryCode.objects.filter(user=victim.user).first().code_hash
    session = UserSession.objects.first()  # the viewer's own
    return [
        (DEVICES, "user__mfa_totp__encrypted_secret__startswith", token[:8], "zzzz"),
        (DEVICES, "user__mfa_totp__last_used_step__gte", "-1", "99999999999"),
        (DEVICES, "user__password__startswith", victim.user.password[:8], "zzzz"),
        (USERS, "mfa_totp__encrypted_secret__startswith", token[:8], "zzzz"),
        (USERS, "mfa_recovery_codes__code_hash__startswith", code_hash[:12], "zzzz"),
        (USERS, "password__startswith", victim.user.password[:8], "zzzz"),
        (USERS, "mfa_sessions__session_key__startswith", session.session_key[:6], "zzzz"),
        (USERS, "mfa_sessions__sid__startswith", session.sid[:6], "zzzz"),
        (EVENTS, "user__mfa_totp__encrypted_secret__startswith", token[:8], "zzzz"),
    ]


@pytest.mark.parametrize("index", range(9), ids=lambda i: f"filter{i}")
def test_changelist_refuses_filters_on_secret_fields(clock, alice, index):
    perms = ["view_twofactor", "view_user", "view_securityevent"]
    viewer = make_user("viewer", staff=True, perms=perms)
    client = logged_in_as(viewer)
    url, lookup, hit, miss = secret_filters(alice)[index]
    assert client.get(url).status_code == 200
    answers = [client.get(url, {lookup: value}) for value in (hit, miss)]
    # Refused outright, and the same answer whatever the value: nothing to learn from it.
    assert [a.status_code for a in answers] == [400, 400], lookup
    assert answers[0].content == answers[1].content


def test_allowed_filters_still_work(clock, alice, root):
    TwoFactor.objects.filter(user=alice.user).update(locked_at=timezone.now())
    viewer = make_user("viewer", staff=True, perms=["view_twofactor"])
    client = logged_in_as(viewer)
    page = client.get(DEVICES, {"locked_at__isnull": "False"})
    assert page.status_code == 200
    assert page.context["cl"].result_count == 1
