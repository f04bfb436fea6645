"""Production packaging: the Compose file, the Dockerfile, .env.example and the entrypoint.

No Docker engine runs where the tests run, so no image is built here. What can be checked
without one is checked: the Compose file against the Compose specification's JSON schema, the
choices in it and in the Dockerfile, the build context, the documentation of every variable,
and docker/entrypoint.sh with gunicorn run for real outside a container, against the same
PostgreSQL and Redis as the second test pass.
"""

import ast
import contextlib
import hashlib
import http.client
import http.server
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import pytest
from cryptography.fernet import Fernet
from ruamel.yaml import YAML

from tests.conftest import require_services

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
CMD = ["gunicorn", "-c", "gunicorn.conf.py", "config.wsgi"]
# Bounded waits: a start (database wait, migrations, checks, workers) and a stop.
START_TIMEOUT = 60
STOP_TIMEOUT = 30


def load_compose(path: Path = COMPOSE) -> dict:
    return YAML(typ="safe").load(path.read_text())


def check_jsonschema(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- The Compose file -----------------------------------------------------------------------


def test_compose_file_is_valid_under_the_compose_specification():
    result = check_jsonschema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_an_invalid_compose_file(tmp_path):
    """The validation above is real: the same file with one invalid value fails it."""
    text = COMPOSE.read_text()
    assert "condition: service_healthy" in text
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace("condition: service_healthy", "condition: when_ready", 1))
    result = check_jsonschema(broken)
    assert result.returncode != 0


