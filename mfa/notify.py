"""Out-of-band notices: the user is told by email of every change to their second factor.

NIST SP 800-63B-4 and ASVS 6.3.7 ask that the owner hears of enrolment, removal, the use of a
recovery code, new codes and an administrator's reset, through a channel an attacker holding
the session does not control. A failure to send is logged, never raised: the change it reports
has already happened, and the audit trail has it either way.
"""

import datetime
import logging
from typing import Any

from django.conf import settings as django_settings
from django.core.mail import EmailMessage
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.translation import gettext as _

__all__ = ["send"]

logger = logging.getLogger(__name__)


def _subjects() -> dict[str, str]:
    return {
        "enabled": _("Two-factor authentication was turned on"),
        "disabled": _("Two-factor authentication was turned off"),
        "recovery_used": _("A recovery code was used to sign in"),
        "codes_regenerated": _("Your recovery codes were replaced"),
        "admin_reset": _("An administrator reset your two-factor authentication"),
        "imported": _("Your two-factor authentication was moved to a new system"),
        "unlocked": _("An administrator unlocked your two-factor authentication"),
        "suspicious": _("Someone entered your password but not your second factor"),
        "locked": _("Your two-factor authentication was locked"),
        "sessions_ended": _("Your other sessions were signed out"),
        "browser_remembered": _("A browser will sign in to your account without a code"),
        "key_added": _("A security key was added to your account"),
        "key_removed": _("A security key was removed from your account"),
        "key_used": _("A security key was used to sign in"),
        "key_cloned": _("A security key may have been copied"),
        "app_added": _("An authenticator app was added to your account"),
        "app_removed": _("The authenticator app was removed from your account"),
    }


def send(user: Any, kind: str) -> bool:
    """Email ``user`` about ``kind``; return whether a message went out."""
    address = getattr(user, "email", "")
    if not address:
        logger.warning("no email address for user %s; notice %s not sent", user.pk, kind)
        return False
    subject = _subjects().get(kind, _("Security notice"))
    # In UTC, as the text says, whatever zone the request that caused it had activated.
    with timezone.override(datetime.UTC):
        body = render_to_string(
            "mfa/email/notice.txt",
            {"user": user, "kind": kind, "subject": subject, "when": timezone.now()},
        )
    try:
        EmailMessage(subject, body, django_settings.DEFAULT_FROM_EMAIL, [address]).send()
    except Exception:  # SMTP down, refused, ...: the audit trail still has the event
        logger.exception("could not send notice %s to user %s", kind, user.pk)
        return False
    return True
