"""The server time of the login's second step with a security key, against the TOTP step.

(Not named webauthn.py: run as a script, it would shadow the py_webauthn package.)

In one process, one run, on a throw-away SQLite database: users with TOTP and a key (from the
tests' software authenticator) pass the password step untimed; then, alternating, one user's
TOTP step (POST /accounts/2fa/verify/) and another's key step (POST /accounts/2fa/key/, with
its options request timed apart) are timed through Django's test client, so both see the same
machine at the same moment. Reported, not asserted: medians and p90 of wall and CPU time.

    .venv/bin/python bench/key_step.py [--users 60] [--json bench/results/key_step.json]
"""

import argparse
import json
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _django  # noqa: E402

PASSWORD = "correct horse battery staple"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=60, help="logins per method")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    users = max(5, min(args.users, 2000))

    _django.setup()
    from django.contrib.auth import get_user_model
    from django.test import Client, override_settings

    from mfa import crypto, totp
    from mfa.models import TOTPDevice, TwoFactor, WebAuthnCredential
    from tests.soft_authenticator import SoftAuthenticator

    overrides = override_settings(
        MFA_WEBAUTHN_RP_ID="example.com",
        MFA_WEBAUTHN_ORIGINS=["https://example.com"],
        MAILERS={"default": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"}},
        EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
        # One client address makes every login: the rate limits must not be what is measured.
        **{
            f"MFA_{name}_RATE": "100000/m" for name in ("CODE", "CODE_IP", "LOGIN_USER", "LOGIN_IP")
        },
    )
    overrides.enable()

    def make_user(i: int):
        user = get_user_model().objects.create_user(f"u{i}", f"u{i}@example.com", PASSWORD)
        secret = totp.generate_secret()
        TwoFactor.objects.create(user=user)  # 2FA on: an app and a key, one back-off
        TOTPDevice.objects.create(
            user=user, encrypted_secret=crypto.encrypt_secret(secret, user.pk)
        )
        key = SoftAuthenticator()
        WebAuthnCredential.objects.create(
            user=user, credential_id=key.id, public_key=key._cose_key(), name="bench"
        )
        return user, secret, key

    def pending(user) -> Client:
        client = Client()
        response = client.post(
            "/accounts/login/", {"username": user.get_username(), "password": PASSWORD}
        )
        assert response.status_code == 302, response.status_code
        return client

    def timed(call) -> tuple[float, float, object]:
        started, cpu = time.perf_counter(), time.thread_time()
        result = call()
        return time.perf_counter() - started, time.thread_time() - cpu, result

    samples: dict[str, list[tuple[float, float]]] = {
        "TOTP step (POST code)": [],
        "key step (POST assertion)": [],
        "key options (POST)": [],
    }
    people = [make_user(i) for i in range(2 * users + 2)]
    for n in range(users + 1):
        user, secret, _key = people[2 * n]
        client = pending(user)
        code = totp.code_at(secret, totp.step_of(totp.now()))
        wall, cpu, response = timed(partial(client.post, "/accounts/2fa/verify/", {"code": code}))
        assert response.status_code == 302, response.status_code
        if n:  # the first of each is a warm-up
            samples["TOTP step (POST code)"].append((wall, cpu))

        user, _secret, key = people[2 * n + 1]
        client = pending(user)
        wall, cpu, response = timed(partial(client.post, "/accounts/2fa/key/options/"))
        assert response.status_code == 200, response.status_code
        answer = key.get(response.json())
        if n:
            samples["key options (POST)"].append((wall, cpu))
        wall, cpu, response = timed(
            partial(client.post, "/accounts/2fa/key/", {"credential": answer})
        )
        assert response.status_code == 302, response.status_code
        if n:
            samples["key step (POST assertion)"].append((wall, cpu))

    def stats(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {
            "median_ms": statistics.median(ordered) * 1000,
            "p90_ms": ordered[int(0.9 * (len(ordered) - 1))] * 1000,
        }

    results = {
        name: {"wall": stats([s[0] for s in rows]), "cpu": stats([s[1] for s in rows])}
        for name, rows in samples.items()
    }
    print(f"{users} logins per method, SQLite, in-process, load {os.getloadavg()[0]:.1f}:")
    width = max(map(len, results))
    print(f"  {'step':<{width}}  {'wall p50':>9}  {'wall p90':>9}  {'CPU p50':>9}")
    for name, r in results.items():
        print(
            f"  {name:<{width}}  {r['wall']['median_ms']:6.2f} ms  {r['wall']['p90_ms']:6.2f} ms"
            f"  {r['cpu']['median_ms']:6.2f} ms"
        )
    ratio = (
        results["key step (POST assertion)"]["cpu"]["median_ms"]
        / (results["TOTP step (POST code)"]["cpu"]["median_ms"])
    )
    print(f"  key step / TOTP step (CPU, median): {ratio:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"users": users, "results": results, "ratio": ratio}))
    overrides.disable()


if __name__ == "__main__":
    main()
