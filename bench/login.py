"""Full logins per second against gunicorn on PostgreSQL and Redis, and what each step costs.

A fresh PostgreSQL database is filled with users who have 2FA; one gunicorn (workers = cores)
serves the production settings. Client threads each take a user never used before (each user
logs in once: a TOTP step is accepted once) and go through GET login, POST password, POST
code, until --duration runs out. Reported:

- logins per second, and p50/p99 latency of each step as the client saw it;
- each step's time inside the server (gunicorn's access log, %(D)s microseconds);
- the Argon2 ceiling: cores / the CPU time of one ``check_password`` with the project's hasher,
  measured in this process before the load; and the ratio of the login rate to it (goal:
  at least 60%);
- the second-factor step's server time at the median (goal: under 5 ms), and a cProfile of
  that step run in-process with Django's test client against the same database.

The rate limits are raised for the run (one client address makes hundreds of logins a
minute); everything else is the production configuration.

    .venv/bin/python bench/login.py [--clients 6] [--duration 20] [--users 3000]
        [--database-url postgres://postgres@127.0.0.1:5432/postgres]
        [--redis-url redis://127.0.0.1:6379/13] [--json bench/results/login.json]
"""

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
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
PROFILED_USERS = 80  # the first half timed, the second half profiled


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
    return {"wall": statistics.median(walls), "cpu": statistics.median(cpus), "hash": encoded[:30]}


# --- The in-process profile of the code step ------------------------------------------------


def child_profile() -> dict:
    """Time and cProfile the code step in-process (Django's test client), one fresh user each."""
    import cProfile
    import io
    import pstats

    import django

    django.setup()
    from django.test import Client

    from mfa import totp

    users = json.load(sys.stdin)
    profiler = cProfile.Profile()
    walls, cpus = [], []
    for index, (username, entry) in enumerate(users.items()):
        client = Client()
        profiling = index >= len(users) // 2
        response = client.post(
            "/accounts/login/", {"username": username, "password": harness.PASSWORD, "next": "/"}
        )
        assert response.status_code == 302, response.status_code
        code = totp.code_at(entry["secret"], totp.step_of(totp.now()))
        wall, cpu = time.perf_counter(), time.thread_time()
        if profiling:
            profiler.enable()
        response = client.post("/accounts/2fa/verify/", {"code": code, "next": "/"})
        profiler.disable()
        if index >= 5 and not profiling:  # the first few warm up (templates, connections)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.thread_time() - cpu)
        assert response.status_code == 302, response.status_code
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
    text2 = io.StringIO()
    pstats.Stats(profiler, stream=text2).sort_stats("tottime").print_stats(15)
    return {
        "code_step_wall_ms_median": statistics.median(walls) * 1000,
        "code_step_cpu_ms_median": statistics.median(cpus) * 1000,
        "samples": len(walls),
        "profiled": len(users) - len(users) // 2,
        "profile_cumulative": text.getvalue(),
        "profile_tottime": text2.getvalue(),
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
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.clients = max(1, min(args.clients, 32))
    args.duration = max(1.0, min(args.duration, 300.0))
    args.users = max(10, min(args.users, 50_000))
    cores = os.cpu_count() or 1

    argon2 = argon2_check_seconds()
    ceiling = cores / argon2["cpu"]
    print(
        f"Argon2 check_password ({argon2['hash']}...): {argon2['cpu'] * 1000:.1f} ms CPU, "
        f"{argon2['wall'] * 1000:.1f} ms wall; ceiling {cores} cores / CPU = {ceiling:.1f} "
        "logins/s",
        flush=True,
    )

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
                run = drive(server, load_users, args.clients, args.duration)
                server_cpu = process_tree_cpu(server.proc.pid) - server_cpu
                pg_cpu = postgres_cpu() - pg_cpu
                load_after = os.getloadavg()[0]
            finally:
                server.stop()
            inside = server_times(access_log)
            profile = json.loads(
                subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "_profile"],
                    cwd=ROOT,
                    env=site.env(DJANGO_ALLOWED_HOSTS="testserver", MFA_LOG_LEVEL="WARNING"),
                    input=json.dumps({n: users[n] for n in profiled}),
                    capture_output=True,
                    text=True,
                    timeout=300,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
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
    print(f"{'step':<15}{'client p50':>12}{'client p99':>12}{'server p50':>12}{'server p99':>12}")
    for step in STEPS:
        client_ms = [s * 1000 for s in run["latencies"][step]]
        print(
            f"{step:<15}{percentile(client_ms, 0.5):>10.1f}ms{percentile(client_ms, 0.99):>10.1f}ms"
            f"{percentile(inside[step], 0.5):>10.1f}ms{percentile(inside[step], 0.99):>10.1f}ms"
        )
    print(f"code step, server time at the median: {code_median:.1f} ms (goal < 5 ms)")
    print(
        f"code step in-process, no profiler (test client, {profile['samples']} users): "
        f"{profile['code_step_wall_ms_median']:.1f} ms wall, "
        f"{profile['code_step_cpu_ms_median']:.1f} ms CPU at the median"
    )
    print("\n--- cProfile of the code step, in-process (cumulative) ---")
    print(profile["profile_cumulative"])
    print("--- (tottime) ---")
    print(profile["profile_tottime"])
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
                    "ceiling": ceiling,
                    "cpu_per_login_ms": {
                        "gunicorn": per_login * 1000,
                        "postgres": per_login_pg * 1000,
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
                    "code_step_in_process_ms": {
                        "wall": profile["code_step_wall_ms_median"],
                        "cpu": profile["code_step_cpu_ms_median"],
                    },
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
