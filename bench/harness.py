"""Real servers on 127.0.0.1 for the scale-out test and the benchmarks.

Everything here is bounded: each wait has a deadline, each process started is stopped (by its
own process group id) in a ``finally``, each database created is dropped.

- ``fresh_postgres``: a new, empty PostgreSQL database, dropped afterwards.
- ``own_redis``: a private ``redis-server`` on a free port, which a test may kill.
- ``Site``: the environment of one deployment (database, Redis, key ring, secret key) with
  ``manage`` (``python manage.py ...``) and ``create_users`` (users with 2FA, made in a
  subprocess that prints their secrets as JSON on stdout for the caller only).
- ``Server``: one gunicorn on a free port, serving ``config.wsgi`` with that environment.
- ``Client``: a browser stand-in over ``http.client``. It keeps cookies by hand and sends them
  over plain HTTP although the production settings mark them ``Secure`` (there is no TLS on
  127.0.0.1); it fills in the CSRF token from the ``csrftoken`` cookie.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode, urlparse, urlunparse

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery staple"
ADMIN_POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _with_path(url: str, path: str) -> str:
    parts = urlparse(url)
    return urlunparse(parts._replace(path=path))


# --- Services -------------------------------------------------------------------------------


@contextmanager
def fresh_postgres(admin_url: str = ADMIN_POSTGRES_URL, prefix: str = "mfa_scale_"):
    """Create an empty database, yield its URL, drop it (even if clients are still on it)."""
    import psycopg

    name = prefix + secrets.token_hex(4)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_path(admin_url, "/" + name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def own_redis(timeout: float = 10.0):
    """Start a private redis-server (no persistence) on a free port; yield (url, process)."""
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a process started with start_new_session=True, and its children (by its pgid)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


# --- The deployment -------------------------------------------------------------------------

_CREATE_USERS = r"""
import json, sys
import django
django.setup()
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from mfa import crypto, recovery, totp
from mfa.models import RecoveryCode, TOTPDevice, TwoFactor

spec = json.load(sys.stdin)
User = get_user_model()
# One Argon2 hash for all: creating thousands of users must not cost thousands of hashes.
hashed = make_password(spec["password"])
users = User.objects.bulk_create(
    User(username=name, email=f"{name}@example.com", password=hashed)
    for name in spec["usernames"]
)
out = {}
# As a finished enrolment leaves them (mfa.test.enrol, without its Argon2 per code): the
# TwoFactor row that says 2FA is on and holds the back-off, and the app's encrypted secret.
two_factors, devices, codes = [], [], []
for user in users:
    secret = totp.generate_secret()
    two_factors.append(TwoFactor(user=user))
    devices.append(TOTPDevice(user=user, encrypted_secret=crypto.encrypt_secret(secret, user.pk)))
    entry = {"secret": secret, "pk": user.pk}
    if user.username in spec.get("with_recovery_codes", []):
        pairs = recovery.generate(10)
        codes += [
            RecoveryCode(user=user, selector=s, code_hash=recovery.hash_verifier(s, v))
            for s, v in pairs
        ]
        entry["codes"] = [recovery.format_code(s, v) for s, v in pairs]
    out[user.username] = entry
TwoFactor.objects.bulk_create(two_factors, batch_size=2000)
TOTPDevice.objects.bulk_create(devices, batch_size=2000)
RecoveryCode.objects.bulk_create(codes, batch_size=2000)
sys.stdout.write(json.dumps(out))
"""


@dataclass
class Site:
    """One deployment's environment: every server and command started with it shares state."""

    database_url: str
    redis_url: str
    keys_dir: Path
    cache_prefix: str = field(default_factory=lambda: "mfa-scale-" + secrets.token_hex(4))
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(50))
    extra: dict[str, str] = field(default_factory=dict)

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            # Nothing of the caller's Django or key ring configuration leaks in.
            if not key.startswith(("DJANGO_", "MFA_", "DATABASE_URL", "REDIS_URL"))
        }
        env.update(
            DJANGO_SETTINGS_MODULE="bench.settings",
            DJANGO_DEBUG="0",
            DJANGO_SECRET_KEY=self.secret_key,
            DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
            DJANGO_SECURE_SSL_REDIRECT="0",
            DATABASE_URL=self.database_url,
            MFA_KEYS_DIR=str(self.keys_dir),
            MFA_CACHE_PREFIX=self.cache_prefix,
            MFA_PLAIN_STATIC="1",
            MFA_DATA_DIR=str(self.keys_dir.parent / "data"),
            PYTHONPATH=str(ROOT),
        )
        if self.redis_url:
            env["REDIS_URL"] = self.redis_url
        env.update(self.extra)
        env.update(overrides)
        return env

    def manage(self, *args: str, timeout: float = 300, **overrides: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env(**overrides),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stderr[-3000:]}")
        return result.stdout

    def prepare(self) -> None:
        """Create the key ring and the tables."""
        self.keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.manage("mfa_keys", "generate")
        self.manage("migrate", "--noinput")

    def create_users(
        self, usernames: list[str], with_recovery_codes: list[str] = (), timeout: float = 600
    ) -> dict[str, dict]:
        """Create users with 2FA; return {username: {"secret", "pk", ["codes"]}}."""
        spec = {
            "usernames": usernames,
            "with_recovery_codes": list(with_recovery_codes),
            "password": PASSWORD,
        }
        result = subprocess.run(
            [sys.executable, "-c", _CREATE_USERS],
            cwd=ROOT,
            env=self.env(),
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode:
            raise RuntimeError(f"creating users failed:\n{result.stderr[-3000:]}")
        return json.loads(result.stdout)


def run_json_child(
    site: Site,
    script: str,
    *args: str,
    stdin: object = None,
    timeout: float = 600,
    **env_overrides: str,
) -> dict:
    """Run ``script`` (a path) with ``args`` in the site's environment; return its last line's JSON.

    ``stdin``, if given, is sent as JSON. A failure raises with the end of the child's stderr.
    """
    completed = subprocess.run(
        [sys.executable, script, *args],
        cwd=ROOT,
        env=site.env(**env_overrides),
        input=None if stdin is None else json.dumps(stdin),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if completed.returncode:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


class Server:
    """One gunicorn serving the site on 127.0.0.1."""

    def __init__(
        self,
        site: Site,
        workers: int = 3,
        log_path: Path | None = None,
        access_log: Path | None = None,
        **env_overrides: str,
    ):
        self.site = site
        self.workers = workers
        self.port = free_port()
        self.log_path = log_path
        self.access_log = access_log
        self.env_overrides = env_overrides
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def start(self) -> Server:
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "config.wsgi",
            "-w",
            str(self.workers),
            "-b",
            f"127.0.0.1:{self.port}",
            "--graceful-timeout",
            "5",
            "--timeout",
            "60",
        ]
        if self.access_log:
            # %(D)s: the request's time in the server, in microseconds.
            command += [
                "--access-logfile",
                str(self.access_log),
                "--access-logformat",
                "%(m)s %(U)s %(s)s %(D)s",
            ]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env=self.site.env(**self.env_overrides),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if self.log_path:
                log.close()
        return self

    def wait_ready(self, timeout: float = 60.0) -> Server:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn on port {self.port} exited:\n{self.log_tail()}")
            try:
                if Client().get(self, "/accounts/login/", timeout=2).status == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn on port {self.port} not ready:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-chars:]
        return "(no log)"


