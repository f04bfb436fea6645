"""The administrator's tools: the audit trail, each user's 2FA state, unlock and reset.

Requirements 15 and 17 of SECURITY-REQUIREMENTS.md (an admin reset is audited and notified)
and 18 (the admin is reached through the two-step login only, and staff must enrol). The
admin is a superuser with 2FA, logged in by ``mfa.test.verified_login`` (the login's own last
step; test_admin_login.py goes through the pages); no page may show a secret, a ciphertext, a
recovery hash or a recovery code.
"""

import re

import pytest
from django.contrib import admin
from django.test import Client
from django.utils import timezone

from mfa.models import RecoveryCode, SecurityEvent, TOTPDevice, TwoFactor
from mfa.test import verified_login
from tests.conftest import PASSWORD, enrol, full_login, is_logged_in, login_password

Kind = SecurityEvent.Kind


@pytest.fixture
def root(django_user_model):
    return enrol(django_user_model.objects.create_superuser("root", "root@example.com", PASSWORD))


@pytest.fixture
def admin_client(root, clock):
    """A client logged in as the superuser as the two-step login would (not force_login)."""
    client = Client()
    verified_login(client, root.user)
    assert client.get("/admin/").status_code == 200
    return client


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob", "bob@example.com", PASSWORD)


def cell(html: str, field: str) -> list[str]:
    """The text of every changelist cell of ``field``, in row order."""
    cells = re.findall(
        rf'<t[dh] class="field-{field}[^"]*"[^>]*>(.*?)</t[dh]>', html, flags=re.DOTALL
    )
    return [re.sub(r"<[^>]+>", "", c).strip() for c in cells]


def run_action(client, url: str, action: str, pks) -> object:
    return client.post(
        url,
        {"action": action, "_selected_action": [str(pk) for pk in pks], "index": "0"},
        follow=True,
    )


# --- the audit trail is read-only and searchable --------------------------------------------


def test_security_events_are_read_only(admin_client, user_with_totp):
    SecurityEvent.objects.create(user=user_with_totp.user, kind=Kind.LOGIN, detail="totp")
    event = SecurityEvent.objects.filter(user=user_with_totp.user).first()
    page = admin_client.get("/admin/mfa/securityevent/")
    assert page.status_code == 200
    assert "/admin/mfa/securityevent/add/" not in page.text
    assert "delete_selected" not in page.text
    assert admin_client.get("/admin/mfa/securityevent/add/").status_code == 403
    view = admin_client.get(f"/admin/mfa/securityevent/{event.pk}/change/")
    assert view.status_code == 200
    assert 'name="_save"' not in view.text
    response = admin_client.post(
        f"/admin/mfa/securityevent/{event.pk}/change/", {"kind": "logout", "detail": "edited"}
    )
    assert response.status_code == 403
    assert admin_client.get(f"/admin/mfa/securityevent/{event.pk}/delete/").status_code == 403
    assert (
        admin_client.post(
            f"/admin/mfa/securityevent/{event.pk}/delete/", {"post": "yes"}
        ).status_code
        == 403
    )
    response = run_action(admin_client, "/admin/mfa/securityevent/", "delete_selected", [event.pk])
    event.refresh_from_db()
    assert (event.kind, event.detail) == (Kind.LOGIN, "totp")


def test_security_events_are_searchable(admin_client, user_with_totp, bob):
    SecurityEvent.objects.create(user=user_with_totp.user, kind=Kind.MFA_FAILED, detail="a-mark")
    SecurityEvent.objects.create(user=bob, kind=Kind.MFA_FAILED, detail="b-mark")
    page = admin_client.get("/admin/mfa/securityevent/", {"q": "alice"})
    assert page.status_code == 200
    assert "a-mark" in page.text
    assert "b-mark" not in page.text
    page = admin_client.get("/admin/mfa/securityevent/", {"q": "bob"})
    assert "b-mark" in page.text and "a-mark" not in page.text


# --- each user's state ----------------------------------------------------------------------


def test_device_changelist_shows_codes_left_failures_and_lock(
    admin_client, user_with_totp, bob, root
):
    enrol(bob)
    used = RecoveryCode.objects.filter(user=user_with_totp.user).order_by("pk")[:3]
    RecoveryCode.objects.filter(pk__in=[r.pk for r in used]).update(used_at=timezone.now())
    TwoFactor.objects.filter(user=user_with_totp.user).update(
        failure_count=100, locked_at=timezone.now()
    )
    TwoFactor.objects.filter(user=bob).update(failure_count=3)

    page = admin_client.get("/admin/mfa/twofactor/", {"o": "1"})  # ordered by user
    assert page.status_code == 200
    rows = dict(
        zip(
            cell(page.text, "user"),
            zip(
                cell(page.text, "codes_left"),
                cell(page.text, "failure_count"),
                cell(page.text, "locked_at"),
                strict=True,
            ),
            strict=True,
        )
    )
    assert rows["alice"][:2] == ("7", "100")
    assert rows["alice"][2] not in ("-", "")
    assert rows["bob"] == ("10", "3", "-")
    assert rows["root"][:2] == ("10", "0")


