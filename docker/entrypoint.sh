#!/bin/sh
# Prepare the site, then run the command given (the image's CMD: gunicorn).
#
#   1. wait for the database (up to DB_WAIT_SECONDS, default 60)
#   2. create the key ring if there is none and MFA_FERNET_KEYS is unset (never overwrites;
#      refuses, and so stops the start, when the database holds secrets: the ring was lost)
#   3. apply migrations
#   4. run Django's deployment checks: errors stop the start, warnings are printed
#   5. exec the command, which replaces this shell and so receives the stop signals
#
# Works outside Docker too: run it from anywhere with the virtual environment's bin/ first on
# PATH, e.g. PATH=.venv/bin:$PATH docker/entrypoint.sh gunicorn -c gunicorn.conf.py config.wsgi
set -eu

# The project root is the parent of this script's directory; relative paths start there.
cd -- "$(dirname -- "$0")/.."
export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-config.settings}"
# gunicorn.conf.py's default worker count, so that check mfa.W010 counts the same processes.
export WEB_CONCURRENCY="${WEB_CONCURRENCY:-2}"

log() {
    echo "entrypoint: $*" >&2
}

log "waiting for the database"
# The exception's class only: a driver's message may name the host and user, never needed here.
python -c '
import os, sys, time

import django

django.setup()
from django.db import connection
from django.db.utils import OperationalError

deadline = time.monotonic() + float(os.environ.get("DB_WAIT_SECONDS", "60"))
while True:
    try:
        connection.ensure_connection()
        break
    except OperationalError as exc:
        connection.close()
        if time.monotonic() >= deadline:
            sys.exit("entrypoint: the database did not answer in time (%s)" % type(exc).__name__)
        time.sleep(1)
'

# A ring in the environment wins over the file (mfa.crypto): then there is nothing to create.
keys_env=$(printf '%s' "${MFA_FERNET_KEYS:-}" | tr -d '[:space:]')
if [ -z "$keys_env" ] && [ ! -e "${MFA_KEYS_DIR:-keys}/ring" ]; then
    log "no key ring yet: creating one"
    python manage.py mfa_keys generate
fi

python manage.py migrate --noinput
python manage.py check --deploy --fail-level ERROR

log "starting: $*"
exec "$@"
