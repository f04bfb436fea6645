"""The routes of the two-factor flow, mounted under ``accounts/`` by the site."""

from django.urls import path

from . import views
from .recovery import views as recovery_views
from .totp import views as totp_views
from .webauthn import views as webauthn_views

app_name = "mfa"

urlpatterns = [
    path("login/", views.login_view, name="login"),
    path("logout/", views.logout_view, name="logout"),
    path("reauth/", views.reauth_view, name="reauth"),
    path(
        "reauth/key/options/",
        webauthn_views.reauth_options_view,
        name="webauthn_reauth_options",
    ),
    path("2fa/verify/", views.verify_view, name="verify"),
    path("2fa/recovery/", recovery_views.recovery_view, name="recovery"),
    path("2fa/key/", webauthn_views.login_view, name="webauthn_login"),
    path("2fa/key/options/", webauthn_views.login_options_view, name="webauthn_login_options"),
    path("2fa/setup/", totp_views.setup_view, name="setup"),
    path("2fa/app/remove/", totp_views.remove_app_view, name="app_remove"),
    path("2fa/disable/", views.disable_view, name="disable"),
    path("2fa/recovery-codes/", recovery_views.regenerate_view, name="regenerate"),
    path("security/", views.security_view, name="security"),
    path("security/end-sessions/", views.end_sessions_view, name="end_sessions"),
    path("security/browsers/forget/", views.forget_browsers_view, name="forget_browsers"),
    path("security/browsers/<int:pk>/forget/", views.forget_browser_view, name="forget_browser"),
    path("security/keys/add/", webauthn_views.add_key_view, name="webauthn_add"),
    path(
        "security/keys/options/",
        webauthn_views.register_options_view,
        name="webauthn_register_options",
    ),
    path("security/keys/<int:pk>/rename/", webauthn_views.rename_key_view, name="webauthn_rename"),
    path("security/keys/<int:pk>/remove/", webauthn_views.remove_key_view, name="webauthn_remove"),
]
