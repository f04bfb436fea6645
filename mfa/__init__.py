"""Hardened TOTP two-factor authentication for Django.

Where to start reading: ``flows.py`` holds every state change of the second factor (enrol,
log in, disable, recovery codes, security keys) with its audit event; ``views.py`` is the thin
web layer on top (the login, re-authentication, the security page). Each factor has its own
subpackage: ``totp/`` (the RFC 6238 maths; ``totp/views.py`` enrols an app), ``recovery/``
(the code format and hashing; its views the recovery step and a fresh set), ``webauthn/``
(security keys: ``ceremonies.py`` is the only py_webauthn code). ``crypto.py`` is the only
module that touches the key ring, ``throttle.py`` holds the rate limits and back-off, and
``models.TwoFactor`` is the one row that says 2FA is on.
"""
