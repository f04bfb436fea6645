"""Full logins per second against gunicorn on PostgreSQL and Redis, and what each step costs.

A fresh PostgreSQL database is filled with users who have 2FA; one gunicorn (workers = cores)
serves the production settings. Client threads each take a user never used before (each user
logs in once: a TOTP step is accepted once) and go through GET login, POST password, POST
code, until --duration runs out. Reported:

- logins per second, and p50/p99 latency of each step as the client saw it;
- each step's time inside the server (gunicorn's access log, %(D)s microseconds);
- the Argon2 ceiling: cores / the CPU time of one ``check_password`` with the project's hasher,
  measured in this process before and after the load; and the ratio of the login rate to it
  (goal: at least 60%); the same ratio by CPU (the server's and PostgreSQL's CPU per login,
  read from /proc), and the load generator's own CPU, which shares the cores;
- the second-factor step's server time at the median (goal: under 5 ms);
- in-process, with Django's test client against the same database and Redis: the password
  and code steps timed; their SQL statements (``CaptureQueriesContext``), commits, durable
  commits, Redis commands and clients, and the time of chosen functions (``Probe``); unit
  costs (a round trip, a durable commit, a Redis call); and a pyinstrument profile of each
  step when pyinstrument is installed in the venv (it is not a project dependency).

The rate limits are raised for the run (one client address makes hundreds of logins a
minute); everything else is the production configuration.

    .venv/bin/python bench/login.py [--clients 6] [--duration 20] [--users 3000]
        [--database-url postgres://postgres@127.0.0.1:5432/postgres]
        [--redis-url redis://127.0.0.1:6379/13] [--workers 2] [--no-profile]
        [--json bench/results/login.json]
"""

import argparse
import json
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402

RAISED_RATES = {
    "MFA_CODE_RATE": "100000/m",
    "MFA_CODE_IP_RATE": "100000/m",
    "MFA_LOGIN_USER_RATE": "100000/m",
    "MFA_LOGIN_IP_RATE": "100000/m",
}
STEPS = ("GET login", "POST password", "POST code")
PROFILED_USERS = 120  # in-process: a third timed, a third counted, a third profiled


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its live descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                pending.extend(int(child) for child in children)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def postgres_cpu() -> float:
    """CPU seconds used so far by every postgres process (the server is shared: approximate)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if name.startswith("postgres"):
            fields = stat.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# --- The Argon2 ceiling ---------------------------------------------------------------------


def argon2_check_seconds(runs: int = 20) -> dict:
    """Median wall and CPU time of one check_password with the project's password hasher."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(PASSWORD_HASHERS=["mfa.hashers.Argon2idPasswordHasher"], USE_TZ=True)
        django.setup()
    from django.contrib.auth.hashers import check_password, make_password

    encoded = make_password(harness.PASSWORD)
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.thread_time()
        assert check_password(harness.PASSWORD, encoded)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.thread_time() - cpu)
    return {"walls": walls, "cpus": cpus, "hash": encoded[:30]}


def argon2_reference(before: dict, after: dict) -> dict:
    """One Argon2 check: the median of the samples taken before and after the load.

    A core's speed drifts on this shared machine (the same check took 25 to 31 ms of CPU from
    one run to the next), so the reference is taken on both sides of the run it is compared to.
    """
    cpus, walls = before["cpus"] + after["cpus"], before["walls"] + after["walls"]
    return {
        "cpu": statistics.median(cpus),
        "wall": statistics.median(walls),
        "cpu_before": statistics.median(before["cpus"]),
        "cpu_after": statistics.median(after["cpus"]),
        "hash": before["hash"],
    }


# --- The in-process profile of the password and code steps ----------------------------------


