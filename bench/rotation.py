"""Key rotation: secrets re-encrypted per second, and memory, for many users.

For each database (SQLite always, PostgreSQL with --database-url) and each size (10,000 and
--users), a fresh database is filled with users whose TOTP secrets are encrypted under the
first key, a new primary key is added (``mfa_keys add``) and ``mfa_keys rotate`` runs in a
child process, measured three ways:

- wall time, and the throughput it gives (goal: at least 10,000 secrets per second);
- the child's peak resident memory (ru_maxrss) growth during the rotation;
- with ``--tracemalloc``, tracemalloc's peak of Python allocations during a second rotation
  (to the next new key); it slows Python down, so that run is not timed.

Before the rotation, ``KeyRing.reencrypt`` alone is timed on up to 20,000 of the stored
secrets, in memory, with nothing written: the crypto floor, i.e. what the command would reach
if the database cost nothing. ``--profile`` adds a cProfile run of one more rotation and
prints where the time goes (on PostgreSQL only the reading and encrypting thread: cProfile does
not see the thread that writes the batches).

    .venv/bin/python bench/rotation.py [--users 100000] [--batch-size 1000]
        [--database-url postgres://postgres@127.0.0.1:5432/postgres] [--skip-sqlite]
        [--tracemalloc] [--profile]
        [--json bench/results/rotation.json]

The PostgreSQL URL names a maintenance database: a fresh database ``mfa_bench_*`` is created
beside it for each run, and dropped afterwards.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402

MAX_USERS = 2_000_000
FLOOR_ROWS = 20_000  # secrets re-encrypted in memory for the crypto floor


# --- Children (run with the site's environment) ---------------------------------------------


def child_fill(count: int) -> dict:
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    from mfa import crypto, totp
    from mfa.models import TOTPDevice, TwoFactor

    started = time.perf_counter()
    user_model = get_user_model()
    for offset in range(0, count, 5000):
        user_model.objects.bulk_create(
            user_model(username=f"user{i}", password="!")
            for i in range(offset, min(offset + 5000, count))
        )
    pks = list(user_model.objects.order_by("pk").values_list("pk", flat=True))
    for offset in range(0, len(pks), 5000):
        # Users as the app makes them: 2FA on (the TwoFactor row), then the app's secret.
        TwoFactor.objects.bulk_create(TwoFactor(user_id=pk) for pk in pks[offset : offset + 5000])
        TOTPDevice.objects.bulk_create(
            TOTPDevice(
                user_id=pk, encrypted_secret=crypto.encrypt_secret(totp.generate_secret(), pk)
            )
            for pk in pks[offset : offset + 5000]
        )
    return {"fill_seconds": time.perf_counter() - started}


def child_floor(limit: int) -> dict:
    """Time ``KeyRing.reencrypt`` alone on up to ``limit`` stored secrets (no database write).

    The crypto floor of a rotation: what the command would reach if the database cost nothing.
    """
    import django

    django.setup()
    from mfa import crypto
    from mfa.models import TOTPDevice

    ring = crypto.current()
    rows = TOTPDevice.objects.order_by("pk").values_list("user_id", "encrypted_secret")
    rows = list(rows[:limit])
    cpu, started = time.process_time(), time.perf_counter()
    changed = sum(ring.reencrypt(token, user_pk) is not None for user_pk, token in rows)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert changed == len(rows), (changed, len(rows))
    return {"floor_rows": len(rows), "floor_seconds": seconds, "floor_cpu_seconds": cpu}


def child_rotate(batch_size: int, mode: str) -> dict:
    import resource

    import django

    django.setup()
    from django.core.management import call_command

    from mfa import crypto
    from mfa.management.commands import mfa_keys  # noqa: F401  (imported before measuring)
    from mfa.models import TOTPDevice

    crypto.load_keys()
    TOTPDevice.objects.exists()  # connect before measuring
    out = open(os.devnull, "w")  # noqa: SIM115
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu_before = time.process_time()
    result: dict = {"mode": mode}
    if mode == "tracemalloc":
        import tracemalloc

        tracemalloc.start()
        call_command("mfa_keys", "rotate", batch_size=batch_size, stdout=out, stderr=out)
        result["tracemalloc_peak_bytes"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    elif mode == "profile":
        import cProfile
        import io
        import pstats

        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.runcall(
            call_command, "mfa_keys", "rotate", batch_size=batch_size, stdout=out, stderr=out
        )
        result["seconds"] = time.perf_counter() - started
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(18)
        result["profile_tottime"] = text.getvalue()
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("cumulative").print_stats(25)
        result["profile_cumulative"] = text.getvalue()
    else:
        import io

        report = io.StringIO()
        started = time.perf_counter()
        call_command("mfa_keys", "rotate", batch_size=batch_size, stdout=report, stderr=out)
        result["seconds"] = time.perf_counter() - started
        result["output"] = report.getvalue().strip()
    # CPU of this process alone (not the database server's): steadier on a shared machine.
    result["cpu_seconds"] = time.process_time() - cpu_before
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["maxrss_before_kib"] = rss_before
    result["maxrss_growth_kib"] = rss_after - rss_before
    # Every secret now decrypts with the primary key (checked on a sample, untimed).
    primary = crypto.load_keys()[0]
    sample = TOTPDevice.objects.order_by("?")[:200]
    result["sample_on_primary"] = all(
        crypto.decrypting_key(d.encrypted_secret) == primary for d in sample
    )
    result["devices"] = TOTPDevice.objects.count()
    return result


# --- The driver -----------------------------------------------------------------------------


def run_child(site: harness.Site, *args: str, timeout: float = 3600) -> dict:
    return harness.run_json_child(
        site, str(Path(__file__).resolve()), *args, timeout=timeout, MFA_LOG_LEVEL="WARNING"
    )


@contextmanager
def database(kind: str, admin_url: str | None, tmp: Path):
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'db.sqlite3'}"
    else:
        with harness.fresh_postgres(admin_url, prefix="mfa_bench_") as url:
            yield url


def run_case(kind: str, users: int, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="mfa-rotation-") as name:
        tmp = Path(name)
        with database(kind, args.database_url, tmp) as url:
            site = harness.Site(url, "", tmp / "keys")
            site.prepare()
            case = {"database": kind, "users": users}
            case.update(run_child(site, "_fill", str(users)))
            site.manage("mfa_keys", "add")
            floor = run_child(site, "_floor", str(FLOOR_ROWS))
            case["floor_secrets_per_cpu_second"] = floor["floor_rows"] / floor["floor_cpu_seconds"]
            timed = run_child(site, "_rotate", str(args.batch_size), "timed")
            if not timed["output"].startswith(f"Rotated {users} secret(s)"):
                raise RuntimeError(f"unexpected rotation: {timed['output']}")
            case.update(
                seconds=timed["seconds"],
                secrets_per_second=users / timed["seconds"],
                secrets_per_cpu_second=users / timed["cpu_seconds"],
                maxrss_growth_kib=timed["maxrss_growth_kib"],
                maxrss_before_kib=timed["maxrss_before_kib"],
                all_on_primary=timed["sample_on_primary"],
                load_average=os.getloadavg(),
            )
            if args.tracemalloc:
                site.manage("mfa_keys", "add")
                traced = run_child(site, "_rotate", str(args.batch_size), "tracemalloc")
                case["tracemalloc_peak_bytes"] = traced["tracemalloc_peak_bytes"]
                case["all_on_primary"] &= traced["sample_on_primary"]
            if args.profile and users == max(args.sizes):
                site.manage("mfa_keys", "add")
                profiled = run_child(site, "_rotate", str(args.batch_size), "profile")
                case["profile_seconds"] = profiled["seconds"]
                print(f"\n--- cProfile, {kind}, {users} users (tottime) ---")
                print(profiled["profile_tottime"])
                print(f"--- cProfile, {kind}, {users} users (cumulative) ---")
                print(profiled["profile_cumulative"])
            return case


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        action, rest = sys.argv[1], sys.argv[2:]
        if action == "_fill":
            result = child_fill(int(rest[0]))
        elif action == "_floor":
            result = child_floor(int(rest[0]))
        else:
            result = child_rotate(int(rest[0]), rest[1])
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--database-url", help="PostgreSQL maintenance database URL")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--tracemalloc", action="store_true", help="also trace allocations")
    parser.add_argument("--profile", action="store_true", help="cProfile the largest rotation")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not 1 <= args.users <= MAX_USERS:
        parser.error(f"--users must be between 1 and {MAX_USERS}")
    args.sizes = sorted({min(10_000, args.users), args.users})
    kinds = ([] if args.skip_sqlite else ["sqlite"]) + (["postgresql"] if args.database_url else [])

    cases = []
    for kind in kinds:
        for users in args.sizes:
            case = run_case(kind, users, args)
            cases.append(case)
            print(f"{kind} {users} users: {json.dumps(case)}", flush=True)

    print(f"\nmfa_keys rotate --batch-size {args.batch_size}, load {os.getloadavg()[0]:.1f}")
    print(
        f"{'database':<11}{'users':>8}{'secrets/s':>11}{'seconds':>9}{'RSS +MiB':>10}"
        f"{'traced MiB':>12}{'per CPU-s':>11}{'floor/CPU-s':>13}  goal 10000/s"
    )
    for c in cases:
        traced = c.get("tracemalloc_peak_bytes")
        print(
            f"{c['database']:<11}{c['users']:>8}{c['secrets_per_second']:>11.0f}"
            f"{c['seconds']:>9.1f}{c['maxrss_growth_kib'] / 1024:>10.1f}"
            f"{traced / 2**20 if traced else float('nan'):>12.1f}"
            f"{c['secrets_per_cpu_second']:>11.0f}"
            f"{c['floor_secrets_per_cpu_second']:>13.0f}  "
            f"{'met' if c['secrets_per_second'] >= 10_000 else 'NOT met'}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"date": time.strftime("%Y-%m-%d"), "batch_size": args.batch_size, "cases": cases},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
