"""How long a wrong recovery code costs the server, with 10 codes left and with 1 left.

The claim under test (mfa/recovery.py): the plaintext selector finds the one candidate row,
so every attempt costs exactly one Argon2 verification, whatever the number of unused codes.
A design that loops over the stored hashes would show a ratio near 10 between the two rows.

    .venv/bin/python bench/recovery.py [--runs 30] [--json bench/results/recovery.json]
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _django  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="attempts per case (median)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    runs = max(3, min(args.runs, 1000))

    _django.setup()
    from django.contrib.auth import get_user_model
    from django.test import RequestFactory
    from django.utils import timezone

    from mfa import flows, recovery, totp
    from mfa.crypto import encrypt_secret
    from mfa.models import RecoveryCode, TOTPDevice, TwoFactor

    user = get_user_model().objects.create_user("bench", "bench@example.com", "x" * 20)
    TwoFactor.objects.create(user=user)
    TOTPDevice.objects.create(
        user=user, encrypted_secret=encrypt_secret(totp.generate_secret(), user.pk)
    )
    pairs = recovery.generate(10)
    RecoveryCode.objects.bulk_create(
        RecoveryCode(user=user, selector=s, code_hash=recovery.hash_verifier(s, v))
        for s, v in pairs
    )
    request = RequestFactory().post("/accounts/2fa/recovery/")
    selectors = [s for s, _v in pairs]
    unused_selector = next(
        a + b + c
        for a in recovery.ALPHABET
        for b in recovery.ALPHABET
        for c in recovery.ALPHABET
        if a + b + c not in selectors
    )

    def attempt(selector: str) -> tuple[float, float]:
        # A wrong verifier behind the given selector. The back-off would stop the checks
        # after five failures, so the failure count is reset between attempts (untimed).
        TwoFactor.objects.filter(user=user).update(failure_count=0, blocked_until=None)
        parsed = recovery.ParsedCode(selector, "0" * recovery.VERIFIER_LENGTH)
        started, cpu = time.perf_counter(), time.thread_time()
        outcome = flows.verify_recovery_code(request, user, parsed)
        elapsed, cpu = time.perf_counter() - started, time.thread_time() - cpu
        assert outcome.result is flows.Result.INVALID, outcome
        return elapsed, cpu

    def medians(samples: list[tuple[float, float]]) -> tuple[float, float]:
        # (wall, CPU of this thread) in ms: on a shared machine the CPU time is the stable one.
        return (
            statistics.median(s[0] for s in samples) * 1000,
            statistics.median(s[1] for s in samples) * 1000,
        )

    def median_ms(selector: str) -> tuple[float, float]:
        attempt(selector)  # warm-up
        return medians([attempt(selector) for _ in range(runs)])

    results = {}
    # 10 left: the wrong code names an existing row (its hash is verified) or no row (decoy).
    results["10 left, selector of an unused code"] = median_ms(selectors[-1])
    results["10 left, unknown selector (decoy hash)"] = median_ms(unused_selector)
    RecoveryCode.objects.filter(user=user, selector__in=selectors[:9]).update(
        used_at=timezone.now()
    )
    assert flows.unused_code_count(user) == 1
    results["1 left, selector of the unused code"] = median_ms(selectors[-1])
    results["1 left, selector of a used code (decoy hash)"] = median_ms(selectors[0])

    hasher_only = []
    encoded = recovery.hash_verifier("AAA", "0" * recovery.VERIFIER_LENGTH)
    for _ in range(runs):
        started, cpu = time.perf_counter(), time.thread_time()
        recovery.verify(encoded, recovery.ParsedCode("AAA", "1" * recovery.VERIFIER_LENGTH))
        hasher_only.append((time.perf_counter() - started, time.thread_time() - cpu))
    results["one HASHER.verify alone"] = medians(hasher_only)

    h = recovery.HASHER
    params = {
        "type": h.type.name,
        "memory_cost_kib": h.memory_cost,
        "time_cost": h.time_cost,
        "parallelism": h.parallelism,
        "hash_len": h.hash_len,
        "salt_len": h.salt_len,
    }
    ratio = (
        results["10 left, selector of an unused code"][1]
        / results["1 left, selector of the unused code"][1]
    )
    print(f"Argon2 parameters (mfa.recovery.HASHER): {params}")
    load = os.getloadavg()[0]
    print(f"median of {runs} wrong attempts, flows.verify_recovery_code, SQLite, load {load:.1f}:")
    width = max(map(len, results))
    print(f"  {'case':<{width}}  {'wall':>8}  {'CPU':>8}")
    for name, (wall, cpu) in results.items():
        print(f"  {name:<{width}}  {wall:5.1f} ms  {cpu:5.1f} ms")
    print(f"  ratio 10 left / 1 left (CPU): {ratio:.2f} (1.0 expected: one Argon2 run per attempt)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "date": time.strftime("%Y-%m-%d"),
            "runs": runs,
            "argon2": params,
            "load_average_1min": load,
            "median_ms_wall_cpu": results,
            "ratio": ratio,
        }
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
