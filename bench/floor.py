"""The floor under the second-factor step: what its database writes cost here, however written.

The login's code step must, in one durable transaction, consume the code's time step (the
replay guard), replace the session (new key, old row gone), set ``last_login``, register the
session and write the audit event. This script measures, in-process with Django's test client
on a fresh PostgreSQL database (the site's settings, middleware and session engine):

- ``bare``: a view that only redirects, through the site's whole middleware stack, with a
  session to load: the framework's share of any request;
- ``hand-written``: the same view running the code step's statements on a raw cursor in one
  transaction (3 SELECTs; the acceptance's 2 UPDATEs, of the TwoFactor row's back-off and then
  of the TOTPDevice's ``last_used_step``; DELETE, UPDATE, 3 INSERTs, COMMIT), no ORM, no
  crypto, no rate limit: what the step would cost were all of it written by hand;
- ``hand-written-one-row``: the same without the TwoFactor row's SELECT and UPDATE, the shape
  of the step before migration 0006 (the back-off on TOTPDevice): the difference is what the
  per-user row costs the step's database work, measured in the same run;
- ``code step``: the real ``POST /accounts/2fa/verify/``, one fresh pending login each.

Medians of CPU (this thread) and wall time. The difference between wall and CPU is waiting for
PostgreSQL (round trips and the durable commit), which shares the machine's cores.

    .venv/bin/python bench/floor.py [--requests 300]
        [--database-url postgres://postgres@127.0.0.1:5432/postgres]
        [--redis-url redis://127.0.0.1:6379/13]
"""

import argparse
import json
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from bench.login import RAISED_RATES  # noqa: E402

# --- The views measured (this module is also the URLconf of the child process) -------------


def bare(request):
    from django.http import HttpResponseRedirect

    request.session.get("uid")
    return HttpResponseRedirect("/")


def hand_written(request, two_factor: bool = True):
    from django.db import connection, transaction
    from django.http import HttpResponseRedirect
    from django.utils import timezone

    uid = request.session.get("uid")
    now = timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT id, password, is_active FROM auth_user WHERE id = %s", [uid])
        cursor.fetchone()
        if two_factor:
            # flows._two_factor: the row that says 2FA is on and holds the back-off.
            cursor.execute(
                "SELECT id, failure_count, blocked_until, locked_at FROM mfa_twofactor "
                "WHERE user_id = %s",
                [uid],
            )
            row_pk = cursor.fetchone()[0]
        cursor.execute(
            "SELECT id, encrypted_secret, last_used_step FROM mfa_totpdevice WHERE user_id = %s",
            [uid],
        )
        device_pk = cursor.fetchone()[0]
        if two_factor:
            # flows._accept: the back-off starts over, only while the row is usable...
            cursor.execute(
                "UPDATE mfa_twofactor SET failure_count = 0, blocked_until = NULL "
                "WHERE id = %s AND locked_at IS NULL "
                "AND (blocked_until IS NULL OR blocked_until <= %s)",
                [row_pk, now],
            )
        # ...then the replay guard moves the time step forward.
        cursor.execute(
            "UPDATE mfa_totpdevice SET last_used_step = last_used_step + 1 WHERE id = %s",
            [device_pk],
        )
        cursor.execute("DELETE FROM django_session WHERE session_key = %s", [secrets.token_hex(16)])
        cursor.execute("UPDATE auth_user SET last_login = %s WHERE id = %s", [now, uid])
        cursor.execute(
            "INSERT INTO mfa_usersession (user_id, sid, session_key, created_at) "
            "VALUES (%s, %s, %s, %s)",
            [uid, secrets.token_urlsafe(24), secrets.token_hex(16), now],
        )
        cursor.execute(
            "INSERT INTO mfa_securityevent (user_id, kind, created_at, ip_address, user_agent, "
            "detail) VALUES (%s, %s, %s, %s, %s, %s)",
            [uid, "login", now, "127.0.0.1", "bench", "totp"],
        )
        cursor.execute(
            "INSERT INTO django_session (session_key, session_data, expire_date) "
            "VALUES (%s, %s, %s)",
            [secrets.token_hex(16), "x" * 300, now],
        )
    return HttpResponseRedirect("/")


