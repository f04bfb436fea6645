# syntax=docker/dockerfile:1
# The demo site under gunicorn, as a non-root user, with static files collected at build time.
#   docker compose up -d        (docker-compose.yml adds PostgreSQL, Redis and the key volume)
# Pin the base image by digest (python:3.13-slim@sha256:...) if you need reproducible builds.

# --- build: install the app and the demo's dependencies into a virtual environment --------
FROM python:3.13-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# README.md is the package's long description (pyproject.toml: readme), LICENSE its licence.
COPY pyproject.toml README.md LICENSE ./
COPY mfa ./mfa
# Every dependency ships wheels for this Python: no compiler is needed, and this stage (pip's
# build tools, the source tree) is left behind; only /opt/venv is copied on.
RUN pip install --no-cache-dir ".[demo]"

# --- runtime -------------------------------------------------------------------------------
FROM python:3.13-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DJANGO_SETTINGS_MODULE=config.settings \
    MFA_KEYS_DIR=/app/keys

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin app

COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# The app itself (mfa) is the package installed above; the site around it is copied here.
# Everything stays owned by root: the app user can read the code but not change it.
COPY manage.py gunicorn.conf.py ./
COPY config ./config
COPY templates ./templates
COPY docker/entrypoint.sh ./docker/entrypoint.sh

# collectstatic imports the production settings, which refuse to start without a secret key:
# a throw-away one for this step only (it signs nothing, and is not in the image's environment).
# Whitenoise serves the hashed, compressed files from /app/staticfiles.
RUN DJANGO_SECRET_KEY=collectstatic-build-only DATABASE_URL=sqlite://:memory: \
       python manage.py collectstatic --noinput \
    && python -m compileall -q config \
    && chmod 0755 docker/entrypoint.sh \
    && install -d -o app -g app -m 0700 /app/keys

# The key ring lives in /app/keys: docker-compose.yml mounts a named volume there (a new
# volume takes this directory's owner and mode 0700). Back it up apart from the database.
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "config.wsgi"]
