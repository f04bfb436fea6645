from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps
from django.utils.translation import gettext_lazy as _


class MfaConfig(AppConfig):
    default = True
    name = "mfa"
    verbose_name = _("Two-factor authentication")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, receivers, signals  # noqa: F401  (register checks, receivers)


class MfaAdminConfig(admin_apps.AdminConfig):
    """Django's admin, whose site sends its login through the two-step flow."""

    default = False
    default_site = "mfa.sites.AdminSite"
