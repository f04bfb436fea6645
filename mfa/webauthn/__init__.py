"""Security keys and passkeys (WebAuthn) as an additional second factor.

``ceremonies`` wraps py_webauthn (no CBOR or COSE here) and keeps each ceremony's challenge;
``keys`` adds, renames and removes a user's keys; ``views`` and ``forms`` are the web layer.
The login's step with a key is ``mfa.flows.verify_webauthn``, beside the other methods.
"""
