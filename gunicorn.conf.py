"""Gunicorn settings for the demo site: ``gunicorn -c gunicorn.conf.py config.wsgi``.

Every value an operator may want to change comes from the environment; see .env.example.
"""

import os

# All interfaces inside a container; docker-compose.yml publishes the port on 127.0.0.1 only,
# for a TLS proxy on the same host. Outside a container, set GUNICORN_BIND=127.0.0.1:8000.
bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")

# Processes. Each login costs ~35 ms of one core in Argon2id, so about one worker per core.
# With more than one worker, REDIS_URL must be set: check mfa.W010 reads WEB_CONCURRENCY, which
# on_starting below sets to the count gunicorn really runs (a -w on the command line included).
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Threads per worker: more than one switches to the threaded worker (for slow clients or SMTP).
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
worker_class = "gthread" if threads > 1 else "sync"

# A request that takes longer than this is stuck: its worker is killed and replaced.
timeout = 30
# Time for requests in flight to finish on SIGTERM (docker-compose.yml waits a little longer).
graceful_timeout = 25
keepalive = 5

# Access log on stdout, with the path but not the query string (codes are POSTed, never in a
# URL; this keeps whatever else a query string carries out of the logs). Errors on stderr.
accesslog = "-"
access_log_format = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms "%(a)s"'

# The addresses whose X-Forwarded-Proto gunicorn believes. Django decides for itself through
# DJANGO_SECURE_PROXY_SSL_HEADER, and the client address through MFA_TRUSTED_PROXY_HEADER.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# Each worker imports the app itself: no state is shared by forking, and a restart of one
# worker reloads everything.
preload_app = False

# The heartbeat file in memory, not on the container's disk layer (gunicorn's advice).
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None

# Gunicorn >= 25.1 opens a control socket in $HOME, which the app user cannot write and which
# nothing here uses.
control_socket_disable = True


def on_starting(server) -> None:
    """Run Django's system checks once, in the master before any worker: refuse on errors.

    Gunicorn runs no checks of its own, so a missing key ring (mfa.E001) or a per-process rate
    limit (mfa.W010) would otherwise go unnoticed until users meet them. The checks run in a
    child process, so that the master imports no Django and each worker still loads the code
    afresh (preload_app stays off, and a reload picks up new code).
    """
    # Imported here: every module-level name of this file must be a gunicorn setting.
    import subprocess
    import sys
    from pathlib import Path

    # The count gunicorn really runs, for mfa.W010 here and in the workers, which inherit it.
    os.environ["WEB_CONCURRENCY"] = str(server.cfg.workers)
    manage = Path(__file__).resolve().parent / "manage.py"
    result = subprocess.run(
        [sys.executable, str(manage), "check"], capture_output=True, text=True, timeout=120
    )
    output = result.stdout + result.stderr
    if result.returncode:
        log = server.log.error
    else:
        log = server.log.warning if "WARNINGS:" in output else server.log.info
    for line in output.splitlines():
        if line.strip():
            log("%s", line)
    if result.returncode:
        # gunicorn prints a RuntimeError raised here as "Error: ..." and exits with status 1.
        raise RuntimeError("Django's system checks failed; not starting (see above)")
