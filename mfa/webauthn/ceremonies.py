"""The two WebAuthn ceremonies through py_webauthn, and the one-time challenge of each.

A challenge is 32 random bytes (py_webauthn's default), kept in the session under
``CHALLENGE_KEY`` with what it is for: the purpose, the user, the time, and what it is bound
to (``mfa.flows.webauthn_binding``: for a login the pending marker it was issued under, for a
re-authentication the session's last sign-in). It is taken out (popped) by the request that
answers it, whatever the answer, so it serves one ceremony at most. Two requests racing with
the same answer in one session can both read it before either saves the session: the
acceptance in ``mfa.flows.verify_webauthn`` is therefore a conditional UPDATE on the key's row
as well.

The RP ID, the origins and user verification come from settings and are given to every
verification: the browser signs the origin of the page and the authenticator the RP ID's hash,
so an assertion made on a look-alike site fails here.
"""

import hashlib
from typing import Any

from django.conf import settings as django_settings
from django.http import HttpRequest
from django.utils.crypto import salted_hmac
from webauthn import (
    base64url_to_bytes,
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.authentication.verify_authentication_response import VerifiedAuthentication
from webauthn.helpers import (
    bytes_to_base64url,
    parse_authentication_credential_json,
    parse_registration_credential_json,
)
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticationCredential,
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    RegistrationCredential,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)
from webauthn.registration.verify_registration_response import VerifiedRegistration

from .. import conf, totp
from ..conf import settings

__all__ = [
    "CHALLENGE_KEY",
    "AuthenticationCredential",
    "RegistrationCredential",
    "LOGIN",
    "MAX_CREDENTIAL",
    "REAUTH",
    "REGISTER",
    "Malformed",
    "Rejected",
    "begin_authentication",
    "begin_registration",
    "challenge_digest",
    "credential_key",
    "drop_challenge",
    "origins",
    "parse_assertion",
    "parse_registration",
    "rp_id",
    "take_challenge",
    "verify_assertion",
    "verify_registration",
]

CHALLENGE_KEY = "_mfa_webauthn"
# What a challenge is for: a login's second step, a new key, or a logged-in user proving a
# second factor again (``mfa.views._reauth``). One purpose's challenge answers no other.
LOGIN, REGISTER, REAUTH = "login", "register", "reauth"
# A real credential's JSON is a few kilobytes (an attestation with a certificate chain
# perhaps ten); anything longer is refused before it is parsed (the forms' max_length).
MAX_CREDENTIAL = 64 * 1024
# The ceremony's timeout the browser is given, in ms; the server's own limit is the setting.
_BROWSER_TIMEOUT_MS = 120_000
# WebAuthn Level 3, 7.1 (registering a new credential): a credential id over 1023 bytes is
# refused; it would not fit the credential_id column either. py_webauthn does not check it.
MAX_CREDENTIAL_ID = 1023
# What py_webauthn lets escape from attacker-chosen CBOR, COSE or attestation statements
# besides its own exceptions (a missing COSE label, a statement field of the wrong type):
# a refusal too, never a 500.
_PARSE_ERRORS = (WebAuthnException, ValueError, TypeError, LookupError, AttributeError)


class Malformed(Exception):
    """The browser's answer is not a WebAuthn credential at all (not counted as a guess)."""


class Rejected(Exception):
    """A well-formed answer that does not verify: wrong origin, RP ID, challenge, signature."""


def rp_id() -> str:
    """Return the RP ID: MFA_WEBAUTHN_RP_ID, else the first plain name in ALLOWED_HOSTS."""
    if settings.WEBAUTHN_RP_ID:
        return settings.WEBAUTHN_RP_ID
    for host in django_settings.ALLOWED_HOSTS:
        if host and "*" not in host and not host.startswith(".") and not _is_address(host):
            return host
    return "localhost"


def _is_address(host: str) -> bool:
    return host.startswith("[") or host.replace(".", "").isdigit()


def origins() -> list[str]:
    """Return the origins a ceremony may come from: MFA_WEBAUTHN_ORIGINS, else the RP ID's."""
    return settings.WEBAUTHN_ORIGINS or [f"https://{rp_id()}"]


def _rp_name(request: HttpRequest | None) -> str:
    return settings.WEBAUTHN_RP_NAME or conf.issuer(request)


def _user_verification() -> UserVerificationRequirement:
    return UserVerificationRequirement(settings.WEBAUTHN_USER_VERIFICATION)


def _require_user_verification() -> bool:
    return settings.WEBAUTHN_USER_VERIFICATION == "required"


def user_handle(user: Any) -> bytes:
    """Return the WebAuthn user handle of ``user``: stable, opaque, no personal data."""
    return salted_hmac("mfa.webauthn.user-handle", str(user.pk), algorithm="sha256").digest()


def credential_key(raw_id: bytes) -> str:
    """Return how a credential id is stored and looked up (base64url)."""
    return bytes_to_base64url(raw_id)


def challenge_digest(challenge: bytes) -> str:
    return hashlib.sha256(challenge).hexdigest()


def _descriptor(credential: Any) -> PublicKeyCredentialDescriptor:
    # Only the transports this py_webauthn knows: they are hints anyway.
    known = {t.value for t in AuthenticatorTransport}
    transports = [AuthenticatorTransport(n) for n in credential.transports or [] if n in known]
    return PublicKeyCredentialDescriptor(
        id=_raw_id(credential.credential_id), transports=transports or None
    )


