"""Settings for the demo site.

Everything an operator may change comes from the environment, with defaults that let a
newcomer run the site with no configuration at all (SQLite, in-process cache, a key ring in
``keys/``). The defaults are the secure ones: debug is off unless ``DJANGO_DEBUG`` says
otherwise, and with debug off a real ``DJANGO_SECRET_KEY`` is required.
"""

import os
from pathlib import Path

import dj_database_url
import django
from django.core.exceptions import ImproperlyConfigured

try:
    from django.utils.csp import CSP
except ImportError:
    # Django 5.2 has no CSP middleware. The demo runs on 6.1; these settings still import on
    # 5.2 so that the app's own tests run there, and mfa.W014 (check --deploy) says that the
    # pages are then served without a policy.
    CSP = None

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG", False)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off "
            "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(50))')."
        )
    # Development only: a key that changes nothing but signed cookies of a local run.
    SECRET_KEY = "django-insecure-development-only-key-do-not-use-in-production"

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    # mfa.apps.MfaAdminConfig replaces django.contrib.admin: the same admin, with a site whose
    # login goes through the two-step flow.
    "mfa.apps.MfaAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "mfa",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    *(["django.middleware.csp.ContentSecurityPolicyMiddleware"] if CSP else []),
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "mfa.middleware.SecondFactorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "mfa.middleware.UserTimezoneMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
# DATABASE_URL (dj-database-url syntax) or a SQLite file in the git-ignored data/ folder.
DATA_DIR = Path(os.environ.get("MFA_DATA_DIR", BASE_DIR / "data"))
if not os.environ.get("DATABASE_URL"):
    DATA_DIR.mkdir(parents=True, exist_ok=True)
DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{DATA_DIR / 'db.sqlite3'}",
        conn_max_age=int(os.environ.get("DJANGO_CONN_MAX_AGE", "60")),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE transactions take SQLite's write lock at BEGIN, so the read-modify-write of the
    # failure counter cannot interleave between two processes; the timeout makes the second
    # writer wait instead of failing with "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"transaction_mode": "IMMEDIATE", "timeout": 20}
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache and rate limits ------------------------------------------------------------------
# REDIS_URL: Django's own RedisCache backs the cache and django-ratelimit's counters, shared by
# every process and server. Without it the in-process cache is used, which is per process:
# mfa.W010 says so when that matters. Short socket timeouts keep a Redis outage from stalling a
# login; mfa.throttle turns the error into a logged, fail-open decision (the database counter
# still bounds guessing).
REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": os.environ.get("MFA_CACHE_PREFIX", "mfa-site"),
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

RATELIMIT_USE_CACHE = "default"
# django-ratelimit's E003 rejects LocMemCache outright. We keep the in-process cache as the
# zero-configuration default on purpose and replace that error with our own mfa.W010, which is
# raised only when it matters (several server processes) and names REDIS_URL as the fix.
# W001 says the stock RedisCache is "not officially supported": it implements add/incr
# atomically, which is all django-ratelimit needs.
SILENCED_SYSTEM_CHECKS = ["django_ratelimit.E003", "django_ratelimit.W001"]

# The client address used for per-address rate limits and the audit log. REMOTE_ADDR unless
# the operator names the header that their trusted reverse proxy sets (e.g. X-Forwarded-For);
# never trust such a header without a proxy that overwrites it.
MFA_TRUSTED_PROXY_HEADER = os.environ.get("MFA_TRUSTED_PROXY_HEADER", "")
MFA_TRUSTED_PROXY_COUNT = int(os.environ.get("MFA_TRUSTED_PROXY_COUNT", "1"))

# --- Sessions and authentication ------------------------------------------------------------
# Database sessions: a Redis outage must not log everyone out or break the login.
# mfa.session_store: the database backend, written once per login step (see its docstring).
SESSION_ENGINE = "mfa.session_store"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = int(os.environ.get("DJANGO_SESSION_AGE", str(60 * 60 * 12)))
LOGIN_URL = "mfa:login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "mfa:login"

