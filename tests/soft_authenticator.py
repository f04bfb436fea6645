"""A software authenticator for the server-side WebAuthn tests: real ceremonies, no browser.

It makes what a browser and an authenticator would send: clientDataJSON, authenticatorData, a
"none" attestation and ES256 signatures, with every field open to tampering (origin, RP ID,
challenge, counter, flags), so each check of the server can be shown to matter. CBOR and COSE
are built here, in the tests only; the server reads them with py_webauthn.
"""

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url

UP, UV, AT = 0x01, 0x04, 0x40


def _client_data(kind: str, challenge: str, origin: str) -> bytes:
    return json.dumps(
        {"type": kind, "challenge": challenge, "origin": origin, "crossOrigin": False}
    ).encode()


@dataclass
class SoftAuthenticator:
    rp_id: str = "example.com"
    origin: str = "https://example.com"
    counter: int = 0
    credential_id: bytes = field(default_factory=lambda: os.urandom(32))
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    @property
    def id(self) -> str:
        return bytes_to_base64url(self.credential_id)

    def _cose_key(self) -> bytes:
        numbers = self.key.public_key().public_numbers()
        return cbor2.dumps(
            {
                1: 2,
                3: -7,
                -1: 1,
                -2: numbers.x.to_bytes(32, "big"),
                -3: numbers.y.to_bytes(32, "big"),
            }
        )

    def _auth_data(self, flags: int, rp_id: str | None, attested: bytes = b"") -> bytes:
        rp_hash = hashlib.sha256((rp_id or self.rp_id).encode()).digest()
        return rp_hash + bytes([flags]) + struct.pack(">I", self.counter) + attested

    def create(self, options: dict, origin: str | None = None, rp_id: str | None = None) -> str:
        """Answer ``navigator.credentials.create`` options (py_webauthn's JSON) as JSON."""
        client_data = _client_data("webauthn.create", options["challenge"], origin or self.origin)
        attested = (
            bytes(16)
            + struct.pack(">H", len(self.credential_id))
            + self.credential_id
            + self._cose_key()
        )
        auth_data = self._auth_data(UP | UV | AT, rp_id, attested)
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        return json.dumps(
            {
                "id": self.id,
                "rawId": self.id,
                "type": "public-key",
                "response": {
                    "clientDataJSON": bytes_to_base64url(client_data),
                    "attestationObject": bytes_to_base64url(attestation),
                    "transports": ["internal"],
                },
                "clientExtensionResults": {},
            }
        )

    def get(
        self,
        options: dict,
        origin: str | None = None,
        rp_id: str | None = None,
        flags: int = UP | UV,
        counter_step: int = 1,
    ) -> str:
        """Answer ``navigator.credentials.get`` options as JSON; the counter grows first."""
        self.counter += counter_step
        client_data = _client_data("webauthn.get", options["challenge"], origin or self.origin)
        auth_data = self._auth_data(flags, rp_id)
        signed = auth_data + hashlib.sha256(client_data).digest()
        signature = self.key.sign(signed, ec.ECDSA(hashes.SHA256()))
        return json.dumps(
            {
                "id": self.id,
                "rawId": self.id,
                "type": "public-key",
                "response": {
                    "clientDataJSON": bytes_to_base64url(client_data),
                    "authenticatorData": bytes_to_base64url(auth_data),
                    "signature": bytes_to_base64url(signature),
                },
                "clientExtensionResults": {},
            }
        )


__all__ = ["SoftAuthenticator", "base64url_to_bytes"]