def _raw_id(key: str) -> bytes:
    return base64url_to_bytes(key)


def _keep_challenge(request: HttpRequest, purpose: str, user: Any, challenge: bytes, bind: Any):
    # One slot: asking again replaces the previous challenge, which then answers nothing.
    request.session[CHALLENGE_KEY] = {
        "purpose": purpose,
        "uid": str(user.pk),
        "c": bytes_to_base64url(challenge),
        "at": int(totp.now()),
        "bind": bind,
    }


def take_challenge(request: HttpRequest, purpose: str, user: Any, bind: Any = None) -> bytes | None:
    """Remove this session's challenge and return it if it was issued for this very ceremony.

    None when there is none (never asked, already answered), or it was for another purpose,
    another user or another pending login (``bind``), or it is older than
    MFA_WEBAUTHN_CHALLENGE_TIMEOUT (or from the future: a clock that went back).
    """
    kept = request.session.pop(CHALLENGE_KEY, None)
    if not isinstance(kept, dict):
        return None
    age = totp.now() - kept.get("at", 0)
    if (
        kept.get("purpose") != purpose
        or kept.get("uid") != str(user.pk)
        or kept.get("bind") != bind
        or not 0 <= age <= settings.WEBAUTHN_CHALLENGE_TIMEOUT
    ):
        return None
    try:
        return _raw_id(kept["c"])
    except (KeyError, TypeError, ValueError):
        return None


def drop_challenge(request: HttpRequest) -> None:
    """Remove this session's challenge unanswered: it can answer nothing afterwards."""
    request.session.pop(CHALLENGE_KEY, None)


def begin_registration(request: HttpRequest, user: Any, existing: list) -> str:
    """Return the options of ``navigator.credentials.create`` as JSON, keeping the challenge.

    ``existing`` (the user's keys) are excluded, so one authenticator is not added twice.
    """
    options = generate_registration_options(
        rp_id=rp_id(),
        rp_name=_rp_name(request),
        user_id=user_handle(user),
        user_name=user.get_username(),
        user_display_name=user.get_username(),
        timeout=_BROWSER_TIMEOUT_MS,
        authenticator_selection=AuthenticatorSelectionCriteria(
            # A passkey when the authenticator can keep one; a plain security key otherwise.
            resident_key=ResidentKeyRequirement.PREFERRED,
            user_verification=_user_verification(),
        ),
        exclude_credentials=[_descriptor(c) for c in existing],
    )
    _keep_challenge(request, REGISTER, user, options.challenge, None)
    return options_to_json(options)


def begin_authentication(
    request: HttpRequest, user: Any, credentials: list, bind: Any, purpose: str = LOGIN
) -> str:
    """Return the options of ``navigator.credentials.get`` as JSON, keeping the challenge.

    Only the user's own keys are allowed: the browser offers no other credential. ``purpose``
    is LOGIN (the pending login's step) or REAUTH (a logged-in user's re-authentication).
    """
    options = generate_authentication_options(
        rp_id=rp_id(),
        timeout=_BROWSER_TIMEOUT_MS,
        allow_credentials=[_descriptor(c) for c in credentials],
        user_verification=_user_verification(),
    )
    _keep_challenge(request, purpose, user, options.challenge, bind)
    return options_to_json(options)


def parse_registration(raw: str) -> RegistrationCredential:
    """Parse the JSON of a new credential, or raise ``Malformed``."""
    try:
        return parse_registration_credential_json(raw)
    except (WebAuthnException, ValueError, TypeError, RecursionError) as exc:
        raise Malformed("not a registration credential") from exc


def parse_assertion(raw: str) -> AuthenticationCredential:
    """Parse the JSON of an assertion, or raise ``Malformed``."""
    try:
        return parse_authentication_credential_json(raw)
    except (WebAuthnException, ValueError, TypeError, RecursionError) as exc:
        raise Malformed("not an authentication credential") from exc


def verify_registration(
    credential: RegistrationCredential, challenge: bytes
) -> VerifiedRegistration:
    """Verify a new credential against the challenge, the RP ID and the origins."""
    try:
        verified = verify_registration_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp_id(),
            expected_origin=origins(),
            require_user_verification=_require_user_verification(),
        )
    except _PARSE_ERRORS as exc:
        raise Rejected(type(exc).__name__) from exc
    if len(verified.credential_id) > MAX_CREDENTIAL_ID:
        raise Rejected("credential id too long")
    return verified


def verify_assertion(
    credential: AuthenticationCredential, challenge: bytes, public_key: bytes
) -> VerifiedAuthentication:
    """Verify an assertion's challenge, RP ID, origin, flags and signature.

    The sign counter is NOT compared here (0 is passed as the known count): py_webauthn
    compares it before the signature, and a regression is evidence of a cloned key only in an
    assertion the key really signed, so ``mfa.flows`` compares it after this returns.
    """
    try:
        return verify_authentication_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp_id(),
            expected_origin=origins(),
            credential_public_key=public_key,
            credential_current_sign_count=0,
            require_user_verification=_require_user_verification(),
        )
    except _PARSE_ERRORS as exc:
        raise Rejected(type(exc).__name__) from exc