class Probe:
    """Count and time what one request does: SQL, commits, Redis, and chosen functions.

    SQL statements are counted twice, by ``CaptureQueriesContext`` (Django's own count) and by
    an execute wrapper that also notes whether each ran inside a transaction; the latter keeps
    the SQL text without parameters, so nothing secret (session data) is kept. A "durable
    commit" is one that makes PostgreSQL flush its WAL: a write in autocommit mode, or the
    COMMIT of a transaction that wrote.
    """

    WRITES = ("INSERT", "UPDATE", "DELETE")

    def __init__(self):
        from django.db import connection

        self.connection = connection
        self.patches: list[tuple[object, str, object]] = []
        self.labels: list[str] = []
        self.reset()

    def reset(self) -> None:
        self.statements: list[tuple[str, bool, float]] = []  # (sql, in transaction, seconds)
        self.commits = self.durable_commits = 0
        self.commit_seconds = 0.0
        self.timers: dict[str, list[float]] = {}  # label -> [calls, seconds]
        self._wrote = False

    def _execute(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            in_transaction = self.connection.in_atomic_block
            self.statements.append((sql, in_transaction, time.perf_counter() - started))
            if sql.lstrip().upper().startswith(self.WRITES):
                if in_transaction:
                    self._wrote = True
                else:
                    self.durable_commits += 1

    def time(self, owner: object, name: str, label: str | None = None) -> None:
        """Wrap ``owner.name`` so that its calls and inclusive time are counted."""
        original = getattr(owner, name)
        label = label or name
        timers = self

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                entry = timers.timers.setdefault(label, [0, 0.0])
                entry[0] += 1
                entry[1] += time.perf_counter() - started

        self.patches.append((owner, name, original))
        self.labels.append(label)
        setattr(owner, name, timed)

    def install(self) -> None:
        connection = self.connection
        original_commit = connection.commit

        def commit():
            started = time.perf_counter()
            try:
                return original_commit()
            finally:
                self.commits += 1
                self.durable_commits += self._wrote
                self._wrote = False
                self.commit_seconds += time.perf_counter() - started

        connection.commit = commit
        self.patches.append((connection, "commit", None))

    def uninstall(self) -> None:
        for owner, name, original in reversed(self.patches):
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self.patches.clear()

    def run(self, call):
        from django.test.utils import CaptureQueriesContext

        self.reset()
        with (
            CaptureQueriesContext(self.connection) as captured,
            self.connection.execute_wrapper(self._execute),
        ):
            result = call()
        # Django 6 logs BEGIN and COMMIT among the queries too: those are not statements here.
        logged = [q["sql"] for q in captured.captured_queries]
        control = [sql for sql in logged if sql in ("BEGIN", "COMMIT", "ROLLBACK")]
        assert len(logged) - len(control) == len(self.statements), (len(logged), control)
        assert control.count("COMMIT") == self.commits, (control, self.commits)
        return result, {
            "queries": len(self.statements),
            "captured": len(logged),
            "in_transaction": sum(1 for _sql, inside, _s in self.statements if inside),
            "sql_ms": sum(s for _sql, _inside, s in self.statements) * 1000,
            "commits": self.commits,
            "durable_commits": self.durable_commits,
            "commit_ms": self.commit_seconds * 1000,
            "timers": {
                label: (self.timers[label][0], self.timers[label][1] * 1000)
                for label in self.labels
                if label in self.timers
            },
            "statements": [self._shape(sql, inside) for sql, inside, _s in self.statements],
        }

    @staticmethod
    def _shape(sql: str, inside: bool) -> str:
        # The statement's verb and table only: no values.
        words = sql.replace('"', "").split()
        verb = words[0].upper() if words else "?"
        table = ""
        for marker in ("FROM", "INTO", "UPDATE"):
            upper = [w.upper() for w in words]
            if marker in upper[: 40 if marker != "UPDATE" else 1]:
                index = upper.index(marker)
                if index + 1 < len(words):
                    table = words[index + 1]
                    break
        if verb in ("SAVEPOINT", "RELEASE", "ROLLBACK"):
            table = ""
        return f"{verb} {table}".strip() + (" [tx]" if inside else "")


def _summary(samples: list[dict]) -> dict:
    """Means over requests of the per-request counts (they hardly vary), medians of times."""
    count = len(samples)
    labels = list(dict.fromkeys(label for s in samples for label in s["timers"]))
    return {
        "requests": count,
        "queries": statistics.mean(s["queries"] for s in samples),
        "in_transaction": statistics.mean(s["in_transaction"] for s in samples),
        "sql_ms": statistics.median(s["sql_ms"] for s in samples),
        "commits": statistics.mean(s["commits"] for s in samples),
        "durable_commits": statistics.mean(s["durable_commits"] for s in samples),
        "commit_ms": statistics.median(s["commit_ms"] for s in samples),
        "timers": {
            label: (
                statistics.mean(s["timers"].get(label, (0, 0))[0] for s in samples),
                statistics.median(s["timers"].get(label, (0, 0.0))[1] for s in samples),
            )
            for label in labels
        },
        "statements": samples[-1]["statements"],
    }


def _micro(connection, row_pk: int, runs: int = 200) -> dict:
    """Unit costs on this machine: a round trip, a durable commit, Redis calls."""
    import redis
    from django.core.cache import cache

    def median_ms(call, n=runs):
        times = []
        for _ in range(n):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1000

    out = {}
    with connection.cursor() as cursor:
        out["pg SELECT 1"] = median_ms(lambda: cursor.execute("SELECT 1"))
        out["pg UPDATE one row, autocommit (durable commit)"] = median_ms(
            lambda: cursor.execute(
                "UPDATE mfa_twofactor SET failure_count = 0 WHERE id = %s", [row_pk]
            ),
            n=100,
        )
    client = cache._cache.get_client(write=True)
    out["redis: new client (RedisCacheClient.get_client)"] = median_ms(
        lambda: cache._cache.get_client(write=True), n=2000
    )
    out["redis: PING on a kept client"] = median_ms(client.ping)
    out["redis: cache.get (new client + GET)"] = median_ms(lambda: cache.get("mfa-bench-none"))
    pipe_key = "mfa-bench-pipe"

    def pipelined():
        pipe = client.pipeline(transaction=False)
        pipe.set(pipe_key, 0, ex=60, nx=True)
        pipe.incr(pipe_key)
        pipe.set(pipe_key + "2", 0, ex=60, nx=True)
        pipe.incr(pipe_key + "2")
        pipe.execute()

    out["redis: both rate checks as one pipeline (SET NX EX + INCR, x2)"] = median_ms(pipelined)
    client.delete(pipe_key, pipe_key + "2")
    assert isinstance(client, redis.Redis)

    # Alternatives for the writes of the login, each inside one transaction that is rolled
    # back (so no commit is timed): the ORM call the code makes, and a cheaper equivalent.
    from django.contrib.auth import get_user_model
    from django.db import transaction
    from django.utils import timezone

    from mfa import flows
    from mfa.models import SecurityEvent, TOTPDevice, TwoFactor

    user = get_user_model().objects.get(pk=TwoFactor.objects.get(pk=row_pk).user_id)
    table = connection.ops.quote_name(SecurityEvent._meta.db_table)
    insert = (
        f"INSERT INTO {table} (user_id, kind, created_at, ip_address, user_agent, detail) "
        "VALUES (%s, %s, %s, %s, %s, %s)"
    )
    with transaction.atomic():
        out["SecurityEvent.objects.create (in a transaction)"] = median_ms(
            lambda: SecurityEvent.objects.create(
                user=user, kind="login", ip_address="127.0.0.1", user_agent="bench", detail="x"
            )
        )
        with connection.cursor() as cursor:
            out["the same INSERT through a raw cursor"] = median_ms(
                lambda: cursor.execute(
                    insert, [user.pk, "login", timezone.now(), "127.0.0.1", "bench", "x"]
                )
            )
        out["user.save(update_fields=['last_login']) (update_last_login)"] = median_ms(
            lambda: user.save(update_fields=["last_login"])
        )
        out["TwoFactor.objects.filter(user=user).first() (flows._two_factor)"] = median_ms(
            lambda: TwoFactor.objects.filter(user=user).first()
        )
        out["TOTPDevice.objects.filter(user=user).first() (flows.verify_totp)"] = median_ms(
            lambda: TOTPDevice.objects.filter(user=user).first()
        )
        row = TwoFactor.objects.get(pk=row_pk)
        out["flows._accept (conditional UPDATE mfa_twofactor)"] = median_ms(
            lambda: flows._accept(row, user, timezone.now())
        )
        out["User.objects.filter(pk=..).first() (flows.pending_user)"] = median_ms(
            lambda: get_user_model()._default_manager.filter(pk=user.pk).first()
        )
        out["User + device in one query (select_related)"] = median_ms(
            lambda: (
                get_user_model()
                ._default_manager.select_related("mfa_totp")
                .filter(pk=user.pk)
                .first()
            )
        )
        transaction.set_rollback(True)
    return out


def child_profile() -> dict:
    """Time, count and profile the password and code steps in-process (Django's test client).

    Each user logs in once; the users are split in three: timed without any instrumentation,
    counted (SQL, commits, Redis, chosen functions) and profiled with pyinstrument if it is
    installed (``.venv/bin/pip install pyinstrument``; it is not a project dependency).
    """
    import django

    django.setup()
    import redis
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import Argon2PasswordHasher
    from django.contrib.sessions.backends.base import SessionBase
    from django.core.handlers.base import BaseHandler
    from django.db import connection
    from django.template.backends.django import Template
    from django.test import Client
    from django.test.client import ClientHandler

    from mfa import crypto, flows, middleware, sessions, throttle, totp
    from mfa.models import TwoFactor
    from mfa.session_store import SessionStore

    users = list(json.load(sys.stdin).items())
    third = len(users) // 3
    phases = {"timed": users[:third], "counted": users[third : 2 * third], "profiled": []}
    phases["profiled"] = users[2 * third :]

    def password_step(client, username):
        return client.post(
            "/accounts/login/", {"username": username, "password": harness.PASSWORD, "next": "/"}
        )

    def code_step(client, secret):
        code = totp.code_at(secret, totp.step_of(totp.now()))
        return client.post("/accounts/2fa/verify/", {"code": code, "next": "/"})

    def check(response, location):
        assert response.status_code == 302, response.status_code
        assert response["Location"].startswith(location), response["Location"]

    # Warm up: templates, connections, URL resolvers (a user of the timed share, not timed).
    warm = Client()
    warm.get("/accounts/login/?next=/")
    check(password_step(warm, users[0][0]), "/accounts/2fa/verify/")
    check(code_step(warm, users[0][1]["secret"]), "/")

    timed = {"GET login": [], "POST password": [], "POST code": []}
    for username, entry in phases["timed"][1:]:
        client = Client()
        for step, call, location in (
            ("GET login", partial(client.get, "/accounts/login/?next=/"), None),
            ("POST password", partial(password_step, client, username), "/accounts/2fa/"),
            ("POST code", partial(code_step, client, entry["secret"]), "/"),
        ):
            wall, cpu = time.perf_counter(), time.thread_time()
            response = call()
            timed[step].append((time.perf_counter() - wall, time.thread_time() - cpu))
            if location:
                check(response, location)

    probe = Probe()
    probe.install()
    # Inclusive times: nested labels are parts of the ones above them.
    probe.time(ClientHandler, "__call__", "request in the handler (all middleware + view)")
    probe.time(BaseHandler, "_get_response", "  view (URL resolution + view function)")
    probe.time(SessionStore, "load", "  session load (SELECT django_session)")
    probe.time(SessionStore, "save", "  session save (skipped when unchanged since written)")
    probe.time(middleware.SecondFactorMiddleware, "__call__", "  SecondFactorMiddleware + inner")
    probe.time(sessions, "is_live", "  sessions.is_live (middleware)")
    probe.time(Argon2PasswordHasher, "verify", "Argon2 verify")
    probe.time(throttle, "check_rates", "rate-limit counters (one Redis round trip)")
    probe.time(redis.Redis, "execute_command", "Redis commands")
    probe.time(redis.Redis, "__init__", "Redis client created")
    probe.time(SessionBase, "cycle_key", "session cycle_key")
    probe.time(SessionStore, "delete", "  session delete (old key)")
    probe.time(flows, "auth_login", "django.contrib.auth.login")
    probe.time(get_user_model(), "save", "  user.save (update_last_login)")
    probe.time(flows, "_two_factor", "flows._two_factor (SELECT mfa_twofactor)")
    probe.time(flows, "_accept", "  flows._accept (UPDATE mfa_twofactor)")
    probe.time(crypto, "decrypt_secret", "crypto.decrypt_secret")
    probe.time(totp, "matching_step", "totp.matching_step")
    probe.time(flows, "record", "SecurityEvent insert (flows.record)")
    probe.time(flows, "pending_user", "flows.pending_user")
    probe.time(flows, "begin_pending_login", "flows.begin_pending_login")
    probe.time(flows, "verify_totp", "flows.verify_totp")
    probe.time(flows, "complete_login", "flows.complete_login")
    probe.time(sessions, "register", "sessions.register")
    probe.time(sessions, "follow_key", "sessions.follow_key (middleware)")
    probe.time(Template, "render", "template render")
    counted = {"POST password": [], "POST code": []}
    try:
        for username, entry in phases["counted"]:
            client = Client()
            client.get("/accounts/login/?next=/")
            response, sample = probe.run(partial(password_step, client, username))
            check(response, "/accounts/2fa/")
            counted["POST password"].append(sample)
            response, sample = probe.run(partial(code_step, client, entry["secret"]))
            check(response, "/")
            counted["POST code"].append(sample)
    finally:
        probe.uninstall()

    profiles = {}
    try:
        from pyinstrument import Profiler
    except ImportError:
        Profiler = None
    if Profiler is not None:
        profilers = {"POST password": Profiler(interval=0.0005), "POST code": Profiler(0.0005)}
        for username, entry in phases["profiled"]:
            client = Client()
            client.get("/accounts/login/?next=/")
            for step, call in (
                ("POST password", partial(password_step, client, username)),
                ("POST code", partial(code_step, client, entry["secret"])),
            ):
                profilers[step].start()
                response = call()
                profilers[step].stop()
                assert response.status_code == 302
        for step, profiler in profilers.items():
            profiles[step] = {
                "tree": profiler.output_text(show_all=False),
                "flat": profiler.output_text(flat=True),
            }

    row_pk = TwoFactor.objects.values_list("pk", flat=True).first()
    return {
        "timed": {
            step: {
                "samples": len(v),
                "wall_ms": statistics.median(s[0] for s in v) * 1000,
                "cpu_ms": statistics.median(s[1] for s in v) * 1000,
            }
            for step, v in timed.items()
        },
        "counted": {step: _summary(v) for step, v in counted.items()},
        "micro_ms": _micro(connection, row_pk),
        "pyinstrument": profiles,
    }


# --- The load -------------------------------------------------------------------------------


def drive(server: harness.Server, users: dict, clients: int, duration: float) -> dict:
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for name, entry in users.items():
        todo.put((name, entry["secret"]))
    latencies = {step: [] for step in STEPS}
    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + duration
    from mfa import totp

    def worker() -> None:
        while time.monotonic() < deadline:
            try:
                name, secret = todo.get_nowait()
            except queue.Empty:
                return
            client = harness.Client()
            got = client.get(server, "/accounts/login/?next=/")
            password = client.post(
                server,
                "/accounts/login/",
                {"username": name, "password": harness.PASSWORD, "next": "/"},
            )
            result = f"password {password.status}"
            code = None
            if password.status == 302:
                code = client.send_code(server, totp.code_at(secret, totp.step_of(totp.now())))
                result = (
                    "ok" if (code.status, code.location) == (302, "/") else f"code {code.status}"
                )
            with lock:
                outcomes[result] = outcomes.get(result, 0) + 1
                latencies["GET login"].append(got.elapsed)
                latencies["POST password"].append(password.elapsed)
                if code is not None:
                    latencies["POST code"].append(code.elapsed)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration + 120)
    elapsed = time.perf_counter() - started
    return {"elapsed": elapsed, "outcomes": outcomes, "latencies": latencies}


