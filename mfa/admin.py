"""The administrator's view: audit events, each user's 2FA state, reset and unlock.

No page here shows a secret, a ciphertext or a hash: those fields are simply never listed.
Every action is a ``flows`` call, so it is audited (naming the administrator) and notified.
"""

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from . import flows
from .models import SecurityEvent, TOTPDevice

User = get_user_model()


def _actor(request: HttpRequest) -> str:
    return f"admin {request.user.get_username()}"


@admin.action(
    description=_("Reset two-factor authentication (the user must enrol again)"),
    permissions=["change"],
)
def reset_two_factor(modeladmin, request: HttpRequest, queryset: QuerySet) -> None:
    users = [getattr(obj, "user", obj) for obj in queryset]
    if not request.user.is_superuser and any(user.is_superuser for user in users):
        # Otherwise staff who can change users could strip a superuser's second factor and
        # take over with a password they know.
        modeladmin.message_user(
            request, _("Only a superuser can reset a superuser's second factor."), messages.ERROR
        )
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
    permissions=["change"],
)
def unlock_two_factor(modeladmin, request: HttpRequest, queryset: QuerySet) -> None:
    users = [getattr(obj, "user", obj) for obj in queryset]
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
class SecurityEventAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "user", "kind", "ip_address", "detail"]
    list_filter = ["kind", "created_at"]
    search_fields = ["user__username", "user__email", "ip_address", "detail", "user_agent"]
    date_hierarchy = "created_at"
    list_select_related = ["user"]


@admin.register(TOTPDevice)
class TOTPDeviceAdmin(admin.ModelAdmin):
    # Deliberately not listed: encrypted_secret, last_used_step.
    fields = ["user", "confirmed_at", "codes_left", "failure_count", "blocked_until", "locked_at"]
    readonly_fields = fields
    list_display = [
        "user",
        "confirmed_at",
        "codes_left",
        "failure_count",
        "blocked_until",
        "locked_at",
    ]
    list_filter = [("locked_at", admin.EmptyFieldListFilter)]
    search_fields = ["user__username", "user__email"]
    actions = [unlock_two_factor, reset_two_factor]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return (
            super()
            .get_queryset(request)
            .select_related("user")
            .annotate(
                _codes_left=Count(
                    "user__mfa_recovery_codes",
                    filter=Q(user__mfa_recovery_codes__used_at__isnull=True),
                )
            )
        )

    @admin.display(description=_("recovery codes left"), ordering="_codes_left")
    def codes_left(self, obj: TOTPDevice) -> int:
        return obj._codes_left

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # only the user can enrol, by proving a code

    # Deleting a device here (or with its user) is a reset: audited and notified, never silent.
    def delete_model(self, request: HttpRequest, obj: TOTPDevice) -> None:
        flows.reset(obj.user, _actor(request), request)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for device in queryset.select_related("user"):
            flows.reset(device.user, _actor(request), request)


class TwoFactorUserAdmin(UserAdmin):
    """The stock user admin, with each user's 2FA state and the two actions."""

    list_display = [*UserAdmin.list_display, "two_factor"]
    actions = [*(UserAdmin.actions or []), unlock_two_factor, reset_two_factor]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("mfa_totp")

    @admin.display(description=_("two-factor"))
    def two_factor(self, obj) -> str:
        device = getattr(obj, "mfa_totp", None)
        if device is None:
            return _("off")
        if device.locked_at:
            return _("locked")
        return _("on")


# Only replace the stock UserAdmin: a project with its own user admin keeps it.
if type(admin.site._registry.get(User)) is UserAdmin:
    admin.site.unregister(User)
    admin.site.register(User, TwoFactorUserAdmin)