def test_user_changelist_shows_two_factor_state(
    admin_client, user_with_totp, bob, django_user_model
):
    carol = django_user_model.objects.create_user("carol", "carol@example.com", PASSWORD)
    enrol(carol)
    TwoFactor.objects.filter(user=carol).update(locked_at=timezone.now(), failure_count=100)
    page = admin_client.get("/admin/auth/user/", {"o": "1"})
    assert page.status_code == 200
    states = dict(zip(cell(page.text, "username"), cell(page.text, "two_factor"), strict=True))
    assert states == {"alice": "on", "bob": "off", "carol": "locked", "root": "on"}


# --- actions --------------------------------------------------------------------------------


@pytest.mark.parametrize("changelist", ["/admin/mfa/twofactor/", "/admin/auth/user/"])
def test_unlock_action(admin_client, user_with_totp, mailoutbox, changelist, clock):
    device = user_with_totp.two_factor
    TwoFactor.objects.filter(pk=device.pk).update(
        failure_count=100, locked_at=timezone.now(), blocked_until=timezone.now()
    )
    pk = device.pk if "twofactor" in changelist else user_with_totp.user.pk
    mailoutbox.clear()
    response = run_action(admin_client, changelist, "unlock_two_factor", [pk])
    assert response.status_code == 200
    device.refresh_from_db()
    assert (device.failure_count, device.blocked_until, device.locked_at) == (0, None, None)
    event = SecurityEvent.objects.get(user=user_with_totp.user, kind=Kind.UNLOCKED)
    assert event.detail == "by admin root"
    assert [m.to for m in mailoutbox] == [["alice@example.com"]]
    # And alice can log in again.
    clock.shift(30)
    client = Client()
    assert full_login(client, user_with_totp).status_code == 302


@pytest.mark.parametrize("changelist", ["/admin/mfa/twofactor/", "/admin/auth/user/"])
def test_reset_action(admin_client, user_with_totp, mailoutbox, changelist):
    pk = user_with_totp.two_factor.pk if "twofactor" in changelist else user_with_totp.user.pk
    mailoutbox.clear()
    response = run_action(admin_client, changelist, "reset_two_factor", [pk])
    assert response.status_code == 200
    assert not TOTPDevice.objects.filter(user=user_with_totp.user).exists()
    assert not RecoveryCode.objects.filter(user=user_with_totp.user).exists()
    event = SecurityEvent.objects.get(user=user_with_totp.user, kind=Kind.ADMIN_RESET)
    assert event.detail == "by admin root"
    assert [m.to for m in mailoutbox] == [["alice@example.com"]]
    assert "reset" in mailoutbox[0].subject.lower()
    # The admin's own 2FA is untouched.
    assert TOTPDevice.objects.filter(user__username="root").exists()


@pytest.mark.parametrize("action", ["reset_two_factor", "unlock_two_factor"])
def test_actions_change_nothing_for_users_with_nothing_to_change(
    admin_client, user_with_totp, bob, mailoutbox, action
):
    # bob has no second factor; alice has one, neither locked nor failing.
    mailoutbox.clear()
    events = SecurityEvent.objects.count()
    pks = [bob.pk] + ([user_with_totp.user.pk] if action == "unlock_two_factor" else [])
    response = run_action(admin_client, "/admin/auth/user/", action, pks)
    assert response.status_code == 200
    html = response.content.decode()
    assert "for 0 users" in html or "Unlocked 0 users" in html
    assert f"Nothing to {action.split('_')[0]} for {len(pks)} of them" in html
    assert mailoutbox == [] and SecurityEvent.objects.count() == events
    assert TOTPDevice.objects.filter(user=user_with_totp.user).exists()


def test_actions_need_csrf(admin_client, user_with_totp):
    strict = Client(enforce_csrf_checks=True)
    strict.cookies = admin_client.cookies  # the admin's session, without the form's token
    response = strict.post(
        "/admin/mfa/twofactor/",
        {"action": "reset_two_factor", "_selected_action": [str(user_with_totp.two_factor.pk)]},
    )
    assert response.status_code == 403
    assert TOTPDevice.objects.filter(user=user_with_totp.user).exists()
    assert not SecurityEvent.objects.filter(kind=Kind.ADMIN_RESET).exists()