def server_times(access_log: Path) -> dict[str, list[float]]:
    """Per step, the server's own times in ms, from lines 'METHOD PATH STATUS MICROSECONDS'."""
    names = {
        ("GET", "/accounts/login/"): "GET login",
        ("POST", "/accounts/login/"): "POST password",
        ("POST", "/accounts/2fa/verify/"): "POST code",
    }
    times: dict[str, list[float]] = {step: [] for step in STEPS}
    for line in access_log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 4 and (parts[0], parts[1]) in names:
            times[names[(parts[0], parts[1])]].append(int(parts[3]) / 1000)
    return times


def print_profile(profile: dict, argon2: dict) -> None:
    """Print the in-process timings, counts and profiles of the password and code steps."""
    print("\n--- In-process (Django test client, same database and Redis), medians ---")
    for step, t in profile["timed"].items():
        print(
            f"{step:<15}{t['wall_ms']:>8.1f} ms wall{t['cpu_ms']:>8.1f} ms CPU "
            f"({t['samples']} users)"
        )
    print(f"(one Argon2 check_password alone: {argon2['cpu'] * 1000:.1f} ms CPU)")
    for step, c in profile["counted"].items():
        print(
            f"\n{step}: {c['queries']:.1f} SQL statements ({c['in_transaction']:.1f} in a "
            f"transaction), {c['sql_ms']:.2f} ms in SQL; {c['commits']:.1f} COMMITs "
            f"({c['commit_ms']:.2f} ms), {c['durable_commits']:.1f} durable commits "
            f"(WAL flushes) in all; {c['requests']} requests"
        )
        print("  statements: " + ", ".join(c["statements"]))
        for label, (calls, ms) in c["timers"].items():
            print(f"  {label:<45}{calls:>6.1f} calls{ms:>9.2f} ms")
    print("\nunit costs on this machine (medians):")
    for name, ms in profile["micro_ms"].items():
        print(f"  {name:<64}{ms * 1000:>8.0f} us")
    for step, text in profile["pyinstrument"].items():
        print(f"\n--- pyinstrument, {step} (tree) ---")
        print(text["tree"])
        print(f"--- pyinstrument, {step} (flat, self time) ---")
        print("\n".join(text["flat"].splitlines()[:40]))