def test_compose_services_wait_for_healthy_neighbours():
    services = load_compose()["services"]
    assert services["db"]["image"] == "postgres:17"
    assert "pg_isready" in services["db"]["healthcheck"]["test"]
    assert services["redis"]["image"] == "redis:7-alpine"
    assert services["redis"]["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    web = services["web"]
    assert web["depends_on"] == {
        "db": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    probe = web["healthcheck"]["test"]
    assert probe[0] == "CMD" and "/accounts/login/" in probe[-1]


class StubSite(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the status in ``status``, and records the request headers."""

    status = 200
    seen: list = []

    def do_GET(self):
        type(self).seen.append(dict(self.headers))
        self.send_response(self.status)
        self.send_header("Location", "https://elsewhere.example/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (301, False), (500, False)])
def test_the_web_healthcheck_accepts_only_a_200_from_an_allowed_host(status, healthy):
    code = load_compose()["services"]["web"]["healthcheck"]["test"][-1]
    assert "127.0.0.1:8000" in code
    handler = type("Handler", (StubSite,), {"status": status, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        result = subprocess.run(
            [sys.executable, "-c", code.replace("127.0.0.1:8000", f"127.0.0.1:{port}")],
            env={"DJANGO_ALLOWED_HOSTS": ".example.com,localhost", "PATH": os.defpath},
            capture_output=True,
            timeout=30,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode == 0) is healthy
    # One request (a redirect is not followed), for the first allowed host, as if over TLS.
    assert len(handler.seen) == 1
    assert handler.seen[0]["Host"] == "example.com"
    assert handler.seen[0]["X-Forwarded-Proto"] == "https"


def test_the_site_is_published_on_the_loopback_interface_only():
    web = load_compose()["services"]["web"]
    assert web["ports"] == ["127.0.0.1:8000:8000"]
    # The database and Redis publish nothing and sit on a network with no route out.
    compose = load_compose()
    assert "ports" not in compose["services"]["db"]
    assert "ports" not in compose["services"]["redis"]
    assert compose["networks"]["backend"]["internal"] is True
    assert compose["services"]["db"]["networks"] == ["backend"]


def test_database_and_key_ring_live_on_named_volumes():
    compose = load_compose()
    declared = set(compose["volumes"])

    def named_source(service: str, target: str) -> str:
        for mount in compose["services"][service]["volumes"]:
            source, _, mounted = mount.partition(":")
            if mounted.split(":")[0] == target:
                return source
        raise AssertionError(f"{service} mounts nothing at {target}")

    db_volume = named_source("db", "/var/lib/postgresql/data")
    keys_volume = named_source("web", "/app/keys")
    assert {db_volume, keys_volume} <= declared
    # Two volumes, so that the key ring can be backed up apart from the database.
    assert db_volume != keys_volume
    assert compose["services"]["web"]["environment"]["MFA_KEYS_DIR"] == "/app/keys"


def test_compose_refuses_to_start_without_a_secret_key():
    web = load_compose()["services"]["web"]
    assert web["env_file"] == ".env"
    assert re.fullmatch(r"\$\{DJANGO_SECRET_KEY:\?.+\}", web["environment"]["DJANGO_SECRET_KEY"])
    assert ":?" in web["environment"]["DJANGO_ALLOWED_HOSTS"]


# --- The Dockerfile and the build context ---------------------------------------------------


def dockerfile_lines() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def final_stage() -> list[str]:
    lines = dockerfile_lines()
    starts = [i for i, line in enumerate(lines) if line.upper().startswith("FROM ")]
    return lines[starts[-1] :]


def test_the_image_runs_as_an_unprivileged_user():
    users = [line.split()[1] for line in final_stage() if line.upper().startswith("USER ")]
    assert users, "the final stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user == "10001"


def test_the_image_is_slim_and_its_secret_key_is_build_only():
    stage = final_stage()
    assert stage[0] == "FROM python:3.13-slim"
    assert 'ENTRYPOINT ["/app/docker/entrypoint.sh"]' in stage
    assert 'CMD ["gunicorn", "-c", "gunicorn.conf.py", "config.wsgi"]' in stage
    # The dummy key is given to the collectstatic step alone, never as an ENV of the image.
    for line in dockerfile_lines():
        if line.upper().startswith(("ENV ", "ARG ")):
            assert "DJANGO_SECRET_KEY" not in line
    (collect,) = [line for line in stage if "collectstatic" in line]
    assert collect.startswith("RUN DJANGO_SECRET_KEY=")
    (keys_dir,) = [line for line in stage if "/app/keys" in line and line.startswith("RUN")]
    assert "-o app" in keys_dir and "-m 0700" in keys_dir
    # No compiler or package manager run in the final stage.
    assert not any(re.search(r"\b(apt-get|gcc|build-essential)\b", line) for line in stage)


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Apply .dockerignore rules (the last matching pattern wins; "!" re-includes)."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = ""
        for part in re.split(r"(\*\*/?|\*|\?)", pattern):
            if part.startswith("**"):
                regex += ".*"
            elif part == "*":
                regex += "[^/]*"
            elif part == "?":
                regex += "[^/]"
            else:
                regex += re.escape(part)
        # A pattern that matches a directory matches everything in it.
        if re.fullmatch(regex + "(/.*)?", path):
            excluded = not negate
    return excluded


def test_the_build_context_holds_what_the_image_copies_and_no_secret():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for secret in ["keys/ring", ".env", "data/db.sqlite3", ".venv/bin/python", ".git/config"]:
        assert dockerignore_excludes(patterns, secret), secret
    copied = []
    for line in dockerfile_lines():
        if line.startswith("COPY ") and "--from=" not in line:
            copied += line.split()[1:-1]
    assert "mfa" in copied and "docker/entrypoint.sh" in copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not dockerignore_excludes(patterns, source), source
    assert not dockerignore_excludes(patterns, "mfa/static/mfa/mfa.css")
    assert dockerignore_excludes(patterns, "mfa/__pycache__/crypto.cpython-313.pyc")


# --- Variables: every one documented --------------------------------------------------------


def variables_read_by_settings() -> set[str]:
    names = set()
    tree = ast.parse((ROOT / "config" / "settings.py").read_text())
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        first = node.args[0]
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
            continue
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if called in {"get", "env_bool", "env_list", "getenv"} and first.value.isupper():
            names.add(first.value)
    return names


def test_env_example_documents_every_variable():
    documented = {}
    lines = (ROOT / ".env.example").read_text().splitlines()
    for number, line in enumerate(lines):
        match = re.fullmatch(r"#?([A-Z][A-Z0-9_]*)=(.*)", line)
        if match:
            documented[match.group(1)] = number
    read = variables_read_by_settings()
    assert {"DJANGO_SECRET_KEY", "DATABASE_URL", "DJANGO_EMAIL_HOST"} <= read  # parser works
    read |= {"MFA_FERNET_KEYS", "WEB_CONCURRENCY", "GUNICORN_THREADS", "GUNICORN_BIND"}
    read |= {"FORWARDED_ALLOW_IPS", "DB_WAIT_SECONDS"}
    read |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE.read_text()))
    assert sorted(read - documented.keys()) == []
    # Each variable has a comment above it (directly, or above its group of variables).
    for name, number in documented.items():
        above = number - 1
        while re.fullmatch(r"#?[A-Z][A-Z0-9_]*=.*", lines[above]):
            above -= 1
        assert lines[above].startswith("# ") and "---" not in lines[above], name


def test_env_example_holds_no_usable_secret():
    values = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if re.match(r"[A-Z]", line)
    )
    assert values["DJANGO_DEBUG"] == "0"
    for name in ["DJANGO_SECRET_KEY", "POSTGRES_PASSWORD", "DJANGO_EMAIL_HOST_PASSWORD"]:
        assert "replace" in values[name], name
    assert "token_urlsafe" in (ROOT / ".env.example").read_text()


# --- gunicorn.conf.py -----------------------------------------------------------------------


def gunicorn_settings(monkeypatch, **env) -> dict:
    for name in ["GUNICORN_BIND", "WEB_CONCURRENCY", "GUNICORN_THREADS", "FORWARDED_ALLOW_IPS"]:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    namespace = {}
    exec(compile((ROOT / "gunicorn.conf.py").read_text(), "gunicorn.conf.py", "exec"), namespace)
    return {k: v for k, v in namespace.items() if not k.startswith("_") and k != "os"}


def test_gunicorn_defaults(monkeypatch):
    from gunicorn.config import Config

    conf = gunicorn_settings(monkeypatch)
    # Gunicorn silently ignores unknown names in a config file: a typo would go unnoticed.
    assert set(conf) <= set(Config().settings)
    assert conf["bind"] == "0.0.0.0:8000"
    assert conf["workers"] == 2
    assert conf["worker_class"] == "sync"
    assert conf["timeout"] == 30
    assert conf["preload_app"] is False
    assert conf["accesslog"] == "-"
    # The request line without its query string.
    assert "%(r)s" not in conf["access_log_format"] and "%(q)s" not in conf["access_log_format"]


def test_gunicorn_reads_the_environment(monkeypatch):
    conf = gunicorn_settings(
        monkeypatch,
        GUNICORN_BIND="127.0.0.1:9001",
        WEB_CONCURRENCY="5",
        GUNICORN_THREADS="4",
        FORWARDED_ALLOW_IPS="10.0.0.0/8",
    )
    assert conf["bind"] == "127.0.0.1:9001"
    assert conf["workers"] == 5
    assert (conf["worker_class"], conf["threads"]) == ("gthread", 4)
    assert conf["forwarded_allow_ips"] == "10.0.0.0/8"


# --- docker/entrypoint.sh -------------------------------------------------------------------


def test_entrypoint_is_executable_posix_sh():
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")
    shell = shutil.which("dash") or "/bin/sh"
    subprocess.run([shell, "-n", str(ENTRYPOINT)], check=True, timeout=10)
    if shutil.which("shellcheck"):
        result = subprocess.run(
            ["shellcheck", "--shell=sh", str(ENTRYPOINT)], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout


def site_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """The environment docker-compose.yml gives the site, for a plain-HTTP run on this host.

    Built from nothing, so that nothing of the test process (DJANGO_SETTINGS_MODULE,
    MFA_FERNET_KEYS) leaks in; MFA_PLAIN_STATIC because a checkout has no collectstatic output.
    """
    env = {
        "PATH": f"{BIN}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_DEBUG": "0",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DJANGO_SECURE_SSL_REDIRECT": "0",
        "MFA_PLAIN_STATIC": "1",
        "MFA_KEYS_DIR": str(tmp_path / "site-keys"),
        "WEB_CONCURRENCY": "2",
        "DB_WAIT_SECONDS": "10",
    }
    env.update(overrides)
    return env


def run_entrypoint(env, *command, timeout=START_TIMEOUT):
    # From another directory: the script finds the project itself.
    return subprocess.run(
        [str(ENTRYPOINT), *command],
        cwd=env["HOME"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_entrypoint_gives_up_on_an_unreachable_database_without_naming_its_password(tmp_path):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    marker = tmp_path / "started"
    env = site_env(
        tmp_path,
        DATABASE_URL=f"postgres://mfa:hunter2-db-pass@127.0.0.1:{port}/mfa",
        DB_WAIT_SECONDS="1",
    )
    started = time.monotonic()
    result = run_entrypoint(env, "python", "-c", f"open({str(marker)!r}, 'w')", timeout=30)
    assert result.returncode != 0
    assert not marker.exists(), "the command ran without a database"
    assert "did not answer" in result.stderr
    assert "hunter2-db-pass" not in result.stdout + result.stderr
    assert time.monotonic() - started < 25
    assert not (tmp_path / "site-keys" / "ring").exists()


def test_entrypoint_leaves_a_ring_from_the_environment_alone(tmp_path):
    env = site_env(
        tmp_path,
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        MFA_FERNET_KEYS=Fernet.generate_key().decode(),
    )
    del env["WEB_CONCURRENCY"]
    marker = tmp_path / "started"
    result = run_entrypoint(env, "python", "-c", f"open({str(marker)!r}, 'w')")
    assert result.returncode == 0, result.stderr[-3000:]
    assert marker.exists()
    assert not (tmp_path / "site-keys" / "ring").exists()
    # gunicorn's default of two workers without REDIS_URL: the deploy check warns.
    assert "mfa.W010" in result.stderr


def test_entrypoint_refuses_to_start_with_a_key_ring_others_can_read(tmp_path):
    keys = tmp_path / "site-keys"
    keys.mkdir(mode=0o700)
    ring = keys / "ring"
    ring.write_bytes(Fernet.generate_key() + b"\n")
    ring.chmod(0o644)
    env = site_env(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")
    marker = tmp_path / "started"
    result = run_entrypoint(env, "python", "-c", f"open({str(marker)!r}, 'w')")
    assert result.returncode != 0
    assert "mfa.E004" in result.stderr
    assert not marker.exists()


# --- The site under gunicorn, started by the entrypoint, on PostgreSQL and Redis -------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str) -> http.client.HTTPResponse:
    """GET ``path``; the body is in ``response.body``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": "127.0.0.1"})
        response = conn.getresponse()
        response.body = response.read()
    finally:
        conn.close()
    return response


def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@contextlib.contextmanager
def running_site(env: dict[str, str], log: Path):
    """Start entrypoint + gunicorn, wait until it answers, and always stop it."""
    port = free_port()
    env = {**env, "GUNICORN_BIND": f"127.0.0.1:{port}"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(ENTRYPOINT), *CMD],
            cwd=env["HOME"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"the site exited with {process.returncode}:\n{tail(log)}")
            try:
                if get(port, "/accounts/login/").status < 500:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the site did not answer in {START_TIMEOUT} s:\n{tail(log)}")
            time.sleep(0.2)
        yield port
    finally:
        # The entrypoint exec'd gunicorn: its pid is the master's, its group holds the workers.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT)


@pytest.fixture
def fresh_database():
    """A new, empty PostgreSQL database on the test server, dropped afterwards."""
    import psycopg

    require_services()
    admin_url = os.environ.get("DATABASE_URL", "")
    if not admin_url.startswith("postgres"):
        pytest.skip("needs DATABASE_URL pointing at PostgreSQL")
    name = f"mfa_deploy_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunparse(urlparse(admin_url)._replace(path="/" + name))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def digest(path: Path) -> str:
    # Compared by hash: an assertion message must never show a key.
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.services
@pytest.mark.slow
def test_entrypoint_starts_the_site_under_gunicorn_and_restarts_idempotently(
    tmp_path, fresh_database
):
    require_services()
    redis = urlparse(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15"))
    env = site_env(
        tmp_path,
        DATABASE_URL=fresh_database,
        REDIS_URL=urlunparse(redis._replace(path="/14")),
    )
    ring = tmp_path / "site-keys" / "ring"
    assert not ring.exists()

    first_log = tmp_path / "first.log"
    with running_site(env, first_log) as port:
        response = get(port, "/accounts/login/")
        assert response.status == 200
        assert "default-src 'self'" in response.getheader("Content-Security-Policy", "")
        assert response.getheader("X-Frame-Options") == "DENY"
        css = get(port, "/static/mfa/mfa.css")
        assert css.status == 200 and css.body == (ROOT / "mfa/static/mfa/mfa.css").read_bytes()
        assert get(port, "/").status == 302  # login required
    first = tail(first_log, 100_000)
    assert "no key ring yet" in first
    assert "Applying mfa.0001_initial" in first
    assert stat.S_IMODE(ring.stat().st_mode) == 0o600
    assert stat.S_IMODE(ring.parent.stat().st_mode) == 0o700
    ring_before = digest(ring)

    second_log = tmp_path / "second.log"
    with running_site(env, second_log) as port:
        assert get(port, "/accounts/login/").status == 200
    second = tail(second_log, 100_000)
    assert "no key ring yet" not in second
    assert "No migrations to apply." in second
    # Production settings with a proper key: no check speaks up but the plain-HTTP one.
    assert "security.W008" in second and "security.W009" not in second
    assert digest(ring) == ring_before
    assert stat.S_IMODE(ring.stat().st_mode) == 0o600
