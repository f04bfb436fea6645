"""The administrator's view: audit events, each user's 2FA state, reset and unlock.

No page here shows a secret, a ciphertext or a hash: those fields are simply never listed.
Every action is a ``flows`` call, so it is audited (naming the administrator) and notified.

Who may reset or unlock a second factor is decided by one function, ``may_manage_two_factor``,
on every path that does it: both actions on both admins, the TwoFactor row's delete view and
"Delete selected", removing a security key, and deleting a user (which deletes their factors
with them).
"""

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Exists, OuterRef, QuerySet, Subquery
from django.db.models.constants import LOOKUP_SEP
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from . import flows
from .models import RecoveryCode, SecurityEvent, TOTPDevice, TwoFactor, WebAuthnCredential
from .webauthn import keys as webauthn_keys

User = get_user_model()


__all__ = [
    "SecretLookupsRefused",
    "TwoFactorAdmin",
    "TwoFactorUserAdmin",
    "WebAuthnCredentialAdmin",
    "may_manage_two_factor",
]

# The permission that resetting or unlocking anyone's second factor needs, from either admin:
# the change permission on TwoFactor (the per-user 2FA row), never the user admin's. Changing a
# user (its name, its groups) is not the same trust as removing their second factor, and one
# permission keeps "who can strip 2FA" a single question for the operator.
MANAGE_PERMISSION = f"{TwoFactor._meta.app_label}.change_twofactor"


def may_manage_two_factor(
    admin_user: AbstractBaseUser | AnonymousUser, target: AbstractBaseUser | None = None
) -> bool:
    """Whether ``admin_user`` may reset or unlock second factors (``target``'s, if given).

    The one rule of every admin path that removes or unlocks a second factor: the change
    permission on TwoFactor, and only a superuser may touch a superuser's. Otherwise staff
    trusted with a narrower permission could strip a superuser's second factor and take over
    with a password they know (or that a phishing page collected).
    """
    if not (
        admin_user.is_active and admin_user.is_staff and admin_user.has_perm(MANAGE_PERMISSION)
    ):
        return False
    return target is None or not target.is_superuser or admin_user.is_superuser


def _refused(modeladmin, request: HttpRequest, users: list) -> bool:
    """Say why, and return True, when the rule refuses any of ``users``: then nobody is changed."""
    if all(may_manage_two_factor(request.user, user) for user in users):
        return False
    if not may_manage_two_factor(request.user):
        text = _("You do not have permission to reset or unlock second factors.")
    else:
        text = _("Only a superuser can reset or unlock a superuser's second factor.")
    modeladmin.message_user(request, text, messages.ERROR)
    return True


def _require(request: HttpRequest, users: list) -> None:
    # Django checked has_delete_permission already; checked again where the reset happens, so
    # that no other way into these methods can skip the rule.
    if not all(may_manage_two_factor(request.user, user) for user in users):
        raise PermissionDenied


# Fields that no changelist filter may name, on any model reachable from an admin here. A
# filter reads a field a prefix at a time (``?encrypted_secret__startswith=gAAA``, then the
# next character...), which is why Django's UserAdmin refuses lookups on ``password``.
SECRET_FIELDS = frozenset(
    {
        "encrypted_secret",
        "last_used_step",
        "code_hash",
        "selector",
        "sid",
        "session_key",
        "password",
    }
)


def _names_a_secret(lookup: str) -> bool:
    """Whether a changelist filter ``lookup`` goes through a secret field, directly or not."""
    return not SECRET_FIELDS.isdisjoint(lookup.split(LOOKUP_SEP))


class SecretLookupsRefused:
    """Refuse changelist filters on secret fields (Django answers 400).

    Not listing a field is not enough: ``?field__startswith=`` filters on it all the same.
    """

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest) -> bool:
        return not _names_a_secret(lookup) and super().lookup_allowed(lookup, value, request)


def _actor(request: HttpRequest) -> str:
    return f"admin {request.user.get_username()}"