def in_process_profile(site: harness.Site, users: dict) -> dict:
    """Run ``child_profile`` in a child process with the site's environment."""
    # The production log level: each security event logs a line, as in the server.
    return harness.run_json_child(
        site,
        str(Path(__file__).resolve()),
        "_profile",
        stdin=users,
        DJANGO_ALLOWED_HOSTS="testserver",
    )


def main() -> None:
    if sys.argv[1:2] == ["_profile"]:
        print(json.dumps(child_profile()))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--database-url", default=harness.ADMIN_POSTGRES_URL)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--no-profile", action="store_true", help="skip the in-process part")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.clients = max(1, min(args.clients, 32))
    args.duration = max(1.0, min(args.duration, 300.0))
    args.users = max(10, min(args.users, 50_000))
    cores = os.cpu_count() or 1

    argon2_before = argon2_check_seconds()

    with tempfile.TemporaryDirectory(prefix="mfa-login-bench-") as name:
        tmp = Path(name)
        with harness.fresh_postgres(args.database_url, prefix="mfa_bench_") as url:
            site = harness.Site(url, args.redis_url, tmp / "keys", extra=RAISED_RATES)
            site.prepare()
            names = [f"load{i}" for i in range(args.users)]
            profiled = [f"prof{i}" for i in range(PROFILED_USERS)]
            users = site.create_users(names + profiled)
            load_users = {n: users[n] for n in names}
            access_log = tmp / "access.log"
            server = harness.Server(
                site, workers=args.workers, log_path=tmp / "gunicorn.log", access_log=access_log
            )
            try:
                server.start().wait_ready()
                load_before = os.getloadavg()[0]
                server_cpu, pg_cpu = process_tree_cpu(server.proc.pid), postgres_cpu()
                client_cpu = time.process_time()
                run = drive(server, load_users, args.clients, args.duration)
                client_cpu = time.process_time() - client_cpu
                server_cpu = process_tree_cpu(server.proc.pid) - server_cpu
                pg_cpu = postgres_cpu() - pg_cpu
                load_after = os.getloadavg()[0]
            finally:
                server.stop()
            inside = server_times(access_log)
            if args.no_profile:
                profile = None
            else:
                profile = in_process_profile(site, {n: users[n] for n in profiled})

    argon2 = argon2_reference(argon2_before, argon2_check_seconds())
    ceiling = cores / argon2["cpu"]
    print(
        f"Argon2 check_password ({argon2['hash']}...): {argon2['cpu'] * 1000:.1f} ms CPU "
        f"(median of {argon2['cpu_before'] * 1000:.1f} before and "
        f"{argon2['cpu_after'] * 1000:.1f} after the load), {argon2['wall'] * 1000:.1f} ms wall; "
        f"ceiling {cores} cores / CPU = {ceiling:.1f} logins/s"
    )
    ok = run["outcomes"].get("ok", 0)
    rate = ok / run["elapsed"]
    code_median = statistics.median(inside["POST code"]) if inside["POST code"] else float("nan")
    print(
        f"\n{ok} logins in {run['elapsed']:.1f} s with {args.clients} clients, "
        f"{args.workers} gunicorn workers, {cores} cores (load average {load_before:.1f} before, "
        f"{load_after:.1f} after); outcomes {run['outcomes']}"
    )
    print(
        f"logins/s: {rate:.1f}; Argon2 ceiling {ceiling:.1f}/s; ratio {rate / ceiling:.0%} "
        "(goal >= 60%)"
    )
    per_login = server_cpu / max(ok, 1)
    per_login_pg = pg_cpu / max(ok, 1)
    idle_rate = cores / (per_login + per_login_pg)
    print(
        f"CPU per login: gunicorn {per_login * 1000:.1f} ms + PostgreSQL {per_login_pg * 1000:.1f}"
        f" ms (all postgres processes); on {cores} idle cores that allows {idle_rate:.1f} "
        f"logins/s = {idle_rate / ceiling:.0%} of the Argon2 ceiling"
    )
    print(
        f"the load generator (this process, {args.clients} threads) used "
        f"{client_cpu / max(ok, 1) * 1000:.1f} ms of CPU per login on the same cores"
    )
    print(f"{'step':<15}{'client p50':>12}{'client p99':>12}{'server p50':>12}{'server p99':>12}")
    for step in STEPS:
        client_ms = [s * 1000 for s in run["latencies"][step]]
        print(
            f"{step:<15}{percentile(client_ms, 0.5):>10.1f}ms{percentile(client_ms, 0.99):>10.1f}ms"
            f"{percentile(inside[step], 0.5):>10.1f}ms{percentile(inside[step], 0.99):>10.1f}ms"
        )
    print(f"code step, server time at the median: {code_median:.1f} ms (goal < 5 ms)")
    if profile is not None:
        print_profile(profile, argon2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%d"),
                    "cores": cores,
                    "workers": args.workers,
                    "clients": args.clients,
                    "elapsed": run["elapsed"],
                    "logins": ok,
                    "outcomes": run["outcomes"],
                    "logins_per_second": rate,
                    "argon2_check_ms_cpu": argon2["cpu"] * 1000,
                    "argon2_check_ms_wall": argon2["wall"] * 1000,
                    "argon2_check_ms_cpu_before_after": [
                        argon2["cpu_before"] * 1000,
                        argon2["cpu_after"] * 1000,
                    ],
                    "ceiling": ceiling,
                    "cpu_per_login_ms": {
                        "gunicorn": per_login * 1000,
                        "postgres": per_login_pg * 1000,
                        "load_generator": client_cpu / max(ok, 1) * 1000,
                    },
                    "idle_cores_logins_per_second": idle_rate,
                    "ratio": rate / ceiling,
                    "load_average": [load_before, load_after],
                    "client_ms": {
                        step: {
                            "p50": percentile([s * 1000 for s in v], 0.5),
                            "p99": percentile([s * 1000 for s in v], 0.99),
                        }
                        for step, v in run["latencies"].items()
                    },
                    "server_ms": {
                        step: {"p50": percentile(v, 0.5), "p99": percentile(v, 0.99)}
                        for step, v in inside.items()
                    },
                    "in_process": profile
                    and {
                        "timed_ms": profile["timed"],
                        "counted": profile["counted"],
                        "micro_ms": profile["micro_ms"],
                    },
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