# Argon2id first. m=19 MiB, t=2, p=1 is OWASP's minimum configuration and what we choose for a
# 2-core server: it costs ~35 ms of one core here (bench/login.py reports it), so two cores
# verify ~55 passwords a second. One lane (p=1) because concurrent logins already use both
# cores; more memory or passes multiply the cost of every login without a real attacker
# guessing offline at our parameters being any less ruinous for them. mfa.hashers explains.
PASSWORD_HASHERS = [
    "mfa.hashers.Argon2idPasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Two-factor module ----------------------------------------------------------------------
MFA_KEYS_DIR = os.environ.get("MFA_KEYS_DIR", str(BASE_DIR / "keys"))
MFA_ISSUER = os.environ.get("MFA_ISSUER", "MFA Demo")
# Staff must enrol before the admin lets them in: on by default in production.
MFA_REQUIRE_FOR_STAFF = env_bool("MFA_REQUIRE_FOR_STAFF", not DEBUG)
# The app's pages render inside the demo's own base (templates/base.html), their CSS and
# JavaScript in its head block; that base shows the flash messages itself, so the app does not.
MFA_BASE_TEMPLATE = "base.html"
MFA_BASE_BLOCKS = {"title": "title", "content": "content", "head": "head"}
MFA_SHOW_MESSAGES = False
# Security keys: bound to this domain (empty: the first name in ALLOWED_HOSTS). The
# development server is http://localhost:8000 (not 127.0.0.1: an RP ID cannot be an address).
MFA_WEBAUTHN_RP_ID = os.environ.get("MFA_WEBAUTHN_RP_ID", "localhost" if DEBUG else "")
MFA_WEBAUTHN_ORIGINS = env_list("MFA_WEBAUTHN_ORIGINS", "http://localhost:8000" if DEBUG else "")

# --- Security headers -----------------------------------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# No inline script or style anywhere: every page uses static files from 'self'.
if CSP:
    SECURE_CSP = {
        "default-src": [CSP.SELF],
        "script-src": [CSP.SELF],
        "style-src": [CSP.SELF],
        # The QR code is an inline data: PNG.
        "img-src": [CSP.SELF, "data:"],
        "object-src": [CSP.NONE],
        "base-uri": [CSP.NONE],
        "frame-ancestors": [CSP.NONE],
        "form-action": [CSP.SELF],
    }

if not DEBUG:
    # Behind a TLS-terminating proxy, set SECURE_PROXY_SSL_HEADER via DJANGO_SECURE_PROXY_SSL_HEADER
    # (e.g. "HTTP_X_FORWARDED_PROTO,https") so Django knows the request was HTTPS.
    if proxy_ssl := os.environ.get("DJANGO_SECURE_PROXY_SSL_HEADER"):
        header, _, value = proxy_ssl.partition(",")
        SECURE_PROXY_SSL_HEADER = (header.strip(), value.strip() or "https")
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_HSTS_SECONDS", str(60 * 60 * 24 * 365)))
    # includeSubDomains and preload are what `check --deploy` asks for; an operator whose other
    # subdomains are not yet HTTPS-only can turn them off (and will then see the warnings).
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", True)

# --- Email ----------------------------------------------------------------------------------
# Security notices go out through Django's email framework (MAILERS, new in Django 6.1); the
# console in development, SMTP in production.
_smtp = {
    "host": os.environ.get("DJANGO_EMAIL_HOST", "localhost"),
    "port": int(os.environ.get("DJANGO_EMAIL_PORT", "25")),
    "username": os.environ.get("DJANGO_EMAIL_HOST_USER", ""),
    "password": os.environ.get("DJANGO_EMAIL_HOST_PASSWORD", ""),
    "use_tls": env_bool("DJANGO_EMAIL_USE_TLS", False),
    "use_ssl": env_bool("DJANGO_EMAIL_USE_SSL", False),
    "timeout": 10,
}
if env_bool("DJANGO_EMAIL_CONSOLE", DEBUG):
    _mailer = {"BACKEND": "django.core.mail.backends.console.EmailBackend"}
else:
    _mailer = {"BACKEND": "django.core.mail.backends.smtp.EmailBackend", "OPTIONS": _smtp}
if django.VERSION >= (6, 1):
    MAILERS = {"default": _mailer}
else:
    # Django 5.2 knows only the EMAIL_* settings (6.1 refuses them beside MAILERS): the same
    # mailer, spelled the old way (the console backend ignores the SMTP ones).
    EMAIL_BACKEND = _mailer["BACKEND"]
    EMAIL_HOST = _smtp["host"]
    EMAIL_PORT = _smtp["port"]
    EMAIL_HOST_USER = _smtp["username"]
    EMAIL_HOST_PASSWORD = _smtp["password"]
    EMAIL_USE_TLS = _smtp["use_tls"]
    EMAIL_USE_SSL = _smtp["use_ssl"]
    EMAIL_TIMEOUT = _smtp["timeout"]

DEFAULT_FROM_EMAIL = os.environ.get("DJANGO_DEFAULT_FROM_EMAIL", "security@localhost")

# --- Internationalisation -------------------------------------------------------------------
LANGUAGE_CODE = "en"
# The pages are written in English and no translation ships with them. Left to follow the
# browser, Django's own strings (form labels, its error messages) would come in the visitor's
# language and mix two languages on one page, under a lang attribute that is only half true.
# A site with translations of its own lists its languages here.
LANGUAGES = [("en", "English")]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static files ---------------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", BASE_DIR / "staticfiles"))
# The demo's own stylesheet (site.css); the app's files come from mfa/static.
STATICFILES_DIRS = [BASE_DIR / "config" / "static"]
# Production serves what `collectstatic` gathered into STATIC_ROOT (the Docker image does that
# at build time); a checkout without it, such as `./run` or the tests, serves the app folders.
WHITENOISE_USE_FINDERS = not STATIC_ROOT.is_dir()
WHITENOISE_AUTOREFRESH = DEBUG or not STATIC_ROOT.is_dir()
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        # Hashed, compressed names when `collectstatic` has made its manifest (the image does);
        # plain names otherwise, so a checkout served without it still works.
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if (STATIC_ROOT / "staticfiles.json").is_file() and not env_bool("MFA_PLAIN_STATIC", False)
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# --- Logging --------------------------------------------------------------------------------
# Security events go to the "mfa" logger; none of its messages carries a code, secret or
# password (mfa.flows logs reasons, never inputs).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "mfa": {
            "handlers": ["console"],
            "level": os.environ.get("MFA_LOG_LEVEL", "INFO"),
            "propagate": False,
        },
    },
}