@admin.action(
    description=_("Reset two-factor authentication (the user must enrol again)"),
    permissions=["manage_two_factor"],
)
def reset_two_factor(modeladmin, request: HttpRequest, queryset: QuerySet) -> None:
    users = [getattr(obj, "user", obj) for obj in queryset]
    if _refused(modeladmin, request, users):
        return
    count = sum(flows.reset(user, _actor(request), request) for user in users)
    _report(
        modeladmin,
        request,
        ngettext("Reset two-factor for %d user.", "Reset two-factor for %d users.", count) % count,
        len(users) - count,
        _("Nothing to reset for %d of them: no two-factor authentication."),
    )


@admin.action(
    description=_("Unlock the second factor (clear failures and back-off)"),
    permissions=["manage_two_factor"],
)
def unlock_two_factor(modeladmin, request: HttpRequest, queryset: QuerySet) -> None:
    users = [getattr(obj, "user", obj) for obj in queryset]
    if _refused(modeladmin, request, users):
        return
    count = sum(flows.unlock(user, _actor(request), request) for user in users)
    _report(
        modeladmin,
        request,
        ngettext("Unlocked %d user.", "Unlocked %d users.", count) % count,
        len(users) - count,
        _("Nothing to unlock for %d of them: not locked, no failures."),
    )


def _report(modeladmin, request: HttpRequest, done: str, skipped: int, why: str) -> None:
    # An action that changed nothing for someone says so, instead of counting them as done.
    if skipped:
        done = f"{done} {why % skipped}"
    modeladmin.message_user(request, done, messages.SUCCESS if not skipped else messages.WARNING)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(SecurityEvent)
class SecurityEventAdmin(SecretLookupsRefused, ReadOnlyAdmin):
    list_display = ["created_at", "user", "kind", "ip_address", "detail"]
    list_filter = ["kind", "created_at"]
    search_fields = ["user__username", "user__email", "ip_address", "detail", "user_agent"]
    date_hierarchy = "created_at"
    list_select_related = ["user"]


@admin.register(TwoFactor)
class TwoFactorAdmin(SecretLookupsRefused, admin.ModelAdmin):
    """Each user with 2FA on: their factors, recovery codes left, failures, back-off, lock."""

    # Deliberately not shown: the TOTP secret's ciphertext and its last used step.
    fields = [
        "user",
        "enabled_at",
        "app",
        "keys",
        "codes_left",
        "failure_count",
        "blocked_until",
        "locked_at",
    ]
    readonly_fields = fields
    list_display = fields
    list_filter = [("locked_at", admin.EmptyFieldListFilter)]
    search_fields = ["user__username", "user__email"]
    actions = [unlock_two_factor, reset_two_factor]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # Subqueries, not joins: two counts over two joins would multiply each other.
        return (
            super()
            .get_queryset(request)
            .select_related("user")
            .annotate(
                _app=Exists(TOTPDevice.objects.filter(user=OuterRef("user"))),
                _keys=_count(WebAuthnCredential.objects.filter(user=OuterRef("user"))),
                _codes_left=_count(
                    RecoveryCode.objects.filter(user=OuterRef("user"), used_at__isnull=True)
                ),
            )
        )

    @admin.display(description=_("authenticator app"), boolean=True, ordering="_app")
    def app(self, obj: TwoFactor) -> bool:
        return obj._app

    @admin.display(description=_("security keys"), ordering="_keys")
    def keys(self, obj: TwoFactor) -> int:
        return obj._keys

    @admin.display(description=_("recovery codes left"), ordering="_codes_left")
    def codes_left(self, obj: TwoFactor) -> int:
        return obj._codes_left

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # only the user can turn 2FA on, by proving a factor

    def has_manage_two_factor_permission(self, request: HttpRequest) -> bool:
        return may_manage_two_factor(request.user)

    # Deleting this row is a reset, so it needs what a reset needs, on top of the delete
    # permission. Django asks this for the delete view, for each row of "Delete selected" and
    # for the row that deleting a user would take with it (a 403 when refused).
    def has_delete_permission(self, request, obj=None) -> bool:
        return super().has_delete_permission(request, obj) and may_manage_two_factor(
            request.user, obj.user if obj is not None else None
        )

    # Deleting it here (or with its user) is a reset: audited and notified, never silent.
    def delete_model(self, request: HttpRequest, obj: TwoFactor) -> None:
        _require(request, [obj.user])
        flows.reset(obj.user, _actor(request), request)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        rows = list(queryset.select_related("user"))
        _require(request, [row.user for row in rows])
        for row in rows:
            flows.reset(row.user, _actor(request), request)


