"""Hardened TOTP two-factor authentication for Django.

Where to start reading: ``flows.py`` holds every state change of the second factor (enrol,
log in, disable, recovery codes) with its audit event; ``views.py`` is the thin web layer on
top; ``totp.py`` is the RFC 6238 maths, ``crypto.py`` the only module that touches the key
ring, ``recovery.py`` the recovery code format and hashing, ``throttle.py`` the rate limits and
back-off.
"""
