"""Adding, renaming and removing a user's security keys, each audited and notified.

A key is an additional second factor: only a user who already has 2FA (a TOTPDevice row, the
one place of its back-off) may add one, and removing the last key leaves 2FA on with the
authenticator app and the recovery codes. Turning 2FA off stays ``mfa.flows.disable``.
"""

from typing import Any

from django.db import IntegrityError, transaction
from django.http import HttpRequest

from .. import flows, notify
from ..models import SecurityEvent, WebAuthnCredential
from . import ceremonies

__all__ = ["AddResult", "add", "begin", "remove", "removed", "rename"]

Kind = SecurityEvent.Kind


class AddResult:
    OK = "ok"
    STALE = "stale"  # no live challenge: expired, already used, or never asked for
    REJECTED = "rejected"  # wrong origin, RP ID, challenge, or a bad attestation
    DUPLICATE = "duplicate"  # this credential is registered already (to anyone)


def begin(request: HttpRequest, user: Any) -> str:
    """Return the options for a new key of ``user`` as JSON (the challenge is kept)."""
    existing = list(WebAuthnCredential.objects.filter(user=user))
    return ceremonies.begin_registration(request, user, existing)


def add(
    request: HttpRequest, user: Any, name: str, credential: ceremonies.RegistrationCredential
) -> str:
    """Verify the browser's new credential against this session's challenge, and save it."""
    challenge = ceremonies.take_challenge(request, ceremonies.REGISTER, user)
    if challenge is None:
        return AddResult.STALE
    try:
        verified = ceremonies.verify_registration(credential, challenge)
    except ceremonies.Rejected as exc:
        flows.record(request, user, Kind.MFA_FAILED, detail=f"security key not added ({exc})")
        return AddResult.REJECTED
    try:
        with transaction.atomic():
            key = WebAuthnCredential.objects.create(
                user=user,
                # Unique across users: a credential id claimed twice is refused, so no
                # assertion can ever name a key of someone else.
                credential_id=ceremonies.credential_key(verified.credential_id),
                public_key=verified.credential_public_key,
                sign_count=verified.sign_count,
                transports=[t.value for t in credential.response.transports or []],
                name=name,
            )
            flows.record(request, user, Kind.KEY_ADDED, detail=f"key {key.pk}")
    except IntegrityError:
        return AddResult.DUPLICATE
    # A new factor: offer to end the other sessions, as enrolment does.
    flows._offer_end_sessions(request)
    notify.send(user, Kind.KEY_ADDED)
    return AddResult.OK


def rename(user: Any, key_pk: int, name: str) -> bool:
    """Rename one of ``user``'s keys; False if it is not theirs (or gone)."""
    return bool(WebAuthnCredential.objects.filter(user=user, pk=key_pk).update(name=name))


def remove(request: HttpRequest, user: Any, key_pk: int) -> bool:
    """Remove one of ``user``'s keys (after re-authentication by the view)."""
    if not removed(request, user, key_pk, detail=f"key {key_pk}"):
        return False
    flows._offer_end_sessions(request)
    return True


def removed(request: HttpRequest | None, user: Any, key_pk: int, detail: str) -> bool:
    """Delete one of ``user``'s keys, audited and notified; False if it is not theirs (or gone).

    Also the administrator's way (``detail`` names them), whose own session is not offered to
    end the user's others.
    """
    deleted, _ = WebAuthnCredential.objects.filter(user=user, pk=key_pk).delete()
    if not deleted:
        return False
    flows.record(request, user, Kind.KEY_REMOVED, detail=detail)
    notify.send(user, Kind.KEY_REMOVED)
    return True