def _count(queryset: QuerySet) -> Subquery:
    """The number of rows of ``queryset`` (correlated by OuterRef), as an annotation."""
    counted = queryset.order_by().values("user").annotate(n=Count("pk")).values("n")
    return Coalesce(Subquery(counted), 0)


@admin.register(WebAuthnCredential)
class WebAuthnCredentialAdmin(SecretLookupsRefused, admin.ModelAdmin):
    """Each user's security keys: names and dates only (a reset removes them all)."""

    # Not listed: the credential id and the public key (not secret, but of use to nobody here).
    fields = ["user", "name", "created_at", "last_used_at", "sign_count"]
    readonly_fields = fields
    list_display = ["user", "name", "created_at", "last_used_at"]
    search_fields = ["user__username", "user__email", "name"]
    list_select_related = ["user"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # only the user can add a key, with the key itself

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    # Removing a key is taking away a second factor: the same rule as a reset. Django asks
    # this too for the keys that deleting a user takes with it.
    def has_delete_permission(self, request, obj=None) -> bool:
        return super().has_delete_permission(request, obj) and may_manage_two_factor(
            request.user, obj.user if obj is not None else None
        )

    def delete_model(self, request: HttpRequest, obj: WebAuthnCredential) -> None:
        self.delete_queryset(request, WebAuthnCredential.objects.filter(pk=obj.pk))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        keys = list(queryset.select_related("user"))
        _require(request, [key.user for key in keys])
        actor = f"by {_actor(request)}"
        kept = [
            key
            for key in keys
            if webauthn_keys.removed(request, key.user, key.pk, detail=actor)
            == webauthn_keys.RemoveResult.LAST
        ]
        if kept:
            # 2FA never goes off by removing a key: a reset does that, audited as one.
            request._mfa_keys_kept = True
            text = ngettext(
                "%d key was kept: it is its user's last second factor. Reset the user's "
                "two-factor authentication instead.",
                "%d keys were kept: each is its user's last second factor. Reset those users' "
                "two-factor authentication instead.",
                len(kept),
            )
            self.message_user(request, text % len(kept), messages.ERROR)

    def response_delete(self, request: HttpRequest, obj_display: str, obj_id: Any):
        if getattr(request, "_mfa_keys_kept", False):  # not "deleted successfully"
            return HttpResponseRedirect(reverse("admin:mfa_webauthncredential_changelist"))
        return super().response_delete(request, obj_display, obj_id)


class TwoFactorUserAdmin(SecretLookupsRefused, UserAdmin):
    """The stock user admin, with each user's 2FA state and the two actions."""

    list_display = [*UserAdmin.list_display, "two_factor"]
    actions = [*(UserAdmin.actions or []), unlock_two_factor, reset_two_factor]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("mfa_two_factor")

    def has_manage_two_factor_permission(self, request: HttpRequest) -> bool:
        return may_manage_two_factor(request.user)

    # Deleting a user deletes their factors too (CASCADE). Django refuses that (403) unless
    # TwoFactorAdmin.has_delete_permission allows it for the row, so the rule holds; and
    # the removal of the second factor is recorded and notified first, like any reset.
    def delete_model(self, request: HttpRequest, obj) -> None:
        self._reset_before_delete(request, [obj])
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._reset_before_delete(request, list(queryset))
        super().delete_queryset(request, queryset)

    def _reset_before_delete(self, request: HttpRequest, users: list) -> None:
        with_2fa = [user for user in users if flows.has_2fa(user)]
        _require(request, with_2fa)
        for user in with_2fa:
            flows.reset(user, f"{_actor(request)}, deleting user {user.pk}", request)

    @admin.display(description=_("two-factor"))
    def two_factor(self, obj) -> str:
        row = getattr(obj, "mfa_two_factor", None)
        if row is None:
            return _("off")
        if row.locked_at:
            return _("locked")
        return _("on")


# Only replace the stock UserAdmin: a project with its own user admin keeps it.
if type(admin.site._registry.get(User)) is UserAdmin:
    admin.site.unregister(User)
    admin.site.register(User, TwoFactorUserAdmin)
