"""Adding, renaming and removing a user's security keys, each audited and notified.

A key is a second factor of its own: a user without 2FA who adds one turns 2FA on with it (and
gets their recovery codes), exactly as confirming an authenticator app does. Removing a key
never turns 2FA off: the last factor of a user (no app, no other key) cannot be removed here,
only by turning 2FA off (``mfa.flows.disable``, which asks for the password and a second
factor) or by an administrator's reset.
"""

from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.views.decorators.debug import sensitive_variables

from .. import flows, notify
from ..models import SecurityEvent, WebAuthnCredential
from . import ceremonies

__all__ = ["AddResult", "Added", "RemoveResult", "add", "begin", "remove", "removed", "rename"]

Kind = SecurityEvent.Kind


class AddResult:
    OK = "ok"
    STALE = "stale"  # no live challenge: expired, already used, or never asked for
    REJECTED = "rejected"  # wrong origin, RP ID, challenge, or a bad attestation
    DUPLICATE = "duplicate"  # this credential is registered already (to anyone)
    # 2FA turned on meanwhile (another session's first factor), and this session has not
    # proved a factor lately: the view's check was for a user without 2FA.
    STEP_UP = "step_up"


@dataclass(frozen=True)
class Added:
    result: str
    # The first recovery codes, when this key turned 2FA on (shown once, never stored).
    recovery_codes: list[str] | None = field(default=None, repr=False)


# What a removal answers (also the admin's): OK, GONE, or LAST (the user's only factor).
RemoveResult = flows.Removal


def begin(request: HttpRequest, user: Any) -> str:
    """Return the options for a new key of ``user`` as JSON (the challenge is kept)."""
    existing = list(WebAuthnCredential.objects.filter(user=user))
    return ceremonies.begin_registration(request, user, existing)


@sensitive_variables("codes")
def add(
    request: HttpRequest, user: Any, name: str, credential: ceremonies.RegistrationCredential
) -> Added:
    """Verify the browser's new credential against this session's challenge, and save it;
    a user without 2FA turns it on with this key."""
    challenge = ceremonies.take_challenge(request, ceremonies.REGISTER, user)
    if challenge is None:
        return Added(AddResult.STALE)
    try:
        verified = ceremonies.verify_registration(credential, challenge)
    except ceremonies.Rejected as exc:
        flows.record(request, user, Kind.MFA_FAILED, detail=f"security key not added ({exc})")
        return Added(AddResult.REJECTED)
    try:
        with transaction.atomic():
            # In the key's transaction: 2FA is on if and only if the key was saved.
            codes = flows.turn_on_with_key(request, user)
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
        return Added(AddResult.DUPLICATE)
    except flows.NeedsStepUp:
        return Added(AddResult.STEP_UP)
    # The key was just proved (it signed the challenge): as after an app's enrolment, this
    # session has used a second factor, and is offered to end the others.
    flows.factor_added(request, user, flows.KEY, turned_on=codes is not None)
    notify.send(user, Kind.KEY_ADDED)
    return Added(AddResult.OK, codes)


def rename(user: Any, key_pk: int, name: str) -> bool:
    """Rename one of ``user``'s keys; False if it is not theirs (or gone)."""
    return bool(WebAuthnCredential.objects.filter(user=user, pk=key_pk).update(name=name))


def is_last_factor(user: Any, key_pk: int) -> bool:
    """Whether key ``key_pk`` is the only factor ``user`` has (no app, no other key)."""
    return not flows.has_factor(user, but_key=key_pk)


def remove(request: HttpRequest, user: Any, key_pk: int) -> str:
    """Remove one of ``user``'s keys (after re-authentication by the view)."""
    result = removed(request, user, key_pk, detail=f"key {key_pk}")
    if result == RemoveResult.OK:
        flows._offer_end_sessions(request)
    return result


def removed(request: HttpRequest | None, user: Any, key_pk: int, detail: str) -> str:
    """Delete one of ``user``'s keys, audited and notified, unless it is their last factor.

    Also the administrator's way (``detail`` names them), whose own session is not offered to
    end the user's others; an administrator takes a last factor away with a reset.
    """
    key = WebAuthnCredential.objects.filter(user=user, pk=key_pk)
    return flows.remove_factor(request, user, key, Kind.KEY_REMOVED, flows.KEY, detail)
