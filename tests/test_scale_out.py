"""Two real servers, one database, one Redis: the guarantees hold across processes and hosts.

Each scenario runs against two gunicorn servers of three workers each (six processes sharing
nothing but PostgreSQL and Redis), started by ``bench.harness`` on 127.0.0.1 with the
production settings. A fresh PostgreSQL database, a private cache prefix and a throw-away key
ring are created for this module and removed afterwards; pytest-django's test database is not
involved. Clients alternate between the servers, so a guarantee that lived in one process's
memory would fail here.

The clock is the machine's: the servers cannot share a frozen one. Each scenario has its own
user, so that a TOTP step used by one cannot make another fail.
"""

import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import redis
from django_ratelimit.core import _get_window

from bench import harness
from mfa import totp
from tests.conftest import require_services

pytestmark = [pytest.mark.services, pytest.mark.slow]

# The race scenarios must reach the replay guard with every request, not stop at the
# per-account rate limit (5 a minute): those two servers get generous rates. The rate-limit
# and outage scenarios run on servers with the production rates.
RAISED_RATES = {
    "MFA_CODE_RATE": "1000/m",
    "MFA_CODE_IP_RATE": "1000/m",
    "MFA_LOGIN_USER_RATE": "1000/m",
    "MFA_LOGIN_IP_RATE": "1000/m",
}
# With production rates, every client says it comes from its own address (as a trusted proxy
# would report), so that only the per-account limits can explain a refusal.
PROXY = {"MFA_TRUSTED_PROXY_HEADER": "X-Forwarded-For"}

USERS = {
    "race_totp": False,
    "race_recovery": True,
    **{f"limit_rate_{i}": False for i in range(8)},
    "limit_backoff": False,
    "down_pending": False,
    "down_fresh": False,
    "down_backoff": False,
}


def code_now(secret: str) -> str:
    return totp.code_at(secret, totp.step_of(totp.now()))


def wrong_code(secret: str) -> str:
    """A well-formed code that no step near now accepts."""
    step = totp.step_of(totp.now())
    near = {totp.code_at(secret, s) for s in range(step - 3, step + 4)}
    return next(c for c in (f"{n:06d}" for n in range(1000, 1000000, 7919)) if c not in near)