@contextmanager
def servers(site: Site, count: int = 2, log_dir: Path | None = None, **kwargs):
    """Start ``count`` gunicorn servers in parallel, yield them ready, always stop them."""
    started = []
    try:
        for index in range(count):
            log_path = log_dir / f"gunicorn-{index}.log" if log_dir else None
            started.append(Server(site, log_path=log_path, **kwargs).start())
        for server in started:
            server.wait_ready()
        yield started
    finally:
        for server in started:
            server.stop()


# --- The HTTP client ------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: str
    elapsed: float

    @property
    def location(self) -> str:
        return self.headers.get("location", "")


class Client:
    """One browser: its own cookies, any server (the cookies are the site's, not the port's)."""

    def __init__(self, headers: dict[str, str] | None = None):
        self.cookies: dict[str, str] = {}
        self.headers = headers or {}

    def _store(self, set_cookie_values: list[str]) -> None:
        for value in set_cookie_values:
            jar = SimpleCookie()
            jar.load(value)
            for name, morsel in jar.items():
                if morsel["max-age"] == "0" or "1970" in morsel["expires"]:
                    self.cookies.pop(name, None)
                else:
                    # The Secure flag is ignored on purpose: 127.0.0.1 has no TLS.
                    self.cookies[name] = morsel.value

    def request(
        self,
        server: Server,
        method: str,
        path: str,
        data: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> Response:
        headers = {"Host": f"127.0.0.1:{server.port}", **self.headers}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if data is not None:
            body = urlencode(data).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn = http.client.HTTPConnection(*server.address, timeout=timeout)
        started = time.perf_counter()
        try:
            conn.request(method, path, body=body, headers=headers)
            raw = conn.getresponse()
            text = raw.read().decode("utf-8", "replace")
            elapsed = time.perf_counter() - started
            all_headers = raw.getheaders()
        finally:
            conn.close()
        self._store([v for k, v in all_headers if k.lower() == "set-cookie"])
        merged = {}
        for key, value in all_headers:
            merged[key.lower()] = value
        return Response(raw.status, merged, text, elapsed)

    def get(self, server: Server, path: str, **kwargs) -> Response:
        return self.request(server, "GET", path, **kwargs)

    def post(self, server: Server, path: str, data: dict[str, str], **kwargs) -> Response:
        if "csrftoken" not in self.cookies:
            self.get(server, path)
        # The unmasked secret from the cookie is a valid form token for Django's CSRF check;
        # over plain HTTP no Referer check applies.
        form = {"csrfmiddlewaretoken": self.cookies.get("csrftoken", ""), **data}
        return self.request(server, "POST", path, data=form, **kwargs)

    # The login, step by step.

    def start_login(self, server: Server, username: str, password: str = PASSWORD) -> Response:
        """GET the login page and POST the password; a 2FA user gets 302 to the code step."""
        self.get(server, "/accounts/login/?next=/")
        return self.post(
            server, "/accounts/login/", {"username": username, "password": password, "next": "/"}
        )

    def send_code(self, server: Server, code: str) -> Response:
        return self.post(server, "/accounts/2fa/verify/?next=/", {"code": code, "next": "/"})

    def send_recovery_code(self, server: Server, code: str) -> Response:
        return self.post(server, "/accounts/2fa/recovery/?next=/", {"code": code, "next": "/"})

    def logged_in(self, server: Server) -> bool:
        return self.get(server, "/").status == 200