# --- nothing secret on any admin page -------------------------------------------------------


def test_no_admin_page_shows_a_secret(admin_client, user_with_totp, root):
    # Some history, so the event pages have rows.
    other = Client()
    assert login_password(other).status_code == 302
    assert (
        other.post("/accounts/2fa/recovery/", {"code": user_with_totp.codes[0]}).status_code == 302
    )

    device = user_with_totp.device
    hashes = list(RecoveryCode.objects.values_list("code_hash", flat=True))
    needles = [
        user_with_totp.secret,
        device.encrypted_secret,
        root.secret,
        root.device.encrypted_secret,
    ]
    for secret in (user_with_totp.secret, root.secret):
        needles.append(" ".join(secret[i : i + 4] for i in range(0, len(secret), 4)))
    needles += hashes + [h.split("$")[-1] for h in hashes]
    for code in user_with_totp.codes + root.codes:
        needles += [code, code.replace("-", ""), code.replace("-", "")[3:]]

    event = SecurityEvent.objects.filter(user=user_with_totp.user).first()
    user_pk = user_with_totp.user.pk
    urls = [
        "/admin/",
        "/admin/mfa/",
        "/admin/mfa/twofactor/",
        f"/admin/mfa/twofactor/{user_with_totp.two_factor.pk}/change/",
        f"/admin/mfa/twofactor/{root.two_factor.pk}/change/",
        "/admin/mfa/securityevent/",
        "/admin/mfa/securityevent/?q=alice",
        f"/admin/mfa/securityevent/{event.pk}/change/",
        "/admin/auth/user/",
        f"/admin/auth/user/{user_pk}/change/",
        f"/admin/auth/user/{root.user.pk}/change/",
        f"/admin/auth/user/{user_pk}/history/",
        f"/admin/mfa/twofactor/{user_with_totp.two_factor.pk}/history/",
    ]
    registered = {model._meta.model_name for model in admin.site._registry}
    if "recoverycode" in registered:
        row = RecoveryCode.objects.filter(user=user_with_totp.user).first()
        urls += ["/admin/mfa/recoverycode/", f"/admin/mfa/recoverycode/{row.pk}/change/"]
    else:
        assert admin_client.get("/admin/mfa/recoverycode/").status_code == 404

    for url in urls:
        page = admin_client.get(url)
        assert page.status_code == 200, url
        for needle in needles:
            assert needle not in page.text, f"{url} shows a secret"
    # The device page has no way to edit the secret or the replay guard.
    page = admin_client.get(f"/admin/mfa/twofactor/{user_with_totp.two_factor.pk}/change/")
    assert 'name="encrypted_secret"' not in page.text
    assert 'name="last_used_step"' not in page.text


def test_admin_cannot_add_a_device(admin_client):
    assert admin_client.get("/admin/mfa/twofactor/add/").status_code == 403


# --- who gets in ----------------------------------------------------------------------------


def test_staff_without_two_factor_is_sent_to_setup(django_user_model, settings, clock):
    settings.MFA_REQUIRE_FOR_STAFF = True
    django_user_model.objects.create_superuser("staffer", "staffer@example.com", PASSWORD)
    client = Client()
    assert login_password(client, "staffer").status_code == 302
    assert is_logged_in(client)  # the password alone logs in: no second factor to ask
    for url in ["/admin/", "/admin/mfa/securityevent/", "/admin/auth/user/"]:
        response = client.get(url, follow=True)
        assert response.redirect_chain, url
        assert response.redirect_chain[-1][0] == "/accounts/2fa/setup/", response.redirect_chain
        assert "Set up two-factor" in response.text


def test_staff_without_two_factor_gets_in_when_not_required(django_user_model, settings, clock):
    settings.MFA_REQUIRE_FOR_STAFF = False
    django_user_model.objects.create_superuser("staffer", "staffer@example.com", PASSWORD)
    client = Client()
    assert login_password(client, "staffer").status_code == 302
    assert client.get("/admin/").status_code == 200


def test_admin_login_page_is_the_two_step_login(root, clock):
    client = Client()
    response = client.get("/admin/login/?next=/admin/mfa/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    response = client.post(
        "/admin/login/", {"username": "root", "password": PASSWORD, "next": "/admin/"}
    )
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert client.get("/admin/").status_code == 302
    assert not is_logged_in(client)