def redis_url_db(url: str, db: int) -> str:
    return harness._with_path(url, f"/{db}")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """A fresh database and key ring, with every scenario's user; dropped at the end."""
    require_services()
    admin_url = os.environ.get("MFA_TEST_POSTGRES_URL", harness.ADMIN_POSTGRES_URL)
    if os.environ.get("DATABASE_URL", "").startswith("postgres"):
        admin_url = os.environ["DATABASE_URL"]
    shared_redis = redis_url_db(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15"), 13)
    tmp = tmp_path_factory.mktemp("scale-out")
    with harness.fresh_postgres(admin_url) as database_url:
        site = harness.Site(database_url, shared_redis, tmp / "keys")
        site.prepare()
        users = site.create_users(
            list(USERS), with_recovery_codes=[name for name, codes in USERS.items() if codes]
        )
        yield site, users, tmp


def _pair(site, tmp, name, **overrides):
    log_dir = tmp / name
    log_dir.mkdir()
    return harness.servers(site, 2, log_dir=log_dir, workers=3, **overrides)


@pytest.fixture(scope="module")
def race_pair(deployment):
    site, _users, tmp = deployment
    with _pair(site, tmp, "race", **RAISED_RATES) as pair:
        yield pair


@pytest.fixture(scope="module")
def limit_pair(deployment):
    site, _users, tmp = deployment
    with _pair(site, tmp, "limit", MFA_CACHE_PREFIX=site.cache_prefix + "-limit", **PROXY) as pair:
        yield pair, site.cache_prefix + "-limit"


@pytest.fixture(scope="module")
def outage(deployment):
    """Two servers on a Redis of their own, which the test may kill."""
    site, _users, tmp = deployment
    with (
        harness.own_redis() as (redis_url, redis_proc),
        _pair(site, tmp, "outage", REDIS_URL=redis_url, **PROXY) as pair,
    ):
        yield pair, redis_url, redis_proc


def device_row(site, pk: int) -> tuple[int, object, int]:
    with psycopg.connect(site.database_url) as conn:
        row = conn.execute(
            # The back-off is the user's TwoFactor row's; the replay guard the app's.
            "SELECT t.failure_count, t.blocked_until, d.last_used_step FROM mfa_twofactor t "
            "JOIN mfa_totpdevice d ON d.user_id = t.user_id WHERE t.user_id = %s",
            (pk,),
        ).fetchone()
    assert row is not None
    return row


def _race(pair, clients, send):
    """Each client sends at the same instant, clients alternating between the servers."""
    barrier = threading.Barrier(len(clients), timeout=60)

    def go(index):
        server = pair[index % 2]
        barrier.wait()
        return send(clients[index], server)

    with ThreadPoolExecutor(len(clients)) as pool:
        return list(pool.map(go, range(len(clients))))


def _begin_logins(pair, username, count, **headers):
    clients = [harness.Client() for _ in range(count)]
    for index, client in enumerate(clients):
        response = client.start_login(pair[index % 2], username)
        assert response.status == 302, (response.status, response.body[-500:])
        assert response.location.startswith("/accounts/2fa/verify/")
    return clients


def test_one_totp_code_sent_20_times_at_once_over_two_servers_logs_in_once(deployment, race_pair):
    _site, users, _tmp = deployment
    clients = _begin_logins(race_pair, "race_totp", 20)
    code = code_now(users["race_totp"]["secret"])

    responses = _race(race_pair, clients, lambda client, server: client.send_code(server, code))

    statuses = Counter(r.status for r in responses)
    assert statuses[302] == 1, statuses
    # Every other request reached the replay guard and was told the code was used (400), none
    # was stopped by a rate limit or failed.
    assert statuses[400] == 19, statuses
    assert next(r for r in responses if r.status == 302).location == "/"
    logged_in = [c.logged_in(race_pair[i % 2]) for i, c in enumerate(clients)]
    assert logged_in.count(True) == 1


def test_one_recovery_code_sent_10_times_at_once_over_two_servers_logs_in_once(
    deployment, race_pair
):
    _site, users, _tmp = deployment
    clients = _begin_logins(race_pair, "race_recovery", 10)
    code = users["race_recovery"]["codes"][0]

    responses = _race(
        race_pair, clients, lambda client, server: client.send_recovery_code(server, code)
    )

    statuses = Counter(r.status for r in responses)
    assert statuses[302] == 1, statuses
    # The others: "already used" (400), or, once their failures reach the back-off, 429.
    assert set(statuses) <= {302, 400, 429}, statuses
    logged_in = [c.logged_in(race_pair[i % 2]) for i, c in enumerate(clients)]
    assert logged_in.count(True) == 1


def _user_clear_of_window_end(users, prefix: str, needed: float) -> str:
    """The user whose per-account rate window ends furthest from now.

    django-ratelimit counts in fixed windows (60 s, each account's shifted by a hash of its
    key), so five attempts just before a window ends and one just after are in different
    windows. The machine's clock cannot be frozen for real servers; instead of waiting, pick
    among eight accounts, whose window ends are spread over the minute, one with time to spare.
    """
    now = time.time()
    name = max(
        (n for n in users if n.startswith(prefix)),
        key=lambda n: _get_window(str(users[n]["pk"]), 60) - now,
    )
    assert _get_window(str(users[name]["pk"]), 60) - now >= needed
    return name


def test_per_account_rate_limit_counts_attempts_on_either_server(deployment, limit_pair):
    site, users, _tmp = deployment
    pair, _prefix = limit_pair
    username = _user_clear_of_window_end(users, "limit_rate_", needed=15)
    # Six sessions from six addresses: only a per-account counter shared by both servers
    # (and all six worker processes) can stop the sixth.
    clients = [harness.Client({"X-Forwarded-For": f"10.0.1.{i}"}) for i in range(6)]
    for index, client in enumerate(clients):
        assert client.start_login(pair[index % 2], username).status == 302

    # Malformed codes count against the rate limit but not the database back-off, so the
    # refusal below can only come from the rate limit.
    for index in range(5):
        response = clients[index].send_code(pair[index % 2], "abc")
        assert response.status == 400, index

    code = code_now(users[username]["secret"])
    refused = clients[5].send_code(pair[1], code)
    assert refused.status == 429
    assert int(refused.headers["retry-after"]) > 0
    assert device_row(site, users[username]["pk"])[0] == 0
    assert not clients[5].logged_in(pair[0])


def test_database_backoff_counts_failures_on_either_server_and_survives_a_cache_flush(
    deployment, limit_pair
):
    site, users, _tmp = deployment
    pair, prefix = limit_pair
    secret = users["limit_backoff"]["secret"]
    clients = [harness.Client({"X-Forwarded-For": f"10.0.2.{i}"}) for i in range(2)]
    for index, client in enumerate(clients):
        assert client.start_login(pair[index], "limit_backoff").status == 302

    for attempt in range(5):
        response = clients[attempt % 2].send_code(pair[attempt % 2], wrong_code(secret))
        assert response.status == 400, attempt
    sixth = clients[1].send_code(pair[1], wrong_code(secret))
    assert sixth.status == 429
    assert int(sixth.headers["retry-after"]) > 0

    # Flush this site's cache: every rate-limit counter is gone.
    cache = redis.Redis.from_url(site.redis_url)
    keys = list(cache.scan_iter(match=f"{prefix}:*", count=1000))
    assert keys, "the rate-limit counters live in the shared Redis"
    cache.delete(*keys)
    cache.close()

    # A correct code, on the other server, from a session that made no attempt of its own
    # after the flush: still refused, by the database back-off.
    refused = clients[0].send_code(pair[0], code_now(secret))
    assert refused.status == 429
    assert int(refused.headers["retry-after"]) > 0
    failures, blocked_until, _step = device_row(site, users["limit_backoff"]["pk"])
    assert failures == 5
    assert blocked_until is not None
    assert not clients[0].logged_in(pair[0])


def test_logins_keep_working_without_redis_and_the_database_still_bounds_guessing(
    deployment, outage
):
    site, users, _tmp = deployment
    pair, redis_url, redis_proc = outage
    # Begun while Redis is up...
    pending = harness.Client({"X-Forwarded-For": "10.0.3.1"})
    assert pending.start_login(pair[0], "down_pending").status == 302
    assert redis.Redis.from_url(redis_url).ping()

    harness.stop_process(redis_proc, grace=5)
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(redis_url, socket_connect_timeout=0.5).ping()

    # ... and finished after it died, on the other server.
    done = pending.send_code(pair[1], code_now(users["down_pending"]["secret"]))
    assert (done.status, done.location) == (302, "/")
    assert pending.logged_in(pair[0])

    # A whole login with Redis down.
    fresh = harness.Client({"X-Forwarded-For": "10.0.3.2"})
    assert fresh.start_login(pair[1], "down_fresh").status == 302
    assert fresh.send_code(pair[0], code_now(users["down_fresh"]["secret"])).status == 302
    assert fresh.logged_in(pair[1])

    # The rate limits fail open; the database back-off still stops the sixth attempt, even
    # with the right code, whichever server it reaches.
    secret = users["down_backoff"]["secret"]
    guesser = harness.Client({"X-Forwarded-For": "10.0.3.3"})
    assert guesser.start_login(pair[0], "down_backoff").status == 302
    for attempt in range(5):
        response = guesser.send_code(pair[attempt % 2], wrong_code(secret))
        assert response.status == 400, attempt
        assert response.elapsed < 5
    refused = guesser.send_code(pair[1], code_now(secret))
    assert refused.status == 429
    assert int(refused.headers["retry-after"]) > 0
    failures, blocked_until, _step = device_row(site, users["down_backoff"]["pk"])
    assert (failures, blocked_until is not None) == (5, True)
    assert not guesser.logged_in(pair[0])