def hand_written_one_row(request):
    # The step's shape before migration 0006: one factor row read and updated (the back-off
    # lived on TOTPDevice). Measured in the same run, it prices the TwoFactor row's SELECT
    # and UPDATE without comparing across days.
    return hand_written(request, two_factor=False)


def _urlpatterns():
    from django.urls import include, path

    return [
        path("floor/bare/", bare),
        path("floor/hand-written/", hand_written),
        path("floor/hand-written-one-row/", hand_written_one_row),
        path("", include("config.urls")),
    ]


def __getattr__(name):  # the URLconf's urlpatterns, built once Django is set up
    if name == "urlpatterns":
        return _urlpatterns()
    raise AttributeError(name)


# --- The child: measure -------------------------------------------------------------------


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


def child(requests: int) -> dict:
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.test import Client, override_settings

    from mfa import totp

    users = json.load(sys.stdin)
    results = {}
    with override_settings(ROOT_URLCONF="bench.floor"):
        client = Client()
        session = client.session
        session["uid"] = get_user_model().objects.get(username="floor").pk
        session.save()
        client.cookies["sessionid"] = session.session_key
        for name in ("bare", "hand-written", "hand-written-one-row"):
            cpu, wall = [], []
            for index in range(requests + 30):
                started_cpu, started = time.thread_time(), time.perf_counter()
                response = client.post(f"/floor/{name}/", {"code": "123456"})
                if index >= 30:  # warm-up excluded
                    cpu.append(time.thread_time() - started_cpu)
                    wall.append(time.perf_counter() - started)
                assert response.status_code == 302, response.status_code
            results[name] = {"cpu_ms": _median_ms(cpu), "wall_ms": _median_ms(wall)}

        cpu, wall = [], []
        for index, (username, entry) in enumerate(users.items()):
            client = Client()
            response = client.post(
                "/accounts/login/",
                {"username": username, "password": harness.PASSWORD, "next": "/"},
            )
            assert response.status_code == 302, response.status_code
            code = totp.code_at(entry["secret"], totp.step_of(totp.now()))
            started_cpu, started = time.thread_time(), time.perf_counter()
            response = client.post("/accounts/2fa/verify/", {"code": code, "next": "/"})
            if index >= 5:
                cpu.append(time.thread_time() - started_cpu)
                wall.append(time.perf_counter() - started)
            assert response.status_code == 302 and response["Location"] == "/", response
        results["code step"] = {"cpu_ms": _median_ms(cpu), "wall_ms": _median_ms(wall)}
    return results


# --- The driver ---------------------------------------------------------------------------


def main() -> None:
    if sys.argv[1:2] == ["_child"]:
        print(json.dumps(child(int(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--database-url", default=harness.ADMIN_POSTGRES_URL)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    args = parser.parse_args()
    args.requests = max(20, min(args.requests, 5000))
    logins = max(20, min(args.requests // 3, 300))  # each costs an Argon2 check to set up

    with tempfile.TemporaryDirectory(prefix="mfa-floor-") as name:
        tmp = Path(name)
        with harness.fresh_postgres(args.database_url, prefix="mfa_bench_") as url:
            site = harness.Site(url, args.redis_url, tmp / "keys", extra=RAISED_RATES)
            site.prepare()
            users = site.create_users(["floor"] + [f"floor{i}" for i in range(logins)])
            users.pop("floor")
            results = harness.run_json_child(
                site,
                str(Path(__file__).resolve()),
                "_child",
                str(args.requests),
                stdin=users,
                timeout=900,
                DJANGO_ALLOWED_HOSTS="testserver",
                MFA_LOG_LEVEL="WARNING",
            )

    print(f"in-process medians, PostgreSQL on this machine ({time.strftime('%Y-%m-%d %H:%M')})")
    print(f"{'request':<22}{'CPU':>10}{'wall':>10}")
    for name, result in results.items():
        print(f"{name:<22}{result['cpu_ms']:>8.2f}ms{result['wall_ms']:>8.2f}ms")


if __name__ == "__main__":
    main()
