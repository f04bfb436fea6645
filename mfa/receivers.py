"""The app's own receivers, connected in ``MfaConfig.ready`` (its public signals: ``signals``)."""

from django.contrib.auth.signals import user_logged_out
from django.dispatch import receiver

from . import sessions


@receiver(user_logged_out, dispatch_uid="mfa.forget_session_on_logout")
def forget_session_on_logout(sender, request, user, **kwargs) -> None:
    # Every logout, ours or the admin's: the session is about to be flushed.
    if request is not None:
        sessions.forget(request.session)
